//! Every case of `../shared/vectors/flowee-vectors.json` (produced by the C++ original), checked
//! in both directions: decoding gives the described value or frames, encoding gives the bytes.

use flowee_proto::cmf::{Reader, Token, Value, Writer, varint};
use flowee_proto::frame::{FrameDecoder, FrameEncoder, PING_FRAME, PONG_FRAME};
use flowee_proto::header::FrameKind;
use flowee_proto::sequence::Reassembler;
use serde_json::Value as Json;

const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/vectors/flowee-vectors.json"
);

fn cases() -> Vec<Json> {
    let text = std::fs::read_to_string(VECTORS)
        .unwrap_or_else(|e| panic!("reading {VECTORS}: {e} (../shared must sit beside the repo)"));
    let json: Json = serde_json::from_str(&text).expect("vectors are JSON");
    json["cases"].as_array().expect("a cases array").clone()
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A JSON number or a string holding one, as text.
fn num_text(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Number(n) => n.to_string(),
        other => panic!("not a number: {other}"),
    }
}

/// The token a `cmf_*` case describes.
fn expected_value<'a>(case: &Json, bytes_store: &'a mut Vec<u8>) -> Value<'a> {
    let ty = case["type"].as_str().unwrap();
    match ty {
        "PositiveNumber" => Value::Unsigned(num_text(&case["value"]).parse().unwrap()),
        "NegativeNumber" => {
            let v: i64 = num_text(&case["value"]).parse().unwrap();
            Value::Negative(v.unsigned_abs())
        }
        "String" => {
            let text = case["value"].as_str().unwrap().as_bytes();
            *bytes_store = match case["value_hex"].as_str() {
                Some(h) => unhex(h),
                None => text.to_vec(),
            };
            assert_eq!(text, &bytes_store[..], "value and value_hex agree");
            Value::String(bytes_store)
        }
        "ByteArray" => {
            *bytes_store = unhex(case["value_hex"].as_str().unwrap());
            Value::Bytes(bytes_store)
        }
        "BoolTrue" => Value::Bool(true),
        "BoolFalse" => Value::Bool(false),
        "Double" => Value::Double(num_text(&case["value"]).parse().unwrap()),
        other => panic!("unknown type {other}"),
    }
}

#[test]
fn every_case_is_covered() {
    let cases = cases();
    assert!(cases.len() >= 100, "expected the full vector file");
    for case in &cases {
        let group = case["group"].as_str().unwrap();
        assert!(
            matches!(
                group,
                "varint"
                    | "cmf_uint"
                    | "cmf_int"
                    | "cmf_string"
                    | "cmf_bytes"
                    | "cmf_bool"
                    | "cmf_double"
                    | "cmf_tag"
                    | "frame_builder"
                    | "frame_wire"
            ),
            "group {group} has no test"
        );
    }
}

#[test]
fn varints() {
    let mut n = 0;
    for case in cases().iter().filter(|c| c["group"] == "varint") {
        let name = case["name"].as_str().unwrap();
        let bytes = unhex(case["hex"].as_str().unwrap());
        let value: u64 = num_text(&case["value"]).parse().unwrap();
        let mut out = [0u8; 1 + varint::MAX_LEN];
        let mut w = Writer::new(&mut out[..]);
        // A raw varint is the payload of a PositiveNumber token with tag 0, minus its first byte.
        w.add(0, value);
        let token = w.finish().unwrap();
        assert_eq!(hex(&token[1..]), hex(&bytes), "{name}: encode");
        assert_eq!(varint::encoded_len(value), bytes.len(), "{name}: length");
        let mut doc = vec![0x00];
        doc.extend_from_slice(&bytes);
        let t = Reader::new(&doc).next().unwrap().unwrap();
        assert_eq!(t.value, Value::Unsigned(value), "{name}: decode");
        n += 1;
    }
    assert!(n >= 10);
}

#[test]
fn single_tokens() {
    let mut n = 0;
    for case in cases() {
        let group = case["group"].as_str().unwrap();
        if !group.starts_with("cmf_") {
            continue;
        }
        let name = case["name"].as_str().unwrap();
        let bytes = unhex(case["hex"].as_str().unwrap());
        let tag = u32::try_from(case["tag"].as_u64().unwrap()).unwrap();
        let mut store = Vec::new();
        let value = expected_value(&case, &mut store);

        // Decode: exactly one token, equal to the description (doubles compared by bits).
        let tokens: Vec<Token<'_>> = Reader::new(&bytes).map(|t| t.unwrap()).collect();
        assert_eq!(tokens.len(), 1, "{name}: one token");
        assert_eq!(tokens[0].tag, tag, "{name}: tag");
        match (tokens[0].value, value) {
            (Value::Double(a), Value::Double(b)) => {
                assert_eq!(a.to_bits(), b.to_bits(), "{name}: double bits")
            }
            (got, want) => assert_eq!(got, want, "{name}: value"),
        }
        assert_eq!(
            format!("{:?}", tokens[0].value.value_type()),
            case["type"].as_str().unwrap(),
            "{name}: type"
        );

        // Encode: the same bytes, from the value as the C++ builder got it.
        let mut w = Writer::new(Vec::new());
        if group == "cmf_int" {
            // MessageBuilder::add(int32): the sign picks the type.
            let v = i32::try_from(case["value"].as_i64().unwrap()).unwrap();
            w.add(tag, v);
        } else {
            w.add(tag, value);
        }
        assert_eq!(hex(&w.finish().unwrap()), hex(&bytes), "{name}: encode");
        n += 1;
    }
    assert!(n >= 80, "only {n} token cases");
}

/// Frames of a stream, whole, as the decoder returns them.
fn decode_frames(wire: &[u8]) -> Vec<Vec<u8>> {
    let mut d = FrameDecoder::new();
    let mut input = wire;
    let mut out = Vec::new();
    while let Some(f) = d.decode(&mut input).expect("valid stream") {
        out.push(f.bytes.to_vec());
    }
    assert_eq!(d.buffered(), 0, "no trailing bytes");
    out
}

/// Decodes a stream into its messages (sequences joined) and encodes them again.
fn reencode(wire: &[u8]) -> Vec<u8> {
    let mut d = FrameDecoder::new();
    let mut input = wire;
    let mut r = Reassembler::new(1 << 25);
    let mut out = Vec::new();
    while let Some(f) = d.decode(&mut input).unwrap() {
        match f.header.kind() {
            FrameKind::Ping => out.extend_from_slice(&PING_FRAME),
            FrameKind::Pong => out.extend_from_slice(&PONG_FRAME),
            FrameKind::Message => {
                FrameEncoder::new()
                    .encode(&f.message_header(), f.body, &mut out)
                    .unwrap();
            }
            _ => {
                if let Some(m) = r.push(&f).unwrap() {
                    FrameEncoder::new()
                        .encode(&m.header, m.body, &mut out)
                        .unwrap();
                }
            }
        }
    }
    out
}

#[test]
fn builder_frames() {
    let mut n = 0;
    for case in cases().iter().filter(|c| c["group"] == "frame_builder") {
        let name = case["name"].as_str().unwrap();
        let bytes = unhex(case["hex"].as_str().unwrap());
        match name {
            "ping_builder" => {
                assert_eq!(bytes, PING_FRAME);
                let mut out = Vec::new();
                FrameEncoder::new().write_ping(&mut out).unwrap();
                assert_eq!(out, bytes, "{name}: write_ping");
            }
            "pong_builder" => {
                assert_eq!(bytes, PONG_FRAME);
                let mut out = Vec::new();
                FrameEncoder::new().write_pong(&mut out).unwrap();
                assert_eq!(out, bytes, "{name}: write_pong");
            }
            _ => {}
        }
        assert_eq!(
            decode_frames(&bytes),
            vec![bytes.clone()],
            "{name}: one frame"
        );
        assert_eq!(hex(&reencode(&bytes)), hex(&bytes), "{name}: encode");
        n += 1;
    }
    assert_eq!(n, 3);
}

#[test]
fn wire_frames() {
    let mut n = 0;
    for case in cases().iter().filter(|c| c["group"] == "frame_wire") {
        let name = case["name"].as_str().unwrap();
        let bytes = unhex(case["hex"].as_str().unwrap());
        let frames = decode_frames(&bytes);
        if let Some(expected) = case["frames"].as_array() {
            assert_eq!(frames.len(), expected.len(), "{name}: frame count");
            for (frame, want) in frames.iter().zip(expected) {
                assert_eq!(
                    frame.len() as u64,
                    want["length"].as_u64().unwrap(),
                    "{name}"
                );
                let header_hex = want["header_hex"].as_str().unwrap();
                let header_len = header_hex.len() / 2;
                assert_eq!(
                    hex(&frame[..header_len]),
                    header_hex,
                    "{name}: header bytes"
                );
                let body_len = want["body_length"].as_u64().unwrap() as usize;
                assert_eq!(frame.len() - header_len, body_len, "{name}: body length");
                // The header's tokens, one by one.
                let items: Vec<Token<'_>> = Reader::new(&frame[2..header_len])
                    .map(|t| t.unwrap())
                    .collect();
                let want_items = want["header_items"].as_array().unwrap();
                assert_eq!(items.len(), want_items.len(), "{name}: header items");
                for (got, w) in items.iter().zip(want_items) {
                    assert_eq!(u64::from(got.tag), w["tag"].as_u64().unwrap(), "{name}");
                    if let Some(i) = w.get("int") {
                        assert_eq!(
                            got.value.header_int(),
                            Some(i.as_i64().unwrap() as i32),
                            "{name}"
                        );
                    } else {
                        assert_eq!(got.value.as_bool(), w["bool"].as_bool(), "{name}");
                    }
                }
            }
        }
        match name {
            "ping_from_client" => assert_eq!(bytes, PING_FRAME),
            "pong_from_server" => {
                assert_eq!(bytes, PONG_FRAME);
                assert_eq!(unhex(case["sent_hex"].as_str().unwrap()), PING_FRAME);
            }
            _ => {}
        }
        assert_eq!(hex(&reencode(&bytes)), hex(&bytes), "{name}: encode");
        n += 1;
    }
    assert!(n >= 9);
}

//! The JSON mapping of CMF tokens and messages, shared by `decode`, `encode`, `call` and `serve`.
//!
//! A token is `{"tag": N, "type": T, "value": V}` with T one of `uint`, `neg`, `string`, `bytes`,
//! `bool`, `double`. A message is `{"service_id", "message_id", "headers", "body_hex", "body"}`,
//! plus `"headers_truncated": true` when it carried more custom header ints than are kept;
//! pings and pongs are `{"system": "ping"}` / `{"system": "pong"}`.

use flowee_proto::cmf::{CmfError, Reader, Token, Value, Writer};
use flowee_proto::frame::{FrameDecoder, FrameEncoder, PING_FRAME, PONG_FRAME};
use flowee_proto::header::{FrameKind, Header, HeaderInts, SYSTEM_SERVICE};
use flowee_proto::sequence::Reassembler;
use serde_json::{Map, Number, Value as Json, json};
use std::fmt;

/// Input that does not follow the JSON mapping, or is not hex.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputError(pub String);

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InputError {}

fn bad(msg: impl Into<String>) -> InputError {
    InputError(msg.into())
}

/// Lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Hex in either case; whitespace is ignored.
pub fn from_hex(text: &str) -> Result<Vec<u8>, InputError> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if digits.len() % 2 != 0 {
        return Err(bad(format!(
            "hex has an odd number of digits ({})",
            digits.len()
        )));
    }
    let nibble = |c: u8| -> Result<u8, InputError> {
        (c as char)
            .to_digit(16)
            .map(|d| d as u8)
            .ok_or_else(|| bad(format!("not a hex digit: {:?}", c as char)))
    };
    digits
        .chunks(2)
        .map(|p| Ok(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

fn number(text: &str) -> Json {
    // With serde_json's `arbitrary_precision`, any decimal integer is kept exactly.
    Json::Number(text.parse::<Number>().unwrap_or_else(|_| Number::from(0)))
}

/// One token as JSON.
pub fn token_to_json(token: &Token<'_>) -> Json {
    let (ty, value) = match token.value {
        Value::Unsigned(v) => ("uint", number(&v.to_string())),
        Value::Negative(m) => ("neg", number(&format!("-{m}"))),
        Value::String(s) => match std::str::from_utf8(s) {
            Ok(text) => ("string", Json::String(text.to_owned())),
            // Strings are not checked for UTF-8 on the wire; keep the exact bytes too.
            Err(_) => {
                return json!({
                    "tag": token.tag,
                    "type": "string",
                    "value": String::from_utf8_lossy(s),
                    "hex": to_hex(s),
                });
            }
        },
        Value::Bytes(b) => ("bytes", Json::String(to_hex(b))),
        Value::Bool(b) => ("bool", Json::Bool(b)),
        // A NaN other than the usual one (the C++ writes the host's bits: 0.0/0.0 is negative
        // on x86) keeps its exact bytes too.
        Value::Double(d) if d.is_nan() && d.to_bits() != f64::NAN.to_bits() => {
            return json!({
                "tag": token.tag,
                "type": "double",
                "value": "NaN",
                "hex": to_hex(&d.to_le_bytes()),
            });
        }
        Value::Double(d) => ("double", double_to_json(d)),
        _ => ("unknown", Json::Null),
    };
    json!({ "tag": token.tag, "type": ty, "value": value })
}

fn double_to_json(d: f64) -> Json {
    if d.is_nan() {
        Json::String("NaN".into())
    } else if d.is_infinite() {
        Json::String(if d > 0.0 { "inf" } else { "-inf" }.into())
    } else {
        // Shortest text that reads back to the same bits (ryu), e.g. 1e100, -0.0, 15.5.
        Number::from_f64(d).map_or(Json::Null, Json::Number)
    }
}

/// All tokens of a CMF document as a JSON array.
pub fn cmf_to_json(doc: &[u8]) -> Result<Json, CmfError> {
    Reader::new(doc)
        .map(|t| t.map(|t| token_to_json(&t)))
        .collect::<Result<Vec<_>, _>>()
        .map(Json::Array)
}

fn parse_u64(v: &Json, what: &str) -> Result<u64, InputError> {
    match v {
        Json::Number(n) => n.to_string().parse().map_err(|_| {
            bad(format!(
                "{what} must be an integer 0..=18446744073709551615, not {n}"
            ))
        }),
        other => Err(bad(format!("{what} must be a number, not {other}"))),
    }
}

/// Writes the tokens of a JSON array (as printed by [`cmf_to_json`]) as CMF.
pub fn json_to_cmf(tokens: &Json) -> Result<Vec<u8>, InputError> {
    let list = tokens
        .as_array()
        .ok_or_else(|| bad("CMF tokens must be a JSON array"))?;
    let mut w = Writer::new(Vec::new());
    for (i, t) in list.iter().enumerate() {
        let obj = t
            .as_object()
            .ok_or_else(|| bad(format!("token {i} is not an object")))?;
        let tag = parse_u64(obj.get("tag").unwrap_or(&Json::Null), "tag")?;
        let tag = u32::try_from(tag)
            .map_err(|_| bad(format!("token {i}: tag {tag} is above 4294967295")))?;
        let ty = obj
            .get("type")
            .and_then(Json::as_str)
            .ok_or_else(|| bad(format!("token {i} has no \"type\"")))?;
        let value = obj.get("value").unwrap_or(&Json::Null);
        let ctx = |msg: &str| bad(format!("token {i} ({ty}): {msg}"));
        let holder;
        let v = match ty {
            "uint" => Value::Unsigned(parse_u64(value, "value").map_err(|e| ctx(&e.0))?),
            "neg" => {
                let text = match value {
                    Json::Number(n) => n.to_string(),
                    _ => return Err(ctx("value must be a negative integer")),
                };
                let magnitude = text
                    .strip_prefix('-')
                    .and_then(|m| m.parse::<u64>().ok())
                    .ok_or_else(|| {
                        ctx("value must be a negative integer down to -18446744073709551615")
                    })?;
                Value::Negative(magnitude)
            }
            "string" => {
                holder = match obj.get("hex").and_then(Json::as_str) {
                    Some(h) => from_hex(h)?,
                    None => value
                        .as_str()
                        .ok_or_else(|| ctx("value must be a string"))?
                        .as_bytes()
                        .to_vec(),
                };
                Value::String(&holder)
            }
            "bytes" => {
                holder = from_hex(
                    value
                        .as_str()
                        .ok_or_else(|| ctx("value must be a hex string"))?,
                )?;
                Value::Bytes(&holder)
            }
            "bool" => Value::Bool(
                value
                    .as_bool()
                    .ok_or_else(|| ctx("value must be true or false"))?,
            ),
            "double" => Value::Double(match (obj.get("hex"), value) {
                // Only NaNs carry their bytes (`decode` prints them for no other double).
                (Some(h), Json::String(s)) if s == "NaN" => {
                    let bytes = h.as_str().map(from_hex).transpose()?;
                    bytes
                        .and_then(|b| <[u8; 8]>::try_from(b).ok())
                        .map(f64::from_le_bytes)
                        .filter(|d| d.is_nan())
                        .ok_or_else(|| ctx("hex must be the 8 bytes of a NaN"))?
                }
                (Some(_), _) => return Err(ctx("only a \"NaN\" value carries \"hex\"")),
                (None, value) => match value {
                    Json::String(s) if s == "NaN" => f64::NAN,
                    Json::String(s) if s == "inf" => f64::INFINITY,
                    Json::String(s) if s == "-inf" => f64::NEG_INFINITY,
                    Json::Number(n) => n
                        .to_string()
                        .parse::<f64>()
                        .ok()
                        .filter(|d| d.is_finite())
                        .ok_or_else(|| {
                            ctx("value is not a finite double (write \"inf\" or \"-inf\")")
                        })?,
                    _ => return Err(ctx("value must be a number, \"NaN\", \"inf\" or \"-inf\"")),
                },
            }),
            other => {
                return Err(bad(format!(
                    "token {i}: unknown type {other:?} (uint, neg, string, bytes, bool, double)"
                )));
            }
        };
        w.add(tag, v);
    }
    w.finish().map_err(|e| bad(e.to_string()))
}

/// A message as JSON, as `decode` prints it.
pub fn message_to_json(header: &Header, body: &[u8]) -> Json {
    let mut headers = Map::new();
    for (tag, value) in header.ints.iter() {
        headers.insert(tag.to_string(), Json::from(value));
    }
    let mut message = json!({
        "service_id": header.service_id,
        "message_id": header.message_id,
        "headers": headers,
        "body_hex": to_hex(body),
        "body": cmf_to_json(body).ok(),
    });
    if header.ints.truncated() {
        message["headers_truncated"] = Json::Bool(true);
    }
    message
}

/// What one JSON object for `encode` stands for.
#[derive(Clone, Debug, PartialEq)]
pub enum JsonMessage {
    /// An application message.
    Message(Header, Vec<u8>),
    /// A ping frame.
    Ping,
    /// A pong frame.
    Pong,
    /// Another system frame (service 126, no flags).
    OtherSystem,
}

fn header_int(v: &Json, what: &str) -> Result<i32, InputError> {
    v.as_i64()
        .and_then(|n| i32::try_from(n).ok())
        .filter(|&n| n != i32::MAX)
        .ok_or_else(|| {
            bad(format!(
                "{what} must be an integer -2147483648..=2147483646, not {v}"
            ))
        })
}

/// Reads a message object (as printed by [`message_to_json`]; `body` may be left out when
/// `body_hex` is given, and if both are given they must agree).
pub fn json_to_message(obj: &Json) -> Result<JsonMessage, InputError> {
    let obj = obj
        .as_object()
        .ok_or_else(|| bad("a message must be a JSON object"))?;
    if let Some(system) = obj.get("system") {
        return match system.as_str() {
            Some("ping") => Ok(JsonMessage::Ping),
            Some("pong") => Ok(JsonMessage::Pong),
            Some("other") => Ok(JsonMessage::OtherSystem),
            _ => Err(bad(format!(
                "\"system\" must be \"ping\", \"pong\" or \"other\", not {system}"
            ))),
        };
    }
    let service_id = header_int(
        obj.get("service_id")
            .ok_or_else(|| bad("missing \"service_id\""))?,
        "service_id",
    )?;
    if service_id < 0 {
        return Err(bad(format!(
            "service_id must be 0..=2147483646, not {service_id}"
        )));
    }
    let message_id = match obj.get("message_id") {
        None | Some(Json::Null) => None,
        Some(v) => Some(header_int(v, "message_id")?),
    };
    if obj
        .get("headers_truncated")
        .is_some_and(|t| !matches!(t, Json::Bool(false) | Json::Null))
    {
        return Err(bad(
            "\"headers_truncated\": the header ints dropped on receipt are unknown, so the \
             message cannot be encoded as it came",
        ));
    }
    let mut ints = HeaderInts::new();
    if let Some(h) = obj.get("headers") {
        let h = h
            .as_object()
            .ok_or_else(|| bad("\"headers\" must be an object of tag: int"))?;
        for (key, value) in h {
            let tag: u32 = key
                .parse()
                .map_err(|_| bad(format!("header key {key:?} is not a tag number")))?;
            let v = header_int(value, &format!("header {tag}"))?;
            ints.set(tag, v).map_err(|e| bad(e.to_string()))?;
        }
    }
    let body = match (obj.get("body_hex"), obj.get("body")) {
        (Some(hex), tokens) => {
            let bytes = from_hex(
                hex.as_str()
                    .ok_or_else(|| bad("\"body_hex\" must be a string"))?,
            )?;
            if let Some(tokens) = tokens.filter(|t| !t.is_null()) {
                // Compare tokens, not bytes: a peer may have used the long tag form where
                // our writer uses the short one.
                let canonical = cmf_to_json(&bytes).map(|t| json_to_cmf(&t));
                if !matches!(canonical, Ok(Ok(doc)) if doc == json_to_cmf(tokens)?) {
                    return Err(bad("\"body\" and \"body_hex\" disagree"));
                }
            }
            bytes
        }
        (None, Some(tokens)) if !tokens.is_null() => json_to_cmf(tokens)?,
        _ => Vec::new(),
    };
    Ok(JsonMessage::Message(
        Header {
            service_id,
            message_id,
            ints,
        },
        body,
    ))
}

/// The wire bytes the C++ would send for a message (sequences split into 8000-byte chunks).
pub fn encode_message(msg: &JsonMessage) -> Result<Vec<u8>, InputError> {
    Ok(match msg {
        JsonMessage::Ping => PING_FRAME.to_vec(),
        JsonMessage::Pong => PONG_FRAME.to_vec(),
        JsonMessage::OtherSystem => vec![0x05, 0x00, 0x08, SYSTEM_SERVICE as u8, 0x04],
        JsonMessage::Message(header, body) => {
            let mut out = Vec::new();
            FrameEncoder::new()
                .encode(header, body, &mut out)
                .map_err(|e| bad(e.to_string()))?;
            out
        }
    })
}

/// Largest sequence `decode` reassembles.
pub const MAX_SEQUENCE: u32 = 32 << 20;

/// Decodes a frame stream into one JSON object per complete message, ping or pong. A protocol
/// error (or a stream that ends inside a frame or sequence) ends the list with an
/// `{"error", "detail"}` object, and the second value is false.
pub fn decode_stream(stream: &[u8]) -> (Vec<Json>, bool) {
    let mut out = Vec::new();
    let mut decoder = FrameDecoder::new();
    let mut seq = Reassembler::new(MAX_SEQUENCE);
    let mut input = stream;
    let error = |kind: &str, detail: String| json!({ "error": kind, "detail": detail });
    loop {
        let frame = match decoder.decode(&mut input) {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                out.push(error(e.name(), e.to_string()));
                return (out, false);
            }
        };
        match frame.header.kind() {
            FrameKind::Message => out.push(message_to_json(&frame.message_header(), frame.body)),
            FrameKind::Ping => out.push(json!({ "system": "ping" })),
            FrameKind::Pong => out.push(json!({ "system": "pong" })),
            FrameKind::OtherSystem => out.push(json!({ "system": "other" })),
            _ => match seq.push(&frame) {
                Ok(Some(m)) => out.push(message_to_json(&m.header, m.body)),
                Ok(None) => {}
                Err(e) => {
                    out.push(error(e.name(), e.to_string()));
                    return (out, false);
                }
            },
        }
    }
    if decoder.buffered() > 0 {
        out.push(error(
            "truncated",
            format!(
                "the stream ends inside a frame ({} bytes left over)",
                decoder.buffered()
            ),
        ));
        return (out, false);
    }
    if seq.is_open() {
        out.push(error(
            "incomplete_sequence",
            "the stream ends inside a sequence".into(),
        ));
        return (out, false);
    }
    (out, true)
}

/// The body of the `json` fuzz target (and its corpus replay): no input makes the mapping
/// panic, and what it prints reads back to the same thing.
///
/// The bytes are tried three ways: as a frame stream (every message printed by
/// [`decode_stream`] must encode and decode to the same JSON), as a CMF document (printed
/// tokens must write and print the same), and as JSON text given to `encode`.
pub fn fuzz(data: &[u8]) {
    let (printed, _) = decode_stream(data);
    for obj in printed.iter().filter(|o| o.get("error").is_none()) {
        // Peers may send what we refuse to send (negative service ids, negative message ids
        // on a sequence, more header ints than are kept); everything else must go back to
        // the same bytes.
        let msg = match json_to_message(obj) {
            Ok(msg) => msg,
            Err(e) => {
                let service = obj.get("service_id").and_then(Json::as_i64);
                assert!(
                    service.is_some_and(|s| s < 0) || obj.get("headers_truncated").is_some(),
                    "{obj} does not read back: {e}"
                );
                continue;
            }
        };
        let Ok(wire) = encode_message(&msg) else {
            let id = obj.get("message_id").and_then(Json::as_i64);
            assert!(id.is_some_and(|id| id < -1), "{obj} does not encode");
            continue;
        };
        let (again, complete) = decode_stream(&wire);
        assert!(complete, "our encoding of {obj} does not decode");
        assert_eq!(again, std::slice::from_ref(obj), "decode(encode(x)) != x");
    }

    if let Ok(tokens) = cmf_to_json(data) {
        let doc = json_to_cmf(&tokens).expect("printed tokens read back");
        assert_eq!(
            cmf_to_json(&doc).ok(),
            Some(tokens),
            "tokens do not round trip"
        );
    }

    let Ok(text) = serde_json::from_slice::<Json>(data) else {
        return;
    };
    if let Ok(doc) = json_to_cmf(&text) {
        let tokens = cmf_to_json(&doc).expect("our CMF reads");
        assert_eq!(
            json_to_cmf(&tokens).ok(),
            Some(doc),
            "CMF does not round trip"
        );
    }
    if let Ok(msg) = json_to_message(&text) {
        if let Ok(wire) = encode_message(&msg) {
            let (again, complete) = decode_stream(&wire);
            assert!(complete, "our encoding of {text} does not decode");
            let back = again.first().map(json_to_message);
            assert_eq!(
                back,
                Some(Ok(msg)),
                "encode then decode changes the message"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_json_shapes() {
        let doc = from_hex(
            "0880fefefefefefefefe7f09 80fefefefefefefefe7f 0a03626c61 1b01ab 24 2e000000000000f87f",
        )
        .unwrap();
        let j = cmf_to_json(&doc).unwrap();
        assert_eq!(
            j.to_string(),
            r#"[{"tag":1,"type":"uint","value":18446744073709551615},{"tag":1,"type":"neg","value":-18446744073709551615},{"tag":1,"type":"string","value":"bla"},{"tag":3,"type":"bytes","value":"ab"},{"tag":4,"type":"bool","value":true},{"tag":5,"type":"double","value":"NaN"}]"#
        );
        assert_eq!(json_to_cmf(&j).unwrap(), doc);
    }

    #[test]
    fn doubles_keep_their_bits() {
        for d in [
            0.0,
            -0.0,
            1e100,
            std::f64::consts::PI,
            f64::MIN_POSITIVE,
            5e-324,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            // 0.0 / 0.0 on x86, and NaNs with payloads.
            f64::from_bits(0xFFF8_0000_0000_0000),
            f64::from_bits(0x7FF0_0000_0000_0001),
            f64::from_bits(0xFFFF_FFFF_FFFF_FFFF),
        ] {
            let mut w = Writer::new(Vec::new());
            w.add(1, d);
            let doc = w.finish().unwrap();
            let j = cmf_to_json(&doc).unwrap();
            let text = j.to_string();
            let back: Json = serde_json::from_str(&text).unwrap();
            assert_eq!(json_to_cmf(&back).unwrap(), doc, "{d} via {text}");
        }
    }

    #[test]
    fn invalid_utf8_strings_keep_their_bytes() {
        let doc = [0x0A, 0x02, 0xFF, 0xFE];
        let j = cmf_to_json(&doc).unwrap();
        assert_eq!(j[0]["hex"], "fffe");
        assert_eq!(json_to_cmf(&j).unwrap(), doc);
    }

    #[test]
    fn message_json_roundtrip() {
        let wire = from_hex("0d0008031002580704120271 7a").unwrap();
        let (msgs, ok) = decode_stream(&wire);
        assert!(ok);
        assert_eq!(
            msgs[0].to_string(),
            r#"{"service_id":3,"message_id":2,"headers":{"11":7},"body_hex":"1202717a","body":[{"tag":2,"type":"string","value":"qz"}]}"#
        );
        let m = json_to_message(&msgs[0]).unwrap();
        assert_eq!(encode_message(&m).unwrap(), wire);
    }

    #[test]
    fn errors() {
        let (msgs, ok) = decode_stream(&from_hex("050008010429 23").unwrap());
        assert!(!ok);
        assert_eq!(msgs[1]["error"], "frame_too_large");
        let (msgs, ok) = decode_stream(&from_hex("0500080104 0600").unwrap());
        assert!(!ok);
        assert_eq!(msgs[1]["error"], "truncated");
        assert!(from_hex("abc").is_err());
        assert!(from_hex("zz").is_err());
        let j: Json =
            serde_json::from_str(r#"{"service_id": 1, "body_hex": "00", "body": []}"#).unwrap();
        assert!(json_to_message(&j).is_err());
        let j: Json = serde_json::from_str(r#"[{"tag": 1, "type": "neg", "value": 5}]"#).unwrap();
        assert!(json_to_cmf(&j).is_err());
        let j: Json = serde_json::from_str(r#"{"service_id": 1, "headers": {"9": 1}}"#).unwrap();
        assert!(json_to_message(&j).is_err());
        // A number past a double's range is not quietly made infinite.
        let j: Json =
            serde_json::from_str(r#"[{"tag": 1, "type": "double", "value": -1e400}]"#).unwrap();
        assert!(json_to_cmf(&j).is_err());
        // Hex that is not a NaN's 8 bytes, or that goes with another value.
        for bad in [
            r#"[{"tag": 1, "type": "double", "value": "NaN", "hex": "00"}]"#,
            r#"[{"tag": 1, "type": "double", "value": "NaN", "hex": "000000000000f03f"}]"#,
            r#"[{"tag": 1, "type": "double", "value": 1.5, "hex": "000000000000f8ff"}]"#,
        ] {
            let j: Json = serde_json::from_str(bad).unwrap();
            assert!(json_to_cmf(&j).is_err(), "{bad}");
        }
    }

    /// 17 custom ints (tags 10..=26): 16 are kept and the message says so; it cannot be
    /// encoded back as it came.
    #[test]
    fn a_truncated_header_is_marked_and_not_encoded() {
        let mut header = vec![0x08, 0x03];
        for tag in 10..=26u8 {
            header.extend_from_slice(&[tag << 3, 0x01]);
        }
        header.push(0x04);
        let mut wire = vec![header.len() as u8 + 2, 0];
        wire.extend_from_slice(&header);
        let (msgs, ok) = decode_stream(&wire);
        assert!(ok);
        assert_eq!(msgs[0]["headers"].as_object().unwrap().len(), 16);
        assert_eq!(msgs[0]["headers"].get("26"), None);
        assert_eq!(msgs[0]["headers_truncated"], true);
        assert!(json_to_message(&msgs[0]).is_err());
        let mut whole = msgs[0].clone();
        for no in [Json::Bool(false), Json::Null] {
            whole["headers_truncated"] = no;
            assert!(json_to_message(&whole).is_ok());
        }
    }
}

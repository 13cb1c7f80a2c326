//! The `decode` and `encode` commands, run as a user runs them, against every case of the C++
//! test vectors, plus error handling.

use serde_json::Value as Json;
use std::io::Write;
use std::process::{Command, Output, Stdio};

const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/vectors/flowee-vectors.json"
);

fn cli(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flowee-cli"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run flowee-cli");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn cases() -> Vec<Json> {
    let text = std::fs::read_to_string(VECTORS).expect("../shared beside the repo");
    let v: Json = serde_json::from_str(&text).unwrap();
    v["cases"].as_array().unwrap().clone()
}

fn type_name(vector_type: &str, value: &Json) -> &'static str {
    match vector_type {
        "PositiveNumber" => "uint",
        "NegativeNumber" => "neg",
        "String" => "string",
        "ByteArray" => "bytes",
        "BoolTrue" | "BoolFalse" => "bool",
        "Double" => "double",
        _ => panic!("unknown type {vector_type} ({value})"),
    }
}

#[test]
fn cmf_vectors_through_the_cli() {
    let mut n = 0;
    for case in cases() {
        if !case["group"].as_str().unwrap().starts_with("cmf_") {
            continue;
        }
        let name = case["name"].as_str().unwrap();
        let hex = case["hex"].as_str().unwrap();
        let out = cli(&["decode", "--cmf", hex], None);
        assert!(out.status.success(), "{name}: {out:?}");
        let tokens: Json = serde_json::from_str(&stdout(&out)).unwrap();
        let token = &tokens.as_array().unwrap()[0];
        assert_eq!(token["tag"], case["tag"], "{name}");
        let ty = case["type"].as_str().unwrap();
        assert_eq!(token["type"], type_name(ty, &case["value"]), "{name}");
        let want = match ty {
            "ByteArray" => case["value_hex"].clone(),
            "Double" => Json::from(case["value"].as_str().unwrap().parse::<f64>().unwrap()),
            "PositiveNumber" | "NegativeNumber" => {
                let text = match &case["value"] {
                    Json::String(s) => s.clone(),
                    v => v.to_string(),
                };
                serde_json::from_str(&text).unwrap()
            }
            _ => case["value"].clone(),
        };
        if ty == "Double" {
            let got: f64 = token["value"].to_string().parse().unwrap();
            assert_eq!(got.to_bits(), want.as_f64().unwrap().to_bits(), "{name}");
        } else {
            assert_eq!(token["value"], want, "{name}");
        }
        let back = cli(&["encode", "--cmf", "-"], Some(&stdout(&out)));
        assert!(back.status.success(), "{name}: {back:?}");
        assert_eq!(stdout(&back).trim(), hex, "{name}: encode");
        n += 1;
    }
    assert!(n >= 80);
}

#[test]
fn frame_vectors_through_the_cli() {
    let mut n = 0;
    for case in cases() {
        let group = case["group"].as_str().unwrap();
        if group != "frame_wire" && group != "frame_builder" {
            continue;
        }
        let name = case["name"].as_str().unwrap();
        let hex = case["hex"].as_str().unwrap();
        let out = cli(&["decode", "-"], Some(hex));
        assert!(out.status.success(), "{name}: {out:?}");
        let mut again = String::new();
        for line in stdout(&out).lines() {
            let msg: Json = serde_json::from_str(line).unwrap();
            if let Some(frames) = case["frames"].as_array() {
                // The header ints the vector lists, as the message shows them.
                let first = &frames[0]["header_items"];
                for item in first.as_array().unwrap() {
                    match item["tag"].as_u64().unwrap() {
                        1 => assert_eq!(msg["service_id"], item["int"], "{name}"),
                        2 => assert_eq!(msg["message_id"], item["int"], "{name}"),
                        t if t >= 10 => {
                            assert_eq!(msg["headers"][t.to_string()], item["int"], "{name}")
                        }
                        _ => {}
                    }
                }
            }
            let enc = cli(&["encode", line], None);
            assert!(enc.status.success(), "{name}: {enc:?}");
            again.push_str(stdout(&enc).trim());
            // decode of encode gives back the same JSON.
            let re = cli(&["decode", stdout(&enc).trim()], None);
            assert_eq!(stdout(&re).trim(), line, "{name}: decode(encode)");
        }
        assert_eq!(again, hex, "{name}: encode");
        // All the lines at once: the same bytes.
        let all = cli(&["encode", "-"], Some(&stdout(&out)));
        assert_eq!(stdout(&all).trim(), hex, "{name}: encode of every line");
        n += 1;
    }
    assert_eq!(n, 12);
}

#[test]
fn ping_pong_and_errors() {
    let out = cli(&["decode", "0600087e2c04", "0600087e3404"], None);
    assert_eq!(
        stdout(&out),
        "{\"system\":\"ping\"}\n{\"system\":\"pong\"}\n"
    );

    let out = cli(&["decode", "050008010429 23"], None);
    assert_eq!(out.status.code(), Some(2));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    let err: Json = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(err["error"], "frame_too_large");

    let out = cli(&["decode", "474554202f20485454502f312e31"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).contains("not_flowee"));

    for bad in [
        &["decode", "0g"][..],
        &["decode", "abc"],
        &["encode", "{oops"],
        &["encode", "{\"system\":\"ping\"} {oops"],
        &["encode", " "],
        &["encode", "--cmf", "{}"],
    ] {
        let out = cli(bad, None);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{bad:?}: {err}");
    }
}

#[test]
fn large_bodies_are_split_like_the_cpp() {
    let body: String = (0..20_000u32).map(|i| format!("{:02x}", i as u8)).collect();
    let msg =
        format!(r#"{{"service_id":3,"message_id":2,"headers":{{"11":7}},"body_hex":"{body}"}}"#);
    let out = cli(&["encode", "-"], Some(&msg));
    assert!(out.status.success());
    let hex = stdout(&out);
    assert!(hex.starts_with("4e1f08031002580718809b202504"));
    let back = cli(&["decode", "-"], Some(&hex));
    let j: Json = serde_json::from_str(stdout(&back).trim()).unwrap();
    assert_eq!(j["body_hex"].as_str().unwrap(), body);
    assert_eq!(j["headers"]["11"], 7);
}

//! What the smol client writes, captured on a plain listening socket, is byte for byte what the
//! C++ NetworkManager wrote for the same messages (the `frame_wire` vectors).

use flowee_proto::frame::{FrameDecoder, PING_FRAME};
use flowee_proto::header::FrameKind;
use flowee_proto::sequence::Reassembler;
use flowee_smol::{Client, Config, Header, Message, NodeConfig, Priority};
use serde_json::Value;
use std::io::Read;
use std::net::TcpListener;
use std::time::Duration;

const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/vectors/flowee-vectors.json"
);

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The message a stream of frames carries (as the C++ sent it).
fn message_of(wire: &[u8]) -> (Header, Vec<u8>) {
    let mut d = FrameDecoder::new();
    let mut r = Reassembler::new(1 << 20);
    let mut input = wire;
    while let Some(f) = d.decode(&mut input).unwrap() {
        if f.header.kind() == FrameKind::Message {
            return (f.message_header(), f.body.to_vec());
        }
        if let Some(m) = r.push(&f).unwrap() {
            return (m.header, m.body.to_vec());
        }
    }
    panic!("no message in the vector")
}

#[test]
fn the_client_writes_the_cpp_bytes() {
    let text = std::fs::read_to_string(VECTORS).expect("../shared beside the repo");
    let vectors: Value = serde_json::from_str(&text).unwrap();
    let cases: Vec<(String, Vec<u8>)> = vectors["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["group"] == "frame_wire" && c["name"].as_str().unwrap().starts_with("msg_"))
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                unhex(c["hex"].as_str().unwrap()),
            )
        })
        .collect();
    assert!(cases.len() >= 7);

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // A short ping interval, so the capture ends with the client's ping.
    let config = NodeConfig {
        connection: Config {
            ping_interval: Duration::from_millis(500),
            pong_timeout: None,
            ..Config::default()
        },
        ..NodeConfig::default()
    };
    let accept = std::thread::spawn(move || listener.accept().unwrap().0);
    let client = smol::block_on(Client::connect(addr, config)).unwrap();
    let mut socket = accept.join().unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();

    for (name, wire) in &cases {
        let (header, body) = message_of(wire);
        client
            .send(Message::new(&header, &body), Priority::Normal)
            .unwrap();
        let mut got = vec![0; wire.len()];
        socket.read_exact(&mut got).unwrap();
        assert!(got == *wire, "{name}: the client wrote other bytes");
    }
    // Nothing else was sent; then, after the ping interval, the ping.
    let mut ping = [0u8; 6];
    socket.read_exact(&mut ping).unwrap();
    assert_eq!(ping, PING_FRAME, "ping_from_client");
    smol::block_on(client.close());
}

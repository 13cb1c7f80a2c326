//! Property tests of the wire layer: codec round trips and chunking independence.

use flowee_proto::cmf::{Reader, Token, Value, Writer};
use flowee_proto::frame::{FrameDecoder, FrameEncoder, FrameError};
use flowee_proto::header::{FrameKind, Header, HeaderInts, MAX_HEADER_INTS};
use flowee_proto::sequence::Reassembler;
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};

/// An owned token.
#[derive(Clone, Debug)]
struct AnyToken(u32, OwnedValue);

#[derive(Clone, Debug)]
enum OwnedValue {
    Unsigned(u64),
    Negative(u64),
    String(Vec<u8>),
    Bytes(Vec<u8>),
    Bool(bool),
    Double(u64),
}

impl OwnedValue {
    fn as_value(&self) -> Value<'_> {
        match self {
            OwnedValue::Unsigned(v) => Value::Unsigned(*v),
            OwnedValue::Negative(v) => Value::Negative(*v),
            OwnedValue::String(b) => Value::String(b),
            OwnedValue::Bytes(b) => Value::Bytes(b),
            OwnedValue::Bool(b) => Value::Bool(*b),
            OwnedValue::Double(bits) => Value::Double(f64::from_bits(*bits)),
        }
    }
}

fn edge_u64(g: &mut Gen) -> u64 {
    match u8::arbitrary(g) % 4 {
        0 => u64::arbitrary(g),
        1 => u64::from(u8::arbitrary(g)),
        2 => *g
            .choose(&[
                0,
                127,
                128,
                16_511,
                16_512,
                0x7FFF_FFFE,
                0x7FFF_FFFF,
                u64::MAX,
            ])
            .unwrap(),
        _ => u64::from(u32::arbitrary(g)),
    }
}

impl Arbitrary for AnyToken {
    fn arbitrary(g: &mut Gen) -> Self {
        let tag = match u8::arbitrary(g) % 3 {
            0 => u32::from(u8::arbitrary(g) % 32),
            1 => u32::arbitrary(g),
            _ => u32::from(u16::arbitrary(g)),
        };
        let value = match u8::arbitrary(g) % 6 {
            0 => OwnedValue::Unsigned(edge_u64(g)),
            1 => OwnedValue::Negative(edge_u64(g)),
            2 => OwnedValue::String(Vec::arbitrary(g)),
            3 => OwnedValue::Bytes(Vec::arbitrary(g)),
            4 => OwnedValue::Bool(bool::arbitrary(g)),
            _ => OwnedValue::Double(u64::arbitrary(g)),
        };
        AnyToken(tag, value)
    }
}

fn same_value(a: Value<'_>, b: Value<'_>) -> bool {
    match (a, b) {
        (Value::Double(x), Value::Double(y)) => x.to_bits() == y.to_bits(),
        (x, y) => x == y,
    }
}

/// A header receivers accept.
#[derive(Clone, Debug)]
struct AnyHeader(Header);

impl Arbitrary for AnyHeader {
    fn arbitrary(g: &mut Gen) -> Self {
        let service_id = match u8::arbitrary(g) % 3 {
            0 => i32::from(u8::arbitrary(g)),
            1 => (u32::arbitrary(g) % 0x7FFF_FFFF) as i32,
            _ => *g.choose(&[0, 1, 125, 127, 0x7FFF_FFFE]).unwrap(),
        };
        let message_id = match u8::arbitrary(g) % 5 {
            0 => None,
            4 => Some(-1),
            1 => Some(i32::from(u8::arbitrary(g))),
            2 => Some(i32::arbitrary(g).min(i32::MAX - 1)),
            _ => Some(*g.choose(&[-2, 0, i32::MIN, 0x7FFF_FFFE]).unwrap()),
        };
        let mut ints = HeaderInts::new();
        for _ in 0..usize::arbitrary(g) % (MAX_HEADER_INTS + 1) {
            let tag = 10 + u32::arbitrary(g) % (0xFF_FFFF - 10);
            let value = i32::arbitrary(g).min(i32::MAX - 1);
            ints.set(tag, value).unwrap();
        }
        // The system service is never delivered as a message.
        let service_id = if service_id == 126 { 127 } else { service_id };
        AnyHeader(Header {
            service_id,
            message_id,
            ints,
        })
    }
}

#[derive(Clone)]
struct AnyMessage(Header, Vec<u8>);

impl std::fmt::Debug for AnyMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "AnyMessage({:?}, {} bytes starting {:02x?})",
            self.0,
            self.1.len(),
            &self.1[..self.1.len().min(4)]
        )
    }
}

impl Arbitrary for AnyMessage {
    fn arbitrary(g: &mut Gen) -> Self {
        let len = match u8::arbitrary(g) % 8 {
            0 => 8000,
            1 => 8001,
            2 => usize::arbitrary(g) % 40_000,
            _ => usize::arbitrary(g) % 200,
        };
        let seed = u8::arbitrary(g);
        let body = (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        let mut header = AnyHeader::arbitrary(g).0;
        if len > 8000 {
            // Continuation chunks leave out negative message ids, so only −1 survives a sequence.
            header.message_id = header.message_id.filter(|&m| m >= -1);
        }
        AnyMessage(header, body)
    }
}

/// What a receiver sees in a stream: messages (sequences joined), pings and pongs, or an error.
#[derive(Debug, PartialEq)]
enum Seen {
    Message(Header, Vec<u8>),
    System(FrameKind),
    Error(String),
}

fn receive(chunks: &[&[u8]]) -> Vec<Seen> {
    let mut d = FrameDecoder::new();
    let mut r = Reassembler::new(1 << 25);
    let mut seen = Vec::new();
    for chunk in chunks {
        let mut input = *chunk;
        loop {
            match d.decode(&mut input) {
                Ok(Some(f)) => match f.header.kind() {
                    FrameKind::Message => {
                        seen.push(Seen::Message(f.message_header(), f.body.to_vec()))
                    }
                    k @ (FrameKind::Ping | FrameKind::Pong | FrameKind::OtherSystem) => {
                        seen.push(Seen::System(k))
                    }
                    _ => match r.push(&f) {
                        Ok(Some(m)) => seen.push(Seen::Message(m.header, m.body.to_vec())),
                        Ok(None) => {}
                        Err(e) => {
                            seen.push(Seen::Error(e.to_string()));
                            return seen;
                        }
                    },
                },
                Ok(None) => break,
                Err(e) => {
                    seen.push(Seen::Error(e.to_string()));
                    return seen;
                }
            }
        }
    }
    seen
}

/// Splits `data` at the given (arbitrary) cut points.
fn split<'a>(data: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    points.sort_unstable();
    let mut out = Vec::new();
    let mut prev = 0;
    for p in points {
        out.push(&data[prev..p]);
        prev = p;
    }
    out.push(&data[prev..]);
    out
}

fn qc() -> QuickCheck {
    QuickCheck::new().tests(300).max_tests(3000)
}

#[test]
fn tokens_roundtrip() {
    fn prop(tokens: Vec<AnyToken>) -> bool {
        let mut w = Writer::new(Vec::new());
        for AnyToken(tag, v) in &tokens {
            w.add(*tag, v.as_value());
        }
        let doc = w.finish().unwrap();
        let back: Vec<Token<'_>> = Reader::new(&doc).map(|t| t.unwrap()).collect();
        back.len() == tokens.len()
            && back
                .iter()
                .zip(&tokens)
                .all(|(b, AnyToken(tag, v))| b.tag == *tag && same_value(b.value, v.as_value()))
    }
    qc().quickcheck(prop as fn(Vec<AnyToken>) -> bool);
}

#[test]
fn any_bytes_read_or_fail_without_panic() {
    // Reading stops at the first error; re-encoding what was read gives back the bytes it came
    // from (the encoding is canonical), except where a small tag used the long form.
    fn prop(doc: Vec<u8>) -> bool {
        let mut r = Reader::new(&doc);
        let mut w = Writer::new(Vec::new());
        let mut canonical = true;
        let mut pos = 0;
        while let Some(Ok(t)) = r.next() {
            canonical &= !(t.tag <= 30 && doc[pos] >> 3 == 31);
            w.add(t.tag, t.value);
            pos = r.position();
        }
        !canonical || w.finish().unwrap() == doc[..r.position()]
    }
    qc().tests(2000).quickcheck(prop as fn(Vec<u8>) -> bool);
}

#[test]
fn messages_roundtrip() {
    fn prop(msgs: Vec<AnyMessage>) -> bool {
        let mut wire = Vec::new();
        for AnyMessage(h, body) in &msgs {
            FrameEncoder::new().encode(h, body, &mut wire).unwrap();
        }
        let expected: Vec<Seen> = msgs
            .iter()
            .map(|AnyMessage(h, b)| Seen::Message(*h, b.clone()))
            .collect();
        receive(&[&wire]) == expected
    }
    qc().tests(100)
        .quickcheck(prop as fn(Vec<AnyMessage>) -> bool);
}

/// A connection's send queue writes a message with exactly the encoder's bytes (single frames
/// take a direct path into the queue; sequences go through the encoder).
#[test]
fn queued_messages_go_out_as_the_encoder_writes_them() {
    use flowee_proto::Instant;
    use flowee_proto::connection::{Config, Connection, Message, Priority};
    fn prop(msgs: Vec<AnyMessage>) -> bool {
        let now = Instant::ZERO;
        let mut conn: Connection = Connection::connecting(now, Config::default());
        conn.handle_connected(now);
        let mut expected = Vec::new();
        for AnyMessage(h, body) in msgs.iter().take(8) {
            FrameEncoder::new().encode(h, body, &mut expected).unwrap();
            conn.send(now, Message::new(h, body), Priority::Normal)
                .unwrap();
        }
        let mut sent = Vec::new();
        // Bounded, so a queue that disagrees about lengths fails instead of looping.
        while let Some(data) = conn.poll_transmit() {
            let n = data.len();
            sent.extend_from_slice(data);
            conn.consume_transmit(n);
            if n == 0 || sent.len() > expected.len() {
                return false;
            }
        }
        sent == expected
    }
    qc().tests(200)
        .quickcheck(prop as fn(Vec<AnyMessage>) -> bool);
}

/// Whatever sizes the socket writes, and wherever a ping comes due, the bytes out are the queued
/// messages as whole frames (the ping goes between two frames, high priority before normal once
/// a frame ends), and the counters say exactly what went out.
#[test]
fn any_write_sizes_give_whole_frames_and_true_counts() {
    use flowee_proto::Instant;
    use flowee_proto::connection::{Config, Connection, Message, Priority};
    fn prop(msgs: Vec<(AnyMessage, bool)>, writes: Vec<usize>, ping_step: u8) -> bool {
        let now = Instant::ZERO;
        let config = Config::default();
        let mut conn: Connection = Connection::connecting(now, config);
        conn.handle_connected(now);
        let mut queued = Vec::new();
        for (AnyMessage(h, body), high) in msgs.iter().take(8) {
            let priority = if *high && body.len() <= 8000 {
                Priority::High
            } else {
                Priority::Normal
            };
            conn.send(now, Message::new(h, body), priority).unwrap();
            queued.push(Seen::Message(*h, body.clone()));
        }
        let mut sent = Vec::new();
        let mut step = 0usize;
        while let Some(data) = conn.poll_transmit() {
            // Some zero-byte writes too (a full socket buffer), never two in a row; bounded,
            // so a stall fails.
            let w = writes
                .get(step % writes.len().max(1))
                .copied()
                .unwrap_or(usize::MAX);
            let n = if step % 2 == 1 && w % 4 == 0 {
                0
            } else {
                1 + w % data.len()
            };
            sent.extend_from_slice(&data[..n]);
            conn.consume_transmit(n);
            step += 1;
            if step == usize::from(ping_step) {
                conn.handle_timeout(now + config.ping_interval);
            }
            if step > 200_000 {
                return false;
            }
        }
        let seen = receive(&[&sent]);
        let frames = FrameCount::of(&sent);
        let st = conn.stats();
        let messages: Vec<&Seen> = seen
            .iter()
            .filter(|s| matches!(s, Seen::Message(..)))
            .collect();
        let pings = seen
            .iter()
            .filter(|s| **s == Seen::System(FrameKind::Ping))
            .count();
        // The same messages, each priority in its own order (high ones may overtake).
        let same = |high: bool| {
            let ours: Vec<&Seen> = msgs
                .iter()
                .take(8)
                .zip(&queued)
                .filter(|((AnyMessage(_, b), h), _)| (*h && b.len() <= 8000) == high)
                .map(|(_, s)| s)
                .collect();
            let theirs: Vec<&Seen> = messages
                .iter()
                .copied()
                .filter(|s| ours.contains(s))
                .collect();
            ours == theirs
        };
        frames.complete
            && messages.len() == queued.len()
            && same(true)
            && same(false)
            && pings == usize::from(step >= usize::from(ping_step) && ping_step > 0)
            && st.frames_out == frames.count
            && st.messages_out == queued.len() as u64
            && st.bytes_out == sent.len() as u64
    }
    qc().tests(300)
        .quickcheck(prop as fn(Vec<(AnyMessage, bool)>, Vec<usize>, u8) -> bool);
}

/// Frames in a byte stream, by their length fields.
struct FrameCount {
    count: u64,
    /// The stream ends at a frame's end.
    complete: bool,
}

impl FrameCount {
    fn of(stream: &[u8]) -> Self {
        let mut at = 0;
        let mut count = 0;
        while at + 2 <= stream.len() {
            let len = usize::from(u16::from_le_bytes([stream[at], stream[at + 1]]));
            if len < 2 {
                break;
            }
            at += len;
            count += 1;
        }
        FrameCount {
            count,
            complete: at == stream.len(),
        }
    }
}

#[test]
fn any_chunking_gives_the_same_frames() {
    fn prop(msgs: Vec<AnyMessage>, cuts: Vec<usize>, garbage: Vec<u8>) -> TestResult {
        let mut wire = Vec::new();
        for AnyMessage(h, body) in msgs.iter().take(6) {
            FrameEncoder::new().encode(h, body, &mut wire).unwrap();
            wire.extend_from_slice(&flowee_proto::frame::PING_FRAME);
        }
        // Sometimes end the stream with garbage, so errors must agree too.
        wire.extend_from_slice(&garbage);
        let whole = receive(&[&wire]);
        let split_result = receive(&split(&wire, &cuts));
        if whole != split_result {
            return TestResult::error(format!("whole {whole:?}\nsplit {split_result:?}"));
        }
        TestResult::passed()
    }
    qc().tests(200)
        .quickcheck(prop as fn(Vec<AnyMessage>, Vec<usize>, Vec<u8>) -> TestResult);
}

#[test]
fn byte_by_byte_gives_the_same_frames() {
    fn prop(msgs: Vec<AnyMessage>) -> bool {
        let mut wire = Vec::new();
        for AnyMessage(h, body) in msgs.iter().take(3) {
            FrameEncoder::new().encode(h, body, &mut wire).unwrap();
        }
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        receive(&[&wire]) == receive(&bytes)
    }
    qc().tests(50)
        .quickcheck(prop as fn(Vec<AnyMessage>) -> bool);
}

#[test]
fn any_stream_gives_frames_or_a_typed_error() {
    fn prop(prefix: bool, data: Vec<u8>, cuts: Vec<usize>) -> bool {
        // Half the cases start like a real stream so the fuzz gets past the first-frame check.
        let mut stream = if prefix {
            vec![0x05, 0x00, 0x08, 0x01, 0x04]
        } else {
            Vec::new()
        };
        stream.extend_from_slice(&data);
        let whole = receive(&[&stream]);
        whole == receive(&split(&stream, &cuts))
    }
    qc().tests(2000)
        .quickcheck(prop as fn(bool, Vec<u8>, Vec<usize>) -> bool);
}

#[test]
fn decoder_memory_is_one_frame() {
    fn prop(data: Vec<u8>) -> bool {
        let mut d = FrameDecoder::new();
        let mut stream = vec![0x28, 0x23, 0x08];
        stream.extend_from_slice(&data);
        for chunk in stream.chunks(7) {
            let mut input = chunk;
            while let Ok(Some(_)) = d.decode(&mut input) {}
            if d.buffered() > flowee_proto::frame::MAX_FRAME_LEN {
                return false;
            }
        }
        true
    }
    qc().quickcheck(prop as fn(Vec<u8>) -> bool);
    // Sanity: an error is reported with its type.
    let mut d = FrameDecoder::new();
    let mut input: &[u8] = &[0xFF, 0xFF, 0x08];
    assert_eq!(
        d.decode(&mut input),
        Err(FrameError::TooLarge { len: 0xFFFF })
    );
}

//! The bodies of the fuzz targets in `fuzz/` (cargo-fuzz, nightly), kept here so that
//! `cargo test` can replay the checked-in corpus on stable.
//!
//! Each function takes the fuzzer's bytes, exercises one part of the crate, and panics only
//! when an invariant breaks: a panic inside the crate, a deadline at or before `now` after
//! `handle_timeout(now)`, a drain loop that does not end, a buffer or table over its bound, or
//! an encode/decode round trip that does not give back what went in.

use crate::cmf::{Reader, Token, Writer};
use crate::connection::{
    Config, Connection, EncodedMessage, Event, Message, Priority, SequenceDelivery,
};
use crate::frame::{self, FrameDecoder, FrameEncoder, MAX_FRAME_LEN};
use crate::header::{FrameKind, Header, HeaderInts};
use crate::node::{BanRecord, ConnId, HandleId, Node, NodeConfig, Output, Scope};
use crate::sequence::Reassembler;
use crate::storage::{ByteStore, Fixed, Heap, Storage};
use crate::time::Instant;
use alloc::vec::Vec;
use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use core::num::{NonZeroU32, NonZeroUsize};
use core::time::Duration;

/// Most events or transmit slices a drain may take before it counts as endless.
const DRAIN_LIMIT: usize = 100_000;

/// Reads fuzz input as a script of small choices.
struct Script<'a> {
    data: &'a [u8],
}

impl<'a> Script<'a> {
    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Tokens: reading never panics, and writing what was read gives back the bytes it came
/// from (the encoding is canonical) unless a small tag used the long form.
pub fn cmf(data: &[u8]) {
    let mut reader = Reader::new(data);
    let mut writer = Writer::new(Vec::new());
    let mut canonical = true;
    let mut pos = 0;
    while let Some(Ok(token)) = reader.next() {
        canonical &= !(token.tag <= 30 && data[pos] >> 3 == 31);
        let v = token.value;
        let _ = (
            v.is_int(),
            v.int_data(),
            v.long_data(),
            v.header_int(),
            v.as_i64(),
            v.as_str(),
        );
        writer.add(token.tag, token.value);
        pos = reader.position();
    }
    let again = writer.finish().unwrap_or_default();
    assert!(
        !canonical || again == data[..reader.position()],
        "re-encoding differs"
    );
}

/// What a receiver makes of a stream, for comparing chunkings.
#[derive(PartialEq, Debug)]
enum Seen {
    Frame(Vec<u8>),
    Error(frame::FrameError),
}

fn decode_chunks<'a>(chunks: impl Iterator<Item = &'a [u8]>) -> Vec<Seen> {
    let mut decoder = FrameDecoder::new();
    let mut seen = Vec::new();
    for chunk in chunks {
        let mut input = chunk;
        loop {
            match decoder.decode(&mut input) {
                Ok(Some(f)) => seen.push(Seen::Frame(f.bytes.to_vec())),
                Ok(None) => break,
                Err(e) => {
                    seen.push(Seen::Error(e));
                    return seen;
                }
            }
            assert!(decoder.buffered() <= MAX_FRAME_LEN);
        }
    }
    seen
}

/// Frame streams: one chunk, byte by byte and random splits give the same frames or the same
/// error; every frame decoded re-encodes (as a message) to frames that decode the same.
pub fn frames(data: &[u8]) {
    let mut s = Script { data };
    let step = usize::from(s.byte() % 64) + 1;
    let stream = s.data;
    let whole = decode_chunks(core::iter::once(stream));
    assert_eq!(
        whole,
        decode_chunks(stream.chunks(1)),
        "byte by byte differs"
    );
    assert_eq!(
        whole,
        decode_chunks(stream.chunks(step)),
        "chunks of {step} differ"
    );
    for seen in &whole {
        let Seen::Frame(bytes) = seen else { continue };
        let Ok(f) = frame::parse(bytes) else {
            panic!("a decoded frame does not parse again");
        };
        if f.header.kind() != FrameKind::Message {
            continue;
        }
        let header = f.message_header();
        let mut out = Vec::new();
        if FrameEncoder::new()
            .encode(&header, f.body, &mut out)
            .is_ok()
        {
            // A header that came with more ints than are kept goes out with the kept ones,
            // so it comes back without the mark.
            let mut expected = header;
            if header.ints.truncated() {
                expected.ints = HeaderInts::new();
                for (tag, value) in header.ints.iter() {
                    let _ = expected.ints.set(tag, value);
                }
            }
            assert_eq!(
                decode_message(&out),
                Some((expected, f.body.to_vec())),
                "decode(encode(frame)) differs"
            );
        }
    }
}

/// The one message in `wire` (a frame or a sequence), if that is what it holds.
fn decode_message(wire: &[u8]) -> Option<(Header, Vec<u8>)> {
    let mut r = Reassembler::new(u32::MAX);
    let mut got = None;
    for seen in decode_chunks(core::iter::once(wire)) {
        let Seen::Frame(bytes) = seen else {
            return None;
        };
        let f = frame::parse(&bytes).ok()?;
        let whole = match f.header.kind() {
            FrameKind::Message => Some((f.message_header(), f.body.to_vec())),
            FrameKind::Ping | FrameKind::Pong | FrameKind::OtherSystem => return None,
            _ => r.push(&f).ok()?.map(|m| (m.header, m.body.to_vec())),
        };
        if whole.is_some() {
            if got.is_some() {
                return None;
            }
            got = whole;
        }
    }
    got
}

/// Sequences: a body split by the encoder comes back whole through the reassembler, in any
/// chunking, with fuzz-chosen frames in between; arbitrary sequence frames never make it
/// hold more than its limit.
pub fn sequences(data: &[u8]) {
    let mut s = Script { data };
    let chunk = usize::from(s.u16() % 8000) + 1;
    // At most 64 chunks: long enough for every path, short enough to keep runs fast.
    let len = usize::from(s.u16()).min(chunk * 64);
    let body: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31)).collect();
    let header = Header::new(i32::from(s.byte()), i32::from(s.byte()));
    let mut wire = Vec::new();
    let encoded = FrameEncoder::with_chunk_size(chunk).encode(&header, &body, &mut wire);
    assert_eq!(
        encoded.is_ok(),
        header.service_id != crate::header::SYSTEM_SERVICE,
        "only the system service is refused"
    );
    if encoded.is_ok() {
        assert_eq!(
            decode_message(&wire),
            Some((header, body)),
            "the body did not come back whole"
        );
    }

    // Fuzz-made frames: the reassembler refuses or takes them, within its limit.
    let mut r = Reassembler::new(4096);
    for seen in decode_chunks(core::iter::once(s.data)) {
        let Seen::Frame(bytes) = seen else { break };
        let Ok(f) = frame::parse(&bytes) else { break };
        match r.push(&f) {
            Ok(Some(m)) => assert!(m.body.len() <= 4096),
            Ok(None) => {}
            Err(_) => break,
        }
    }
}

fn small_config(s: &mut Script<'_>) -> Config {
    let mut c = Config {
        ping_interval: Duration::from_millis(u64::from(s.byte()) * 100 + 1),
        pong_timeout: Some(Duration::from_millis(u64::from(s.byte()) * 100 + 1)),
        first_ping_timeout: Duration::from_millis(u64::from(s.u16()) + 1),
        ping_timeout: Duration::from_millis(u64::from(s.u16()) + 1),
        max_owed_pongs: NonZeroU32::new(u32::from(s.byte() % 100) + 1).unwrap_or(NonZeroU32::MIN),
        normal_queue_len: NonZeroUsize::new(usize::from(s.byte() % 16) + 1)
            .unwrap_or(NonZeroUsize::MIN),
        high_queue_len: NonZeroUsize::new(usize::from(s.byte() % 4) + 1)
            .unwrap_or(NonZeroUsize::MIN),
        normal_queue_bytes: NonZeroUsize::new(64 * 1024).unwrap_or(NonZeroUsize::MIN),
        high_queue_bytes: NonZeroUsize::new(16 * 1024).unwrap_or(NonZeroUsize::MIN),
        receive_buffer: NonZeroUsize::new(9000 + usize::from(s.u16())).unwrap_or(NonZeroUsize::MIN),
        max_sequence_size: NonZeroU32::new(u32::from(s.u16()) * 8 + 1).unwrap_or(NonZeroU32::MIN),
        chunk_size: NonZeroUsize::new(usize::from(s.u16() % 8000) + 1).unwrap_or(NonZeroUsize::MIN),
        ..Config::default()
    };
    if s.byte() & 1 == 1 {
        c.sequence_delivery = SequenceDelivery::Chunks;
    }
    if s.byte() & 1 == 1 {
        c.introduction_timeout = Some(Duration::from_millis(u64::from(s.u16())));
    }
    c
}

/// Bytes a connection may hold on the heap with `config`.
fn heap_bound(config: &Config) -> usize {
    config.receive_buffer.get().max(MAX_FRAME_LEN) * 2
        + config.max_sequence_size.get() as usize * 2
        + config.normal_queue_bytes.get()
        + config.high_queue_bytes.get()
}

/// One connection driven by a script: input chunks (fuzz bytes, or valid frames), time steps,
/// sends, closes, punishments, EOF, partial writes and polls, in both roles and both kinds of
/// storage.
pub fn connection(data: &[u8]) {
    let mut s = Script { data };
    let role = s.byte();
    let config = small_config(&mut s);
    if role & 2 == 0 {
        run_connection::<Heap>(&mut s, role & 1 == 0, config);
    } else {
        run_connection::<Fixed>(&mut s, role & 1 == 0, config);
    }
}

fn run_connection<S: Storage>(s: &mut Script<'_>, connecting: bool, config: Config) {
    let mut now = Instant::ZERO;
    let mut c: Connection<S> = if connecting {
        Connection::connecting(now, config)
    } else {
        Connection::accepted(now, config)
    };
    let mut closed_events = 0;
    let rx_bound = S::rx(config.receive_buffer.get().max(MAX_FRAME_LEN)).max_capacity();
    while !s.is_empty() {
        match s.byte() % 15 {
            0 => c.handle_connected(now),
            1 => {
                let n = usize::from(s.u16() % 2048);
                let mut input = s.bytes(n);
                for _ in 0..64 {
                    let taken = c.handle_input(now, input);
                    input = &input[taken..];
                    if input.is_empty() {
                        break;
                    }
                    closed_events += drain_events(&mut c);
                }
            }
            2 => {
                // The same bytes written in place, in pieces no longer than each room; a
                // count past the room, or a room dropped without a commit.
                let n = usize::from(s.u16() % 2048);
                let how = s.byte();
                let mut input = s.bytes(n);
                for _ in 0..64 {
                    let mut room = c.input_room();
                    let len = room.buf().len();
                    assert!(len <= rx_bound, "room of {len} past the bound {rx_bound}");
                    let k = input.len().min(len);
                    room.buf()[..k].copy_from_slice(&input[..k]);
                    let taken = match how % 4 {
                        // The rest of the room holds whatever it held: bytes all the same.
                        0 if k < len => {
                            assert_eq!(room.commit(now, usize::MAX), len);
                            k
                        }
                        // Not committed: nothing is taken.
                        1 if k > 0 => 0,
                        _ => {
                            assert_eq!(room.commit(now, k), k);
                            k
                        }
                    };
                    input = &input[taken..];
                    if input.is_empty() {
                        break;
                    }
                    closed_events += drain_events(&mut c);
                }
            }
            3 => {
                // A valid frame of fuzz-chosen size, as a good peer would send.
                let header = Header::new(i32::from(s.byte()), i32::from(s.byte()));
                let n = usize::from(s.u16() % 9000);
                let body = s.bytes(n);
                let mut wire = Vec::new();
                let _ = FrameEncoder::new().encode(&header, body, &mut wire);
                let _ = c.handle_input(now, &wire);
            }
            4 => {
                now = now + Duration::from_millis(u64::from(s.u16()) * u64::from(s.byte() % 8 + 1));
                c.handle_timeout(now);
                assert!(
                    c.poll_timeout().is_none_or(|at| at > now),
                    "stale deadline after handle_timeout"
                );
            }
            5 => {
                let header = Header::new(i32::from(s.byte()), i32::from(s.byte()));
                let n = usize::from(s.u16()) * 4;
                let body = s.bytes(n);
                let priority = if s.byte() & 1 == 0 {
                    Priority::High
                } else {
                    Priority::Normal
                };
                let _ = c.send(now, Message::new(&header, body), priority);
            }
            6 => {
                // A partial write of what is offered.
                let cut = usize::from(s.u16());
                if let Some(data) = c.poll_transmit() {
                    let n = cut.min(data.len());
                    c.consume_transmit(n);
                }
            }
            7 => drain_transmit(&mut c),
            8 => closed_events += drain_events(&mut c),
            9 => c.punish(u32::from(s.u16())),
            10 => c.handle_eof(now),
            11 => {
                // The same message for many connections, encoded once.
                let header = Header::new(i32::from(s.byte()), i32::from(s.byte()));
                let n = usize::from(s.u16()) * 4;
                if let Ok(m) = EncodedMessage::new(&Message::new(&header, s.bytes(n))) {
                    let _ = c.send_encoded(now, &m, Priority::Normal);
                }
            }
            12 => {
                let header = Header::new(i32::from(s.byte()), i32::from(s.byte()));
                let n = usize::from(s.byte());
                let _ = c.send_first(now, Message::new(&header, s.bytes(n)));
            }
            13 => {
                // Once closed, carry what was not sent over to a new connection.
                closed_events += drain_events(&mut c);
                if let Some(outbox) = c.take_outbox() {
                    assert_eq!(closed_events, 1, "closed without one Closed event");
                    c = Connection::with_outbox(now, c.role(), *c.config(), outbox);
                    closed_events = 0;
                }
            }
            _ => {
                if s.byte() == 0 {
                    c.close(now);
                }
                // Time may also go backwards; it must be harmless.
                c.handle_timeout(now.saturating_sub(Duration::from_millis(u64::from(s.byte()))));
            }
        }
        assert!(
            c.heap_usage().total() <= heap_bound(c.config()),
            "over the memory bound"
        );
        assert!(closed_events <= 1, "more than one Closed");
    }
    closed_events += drain_events(&mut c);
    drain_transmit(&mut c);
    assert!(closed_events <= 1);
}

fn drain_events<S: Storage>(c: &mut Connection<S>) -> usize {
    let mut closed = 0;
    let mut lent = Vec::new();
    for i in 0..DRAIN_LIMIT {
        let body = match c.poll_event() {
            Some(Event::Closed { .. }) => {
                closed += 1;
                continue;
            }
            // Every other message's body is taken, which must give the same bytes.
            Some(Event::Message(m)) if i % 2 == 0 => m.body.to_vec(),
            Some(_) => continue,
            None => return closed,
        };
        if let Some(n) = c.take_body(&mut lent) {
            assert_eq!(lent[..n], body[..], "take_body gave other bytes");
        }
    }
    panic!("poll_event does not run dry");
}

fn drain_transmit<S: Storage>(c: &mut Connection<S>) {
    for _ in 0..DRAIN_LIMIT {
        let Some(data) = c.poll_transmit() else {
            return;
        };
        let n = data.len();
        assert!(n > 0, "an empty transmit slice");
        c.consume_transmit(n);
    }
    panic!("poll_transmit does not run dry");
}

/// A node driven by a script: accepts from a handful of addresses, connects, garbage and
/// valid input, punishments, closes, bans, time jumps. Its tables stay within their bounds,
/// its deadlines are never stale, stale ids are refused, and its outputs run dry.
pub fn node(data: &[u8]) {
    let mut s = Script { data };
    let config = NodeConfig {
        max_connections: NonZeroUsize::new(usize::from(s.byte() % 8) + 1)
            .unwrap_or(NonZeroUsize::MIN),
        max_bans: NonZeroUsize::new(usize::from(s.byte() % 4) + 1).unwrap_or(NonZeroUsize::MIN),
        max_scores: NonZeroUsize::new(usize::from(s.byte() % 4) + 1).unwrap_or(NonZeroUsize::MIN),
        rate_limit: s.byte() & 1 == 1,
        rate_log_len: NonZeroUsize::new(usize::from(s.byte() % 8) + 1).unwrap_or(NonZeroUsize::MIN),
        max_pending_requests: NonZeroUsize::new(usize::from(s.byte() % 8) + 1)
            .unwrap_or(NonZeroUsize::MIN),
        ..NodeConfig::default()
    };
    // Either the outputs are taken after every step, or only when the script says so (the
    // node must then hold back, bounded, without losing track).
    let drain_every_step = s.byte() & 1 == 0;
    let mut node: Node<Heap> = Node::new(Instant::ZERO, config.clone());
    let mut now = Instant::ZERO;
    let mut ids: Vec<ConnId> = Vec::new();
    let mut handles: Vec<HandleId> = Vec::new();
    let ip = |b: u8| IpAddr::V4(Ipv4Addr::new(10, 0, 0, b % 6));
    while !s.is_empty() {
        let pick = usize::from(s.byte());
        let id = ids.get(pick % ids.len().max(1)).copied();
        let handle = handles.get(pick % handles.len().max(1)).copied();
        match s.byte() % 20 {
            0 => {
                let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, s.byte() % 6));
                if let Ok(id) = node.accept(now, SocketAddr::new(ip, s.u16())) {
                    ids.push(id);
                }
            }
            1 => {
                let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 1, s.byte() % 3));
                if let Ok(id) = node.connect(now, SocketAddr::new(ip, 1235)) {
                    ids.push(id);
                }
            }
            2 => {
                if let Some(id) = id {
                    let n = usize::from(s.u16() % 1024);
                    let _ = node.handle_input(now, id, s.bytes(n));
                }
            }
            3 => {
                // Written in place, as much as the room holds.
                if let Some(id) = id {
                    let n = usize::from(s.u16() % 1024);
                    let input = s.bytes(n);
                    if let Ok(mut room) = node.input_room(id) {
                        let k = input.len().min(room.buf().len());
                        room.buf()[..k].copy_from_slice(&input[..k]);
                        assert_eq!(room.commit(now, k), k);
                    }
                }
            }
            4 => {
                if let Some(id) = id {
                    let _ = node.handle_connected(now, id);
                }
            }
            5 => {
                if let Some(id) = id {
                    let _ = node.handle_connect_failed(now, id);
                }
            }
            6 => {
                if let Some(id) = id {
                    let _ = node.punish(now, id, u32::from(s.u16()));
                }
            }
            7 => {
                if let Some(id) = id {
                    let _ = node.close(now, id);
                }
            }
            8 => {
                if let Some(id) = id {
                    let _ = node.handle_eof(now, id);
                }
            }
            9 => {
                if let Some(id) = id {
                    let n = usize::from(s.byte());
                    let timeout = Duration::from_millis(u64::from(s.u16()));
                    let body = s.bytes(n);
                    let _ = node.request(now, id, Message::new(&Header::new(1, 1), body), timeout);
                }
            }
            10 => node.ban(now, ip(s.byte())),
            12 => node.unban(ip(s.byte())),
            13 => {
                if s.byte() & 1 == 0 {
                    let _ = node.allow(ip(s.byte()));
                } else {
                    node.disallow(ip(s.byte()));
                }
            }
            14 => {
                if let Some(id) = id {
                    let header = Header::new(i32::from(s.byte()), i32::from(s.byte()));
                    let n = usize::from(s.u16()) * 2;
                    let _ = node.send(now, id, Message::new(&header, s.bytes(n)), Priority::Normal);
                }
            }
            15 => {
                let header = Header::new(i32::from(s.byte()), i32::from(s.byte()));
                let n = usize::from(s.u16());
                let message = Message::new(&header, s.bytes(n));
                let to: Vec<ConnId> = ids.clone();
                node.broadcast(now, &message, Priority::Normal, to, |_, _| {});
            }
            16 => {
                let scope = match id {
                    Some(id) if s.byte() & 1 == 1 => Scope::Connection(id),
                    _ => Scope::Node,
                };
                if let Ok(h) = node.open_handle(scope) {
                    handles.push(h);
                }
            }
            17 => {
                if let Some(h) = handle {
                    let service = i32::from(s.byte() % 4);
                    let message = (s.byte() & 1 == 1).then(|| i32::from(s.byte() % 4));
                    if s.byte() & 1 == 0 {
                        let _ = node.subscribe(h, service, message);
                    } else {
                        let _ = node.unsubscribe(h, service, message);
                    }
                }
            }
            18 => {
                if let Some(h) = handle {
                    let _ = node.close_handle(h);
                    handles.retain(|x| *x != h);
                }
            }
            19 => {
                // Save and restore the ban list, as a restart would.
                let unix = u64::from(s.u16()) * 1000;
                let saved: Vec<BanRecord> = node.export_bans(unix).collect();
                assert!(saved.len() <= config.max_bans.get());
                let later = unix + u64::from(s.byte());
                node.import_bans(now, later, saved);
            }
            _ => {
                now = now
                    + Duration::from_millis(u64::from(s.u16()) * u64::from(s.byte() % 16 + 1) * 16);
                node.handle_timeout(now);
                assert!(
                    node.poll_timeout().is_none_or(|at| at > now),
                    "stale node deadline"
                );
            }
        }
        if drain_every_step || s.byte() == 0 {
            drain_node(&mut node, &mut ids);
        }
        let u = node.usage();
        assert!(u.connections <= config.max_connections.get());
        assert!(u.bans <= config.max_bans.get());
        assert!(u.scores <= config.max_scores.get());
        assert!(u.rate_log <= config.rate_log_len.get());
        assert!(u.requests <= config.max_pending_requests.get());
        let output_bound = 4 * config.max_connections.get()
            + config.max_pending_requests.get()
            + 2 * config.max_bans.get()
            + 64;
        assert!(
            u.queued_outputs <= output_bound,
            "output queue grows: {u:?}"
        );
        assert!(
            u.slots <= config.max_connections.get(),
            "slot table grows: {u:?}"
        );
        let timer_bound = 4 * (config.max_connections.get() + config.max_pending_requests.get());
        assert!(u.timers <= timer_bound + 65, "timer heap grows: {u:?}");
    }
}

fn drain_node(node: &mut Node<Heap>, ids: &mut Vec<ConnId>) {
    let mut removed = Vec::new();
    let mut lent = Vec::new();
    for i in 0..DRAIN_LIMIT {
        let Some(out) = node.poll_output() else {
            for id in removed {
                assert!(node.connection(id).is_none(), "a removed id still works");
                ids.retain(|i| *i != id);
            }
            return;
        };
        match out {
            Output::Transmit { id } => {
                while let Some(d) = node.poll_transmit(id) {
                    let n = d.len();
                    node.consume_transmit(id, n);
                }
            }
            Output::Removed { id, .. } => removed.push(id),
            // Every other message's body is taken: bodies longer than a frame can only be
            // reassembled, and heap storage always lends those.
            Output::Message { id, message, .. } | Output::Reply { id, message, .. }
                if i % 2 == 0 =>
            {
                let body = message.body.to_vec();
                match node.take_body(id, &mut lent) {
                    Some(n) => assert_eq!(lent[..n], body[..], "take_body gave other bytes"),
                    None => assert!(body.len() < MAX_FRAME_LEN, "a long body not lent"),
                }
            }
            _ => {}
        }
    }
    panic!("poll_output does not run dry");
}

/// Values of every kind survive an encode and decode (a helper for the JSON target).
pub fn tokens_roundtrip(tokens: &[Token<'_>]) -> bool {
    let mut w = Writer::new(Vec::new());
    for t in tokens {
        w.add(t.tag, t.value);
    }
    let Ok(doc) = w.finish() else { return false };
    let back: Vec<Token<'_>> = Reader::new(&doc).map_while(Result::ok).collect();
    back.len() == tokens.len()
        && back.iter().zip(tokens).all(|(a, b)| {
            a.tag == b.tag
                && match (a.value, b.value) {
                    (crate::cmf::Value::Double(x), crate::cmf::Value::Double(y)) => {
                        x.to_bits() == y.to_bits()
                    }
                    (x, y) => x == y,
                }
        })
}

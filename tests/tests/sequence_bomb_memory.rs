//! A sequence bomb does not allocate what it announces: a peer that announces a
//! `SequenceStart` of 2 147 483 646 bytes and sends a few chunks makes the receiving side
//! allocate at most its configured reassembly cap (plus a small margin), whatever the
//! announcement; with a cap that lets the announcement through, memory follows the bytes that
//! actually arrived. Measured with the counting allocator (every heap byte of the run, the
//! simulator's included).
//!
//! One test only: the counting allocator's counters are process-wide.

use flowee_proto::connection::{ProtocolError, SequenceDelivery};
use flowee_proto::sequence::SequenceError;
use flowee_proto::{CloseReason, Config, Instant};
use flowee_sim::counting::{self, Counting};
use flowee_sim::{ConnectionHost, LinkModel, RawHost, Sim};
use std::num::NonZeroU32;
use std::time::Duration;

#[global_allocator]
static ALLOC: Counting = Counting;

/// The announced body size: the largest SequenceStart a header can carry, less one.
const ANNOUNCED: u32 = 2_147_483_646;

/// Bytes of each continuation chunk's body.
const CHUNK: usize = 8000;

/// How many continuation chunks follow the start.
const CHUNKS: usize = 4;

/// Heap the rest of the run may use besides the connection's buffers: the simulator, the
/// hosts, the bytes on the link, the logs.
const MARGIN: usize = 128 << 10;

/// A valid first frame (service 1, message 1).
const HELLO: &[u8] = &[0x07, 0x00, 0x08, 0x01, 0x10, 0x01, 0x04];

/// A frame: length, header `items` and HeaderEnd, body.
fn frame(items: &[u8], body: &[u8]) -> Vec<u8> {
    let len = 2 + items.len() + 1 + body.len();
    let mut f = u16::try_from(len).unwrap().to_le_bytes().to_vec();
    f.extend_from_slice(items);
    f.push(0x04); // HeaderEnd
    f.extend_from_slice(body);
    f
}

/// What the bomb writes: a valid message, then a SequenceStart of [`ANNOUNCED`] bytes with
/// a first chunk, then [`CHUNKS`] more chunks, none of them the last.
fn bomb() -> Vec<u8> {
    let mut start = vec![0x08, 0x01, 0x18]; // ServiceId 1, SequenceStart (tag 3) =
    // CMF varint: big-endian 7-bit groups, all but the last with the high bit, each group
    // before the last one less (0x86 0xFE 0xFE 0xFE 0x7E).
    let mut n = ANNOUNCED;
    let mut groups = vec![(n & 0x7F) as u8];
    n >>= 7;
    while n > 0 {
        n -= 1;
        groups.push(0x80 | (n & 0x7F) as u8);
        n >>= 7;
    }
    groups.reverse();
    start.extend_from_slice(&groups);
    start.push(0x25); // LastInSequence (tag 4) = false
    let body: Vec<u8> = (0..CHUNK).map(|i| i as u8).collect();
    let mut out = HELLO.to_vec();
    out.extend(frame(&start, &body));
    for _ in 0..CHUNKS {
        out.extend(frame(&[0x08, 0x01, 0x25], &body));
    }
    out
}

/// Runs the bomb against a server with `config`; returns how it closed (if it did).
fn run(config: Config) -> Option<CloseReason> {
    let link = LinkModel {
        latency: Duration::from_millis(5),
        jitter: Duration::ZERO,
        ..LinkModel::default()
    };
    let mut sim = Sim::new(1, link);
    let server = sim.add_host("server", ConnectionHost::server(config, ()));
    let raw = sim.add_host("raw", RawHost::new());
    sim.connect(raw, server, 0);
    let bytes = bomb();
    sim.at(Instant::from_millis(10), move |sim| {
        sim.host_mut::<RawHost>(raw).write(&bytes)
    });
    sim.run_until(Instant::from_secs(5)).unwrap();
    sim.host::<ConnectionHost>(server).closed().map(|(_, r)| r)
}

/// The peak heap growth of a run, and how it closed.
fn measure(config: Config) -> (usize, Option<CloseReason>) {
    let mut closed = None;
    let (peak, _) = counting::growth(|| closed = run(config));
    (peak, closed)
}

/// Checks one configuration: the run's peak heap stays below the reassembly cap plus
/// [`MARGIN`], and below what actually arrived (the receive buffer, and the sequence bytes
/// twice over for the reassembly buffer's doubling) plus [`MARGIN`].
fn check(name: &str, config: Config, closed: Option<CloseReason>) {
    let (peak, reason) = measure(config);
    assert_eq!(reason, closed, "{name}");
    let cap = config.max_sequence_size.get() as usize;
    assert!(
        peak < cap + MARGIN,
        "{name}: peak {peak} bytes, cap {cap} + margin {MARGIN}"
    );
    let arrived = config.receive_buffer.get() + 2 * (CHUNKS + 1) * CHUNK;
    assert!(
        peak < arrived + MARGIN,
        "{name}: peak {peak} bytes, for {arrived} + margin {MARGIN}"
    );
}

#[test]
fn a_sequence_bomb_allocates_at_most_the_reassembly_cap() {
    let too_large = |limit: u32| {
        Some(CloseReason::Protocol(ProtocolError::Sequence(
            SequenceError::TooLarge {
                announced: ANNOUNCED,
                limit,
            },
        )))
    };
    // The default cap of 32 MiB: refused at the start frame.
    let base = Config::default();
    check("default cap", base, too_large(32 << 20));
    // A small cap: refused, and the bound is tight.
    let small = Config {
        max_sequence_size: NonZeroU32::new(1 << 20).unwrap(),
        ..base
    };
    check("1 MiB cap", small, too_large(1 << 20));
    // A cap that lets the announcement through: the connection waits for the rest, holding
    // only what arrived.
    let huge = Config {
        max_sequence_size: NonZeroU32::new(i32::MAX as u32).unwrap(),
        ..base
    };
    check("cap above the announcement", huge, None);
    let chunks = Config {
        sequence_delivery: SequenceDelivery::Chunks,
        ..huge
    };
    check("cap above the announcement, chunks", chunks, None);
}

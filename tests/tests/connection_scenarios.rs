//! Behaviour over time of one connection pair, in the simulator.

use flowee_proto::connection::{ProtocolError, SequenceDelivery};
use flowee_proto::frame::{FrameEncoder, FrameError, PING_FRAME, PONG_FRAME};
use flowee_proto::header::HeaderError;
use flowee_proto::sequence::SequenceError;
use flowee_proto::{
    CloseReason, Config, Connection, Header, Instant, Message, Misbehaviour, Priority, SendError,
};
use flowee_sim::{App, ConnectionHost, HostId, LinkModel, RawHost, Received, Sim};
use std::time::Duration;

fn ms(n: u64) -> Instant {
    Instant::from_millis(n)
}

fn secs(n: u64) -> Instant {
    Instant::from_secs(n)
}

/// A link with a fixed 5 ms delay, so times in assertions are exact.
fn exact_link() -> LinkModel {
    LinkModel {
        latency: Duration::from_millis(5),
        jitter: Duration::ZERO,
        ..LinkModel::default()
    }
}

fn client_server(sim: &mut Sim, config: Config) -> (HostId, HostId) {
    let server = sim.add_host("server", ConnectionHost::server(config, ()));
    let client = sim.add_host("client", ConnectionHost::client(sim.now(), config, ()));
    sim.connect(client, server, 0);
    (client, server)
}

#[test]
fn an_idle_hour_pings_on_time_and_stays_open() {
    let mut sim = Sim::new(1, exact_link());
    let (client, server) = client_server(&mut sim, Config::default());
    sim.run_until(secs(3600)).unwrap();
    let c = sim.host::<ConnectionHost>(client);
    let pongs: Vec<Instant> = c
        .log
        .iter()
        .filter_map(|(t, e)| matches!(e, Received::Pong { .. }).then_some(*t))
        .collect();
    // Connected at 5 ms; pings at 90 s steps from there; each pong comes back 10 ms later.
    let expected: Vec<Instant> = (1..=39).map(|k| ms(5 + 90_000 * k + 10)).collect();
    assert_eq!(pongs, expected);
    assert_eq!(c.closed(), None);
    assert_eq!(sim.host::<ConnectionHost>(server).closed(), None);
    assert_eq!(c.stats().last_rtt, Some(Duration::from_millis(10)));
}

#[test]
fn a_silent_client_is_closed_at_150s() {
    let mut sim = Sim::new(2, exact_link());
    let server = sim.add_host("server", ConnectionHost::server(Config::default(), ()));
    let raw = sim.add_host("raw", RawHost::new());
    sim.connect(raw, server, 0);
    sim.run_until(secs(200)).unwrap();
    let s = sim.host::<ConnectionHost>(server);
    // Accepted at 5 ms.
    assert_eq!(s.closed(), Some((ms(150_005), CloseReason::PingTimeout)));
    assert_eq!(sim.host::<RawHost>(raw).eof_at, Some(ms(150_010)));
}

#[test]
fn a_client_that_stops_pinging_is_closed_120s_after_its_last_ping() {
    let mut sim = Sim::new(3, exact_link());
    let server = sim.add_host("server", ConnectionHost::server(Config::default(), ()));
    let raw = sim.add_host("raw", RawHost::new());
    sim.connect(raw, server, 0);
    for t in [10, 100] {
        sim.at(secs(t), move |sim| {
            sim.host_mut::<RawHost>(raw).write(&PING_FRAME)
        });
    }
    sim.run_until(secs(400)).unwrap();
    let s = sim.host::<ConnectionHost>(server);
    assert_eq!(s.closed(), Some((ms(220_005), CloseReason::PingTimeout)));
    assert_eq!(
        sim.host::<RawHost>(raw).received,
        [PONG_FRAME, PONG_FRAME].concat()
    );
}

#[test]
fn a_dead_server_is_noticed_by_the_pong_timeout() {
    let mut sim = Sim::new(4, exact_link());
    let dead = sim.add_host("dead", RawHost::deaf());
    let client = sim.add_host(
        "client",
        ConnectionHost::client(sim.now(), Config::default(), ()),
    );
    sim.connect(client, dead, 0);
    sim.run_until(secs(300)).unwrap();
    let c = sim.host::<ConnectionHost>(client);
    assert_eq!(c.closed(), Some((ms(150_005), CloseReason::PongTimeout)));
}

fn body(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

#[test]
fn twenty_megabytes_with_pings_and_messages_in_between() {
    let link = LinkModel {
        latency: Duration::from_millis(3),
        jitter: Duration::from_millis(4),
        max_chunk: 7000,
        buffer: 64 * 1024,
        stall_chance: 0.001,
        stall: Duration::from_millis(300),
        ..LinkModel::default()
    };
    let config = Config {
        ping_interval: Duration::from_millis(500),
        pong_timeout: Some(Duration::from_secs(5)),
        ping_timeout: Duration::from_secs(3),
        first_ping_timeout: Duration::from_secs(3),
        ..Config::default()
    };
    let mut sim = Sim::new(5, link);
    let (client, server) = client_server(&mut sim, config);
    let big = body(20_000_000, 1);
    let big_copy = big.clone();
    sim.at(ms(10), move |sim| {
        let c = sim.host_mut::<ConnectionHost>(client).conn();
        c.send(
            ms(10),
            Message::new(&Header::new(7, 1), &big_copy),
            Priority::Normal,
        )
        .unwrap();
        c.send(
            ms(10),
            Message::new(&Header::new(7, 3), b"after"),
            Priority::Normal,
        )
        .unwrap();
    });
    sim.at(ms(1500), move |sim| {
        let c = sim.host_mut::<ConnectionHost>(client).conn();
        assert!(c.stats().queued_bytes > 1_000_000, "still sending at 1.5 s");
        c.send(
            ms(1500),
            Message::new(&Header::new(7, 2), b"urgent"),
            Priority::High,
        )
        .unwrap();
        // A normal message queued in the middle of the transfer waits its turn (FIFO).
        c.send(
            ms(1500),
            Message::new(&Header::new(7, 4), b"queued in the middle"),
            Priority::Normal,
        )
        .unwrap();
    });
    sim.run_until(secs(120)).unwrap();
    let s = sim.host::<ConnectionHost>(server);
    let got = s.messages();
    assert_eq!(got.len(), 4);
    assert_eq!(got[0], (Header::new(7, 2), b"urgent".to_vec()));
    assert_eq!(got[1].0, Header::new(7, 1));
    assert!(got[1].1 == big, "20 MB body intact");
    assert_eq!(got[2], (Header::new(7, 3), b"after".to_vec()));
    assert_eq!(
        got[3],
        (Header::new(7, 4), b"queued in the middle".to_vec())
    );
    let done_at = s
        .log
        .iter()
        .find_map(|(t, e)| {
            matches!(e, Received::Message { body, .. } if body.len() == big.len()).then_some(*t)
        })
        .unwrap();
    let c = sim.host::<ConnectionHost>(client);
    let pongs_during = c
        .log
        .iter()
        .filter(|(t, e)| matches!(e, Received::Pong { .. }) && *t < done_at)
        .count();
    assert!(done_at > secs(2), "the transfer took a while ({done_at:?})");
    assert!(
        pongs_during >= 3,
        "pings went between the chunks ({pongs_during})"
    );
    // Also after the middle message was queued behind the sequence.
    let pongs_after_middle = c
        .log
        .iter()
        .filter(|(t, e)| matches!(e, Received::Pong { .. }) && *t > ms(1500) && *t < done_at)
        .count();
    assert!(
        pongs_after_middle >= 3,
        "pings went between the chunks after 1.5 s ({pongs_after_middle})"
    );
    let middle_at = s
        .log
        .iter()
        .find_map(|(t, e)| {
            matches!(e, Received::Message { header, .. } if *header == Header::new(7, 4))
                .then_some(*t)
        })
        .unwrap();
    assert!(middle_at >= done_at, "{middle_at:?} before {done_at:?}");
    assert_eq!(c.closed(), None);
    assert_eq!(s.closed(), None);
}

/// Runs a raw client that writes `chunks` at the given times against a server; returns the
/// server's log and the raw peer.
fn bad_client(
    config: Config,
    chunks: &[(u64, &[u8])],
    until: Instant,
) -> (Vec<(Instant, Received)>, RawHost, usize) {
    let mut sim = Sim::new(6, exact_link());
    let server = sim.add_host("server", ConnectionHost::server(config, ()));
    let raw = sim.add_host("raw", RawHost::new());
    sim.connect(raw, server, 0);
    for &(at, bytes) in chunks {
        let bytes = bytes.to_vec();
        sim.at(ms(at), move |sim| {
            sim.host_mut::<RawHost>(raw).write(&bytes)
        });
    }
    sim.run_until(until).unwrap();
    let heap = sim
        .host::<ConnectionHost>(server)
        .connection()
        .map_or(0, |c| c.heap_usage().total());
    let log = sim.host::<ConnectionHost>(server).log.clone();
    let raw = std::mem::take(sim.host_mut::<RawHost>(raw));
    (log, raw, heap)
}

fn closed(log: &[(Instant, Received)]) -> Option<CloseReason> {
    log.iter().find_map(|(_, e)| match e {
        Received::Closed(r) => Some(*r),
        _ => None,
    })
}

fn messages(log: &[(Instant, Received)]) -> Vec<(Header, Vec<u8>)> {
    log.iter()
        .filter_map(|(_, e)| match e {
            Received::Message { header, body } => Some((*header, body.clone())),
            _ => None,
        })
        .collect()
}

fn misbehaviour(log: &[(Instant, Received)]) -> Vec<Misbehaviour> {
    log.iter()
        .filter_map(|(_, e)| match e {
            Received::Misbehaved { kind, .. } => Some(*kind),
            _ => None,
        })
        .collect()
}

fn frame_error(e: FrameError) -> Option<CloseReason> {
    Some(CloseReason::Protocol(ProtocolError::Frame(e)))
}

fn header_error(e: HeaderError) -> Option<CloseReason> {
    frame_error(FrameError::Header(e))
}

fn seq_error(e: SequenceError) -> Option<CloseReason> {
    Some(CloseReason::Protocol(ProtocolError::Sequence(e)))
}

/// A valid first frame (service 1, message 1), so later rows test later frames.
const HELLO: &[u8] = &[0x07, 0x00, 0x08, 0x01, 0x10, 0x01, 0x04];

#[test]
fn bad_input_rows_of_the_spec() {
    let c = Config::default();
    let end = secs(200);
    // (name, what the client writes, the close it must cause, the misbehaviour it counts as)
    type Row<'a> = (&'a str, Vec<&'a [u8]>, Option<CloseReason>, Misbehaviour);
    let cases: Vec<Row<'_>> = vec![
        (
            "not a frame",
            vec![b"GET / HTTP/1.1\r\n\r\n"],
            frame_error(FrameError::NotFlowee { byte: b'T' }),
            Misbehaviour::NotFlowee,
        ),
        (
            "length 9001 first",
            vec![&[0x29, 0x23, 0x08, 0x01]],
            frame_error(FrameError::TooLarge { len: 9001 }),
            Misbehaviour::BadFrame,
        ),
        (
            "length 0xFFFF later",
            vec![HELLO, &[0xFF, 0xFF]],
            frame_error(FrameError::TooLarge { len: 0xFFFF }),
            Misbehaviour::BadFrame,
        ),
        (
            "length 0",
            vec![HELLO, &[0x00, 0x00]],
            frame_error(FrameError::TooShort { len: 0 }),
            Misbehaviour::BadFrame,
        ),
        (
            "length 1",
            vec![HELLO, &[0x01, 0x00]],
            frame_error(FrameError::TooShort { len: 1 }),
            Misbehaviour::BadFrame,
        ),
        (
            "no HeaderEnd",
            vec![&[0x06, 0x00, 0x08, 0x01, 0x10, 0x01]],
            header_error(HeaderError::MissingEnd),
            Misbehaviour::BadFrame,
        ),
        (
            "no HeaderEnd, next frame after",
            vec![&[0x04, 0x00, 0x08, 0x01, 0x05, 0x00, 0x08, 0x02, 0x04]],
            frame_error(FrameError::TooShort { len: 4 }),
            Misbehaviour::BadFrame,
        ),
        (
            "truncated varint",
            vec![HELLO, &[0x05, 0x00, 0x08, 0x80, 0x80]],
            header_error(HeaderError::Cmf(flowee_proto::cmf::CmfError {
                kind: flowee_proto::cmf::CmfErrorKind::TruncatedVarint,
                offset: 0,
            })),
            Misbehaviour::BadFrame,
        ),
        (
            "no ServiceId",
            vec![HELLO, &[0x05, 0x00, 0x10, 0x01, 0x04]],
            header_error(HeaderError::MissingServiceId),
            Misbehaviour::BadFrame,
        ),
        (
            "ServiceId as bool",
            vec![HELLO, &[0x04 + 1, 0x00, 0x0C, 0x10, 0x04]],
            header_error(HeaderError::NotInt { tag: 1 }),
            Misbehaviour::BadFrame,
        ),
        (
            "ServiceId as string",
            vec![HELLO, &[0x06, 0x00, 0x0A, 0x00, 0x04, 0x00]],
            header_error(HeaderError::NotInt { tag: 1 }),
            Misbehaviour::BadFrame,
        ),
        (
            "SequenceStart 2^31-1",
            vec![
                HELLO,
                &[
                    0x0B, 0x00, 0x08, 0x01, 0x18, 0x86, 0xFE, 0xFE, 0xFE, 0x7F, 0x04,
                ],
            ],
            header_error(HeaderError::NotInt { tag: 3 }),
            Misbehaviour::BadFrame,
        ),
        (
            "SequenceStart 2^32",
            vec![
                HELLO,
                &[
                    0x0B, 0x00, 0x08, 0x01, 0x18, 0x8E, 0xFE, 0xFE, 0xFF, 0x00, 0x04,
                ],
            ],
            header_error(HeaderError::NotInt { tag: 3 }),
            Misbehaviour::BadFrame,
        ),
        (
            "int in tag 7",
            vec![HELLO, &[0x07, 0x00, 0x08, 0x01, 0x38, 0x01, 0x04]],
            header_error(HeaderError::IllegalTag { tag: 7 }),
            Misbehaviour::BadFrame,
        ),
        (
            "continuation without start",
            vec![HELLO, &[0x07, 0x00, 0x08, 0x01, 0x24, 0x04, 0xAA]],
            seq_error(SequenceError::NoStart),
            Misbehaviour::BadSequence,
        ),
        (
            "second start",
            vec![
                HELLO,
                &[
                    0x09, 0x00, 0x08, 0x01, 0x18, 0x05, 0x25, 0x04, 0xAA, 0x09, 0x00, 0x08, 0x01,
                    0x18, 0x05, 0x25, 0x04, 0xAA,
                ],
            ],
            seq_error(SequenceError::SecondStart),
            Misbehaviour::BadSequence,
        ),
        (
            "changed message id",
            vec![
                HELLO,
                &[
                    0x0B, 0x00, 0x08, 0x01, 0x10, 0x01, 0x18, 0x05, 0x25, 0x04, 0xAA, 0x09, 0x00,
                    0x08, 0x01, 0x10, 0x02, 0x24, 0x04, 0xAA,
                ],
            ],
            seq_error(SequenceError::Mismatch {
                expected: (1, 1),
                found: (1, 2),
            }),
            Misbehaviour::BadSequence,
        ),
        (
            "more than announced",
            vec![
                HELLO,
                &[
                    0x09, 0x00, 0x08, 0x01, 0x18, 0x01, 0x25, 0x04, 0xAA, 0x07, 0x00, 0x08, 0x01,
                    0x24, 0x04, 0xBB,
                ],
            ],
            seq_error(SequenceError::Overflow {
                announced: 1,
                received: 2,
            }),
            Misbehaviour::BadSequence,
        ),
        (
            "SequenceStart -5",
            vec![
                HELLO,
                &[0x09, 0x00, 0x08, 0x01, 0x19, 0x05, 0x25, 0x04, 0xAA],
            ],
            seq_error(SequenceError::NegativeSize(-5)),
            Misbehaviour::BadSequence,
        ),
        (
            "SequenceStart 2147483646",
            vec![
                HELLO,
                &[
                    0x0D, 0x00, 0x08, 0x01, 0x18, 0x86, 0xFE, 0xFE, 0xFE, 0x7E, 0x25, 0x04, 0xAA,
                ],
            ],
            seq_error(SequenceError::TooLarge {
                announced: 2_147_483_646,
                limit: 32 << 20,
            }),
            Misbehaviour::OversizedSequence,
        ),
    ];
    for (name, chunks, reason, kind) in cases {
        let timed: Vec<(u64, &[u8])> = chunks
            .iter()
            .enumerate()
            .map(|(i, c)| (10 + i as u64 * 10, *c))
            .collect();
        let (log, raw, heap) = bad_client(c, &timed, end);
        assert_eq!(closed(&log), reason, "{name}");
        assert_eq!(misbehaviour(&log), vec![kind], "{name}");
        // The server closed the socket at once, not at the ping timeout.
        let eof = raw
            .eof_at
            .unwrap_or_else(|| panic!("{name}: socket left open"));
        assert!(eof < secs(1), "{name}: closed at {eof:?}");
        assert!(heap < 1 << 20, "{name}: {heap} bytes of heap");
    }
}

#[test]
fn rows_that_are_not_errors() {
    let c = Config::default();
    // A 9000-byte frame is accepted.
    let mut max = vec![0x28, 0x23, 0x08, 0x01, 0x04];
    max.resize(9000, 0x55);
    // Non-int header items with tag >= 10 are ignored; the message is delivered.
    let odd_headers: &[u8] = &[
        0x0C, 0x00, 0x08, 0x02, 0x5A, 0x01, b'x', 0x5C, 0x7C, 0x04, 0x24, 0xAA,
    ];
    // Pongs and other system frames to the server are ignored.
    let other_system: &[u8] = &[0x05, 0x00, 0x08, 0x7E, 0x04];
    // A sequence that ends before its announced size is delivered short.
    let short: &[u8] = &[
        0x09, 0x00, 0x08, 0x03, 0x18, 0x64, 0x25, 0x04, 0xAA, 0x07, 0x00, 0x08, 0x03, 0x24, 0x04,
        0xBB,
    ];
    let (log, raw, _) = bad_client(
        c,
        &[
            (10, HELLO),
            (20, &max),
            (30, odd_headers),
            (40, &PONG_FRAME),
            (50, other_system),
            (60, short),
        ],
        secs(10),
    );
    assert_eq!(closed(&log), None);
    assert!(misbehaviour(&log).is_empty());
    assert_eq!(raw.eof_at, None);
    let got = messages(&log);
    assert_eq!(got.len(), 4);
    assert_eq!(got[1].1.len(), 9000 - 5);
    assert_eq!((got[2].0.service_id, got[2].0.message_id), (2, None));
    assert!(got[2].0.ints.is_empty());
    assert_eq!(got[2].1, [0x24, 0xAA]);
    assert_eq!(
        got[3],
        (
            Header {
                message_id: None,
                ..Header::service(3)
            },
            vec![0xAA, 0xBB]
        )
    );
}

#[test]
fn fewer_than_four_bytes_wait_for_the_ping_timeout() {
    let (log, raw, _) = bad_client(Config::default(), &[(10, &[0x05, 0x00, 0x08])], secs(200));
    assert_eq!(closed(&log), Some(CloseReason::PingTimeout));
    assert_eq!(raw.eof_at, Some(ms(150_010)));
}

/// An application that punishes every message with 400 points.
struct Strict;

impl App for Strict {
    fn on_event(&mut self, _now: Instant, event: &Received, conn: &mut Connection) {
        if let Received::Message { .. } = event {
            conn.punish(400);
        }
    }
}

#[test]
fn an_application_punishing_to_1000_bans() {
    let mut sim = Sim::new(7, exact_link());
    let server = sim.add_host("server", ConnectionHost::server(Config::default(), Strict));
    let raw = sim.add_host("raw", RawHost::new());
    sim.connect(raw, server, 0);
    sim.at(ms(10), move |sim| {
        sim.host_mut::<RawHost>(raw)
            .write(&[HELLO, HELLO, HELLO, HELLO].concat())
    });
    sim.run_until(secs(5)).unwrap();
    let s = sim.host::<ConnectionHost<Strict>>(server);
    assert_eq!(s.closed().map(|c| c.1), Some(CloseReason::Banned));
    assert_eq!(s.messages().len(), 3);
    assert!(sim.host::<RawHost>(raw).eof_at.is_some());
}

#[test]
fn client_side_rows() {
    // A ping to the client: closed for good. Garbage first: closed for good. An oversized
    // frame: closed, reconnect advised.
    let rows: Vec<(&[u8], CloseReason)> = vec![
        (&PING_FRAME, CloseReason::PeerPinged),
        (
            b"HTTP/1.1 400",
            frame_error(FrameError::NotFlowee { byte: b'T' }).unwrap(),
        ),
        (
            &[0x07, 0x00, 0x08, 0x01, 0x10, 0x01, 0x04, 0x29, 0x23],
            frame_error(FrameError::TooLarge { len: 9001 }).unwrap(),
        ),
    ];
    for (bytes, reason) in rows {
        let mut sim = Sim::new(8, exact_link());
        let raw = sim.add_host("raw server", RawHost::new());
        let client = sim.add_host(
            "client",
            ConnectionHost::client(sim.now(), Config::default(), ()),
        );
        sim.connect(client, raw, 0);
        let bytes = bytes.to_vec();
        sim.at(ms(10), move |sim| {
            sim.host_mut::<RawHost>(raw).write(&bytes)
        });
        sim.run_until(secs(5)).unwrap();
        let c = sim.host::<ConnectionHost>(client);
        assert_eq!(c.closed().map(|c| c.1), Some(reason));
        let reconnect = !matches!(
            reason,
            CloseReason::PeerPinged
                | CloseReason::Protocol(ProtocolError::Frame(FrameError::NotFlowee { .. }))
        );
        assert_eq!(reason.should_reconnect(), reconnect);
    }
}

#[test]
fn a_full_queue_returns_the_message() {
    let config = Config {
        normal_queue_len: std::num::NonZeroUsize::new(3).unwrap(),
        ..Config::default()
    };
    let mut sim = Sim::new(9, exact_link());
    let (client, server) = client_server(&mut sim, config);
    let c = sim.host_mut::<ConnectionHost>(client).conn();
    for i in 0..3 {
        c.send(
            Instant::ZERO,
            Message::new(&Header::new(1, i), b"queued"),
            Priority::Normal,
        )
        .unwrap();
    }
    let body = b"the fourth".to_vec();
    match c.send(
        Instant::ZERO,
        Message::new(&Header::new(1, 3), &body),
        Priority::Normal,
    ) {
        Err(SendError::QueueFull(m)) => {
            assert_eq!((*m.header, m.body), (Header::new(1, 3), &body[..]))
        }
        other => panic!("expected QueueFull, got {other:?}"),
    }
    sim.run_until(secs(1)).unwrap();
    assert_eq!(sim.host::<ConnectionHost>(server).messages().len(), 3);
    // Room again once sent.
    let c = sim.host_mut::<ConnectionHost>(client).conn();
    c.send(
        secs(1),
        Message::new(&Header::new(1, 3), &body),
        Priority::Normal,
    )
    .unwrap();
}

fn busy_run(seed: u64) -> (u64, u64) {
    let link = LinkModel {
        max_chunk: 97,
        jitter: Duration::from_millis(20),
        stall_chance: 0.01,
        ..LinkModel::default()
    };
    let config = Config {
        ping_interval: Duration::from_secs(1),
        ..Config::default()
    };
    let mut sim = Sim::new(seed, link);
    let (client, _server) = client_server(&mut sim, config);
    for i in 0..50 {
        sim.at(ms(i * 37), move |sim| {
            let len = sim.rng().range(0, 20_000) as usize;
            let b = body(len, i as u8);
            let prio = if i % 7 == 0 {
                Priority::High
            } else {
                Priority::Normal
            };
            let b = if prio == Priority::High {
                b[..b.len().min(8000)].to_vec()
            } else {
                b
            };
            let c = sim.host_mut::<ConnectionHost>(client).conn();
            c.send(
                ms(i * 37),
                Message::new(&Header::new(9, i as i32), &b),
                prio,
            )
            .unwrap();
        });
    }
    sim.run_until(secs(30)).unwrap();
    (sim.trace().hash(), sim.trace().len())
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    let a = busy_run(11);
    let b = busy_run(11);
    assert_eq!(a, b);
    assert!(a.1 > 100, "a trace with substance ({} records)", a.1);
    assert_ne!(busy_run(12).0, a.0);
}

#[test]
fn chunked_delivery_receives_a_megabyte_on_a_small_device() {
    let device_config = Config {
        sequence_delivery: SequenceDelivery::Chunks,
        ..Config::default()
    };
    let mut sim = Sim::new(10, LinkModel::default());
    let hub = sim.add_host("hub", ConnectionHost::server(Config::default(), ()));
    let device = sim.add_host(
        "device",
        ConnectionHost::client(sim.now(), device_config, ()),
    );
    sim.connect(device, hub, 0);
    let reply = body(1 << 20, 3);
    let copy = reply.clone();
    sim.at(ms(100), move |sim| {
        let h = sim.host_mut::<ConnectionHost>(hub).conn();
        h.send(
            ms(100),
            Message::new(&Header::new(1, 5), &copy),
            Priority::Normal,
        )
        .unwrap();
    });
    sim.run_until(secs(10)).unwrap();
    let d = sim.host::<ConnectionHost>(device);
    let mut joined = Vec::new();
    let mut ends = 0;
    for (_, e) in &d.log {
        match e {
            Received::SequenceChunk(c) => joined.extend_from_slice(c),
            Received::SequenceEnd { received } => {
                ends += 1;
                assert_eq!(*received, reply.len() as u64);
            }
            _ => {}
        }
    }
    assert_eq!(ends, 1);
    assert!(joined == reply);
    let _ = FrameEncoder::new();
}

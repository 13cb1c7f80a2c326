//! Scripted tests of one connection pair, with explicit timestamps.

use super::*;
use crate::frame::FrameEncoder;
use crate::header::Header;
use crate::sequence::SequenceError;
use crate::storage::{Fixed, Heap};
use std::vec::Vec;

fn t(secs: u64) -> Instant {
    Instant::from_secs(secs)
}

/// An owned copy of an event, for assertions.
#[derive(Clone, Debug, PartialEq)]
enum Ev {
    Connected,
    Message(Header, Vec<u8>),
    SeqStart(Header, u32),
    SeqChunk(usize),
    SeqEnd(u64),
    Pong(Duration),
    Misbehaved(Misbehaviour, u32, u32),
    Closed(CloseReason),
}

fn drain<S: Storage>(c: &mut Connection<S>) -> Vec<Ev> {
    let mut out = Vec::new();
    while let Some(e) = c.poll_event() {
        out.push(owned(e));
    }
    out
}

fn owned(e: Event<'_>) -> Ev {
    match e {
        Event::Connected => Ev::Connected,
        Event::Message(m) => Ev::Message(*m.header, m.body.to_vec()),
        Event::SequenceStart { header, total } => Ev::SeqStart(header, total),
        Event::SequenceChunk(d) => Ev::SeqChunk(d.len()),
        Event::SequenceEnd { received } => Ev::SeqEnd(received),
        Event::Pong { rtt } => Ev::Pong(rtt),
        Event::Misbehaved {
            kind,
            points,
            score,
        } => Ev::Misbehaved(kind, points, score),
        Event::Closed { reason } => Ev::Closed(reason),
    }
}

/// Everything `from` wants to send, written in one go.
fn take_tx<S: Storage>(from: &mut Connection<S>) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(data) = from.poll_transmit() {
        let n = data.len();
        out.extend_from_slice(data);
        from.consume_transmit(n);
    }
    out
}

/// Moves bytes both ways until both sides are quiet, polling events in between.
fn pump<A: Storage, B: Storage>(
    now: Instant,
    a: &mut Connection<A>,
    b: &mut Connection<B>,
) -> (Vec<Ev>, Vec<Ev>) {
    let (mut ea, mut eb) = (Vec::new(), Vec::new());
    for _ in 0..10_000 {
        let ab = take_tx(a);
        let ba = take_tx(b);
        feed(now, b, &ab, &mut eb);
        feed(now, a, &ba, &mut ea);
        ea.extend(drain(a));
        eb.extend(drain(b));
        if ab.is_empty() && ba.is_empty() {
            return (ea, eb);
        }
    }
    panic!("pump did not settle");
}

fn feed<S: Storage>(now: Instant, c: &mut Connection<S>, mut data: &[u8], events: &mut Vec<Ev>) {
    while !data.is_empty() {
        let n = c.handle_input(now, data);
        data = &data[n..];
        if n == 0 {
            events.extend(drain(c));
        }
    }
}

fn pair(config: Config) -> (Connection<Heap>, Connection<Heap>) {
    let mut client = Connection::connecting(t(0), config);
    let server = Connection::accepted(t(0), config);
    client.handle_connected(t(0));
    assert_eq!(drain(&mut client), vec![Ev::Connected]);
    (client, server)
}

/// A message to `svc`/`id`; a macro, because the message borrows its header, a temporary.
macro_rules! msg {
    ($svc:expr, $id:expr, $body:expr) => {
        Message::new(&Header::new($svc, $id), $body)
    };
}

#[test]
fn messages_flow_both_ways() {
    let (mut c, mut s) = pair(Config::default());
    let header = Header::new(3, 2).with_int(11, 7).unwrap();
    c.send(t(0), Message::new(&header, b"\x12\x02qz"), Priority::Normal)
        .unwrap();
    let (_, es) = pump(t(0), &mut c, &mut s);
    assert_eq!(es, vec![Ev::Message(header, b"\x12\x02qz".to_vec())]);
    s.send(t(0), msg!(3, 3, b"reply"), Priority::Normal)
        .unwrap();
    let (ec, _) = pump(t(0), &mut c, &mut s);
    assert_eq!(ec, vec![Ev::Message(Header::new(3, 3), b"reply".to_vec())]);
    let st = c.stats();
    assert_eq!((st.messages_out, st.messages_in, st.frames_out), (1, 1, 1));
}

#[test]
fn exact_bytes_on_the_wire() {
    let mut c: Connection = Connection::connecting(t(0), Config::default());
    c.send(
        t(0),
        Message::new(&Header::service(3), b"\x0c"),
        Priority::Normal,
    )
    .unwrap();
    // Nothing leaves before the TCP connection is up.
    assert_eq!(c.poll_transmit(), None);
    c.handle_connected(t(1));
    assert_eq!(
        take_tx(&mut c),
        [0x08, 0x00, 0x08, 0x03, 0x11, 0x01, 0x04, 0x0C]
    );
}

#[test]
fn send_first_goes_first_until_transmitting_begins() {
    let mut c: Connection = Connection::connecting(t(0), Config::default());
    c.send(t(0), msg!(3, 2, b"a"), Priority::High).unwrap();
    c.send_first(t(0), msg!(1, 0, b"login")).unwrap();
    c.handle_connected(t(0));
    // Handed out but not yet written: the adapter may be writing it, so nothing can go
    // ahead of it any more (found by the `connection` fuzz target).
    assert!(c.poll_transmit().is_some());
    c.consume_transmit(0);
    assert!(matches!(
        c.send_first(t(0), msg!(1, 0, b"late")),
        Err(SendError::TooLate(_))
    ));
    let mut s: Connection = Connection::accepted(t(0), Config::default());
    let mut events = Vec::new();
    feed(t(0), &mut s, &take_tx(&mut c), &mut events);
    events.extend(drain(&mut s));
    assert_eq!(
        events,
        [
            Ev::Message(Header::new(1, 0), b"login".to_vec()),
            Ev::Message(Header::new(3, 2), b"a".to_vec())
        ]
    );
}

#[test]
fn a_preface_is_not_handed_to_the_next_connection() {
    let mut c: Connection = Connection::connecting(t(0), Config::default());
    c.send(t(0), msg!(3, 2, b"a"), Priority::High).unwrap();
    c.send_first(t(0), msg!(1, 0, b"login")).unwrap();
    c.handle_eof(t(1));
    let outbox = c.take_outbox().unwrap();
    assert_eq!(outbox.len(), (1, 0));
    let mut next = Connection::with_outbox(t(1), Role::Connecting, Config::default(), outbox);
    next.handle_connected(t(1));
    let mut s: Connection = Connection::accepted(t(1), Config::default());
    let mut events = Vec::new();
    feed(t(1), &mut s, &take_tx(&mut next), &mut events);
    events.extend(drain(&mut s));
    assert_eq!(events, [Ev::Message(Header::new(3, 2), b"a".to_vec())]);
}

#[test]
fn client_pings_every_90s_and_measures_rtt() {
    let (mut c, mut s) = pair(Config::default());
    assert_eq!(c.poll_timeout(), Some(t(90)));
    c.handle_timeout(t(89));
    assert!(c.poll_transmit().is_none());
    c.handle_timeout(t(90));
    assert_eq!(c.poll_transmit(), Some(&PING_FRAME[..]));
    c.consume_transmit(6);
    s.handle_input(t(90), &PING_FRAME);
    assert_eq!(take_tx(&mut s), PONG_FRAME);
    c.handle_input(Instant::from_millis(90_250), &PONG_FRAME);
    assert_eq!(drain(&mut c), vec![Ev::Pong(Duration::from_millis(250))]);
    assert_eq!(c.stats().last_rtt, Some(Duration::from_millis(250)));
    assert_eq!(c.timers.get(Timer::Ping), Some(t(180)));
    assert_eq!(c.timers.get(Timer::PongDeadline), None);
    // The server's deadline moved to 120 s after the ping.
    assert_eq!(s.timers.get(Timer::PingDeadline), Some(t(210)));
}

#[test]
fn server_closes_silent_clients() {
    let (_, mut s) = pair(Config::default());
    assert_eq!(s.poll_timeout(), Some(t(150)));
    s.handle_timeout(Instant::from_millis(149_999));
    assert!(!s.is_closed());
    s.handle_timeout(t(150));
    assert_eq!(
        drain(&mut s),
        vec![
            Ev::Misbehaved(Misbehaviour::Silent, 50, 50),
            Ev::Closed(CloseReason::PingTimeout)
        ]
    );
    assert_eq!(s.poll_timeout(), None);
    assert_eq!(drain(&mut s), vec![]);
}

#[test]
fn a_ping_behind_unpolled_messages_still_counts() {
    // Input is parsed only a few frames ahead of delivery; a timeout parses the rest first.
    let (_, mut s) = pair(Config::default());
    let mut wire = Vec::new();
    for id in 0..20 {
        FrameEncoder::new()
            .encode(&Header::new(1, id), b"body", &mut wire)
            .unwrap();
    }
    wire.extend_from_slice(&PING_FRAME);
    assert_eq!(s.handle_input(t(100), &wire), wire.len());
    s.handle_timeout(t(150));
    assert!(!s.is_closed());
    // Counted when parsed: the next deadline runs from the timeout that found it.
    assert_eq!(s.poll_timeout(), Some(t(270)));
    assert_eq!(take_tx(&mut s), PONG_FRAME);
    let events = drain(&mut s);
    assert_eq!(events.len(), 20);
    assert_eq!(
        events[19],
        Ev::Message(Header::new(1, 19), b"body".to_vec())
    );
}

#[test]
fn only_pings_reset_the_server_deadline() {
    let (_, mut s) = pair(Config::default());
    s.handle_input(t(100), &PING_FRAME);
    assert_eq!(s.poll_timeout(), Some(t(220)));
    let mut wire = Vec::new();
    FrameEncoder::new()
        .encode(&Header::new(1, 1), b"", &mut wire)
        .unwrap();
    s.handle_input(t(200), &wire);
    assert_eq!(s.poll_timeout(), Some(t(220)));
    s.handle_timeout(t(220));
    assert_eq!(s.close_reason(), Some(CloseReason::PingTimeout));
}

#[test]
fn dead_server_is_noticed_by_the_pong_timeout() {
    let (mut c, _) = pair(Config::default());
    c.handle_timeout(t(90));
    take_tx(&mut c);
    assert_eq!(c.poll_timeout(), Some(t(150)));
    c.handle_timeout(t(150));
    assert_eq!(drain(&mut c), vec![Ev::Closed(CloseReason::PongTimeout)]);
    assert!(CloseReason::PongTimeout.should_reconnect());
}

#[test]
fn a_ping_to_the_client_closes_it_for_good() {
    let (mut c, _) = pair(Config::default());
    c.handle_input(t(1), &PING_FRAME);
    assert_eq!(drain(&mut c), vec![Ev::Closed(CloseReason::PeerPinged)]);
    assert!(!CloseReason::PeerPinged.should_reconnect());
}

#[test]
fn nothing_after_a_ping_to_the_client_is_delivered_however_the_bytes_come() {
    let mut wire = Vec::new();
    FrameEncoder::new()
        .encode(&Header::new(1, 1), b"before", &mut wire)
        .unwrap();
    let ping_at = wire.len();
    wire.extend_from_slice(&PING_FRAME);
    FrameEncoder::new()
        .encode(&Header::new(1, 2), b"after", &mut wire)
        .unwrap();
    let expected = vec![
        Ev::Message(Header::new(1, 1), b"before".to_vec()),
        Ev::Closed(CloseReason::PeerPinged),
    ];
    // In one read, a read per frame, and a byte at a time.
    for pieces in [
        vec![wire.len()],
        vec![ping_at, 6, wire.len() - ping_at - 6],
        vec![1; wire.len()],
    ] {
        let (mut c, _) = pair(Config::default());
        let mut events = Vec::new();
        let mut at = 0;
        for n in pieces {
            c.handle_input(t(1), &wire[at..at + n]);
            at += n;
            events.extend(drain(&mut c));
        }
        assert_eq!(events, expected);
    }
}

#[test]
fn a_ping_to_the_client_counts_before_the_end_of_the_stream() {
    // More messages before the ping than are parsed ahead of delivery, then EOF before the
    // application polls: the ping still ends the stream, not the EOF.
    let mut wire = Vec::new();
    for i in 0..5 {
        FrameEncoder::new()
            .encode(&Header::new(1, i), b"before", &mut wire)
            .unwrap();
    }
    wire.extend_from_slice(&PING_FRAME);
    FrameEncoder::new()
        .encode(&Header::new(1, 9), b"after", &mut wire)
        .unwrap();
    let (mut c, _) = pair(Config::default());
    assert_eq!(c.handle_input(t(1), &wire), wire.len());
    c.handle_eof(t(1));
    let events = drain(&mut c);
    assert_eq!(events.len(), 6, "{events:?}");
    assert_eq!(
        events[4],
        Ev::Message(Header::new(1, 4), b"before".to_vec())
    );
    assert_eq!(events[5], Ev::Closed(CloseReason::PeerPinged));
}

#[test]
fn garbage_first_bytes() {
    let (_, mut s) = pair(Config::default());
    assert_eq!(s.handle_input(t(1), b"GET / HTTP/1.1\r\n"), 16);
    let reason = CloseReason::Protocol(ProtocolError::Frame(crate::frame::FrameError::NotFlowee {
        byte: b'T',
    }));
    assert_eq!(
        drain(&mut s),
        vec![
            Ev::Misbehaved(Misbehaviour::NotFlowee, 100, 100),
            Ev::Closed(reason)
        ]
    );
    assert!(!reason.should_reconnect());
    // Input after the close is taken and ignored.
    assert_eq!(s.handle_input(t(2), b"more"), 4);
    assert_eq!(drain(&mut s), vec![]);
}

#[test]
fn messages_before_an_error_are_still_delivered() {
    let (_, mut s) = pair(Config::default());
    let mut wire = Vec::new();
    FrameEncoder::new()
        .encode(&Header::new(1, 1), b"ok", &mut wire)
        .unwrap();
    wire.extend_from_slice(&[0x29, 0x23]);
    s.handle_input(t(1), &wire);
    let events = drain(&mut s);
    assert_eq!(events[0], Ev::Message(Header::new(1, 1), b"ok".to_vec()));
    assert_eq!(
        events[2],
        Ev::Closed(CloseReason::Protocol(ProtocolError::Frame(
            crate::frame::FrameError::TooLarge { len: 9001 }
        )))
    );
}

fn body(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[test]
fn large_bodies_go_as_sequences() {
    let (mut c, mut s) = pair(Config::default());
    let b = body(20_000);
    let header = Header::new(1, 4).with_int(11, 9).unwrap();
    c.send(t(0), Message::new(&header, &b), Priority::Normal)
        .unwrap();
    let wire = take_tx(&mut c);
    assert_eq!(wire.len(), 8014 + 8008 + 4008);
    let mut events = Vec::new();
    for chunk in wire.chunks(333) {
        feed(t(0), &mut s, chunk, &mut events);
        events.extend(drain(&mut s));
    }
    assert_eq!(events, vec![Ev::Message(header, b)]);
    assert_eq!(c.stats().frames_out, 3);
    assert_eq!(c.stats().messages_out, 1);
}

#[test]
fn high_priority_goes_between_chunks() {
    let (mut c, mut s) = pair(Config::default());
    let big = body(30_000);
    c.send(t(0), msg!(1, 1, &big), Priority::Normal).unwrap();
    // The socket takes part of the first frame; then a ping and an urgent message come up.
    let batch = c.poll_transmit().unwrap();
    let first_len = usize::from(u16::from_le_bytes([batch[0], batch[1]]));
    assert!(
        batch.len() > first_len,
        "all frames of the queue in one batch"
    );
    let mut wire = batch[..first_len - 4].to_vec();
    c.consume_transmit(first_len - 4);
    c.send(t(0), msg!(2, 2, b"urgent"), Priority::High).unwrap();
    c.handle_timeout(t(90));
    // Now only the rest of the current frame is offered.
    assert_eq!(c.poll_transmit().unwrap().len(), 4);
    let rest = take_tx(&mut c);
    assert_eq!(rest[4..10], PING_FRAME);
    assert_eq!(rest[10..12], [0x0D, 0x00]);
    wire.extend_from_slice(&rest);
    let mut events = Vec::new();
    feed(t(0), &mut s, &wire, &mut events);
    events.extend(drain(&mut s));
    assert_eq!(
        events,
        vec![
            Ev::Message(Header::new(2, 2), b"urgent".to_vec()),
            Ev::Message(Header::new(1, 1), big)
        ]
    );
}

#[test]
fn chunked_delivery_in_little_memory() {
    let config = Config {
        sequence_delivery: SequenceDelivery::Chunks,
        ..Config::default()
    };
    let mut c: Connection<Heap> = Connection::connecting(t(0), config);
    c.handle_connected(t(0));
    let mut s: Connection<Fixed> = Connection::accepted(t(0), config);
    let b = body(1 << 20);
    c.send(t(0), msg!(5, 5, &b), Priority::Normal).unwrap();
    let wire = take_tx(&mut c);
    let mut events = Vec::new();
    let mut got = 0usize;
    let mut data = &wire[..];
    while !data.is_empty() {
        let n = s.handle_input(t(0), data);
        data = &data[n..];
        while let Some(e) = s.poll_event() {
            match e {
                Event::SequenceChunk(d) => {
                    assert_eq!(d, &b[got..got + d.len()]);
                    got += d.len();
                }
                other => events.push(format!("{other:?}")),
            }
        }
    }
    assert_eq!(got, b.len());
    assert_eq!(events.len(), 2);
    assert!(events[0].starts_with("SequenceStart"));
    assert_eq!(events[1], "SequenceEnd { received: 1048576 }");
    assert!(core::mem::size_of::<Connection<Fixed>>() < 24 * 1024);
}

#[test]
fn sequence_bomb_is_refused_without_allocating() {
    let (_, mut s) = pair(Config::default());
    // SequenceStart = 2 147 483 646, LastInSequence = false, 1 byte of body.
    let bomb = [
        0x0D, 0x00, 0x08, 0x01, 0x18, 0x86, 0xFE, 0xFE, 0xFE, 0x7E, 0x25, 0x04, 0xAA,
    ];
    s.handle_input(t(1), &bomb);
    let events = drain(&mut s);
    assert_eq!(
        events.last(),
        Some(&Ev::Closed(CloseReason::Protocol(ProtocolError::Sequence(
            SequenceError::TooLarge {
                announced: 2_147_483_646,
                limit: 32 << 20
            }
        ))))
    );
    assert_eq!(
        events[0],
        Ev::Misbehaved(Misbehaviour::OversizedSequence, 500, 500)
    );
    assert!(s.heap_usage().total() < 1 << 20);
}

#[test]
fn sequence_overflow_closes_instead_of_stalling() {
    let (_, mut s) = pair(Config::default());
    let start = [0x09, 0x00, 0x08, 0x01, 0x18, 0x0A, 0x25, 0x04, 0xAA];
    let mut next = vec![0x06 + 20, 0x00, 0x08, 0x01, 0x25, 0x04];
    next.extend_from_slice(&[0xBB; 20]);
    s.handle_input(t(1), &start);
    s.handle_input(t(1), &next);
    assert_eq!(
        s.close_reason(),
        Some(CloseReason::Protocol(ProtocolError::Sequence(
            SequenceError::Overflow {
                announced: 10,
                received: 21
            }
        )))
    );
}

#[test]
fn queue_full_gives_the_message_back() {
    let config = Config {
        normal_queue_len: core::num::NonZeroUsize::new(2).unwrap(),
        ..Config::default()
    };
    let (mut c, _) = pair(config);
    c.send(t(0), msg!(1, 1, b"a"), Priority::Normal).unwrap();
    c.send(t(0), msg!(1, 2, b"b"), Priority::Normal).unwrap();
    match c.send(t(0), msg!(1, 3, b"c"), Priority::Normal) {
        Err(SendError::QueueFull(m)) => assert_eq!(m, msg!(1, 3, b"c")),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        c.send(t(0), msg!(1, 3, &body(8001)), Priority::High),
        Err(SendError::TooLarge(_))
    ));
    assert!(matches!(
        c.send(t(0), msg!(126, 3, b""), Priority::High),
        Err(SendError::Invalid(..))
    ));
    take_tx(&mut c);
    c.send(t(0), msg!(1, 3, b"c"), Priority::Normal).unwrap();
}

/// The smallest receive buffer: one maximum frame.
fn small_receive_buffer() -> Config {
    Config {
        receive_buffer: core::num::NonZeroUsize::new(9000).unwrap(),
        ..Config::default()
    }
}

/// A server with [`small_receive_buffer`], and the wire of 200 messages of 100 bytes of `fill`
/// for it: more than the buffer holds.
fn overfull(fill: u8) -> (Connection<Heap>, Vec<u8>) {
    let (mut c, s) = pair(small_receive_buffer());
    for i in 0..200 {
        c.send(t(0), msg!(1, i, &[fill; 100]), Priority::Normal)
            .unwrap();
    }
    (s, take_tx(&mut c))
}

#[test]
fn backpressure_when_events_are_not_polled() {
    let (mut s, wire) = overfull(0);
    let taken = s.handle_input(t(0), &wire);
    assert!(taken < wire.len());
    assert!(taken <= 9000);
    // Our own send backlog never stops reading.
    for _ in 0..100 {
        s.send(t(0), msg!(1, 1, &[0; 100]), Priority::Normal)
            .unwrap();
    }
    let mut events = drain(&mut s);
    let more = s.handle_input(t(0), &wire[taken..]);
    assert!(more > 0);
    feed(t(0), &mut s, &wire[taken + more..], &mut events);
    events.extend(drain(&mut s));
    assert_eq!(events.len(), 200);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e, &Ev::Message(Header::new(1, i as i32), vec![0; 100]));
    }
}

/// Writes as much of `data` as `c`'s input room holds, as a socket read would; returns how
/// much was taken.
fn write_in_place<S: Storage>(now: Instant, c: &mut Connection<S>, data: &[u8]) -> usize {
    let mut room = c.input_room();
    let n = data.len().min(room.buf().len());
    room.buf()[..n].copy_from_slice(&data[..n]);
    room.commit(now, n)
}

#[test]
fn input_written_in_place_is_taken_like_handle_input() {
    let (mut s, wire) = overfull(7);
    let mut rest = &wire[..];
    let mut events = Vec::new();
    let mut empty_rooms = 0;
    while !rest.is_empty() {
        let n = write_in_place(t(0), &mut s, rest);
        rest = &rest[n..];
        if n == 0 {
            // Backpressure: the buffer is full of events not polled yet.
            empty_rooms += 1;
            assert!(s.input_room().buf().is_empty());
            events.extend(drain(&mut s));
            assert!(!s.input_room().buf().is_empty());
        }
    }
    events.extend(drain(&mut s));
    assert!(
        empty_rooms > 0,
        "9000 bytes cannot hold {} bytes",
        wire.len()
    );
    assert_eq!(events.len(), 200);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e, &Ev::Message(Header::new(1, i as i32), vec![7; 100]));
    }
    assert_eq!(s.stats().bytes_in, wire.len() as u64);
}

#[test]
fn input_rooms_grow_with_the_traffic_and_stay_small_when_idle() {
    // A bound the traffic below is many times over.
    let config = Config {
        receive_buffer: core::num::NonZeroUsize::new(64 << 10).unwrap(),
        ..Config::default()
    };
    let bound = config.receive_buffer.get();
    let (mut c, mut s) = pair(config);
    // A ping at a time: the smallest buffer, however often.
    for i in 0..10 {
        assert_eq!(write_in_place(t(i), &mut s, &PING_FRAME), PING_FRAME.len());
        assert!(s.input_room().buf().len() <= 512);
        take_tx(&mut s);
    }
    // Reads that fill the room double it, up to the bound and never past it.
    let mut wire = Vec::new();
    for round in 0..5 {
        for i in 0..2000 {
            c.send(
                t(10),
                msg!(1, round * 2000 + i, &[1; 100]),
                Priority::Normal,
            )
            .unwrap();
        }
        wire.extend(take_tx(&mut c));
    }
    let mut rest = &wire[..];
    let mut sizes = Vec::new();
    let mut events = Vec::new();
    while !rest.is_empty() {
        sizes.push(s.input_room().buf().len());
        let n = write_in_place(t(10), &mut s, rest);
        rest = &rest[n..];
        events.extend(drain(&mut s));
    }
    assert_eq!(events.len(), 10_000);
    assert!(sizes.iter().all(|&n| n > 0 && n <= bound), "{sizes:?}");
    assert!(
        sizes.windows(2).take(6).all(|w| w[1] >= 2 * w[0] - 200),
        "{sizes:?}"
    );
    assert!(
        sizes.iter().filter(|&&n| n > bound / 2).count() > sizes.len() / 2,
        "{sizes:?}"
    );
}

#[test]
fn input_rooms_take_only_what_was_committed() {
    let (mut c, mut s) = pair(Config::default());
    c.send(t(0), msg!(1, 1, b"abc"), Priority::Normal).unwrap();
    let wire = take_tx(&mut c);
    // A room left without a commit takes nothing.
    s.input_room().buf()[..wire.len()].copy_from_slice(&wire);
    assert_eq!(s.stats().bytes_in, 0);
    assert_eq!(drain(&mut s), vec![]);
    // A count past the room is cut to it.
    let mut room = s.input_room();
    let len = room.buf().len();
    room.buf()[..wire.len()].copy_from_slice(&wire);
    room.buf()[wire.len()..].fill(0);
    assert_eq!(room.commit(t(0), usize::MAX), len);
    assert_eq!(
        drain(&mut s)[0],
        Ev::Message(Header::new(1, 1), b"abc".to_vec())
    );
    // The connecting side is connected by its first bytes, as with `handle_input`.
    let mut client: Connection<Heap> = Connection::connecting(t(0), Config::default());
    let pong = [PONG_FRAME.as_slice()].concat();
    assert_eq!(write_in_place(t(0), &mut client, &pong), pong.len());
    assert_eq!(drain(&mut client).first(), Some(&Ev::Connected));
    // The time is the commit's, when the bytes arrived: a ping lent a room at 0 s and
    // committed at 100 s pushes the silence deadline to 100 s + 120 s.
    let (_, mut s) = pair(Config::default());
    let mut room = s.input_room();
    room.buf()[..PING_FRAME.len()].copy_from_slice(&PING_FRAME);
    assert_eq!(room.commit(t(100), PING_FRAME.len()), PING_FRAME.len());
    take_tx(&mut s);
    s.handle_timeout(t(219));
    assert!(!s.is_closed());
    s.handle_timeout(t(220));
    assert_eq!(
        drain(&mut s).last(),
        Some(&Ev::Closed(CloseReason::PingTimeout))
    );
    // A closed connection takes no more input.
    s.close(t(0));
    drain(&mut s);
    assert!(s.input_room().buf().is_empty());
}

#[test]
fn close_reports_once_and_keeps_the_queue() {
    let (mut c, _) = pair(Config::default());
    assert!(c.take_outbox().is_none(), "not while open");
    c.send(t(0), msg!(1, 1, &body(20_000)), Priority::Normal)
        .unwrap();
    c.send(t(0), msg!(1, 2, b"x"), Priority::Normal).unwrap();
    let n = c.poll_transmit().unwrap().len();
    c.consume_transmit(n / 2);
    c.handle_eof(t(5));
    assert_eq!(drain(&mut c), vec![Ev::Closed(CloseReason::Eof)]);
    assert_eq!(drain(&mut c), vec![]);
    assert_eq!(c.poll_transmit(), None);
    assert!(matches!(
        c.send(t(5), msg!(1, 3, b""), Priority::Normal),
        Err(SendError::Closed(_))
    ));
    let outbox = c.take_outbox().unwrap();
    assert_eq!(outbox.len(), (0, 2));
    // A new connection sends both from the start.
    let mut c2 = Connection::with_outbox(t(6), Role::Connecting, Config::default(), outbox);
    c2.handle_connected(t(6));
    let mut s2: Connection = Connection::accepted(t(6), Config::default());
    let (_, es) = pump(t(6), &mut c2, &mut s2);
    assert_eq!(
        es,
        vec![
            Ev::Message(Header::new(1, 1), body(20_000)),
            Ev::Message(Header::new(1, 2), b"x".to_vec())
        ]
    );
}

#[test]
fn local_close_is_immediate() {
    let (mut c, mut s) = pair(Config::default());
    c.send(t(0), msg!(1, 1, b"x"), Priority::Normal).unwrap();
    pump(t(0), &mut c, &mut s);
    c.send(t(0), msg!(1, 1, b"x"), Priority::Normal).unwrap();
    let wire = take_tx(&mut c);
    s.handle_input(t(0), &wire);
    s.close(t(1));
    assert_eq!(drain(&mut s), vec![Ev::Closed(CloseReason::Local)]);
    assert!(!CloseReason::Local.should_reconnect());
}

#[test]
fn punish_to_the_ban_threshold() {
    let (_, mut s) = pair(Config::default());
    s.punish(600);
    s.punish(400);
    assert_eq!(
        drain(&mut s),
        vec![
            Ev::Misbehaved(Misbehaviour::Application, 600, 600),
            Ev::Misbehaved(Misbehaviour::Application, 400, 1000),
            Ev::Closed(CloseReason::Banned)
        ]
    );
}

#[test]
fn scores_decay() {
    let (_, mut s) = pair(Config::default());
    s.punish(500);
    s.handle_input(Instant::from_secs(3600), &PING_FRAME);
    assert_eq!(s.stats().score, 400);
    s.handle_input(Instant::from_secs(3 * 3600), &PING_FRAME);
    s.punish(1);
    assert_eq!(s.stats().score, 201);
    s.handle_input(Instant::from_secs(6 * 3600), &PING_FRAME);
    assert_eq!(s.stats().score, 0);
}

#[test]
fn every_ping_gets_a_pong_however_fast_they_come() {
    let (_, mut s) = pair(Config::default());
    // A burst in one read: its pongs go out in batches, not a write each.
    s.handle_input(t(1), &PING_FRAME.repeat(150));
    assert_eq!(s.poll_transmit().map(<[u8]>::len), Some(PONG_BATCH * 6));
    assert_eq!(take_tx(&mut s), PONG_FRAME.repeat(150));
    // A thousand a second for five seconds, each answered before the next (spec §5: no rate
    // limit on pings).
    for ms in 0..5000 {
        s.handle_input(Instant::from_millis(2000 + ms), &PING_FRAME);
        assert_eq!(take_tx(&mut s), PONG_FRAME);
    }
    assert_eq!(drain(&mut s), []);
    assert_eq!(s.stats().frames_out, 5150);
    assert!(!s.is_closed());
}

#[test]
fn pongs_written_in_any_pieces_come_out_whole() {
    let (_, mut s) = pair(Config::default());
    s.handle_input(t(1), &PING_FRAME.repeat(100));
    let mut out = Vec::new();
    // Writes of 1 to 13 bytes: pieces that end inside a pong, and some that end between.
    for n in (1..=13).cycle() {
        let Some(data) = s.poll_transmit() else { break };
        let n = n.min(data.len());
        out.extend_from_slice(&data[..n]);
        s.consume_transmit(n);
    }
    assert_eq!(out, PONG_FRAME.repeat(100));
    assert_eq!(s.stats().frames_out, 100);
    // A message queued now goes out after them, whole.
    s.send(t(2), msg!(3, 1, b"x"), Priority::Normal).unwrap();
    let tx = take_tx(&mut s);
    assert_eq!(tx[2..], [0x08, 0x03, 0x10, 0x01, 0x04, b'x']);
}

#[test]
fn one_poll_of_pongs_may_be_consumed_in_pieces() {
    // Pieces that end between two pongs, and inside one.
    for pieces in [[6, 6, 0], [6, 3, 3], [2, 4, 6], [7, 5, 0]] {
        let (_, mut s) = pair(Config::default());
        s.handle_input(t(1), &PING_FRAME.repeat(2));
        let batch = s.poll_transmit().unwrap().to_vec();
        assert_eq!(batch, PONG_FRAME.repeat(2));
        let mut at = 0;
        for n in pieces {
            s.consume_transmit(n);
            at += n;
        }
        assert_eq!(at, 12);
        assert_eq!(
            s.poll_transmit(),
            None,
            "{pieces:?}: a third pong for two pings"
        );
        assert_eq!(
            (s.stats().bytes_out, s.stats().frames_out),
            (12, 2),
            "{pieces:?}"
        );
    }
    // Ending between two pongs, then a new poll: it starts at the next pong.
    let (_, mut s) = pair(Config::default());
    s.handle_input(t(1), &PING_FRAME.repeat(2));
    s.poll_transmit();
    s.consume_transmit(6);
    s.consume_transmit(3);
    let mut wire = PONG_FRAME.to_vec();
    wire.extend_from_slice(&PONG_FRAME[..3]);
    wire.extend(take_tx(&mut s));
    assert_eq!(wire, PONG_FRAME.repeat(2));
}

#[test]
fn pings_whose_pongs_are_not_read_count_as_misbehaviour() {
    let config = Config {
        max_owed_pongs: core::num::NonZeroU32::new(5).unwrap(),
        ..Config::default()
    };
    let (_, mut s) = pair(config);
    s.handle_input(t(1), &PING_FRAME.repeat(10));
    let events = drain(&mut s);
    assert_eq!(events.len(), 5);
    assert_eq!(events[4], Ev::Misbehaved(Misbehaviour::PingFlood, 10, 50));
    assert_eq!(take_tx(&mut s), PONG_FRAME.repeat(5));
    // Once they are written, pings are answered again.
    s.handle_input(t(2), &PING_FRAME);
    assert_eq!(take_tx(&mut s), PONG_FRAME);
    assert_eq!(drain(&mut s), []);
}

#[test]
fn introduction_window() {
    let config = Config {
        introduction_timeout: Some(Duration::from_secs(4)),
        ..Config::default()
    };
    let (mut c, mut s) = pair(config);
    s.handle_timeout(t(3));
    c.send(t(3), msg!(1, 1, b""), Priority::Normal).unwrap();
    pump(t(3), &mut c, &mut s);
    assert_eq!(s.timers.get(Timer::Introduction), None);
    s.handle_timeout(t(10));
    assert!(!s.is_closed());
    let mut late = Connection::<Heap>::accepted(t(0), config);
    late.handle_input(t(1), &PING_FRAME);
    late.handle_timeout(t(4));
    assert_eq!(late.close_reason(), Some(CloseReason::IntroductionTimeout));
}

#[test]
fn idle_buffers_are_given_back() {
    let (mut c, mut s) = pair(Config::default());
    c.send(t(0), msg!(1, 1, &body(100_000)), Priority::Normal)
        .unwrap();
    pump(t(0), &mut c, &mut s);
    assert!(s.inbox.releasable() > 100_000);
    let at = s.poll_timeout().unwrap();
    assert_eq!(at, t(2));
    s.handle_timeout(at);
    assert_eq!(s.inbox.releasable(), 0);
    c.handle_timeout(c.poll_timeout().unwrap());
    assert_eq!(c.outbox.normal.releasable(), 0);
}

#[test]
fn timeouts_are_never_stale() {
    let (mut c, mut s) = pair(Config::default());
    for ms in (0..400_000).step_by(7_777) {
        let now = Instant::from_millis(ms);
        c.handle_timeout(now);
        assert!(c.poll_timeout().is_none_or(|at| at > now));
        s.handle_timeout(now);
        assert!(s.poll_timeout().is_none_or(|at| at > now));
        let _ = pump(now, &mut c, &mut s);
    }
}

#[test]
fn memory_of_one_connection() {
    // The README states these figures.
    let fixed = core::mem::size_of::<Connection<Fixed>>();
    let heap = core::mem::size_of::<Connection<Heap>>();
    std::println!("Connection<Fixed>: {fixed} bytes, Connection<Heap>: {heap} bytes + buffers");
    assert!(fixed < 24 * 1024, "{fixed}");
    assert!(heap < 2304, "{heap}");
    // A fresh heap connection holds no buffers; an idle one gives them back.
    let (mut c, mut s) = pair(Config::default());
    assert_eq!(c.heap_usage().total(), 0);
    c.send(t(0), msg!(1, 1, b"x"), Priority::Normal).unwrap();
    pump(t(0), &mut c, &mut s);
    assert!(s.heap_usage().total() > 0);
    s.handle_timeout(t(2));
    c.handle_timeout(t(2));
    assert_eq!((c.heap_usage().total(), s.heap_usage().total()), (0, 0));
}

#[test]
fn notices_merge_rather_than_vanish() {
    let (_, mut s) = pair(Config::default());
    for _ in 0..40 {
        s.punish(1);
    }
    let events = drain(&mut s);
    let total: u32 = events
        .iter()
        .map(|e| match e {
            Ev::Misbehaved(_, points, _) => *points,
            _ => 0,
        })
        .sum();
    assert_eq!(total, 40);
    assert!(matches!(
        events.last(),
        Some(&Ev::Misbehaved(Misbehaviour::Application, _, 40))
    ));
}

#[test]
fn a_new_kind_of_notice_finds_room_in_a_full_queue() {
    let (_, mut s) = pair(Config::default());
    for _ in 0..NOTICES {
        s.punish(1);
    }
    s.handle_timeout(t(150));
    let events = drain(&mut s);
    assert!(
        matches!(
            events[events.len() - 2..],
            [
                Ev::Misbehaved(Misbehaviour::Silent, 50, _),
                Ev::Closed(CloseReason::PingTimeout)
            ]
        ),
        "{events:?}"
    );
}

#[test]
fn pongs_answer_overlapping_pings_in_order() {
    let ms = Instant::from_millis;
    let config = Config {
        ping_interval: Duration::from_millis(500),
        pong_timeout: Some(Duration::from_secs(5)),
        ..Config::default()
    };
    let (mut c, _) = pair(config);
    c.handle_timeout(ms(500));
    assert_eq!(take_tx(&mut c), PING_FRAME);
    c.handle_timeout(ms(1000));
    assert_eq!(take_tx(&mut c), PING_FRAME);
    c.handle_input(ms(1100), &PONG_FRAME);
    assert_eq!(drain(&mut c), vec![Ev::Pong(Duration::from_millis(600))]);
    // The second ping keeps its own deadline.
    assert_eq!(c.timers.get(Timer::PongDeadline), Some(ms(6000)));
    c.handle_timeout(ms(1500));
    assert_eq!(take_tx(&mut c), PING_FRAME);
    c.handle_input(ms(1600), &PONG_FRAME);
    assert_eq!(drain(&mut c), vec![Ev::Pong(Duration::from_millis(600))]);
    assert_eq!(c.timers.get(Timer::PongDeadline), Some(ms(6500)));
    // The third ping is never answered (pings keep going out meanwhile).
    for at in (2000..6500).step_by(500) {
        c.handle_timeout(ms(at));
        take_tx(&mut c);
    }
    assert!(!c.is_closed());
    c.handle_timeout(ms(6500));
    assert_eq!(drain(&mut c), vec![Ev::Closed(CloseReason::PongTimeout)]);
}

#[test]
fn no_silence_points_when_our_application_held_the_input_back() {
    // The ping deadline passes: closed as a ping timeout, with no points for the peer.
    let times_out_without_points = |s: &mut Connection<Heap>| {
        s.handle_timeout(t(150));
        let events = drain(s);
        assert_eq!(events.last(), Some(&Ev::Closed(CloseReason::PingTimeout)));
        assert!(
            !events.iter().any(|e| matches!(e, Ev::Misbehaved(..))),
            "{events:?}"
        );
    };
    let (mut s, mut wire) = overfull(0);
    wire.extend_from_slice(&PING_FRAME);
    // The application never polls: the ping stays in the bytes not taken (offered, or left
    // in the socket for want of room).
    let taken = s.handle_input(t(1), &wire);
    assert!(taken < wire.len());
    times_out_without_points(&mut s);
    // The same when the input is written in place: the room ran out before the ping.
    let (mut s, mut wire) = overfull(0);
    wire.extend_from_slice(&PING_FRAME);
    let mut rest = &wire[..];
    while !rest.is_empty() {
        let n = write_in_place(t(1), &mut s, rest);
        if n == 0 {
            break;
        }
        rest = &rest[n..];
    }
    assert!(!rest.is_empty());
    times_out_without_points(&mut s);
    // The same when all the input was taken, but a ping waits behind a sequence start that
    // cannot be parsed before the application takes the sequence before it.
    let (_, mut s) = pair(Config::default());
    let one_chunk = [0x08, 0x01, 0x18, 0x01, 0x24, 0x04, b'a'];
    let mut wire = Vec::new();
    for _ in 0..2 {
        wire.extend_from_slice(&[9, 0]);
        wire.extend_from_slice(&one_chunk);
    }
    wire.extend_from_slice(&PING_FRAME);
    assert_eq!(s.handle_input(t(100), &wire), wire.len());
    times_out_without_points(&mut s);
    // A peer that is simply silent still gets the points.
    let (_, mut s) = pair(small_receive_buffer());
    s.handle_timeout(t(150));
    assert_eq!(
        drain(&mut s)[0],
        Ev::Misbehaved(Misbehaviour::Silent, 50, 50)
    );
}

#[test]
fn the_end_of_time_does_not_hang() {
    let (mut c, mut s) = pair(Config::default());
    c.handle_timeout(Instant::MAX);
    s.handle_input(Instant::MAX, &PING_FRAME);
    s.handle_timeout(Instant::MAX);
    assert!(c.poll_timeout().is_none_or(|at| at > Instant::MAX));
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn everything_received_before_eof_is_delivered() {
    let (_, mut s) = pair(Config::default());
    let mut wire = Vec::new();
    let enc = FrameEncoder::new();
    enc.encode(&Header::new(1, 1), &[7; 9000], &mut wire)
        .unwrap();
    enc.encode(&Header::new(1, 2), &[8; 9000], &mut wire)
        .unwrap();
    enc.encode(&Header::new(1, 3), b"hello", &mut wire).unwrap();
    assert_eq!(s.handle_input(t(1), &wire), wire.len());
    s.handle_eof(t(2));
    let ids: Vec<Ev> = drain(&mut s)
        .into_iter()
        .map(|e| match e {
            Ev::Message(h, b) => Ev::Message(h, b[..1].to_vec()),
            other => other,
        })
        .collect();
    assert_eq!(
        ids,
        vec![
            Ev::Message(Header::new(1, 1), vec![7]),
            Ev::Message(Header::new(1, 2), vec![8]),
            Ev::Message(Header::new(1, 3), b"h".to_vec()),
            Ev::Closed(CloseReason::Eof)
        ]
    );
}

#[test]
fn one_poll_may_be_consumed_in_pieces() {
    let (mut c, mut s) = pair(Config::default());
    c.send(t(0), msg!(1, 1, b""), Priority::Normal).unwrap();
    c.send(t(0), msg!(1, 2, b""), Priority::Normal).unwrap();
    let batch = c.poll_transmit().unwrap().to_vec();
    assert_eq!(batch.len(), 14);
    // The first call ends exactly on a frame boundary.
    c.consume_transmit(7);
    c.consume_transmit(7);
    assert_eq!(c.poll_transmit(), None);
    assert_eq!(c.stats().bytes_out, 14);
    let mut events = Vec::new();
    feed(t(0), &mut s, &batch, &mut events);
    events.extend(drain(&mut s));
    assert_eq!(events.len(), 2);
}

#[test]
fn reassembled_bodies_are_lent_without_a_copy() {
    let (mut c, mut s) = pair(Config::default());
    let mut lent = Vec::new();
    // A single frame's body stays where it is (copying it is cheap).
    c.send(t(0), msg!(1, 1, b"small"), Priority::Normal)
        .unwrap();
    s.handle_input(t(0), &take_tx(&mut c));
    assert!(matches!(s.poll_event(), Some(Event::Message(_))));
    assert_eq!(s.take_body(&mut lent), None);
    assert!(lent.is_empty());
    let mut at = Vec::new();
    for round in 0..3 {
        let b = body(20_000 + round);
        c.send(t(0), msg!(1, 2, &b), Priority::Normal).unwrap();
        s.handle_input(t(0), &take_tx(&mut c));
        let Some(Event::Message(m)) = s.poll_event() else {
            panic!("no message");
        };
        at.push(m.body.as_ptr());
        let n = s.take_body(&mut lent).unwrap();
        assert_eq!(&lent[..n], &b[..]);
        assert_eq!(lent.as_ptr(), at[round], "moved, not copied");
        // Taken once only.
        assert_eq!(s.take_body(&mut Vec::new()), None);
    }
    // Two buffers trade places, so lending allocates nothing after the first two.
    assert_eq!(at[2], at[0]);
    // A ping is no message.
    s.handle_input(t(1), &PING_FRAME);
    let _ = drain(&mut s);
    assert_eq!(s.take_body(&mut lent), None);
}

#[test]
fn fixed_storage_without_reassembly_takes_sequences_in_chunks() {
    let mut s: Connection<Fixed> = Connection::accepted(t(0), Config::default());
    let mut wire = Vec::new();
    FrameEncoder::new()
        .encode(&Header::new(1, 1), &body(8001), &mut wire)
        .unwrap();
    s.handle_input(t(1), &wire);
    let events = drain(&mut s);
    assert!(matches!(events[0], Ev::SeqStart(_, 8001)));
    assert_eq!(events.last(), Some(&Ev::SeqEnd(8001)));
    assert!(!s.is_closed());
}

#[test]
fn the_release_timer_waits_for_a_full_idle_period() {
    let (mut c, mut s) = pair(Config::default());
    c.send(t(0), msg!(1, 1, b"x"), Priority::Normal).unwrap();
    pump(t(0), &mut c, &mut s);
    assert_eq!(c.timers.get(Timer::ReleaseBuffers), Some(t(2)));
    let big = body(1 << 20);
    c.send(
        Instant::from_millis(1990),
        msg!(1, 2, &big),
        Priority::Normal,
    )
    .unwrap();
    pump(Instant::from_millis(1990), &mut c, &mut s);
    c.handle_timeout(t(2));
    assert!(c.heap_usage().normal_queue > 1 << 20, "idle for 10 ms only");
    c.handle_timeout(Instant::from_millis(3990));
    assert_eq!(c.heap_usage().normal_queue, 0);
}

/// Input is parsed only a few frames ahead of delivery, the rest as events are polled: in
/// whatever chunks the bytes come and whenever the application polls (or a timeout comes in
/// between), it sees the same events as when it takes everything at once.
#[test]
fn any_chunking_and_polling_gives_the_same_events() {
    use quickcheck::{QuickCheck, TestResult};

    fn events(config: Config, wire: &[u8], cuts: &[usize], polls: &[u8], rooms: bool) -> Vec<Ev> {
        let (_, mut s) = pair(config);
        let mut seen = Vec::new();
        let mut lent = Vec::new();
        let mut rest = wire;
        let mut i = 0;
        // A closed connection takes no more input in place: stop rather than spin.
        let stop = |rest: &[u8], s: &Connection<Heap>| rest.is_empty() || rooms && s.is_closed();
        while !stop(rest, &s) {
            let cut = cuts.get(i).map_or(rest.len(), |c| 1 + c % rest.len());
            let taken = if rooms {
                // As a socket would write it: at most the room's length.
                let mut room = s.input_room();
                let n = cut.min(room.buf().len());
                room.buf()[..n].copy_from_slice(&rest[..n]);
                room.commit(t(1), n)
            } else {
                s.handle_input(t(1), &rest[..cut])
            };
            rest = &rest[taken..];
            match polls.get(i).copied().unwrap_or(0) % 5 {
                // Not at all (unless the buffer is full), one event, all of them, a timeout,
                // or one event whose body is taken (lent where it was reassembled).
                0 if taken > 0 => {}
                1 if taken > 0 => seen.extend(s.poll_event().map(owned)),
                3 if taken > 0 => s.handle_timeout(t(1)),
                4 if taken > 0 => {
                    let event = s.poll_event().map(owned);
                    seen.extend(match (event, s.take_body(&mut lent)) {
                        (Some(Ev::Message(header, _)), Some(n)) => {
                            Some(Ev::Message(header, lent[..n].to_vec()))
                        }
                        (event, _) => event,
                    });
                }
                _ => seen.extend(drain(&mut s)),
            }
            i += 1;
        }
        seen.extend(drain(&mut s));
        seen
    }

    fn prop(
        items: Vec<(u8, u16)>,
        cuts: Vec<usize>,
        polls: Vec<u8>,
        chunks: bool,
        tail: u8,
        rooms: bool,
    ) -> TestResult {
        let config = Config {
            receive_buffer: core::num::NonZeroUsize::new(20_000).unwrap(),
            sequence_delivery: if chunks {
                SequenceDelivery::Chunks
            } else {
                SequenceDelivery::Reassemble
            },
            ..Config::default()
        };
        let encoder = FrameEncoder::with_chunk_size(1000);
        let mut wire = Vec::new();
        for (i, &(kind, len)) in items.iter().take(40).enumerate() {
            let body: Vec<u8> = (0..usize::from(len)).map(|b| b as u8).collect();
            let header = Header::new(1, i as i32);
            match kind % 5 {
                0 => wire.extend_from_slice(&PING_FRAME),
                // A sequence of several chunks.
                1 => {
                    let body = &body[..body.len().min(5000)];
                    encoder.encode(&header, body, &mut wire).unwrap();
                }
                _ => {
                    let body = &body[..body.len() % 300];
                    encoder.encode(&header, body, &mut wire).unwrap();
                }
            }
        }
        // Sometimes the stream ends in a protocol error.
        match tail % 3 {
            0 => wire.extend_from_slice(&[0x29, 0x23]),
            1 => wire.extend_from_slice(&[0x06, 0x00, 0x08, 0x01, 0x10, 0x01]),
            _ => {}
        }
        let whole = events(config, &wire, &[], &[], false);
        let pieces = events(config, &wire, &cuts, &polls, rooms);
        if whole != pieces {
            return TestResult::error(format!("at once {whole:?}\nin pieces {pieces:?}"));
        }
        TestResult::passed()
    }
    QuickCheck::new()
        .tests(300)
        .quickcheck(prop as fn(Vec<(u8, u16)>, Vec<usize>, Vec<u8>, bool, u8, bool) -> TestResult);
}

#[test]
fn written_bytes_are_walked_frame_by_frame() {
    // Three frames of 10, 20 and 30 bytes (only the length fields matter).
    let mut data = std::vec![0u8; 60];
    data[0] = 10;
    data[10] = 20;
    data[30] = 30;
    // Inside the first frame.
    assert_eq!(walk_frames(&data, 10, 4, true), (0, 6));
    // Exactly its end: the next frame follows only if more was handed out.
    assert_eq!(walk_frames(&data, 10, 10, true), (1, 20));
    assert_eq!(walk_frames(&data, 10, 10, false), (1, 0));
    // Into the third frame.
    assert_eq!(walk_frames(&data, 10, 35, true), (2, 25));
    // All of it.
    assert_eq!(walk_frames(&data, 10, 60, false), (3, 0));
    // Starting 4 bytes into the first frame.
    assert_eq!(walk_frames(&data[4..], 6, 26, true), (2, 30));
    // A zero length field (never in a queue) stops the walk instead of looping.
    assert_eq!(walk_frames(&[0u8; 8], 4, 6, true), (1, 0));
}

/// A frame of `header` (its tokens, HeaderEnd added) and `body`.
fn raw_frame(header: &[u8], body: &[u8]) -> Vec<u8> {
    let len = (2 + header.len() + 1 + body.len()) as u16;
    let mut out = len.to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.push(0x04);
    out.extend_from_slice(body);
    out
}

/// The C++ keeps any number of custom header ints. More than are kept is no offence: the
/// message, or the sequence whose first chunk carries them, is delivered with the lowest tags
/// and marked, and the connection goes on.
#[test]
fn more_header_ints_than_are_kept_are_delivered_marked() {
    let (_c, mut s) = pair(Config::default());
    // ServiceId 3, MessageId 4, then 21 custom ints: tags 10..=30, value = tag.
    let mut ints = Vec::new();
    for tag in 10..=30u8 {
        ints.extend_from_slice(&[tag << 3, tag]);
    }
    let mut header = vec![0x08, 0x03, 0x10, 0x04];
    header.extend_from_slice(&ints);
    let mut wire = raw_frame(&header, b"one");
    // A 9000-byte sequence: 8000 bytes, then 1000; the ints come in its first chunk only.
    let b = body(9000);
    let mut first = header.clone();
    first.extend_from_slice(&[0x18, 0xC5, 0x28, 0x25]);
    wire.extend(raw_frame(&first, &b[..8000]));
    wire.extend(raw_frame(&[0x08, 0x03, 0x10, 0x04, 0x24], &b[8000..]));
    let mut events = Vec::new();
    feed(t(0), &mut s, &wire, &mut events);
    events.extend(drain(&mut s));
    let mut expected = Header::new(3, 4);
    for tag in 10..26 {
        expected.ints.set(tag, tag as i32).unwrap();
    }
    let [Ev::Message(h1, b1), Ev::Message(h2, b2)] = &events[..] else {
        panic!("{events:?}");
    };
    assert_eq!(
        (h1.ints.as_slice(), &b1[..]),
        (expected.ints.as_slice(), &b"one"[..])
    );
    assert_eq!((h2.ints.as_slice(), b2), (expected.ints.as_slice(), &b));
    assert!(h1.ints.truncated() && h2.ints.truncated());
    assert_eq!(s.stats().messages_in, 2);
}

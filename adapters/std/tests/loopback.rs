//! End-to-end tests of the blocking client and server over loopback TCP: echo, large bodies,
//! concurrent requests, subscriptions, events, full queues, graceful shutdown, reconnects and
//! bans. Every wait is on a real condition with a generous timeout, never a fixed sleep.

use flowee_std::{
    Client, CloseReason, ConnId, Events, Header, Message, NodeConfig, NodeEvent, Priority, Refused,
    Request, RequestFailure, Responder, SendError, Server, reply_header,
};
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::num::NonZeroUsize;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long any condition may take to come true on a loaded machine.
const WAIT: Duration = Duration::from_secs(10);
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Replies with the request's body, on message id + 1 with the request id copied.
fn echo(req: &Request<'_>, out: &mut Responder<'_>) {
    let _ = out.reply(Message::new(
        &reply_header(req.message.header),
        req.message.body,
    ));
}

fn echo_server() -> Server {
    let server = Server::bind("127.0.0.1:0", NodeConfig::default()).unwrap();
    server.handle(3, None, echo).unwrap();
    server
}

/// The first event that matches, waiting at most `timeout` in all.
fn wait_event(
    events: &Events,
    timeout: Duration,
    mut matches: impl FnMut(&NodeEvent) -> bool,
) -> NodeEvent {
    let end = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(e) if matches(&e) => return e,
            Ok(e) => seen.push(e),
            Err(e) => panic!("no matching event ({e}); saw {seen:?}"),
        }
    }
}

/// Polls `condition` until it holds (checking a real condition, with a deadline).
fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < end, "condition not met in {timeout:?}");
        // A poll interval, not a synchronisation: the condition is checked again.
        thread::sleep(Duration::from_millis(1));
    }
}

/// A peer that accepts one connection and reads nothing until told (or until the sender is
/// dropped), then everything; the thread returns the bytes read.
fn peer_reading_when_told() -> (SocketAddr, mpsc::Sender<()>, thread::JoinHandle<usize>) {
    let raw = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = raw.local_addr().unwrap();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let reader = thread::spawn(move || {
        let (mut stream, _) = raw.accept().unwrap();
        let _ = go_rx.recv();
        let mut buf = vec![0; 64 * 1024];
        let mut total = 0usize;
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    });
    (addr, go_tx, reader)
}

/// Queues 32 MiB, more than loopback socket buffers hold, so most of it waits in the queue
/// while the peer does not read.
fn queue_32_mib(client: &Client) {
    let body = vec![0x5a; 1 << 20];
    for i in 0..32 {
        client
            .send(Message::new(&Header::new(4, i), &body), Priority::Normal)
            .unwrap();
    }
}

fn body_of(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 31 + j) as u8).collect()
}

#[test]
fn echo_small_and_one_mebibyte_messages() {
    let server = echo_server();
    let client = Client::connect(server.local_addr(), NodeConfig::default()).unwrap();

    let reply = client
        .request(Message::new(&Header::new(3, 2), b"hello"), WAIT)
        .unwrap();
    assert_eq!(reply.header.service_id, 3);
    assert_eq!(reply.header.message_id, Some(3));
    assert_eq!(&reply.body[..], b"hello");

    // 1 MiB goes out as a sequence of chunks and comes back joined.
    let big = body_of(7, 1 << 20);
    let reply = client
        .request(Message::new(&Header::new(3, 4), &big), WAIT)
        .unwrap();
    assert_eq!(reply.body.len(), big.len());
    assert!(reply.body == big);

    let stats = client.stats().unwrap();
    assert!(stats.bytes_out > 1 << 20, "{stats:?}");
    assert!(stats.bytes_in > 1 << 20, "{stats:?}");

    client.close();
    server.shutdown();
}

#[test]
fn concurrent_requests_from_many_threads_get_their_own_replies() {
    let server = echo_server();
    let client = Client::connect(server.local_addr(), NodeConfig::default()).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let client = client.clone();
            thread::spawn(move || {
                for i in 0..50 {
                    // Bodies of different sizes, some over one frame.
                    let body = body_of(t * 1000 + i, 1 + (i * 997) % 20_000);
                    let reply = client
                        .request(Message::new(&Header::new(3, 8), &body), WAIT)
                        .unwrap();
                    assert!(reply.body == body, "thread {t} request {i}: wrong reply");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    client.close();
    server.shutdown();
}

/// Writes go out from whichever thread changed the node while the socket takes them, and from
/// the writer thread once it is full; interleaved, they must never repeat or skip a byte.
#[test]
fn streams_from_many_threads_arrive_whole_and_in_order_when_sockets_fill() {
    const SENDERS: usize = 3;
    const EACH: usize = 100;
    let server = echo_server();
    let client = Client::connect(server.local_addr(), NodeConfig::default()).unwrap();
    let echoes = client.subscribe(3).unwrap();
    let body = |t: usize, i: usize| {
        let mut b = body_of(t * 1000 + i, 48 * 1024 + i);
        b[0] = t as u8;
        b[1..5].copy_from_slice(&(i as u32).to_le_bytes());
        b
    };
    let senders: Vec<_> = (0..SENDERS)
        .map(|t| {
            let client = client.clone();
            thread::spawn(move || {
                for i in 0..EACH {
                    client
                        .send(
                            Message::new(&Header::new(3, 0), &body(t, i)),
                            Priority::Normal,
                        )
                        .unwrap();
                }
            })
        })
        .collect();
    let mut next = [0usize; SENDERS];
    for _ in 0..SENDERS * EACH {
        let m = echoes.recv_timeout(WAIT).unwrap();
        let t = usize::from(m.body[0]);
        let i = u32::from_le_bytes(m.body[1..5].try_into().unwrap()) as usize;
        assert_eq!(i, next[t], "sender {t}: out of order");
        assert!(
            m.body[..] == body(t, i)[..],
            "sender {t} message {i}: wrong body"
        );
        next[t] += 1;
    }
    for s in senders {
        s.join().unwrap();
    }
    assert_eq!(echoes.lost(), 0);
    client.close();
    server.shutdown();
}

#[test]
fn requests_without_an_answer_time_out_and_closed_clients_refuse() {
    let server = echo_server();
    let client = Client::connect(server.local_addr(), NodeConfig::default()).unwrap();
    // No service 40 on the server: nobody answers.
    let started = Instant::now();
    let result = client.request(
        Message::new(&Header::new(40, 0), b""),
        Duration::from_millis(300),
    );
    assert_eq!(result.unwrap_err(), RequestFailure::Timeout);
    assert!(started.elapsed() >= Duration::from_millis(300));

    client.close();
    let result = client.request(Message::new(&Header::new(3, 0), b""), WAIT);
    assert_eq!(
        result.unwrap_err(),
        RequestFailure::NotSent(SendError::UnknownConnection(()))
    );
    assert!(matches!(
        client.send(Message::new(&Header::new(3, 0), b""), Priority::Normal),
        Err(SendError::UnknownConnection(_))
    ));
    server.shutdown();
}

#[test]
fn subscriptions_get_pushed_messages_and_end_at_close() {
    let server = echo_server();
    let events = server.events();
    let client = Client::connect(server.local_addr(), NodeConfig::default()).unwrap();
    let mut sub = client.subscribe(9).unwrap();
    let NodeEvent::Connected { id, .. } =
        wait_event(&events, WAIT, |e| matches!(e, NodeEvent::Connected { .. }))
    else {
        unreachable!()
    };

    // From another thread, through a replier, and to everyone by broadcast.
    let replier = server.replier(id);
    thread::spawn(move || {
        for i in 0..10u8 {
            replier
                .send(Message::new(&Header::new(9, 1), &[i]), Priority::Normal)
                .unwrap();
        }
    })
    .join()
    .unwrap();
    let (queued, refused) =
        server.broadcast(Message::new(&Header::new(9, 2), b"all"), Priority::Normal);
    assert_eq!((queued, refused.len()), (1, 0));

    for i in 0..10u8 {
        let m = sub.recv_timeout(WAIT).unwrap();
        assert_eq!((m.header.message_id, &m.body[..]), (Some(1), &[i][..]));
    }
    let m = sub.next().unwrap();
    assert_eq!((m.header.message_id, &m.body[..]), (Some(2), &b"all"[..]));
    assert!(sub.try_recv().is_err());
    assert_eq!(sub.lost(), 0);

    // What no subscription claims goes to `incoming`.
    let others = client.incoming();
    let replier = server.replier(id);
    replier
        .send(
            Message::new(&Header::new(10, 0), b"other"),
            Priority::Normal,
        )
        .unwrap();
    replier
        .send(Message::new(&Header::new(9, 3), b"mine"), Priority::Normal)
        .unwrap();
    let m = others.recv_timeout(WAIT).unwrap();
    assert_eq!((m.header.service_id, &m.body[..]), (10, &b"other"[..]));
    let m = sub.recv_timeout(WAIT).unwrap();
    assert_eq!((m.header.service_id, &m.body[..]), (9, &b"mine"[..]));
    assert!(others.try_recv().is_err());

    client.close();
    // The client is closed: the iterators end.
    assert!(sub.next().is_none());
    assert!(others.recv().is_none());
    server.shutdown();
}

#[test]
fn events_tell_connects_and_closes_with_their_reason() {
    let server = echo_server();
    let server_events = server.events();
    let client = Client::connect(server.local_addr(), NodeConfig::default()).unwrap();
    let client_events = client.events();
    let id = client.id();

    let NodeEvent::Connected {
        id: on_server,
        peer,
    } = wait_event(&server_events, WAIT, |e| {
        matches!(e, NodeEvent::Connected { .. })
    })
    else {
        unreachable!()
    };
    assert_eq!(peer.ip(), LOCALHOST);
    assert_eq!(server.peer(on_server), Some(peer));
    assert_eq!(server.connections(), vec![on_server]);

    client.close();
    assert_eq!(
        client_events.recv_timeout(WAIT).unwrap(),
        NodeEvent::Closed {
            id,
            reason: CloseReason::Local
        }
    );
    assert_eq!(
        client_events.recv_timeout(WAIT).unwrap(),
        NodeEvent::Removed { id, unsent: (0, 0) }
    );
    // The client's streams end with it.
    assert!(client_events.recv().is_none());

    let closed = wait_event(
        &server_events,
        WAIT,
        |e| matches!(e, NodeEvent::Closed { id, .. } if *id == on_server),
    );
    assert_eq!(
        closed,
        NodeEvent::Closed {
            id: on_server,
            reason: CloseReason::Eof
        }
    );
    assert_eq!(server_events.lost(), 0);
    server.shutdown();
    // What is left is finite: the stream ends with the server.
    let rest: Vec<NodeEvent> = server_events.collect();
    assert!(rest.contains(&NodeEvent::Removed {
        id: on_server,
        unsent: (0, 0)
    }));
}

#[test]
fn a_full_queue_gives_the_message_back() {
    // A peer that accepts and does not read until told: the socket buffers fill, then the
    // one-message queue.
    let (addr, go_tx, reader) = peer_reading_when_told();
    let mut config = NodeConfig::default();
    config.connection.normal_queue_len = NonZeroUsize::new(1).unwrap();
    let client = Client::connect(addr, config).unwrap();
    let body = vec![0x5a; 64 * 1024];
    let end = Instant::now() + WAIT;
    let mut accepted = 0usize;
    loop {
        assert!(Instant::now() < end, "the queue never filled");
        let header = Header::new(4, accepted as i32);
        match client.send(Message::new(&header, &body), Priority::Normal) {
            Ok(()) => accepted += 1,
            Err(SendError::QueueFull(m)) => {
                // The very message comes back, body not copied.
                assert_eq!(*m.header, header);
                assert!(std::ptr::eq(m.body, &body[..]));
                break;
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
        thread::yield_now();
    }
    assert!(accepted >= 1);

    // Once the peer reads, the queue drains and takes messages again.
    go_tx.send(()).unwrap();
    wait_until(WAIT, || {
        client
            .send(
                Message::new(&Header::new(4, -1), b"again"),
                Priority::Normal,
            )
            .is_ok()
    });
    client.close();
    let total = reader.join().unwrap();
    assert!(
        total >= accepted * body.len(),
        "{total} < {accepted} × 64 KiB"
    );
}

#[test]
fn drain_to_waits_until_the_peer_has_read() {
    let (addr, go_tx, reader) = peer_reading_when_told();
    let client = Client::connect(addr, NodeConfig::default()).unwrap();
    queue_32_mib(&client);
    let queued = client.stats().unwrap().queued_bytes;
    assert!(queued > 0);
    // Already at or below the mark: true at once, whatever the timeout.
    assert!(client.drain_to(queued, Duration::ZERO));
    // The peer reads nothing yet, so the queue cannot empty: the wait times out.
    assert!(!client.drain_to(0, Duration::from_millis(1)));
    go_tx.send(()).unwrap();
    assert!(client.drain_to(0, WAIT), "the queue never drained");
    assert_eq!(client.stats().unwrap().queued_bytes, 0);
    client.close();
    assert!(reader.join().unwrap() >= 32 << 20);
}

#[test]
fn drain_to_returns_when_the_client_closes() {
    let (addr, go_tx, reader) = peer_reading_when_told();
    let client = Client::connect(addr, NodeConfig::default()).unwrap();
    queue_32_mib(&client);
    let waiting = thread::spawn({
        let client = client.clone();
        move || client.drain_to(0, WAIT * 3)
    });
    // The peer never reads: the close gives up on the queue after its grace time, and the
    // wait ends with it (true: not a timeout).
    client.close();
    assert!(waiting.join().unwrap());
    // What the peer finally reads is what the sockets held: the queue never drained.
    drop(go_tx);
    assert!(reader.join().unwrap() < 32 << 20);
}

#[test]
fn drain_to_waits_while_reconnecting_and_ends_at_close() {
    // A peer that accepts once, then goes away for good.
    let raw = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = raw.local_addr().unwrap();
    let client = Client::connect(addr, NodeConfig::default()).unwrap();
    let events = client.events();
    // The listener goes first, so no reconnect can slip into its backlog.
    let (stream, _) = raw.accept().unwrap();
    drop(raw);
    drop(stream);
    // A failed connect after the drop: the next try is seconds away, no thread runs.
    wait_event(
        &events,
        WAIT,
        |e| matches!(e, NodeEvent::Reconnecting { attempt, .. } if *attempt >= 2),
    );
    client
        .send(Message::new(&Header::new(4, 1), b"later"), Priority::Normal)
        .unwrap();
    // What is queued waits for a connection that never comes.
    assert!(!client.drain_to(0, Duration::from_millis(1)));
    // No connection thread ends here: the close itself must end the wait (true: not a
    // timeout). The close comes a moment after the wait began (if it came first, the wait
    // would end at once and prove nothing).
    let closer = thread::spawn({
        let client = client.clone();
        move || {
            thread::sleep(Duration::from_millis(200));
            client.close();
        }
    });
    let waited = Instant::now();
    assert!(client.drain_to(0, WAIT * 3));
    assert!(waited.elapsed() < WAIT, "only the timeout ended the wait");
    closer.join().unwrap();
}

#[test]
fn shutdown_writes_what_is_queued_first() {
    let server = echo_server();
    let events = server.events();
    let client = Client::connect(server.local_addr(), NodeConfig::default()).unwrap();
    let client_events = client.events();
    let sub = client.subscribe(9).unwrap();
    let NodeEvent::Connected { id, .. } =
        wait_event(&events, WAIT, |e| matches!(e, NodeEvent::Connected { .. }))
    else {
        unreachable!()
    };
    let replier = server.replier(id);
    const COUNT: usize = 300;
    for i in 0..COUNT {
        let body = body_of(i, 16 * 1024);
        replier
            .send(
                Message::new(&Header::new(9, i as i32), &body),
                Priority::Normal,
            )
            .unwrap();
    }
    // About 5 MB queued; shutdown writes it all before closing.
    server.shutdown();
    for i in 0..COUNT {
        let m = sub.recv_timeout(WAIT).unwrap();
        assert_eq!(m.header.message_id, Some(i as i32));
        assert!(m.body == body_of(i, 16 * 1024), "message {i} damaged");
    }
    wait_event(&client_events, WAIT, |e| {
        matches!(
            e,
            NodeEvent::Closed {
                reason: CloseReason::Eof,
                ..
            }
        )
    });
    assert_eq!(sub.lost(), 0);
    client.close();
}

/// A message sent right after the server closed, before the client has read the close, is not
/// written to the closed socket (TCP would take it and lose it), neither at once nor by the
/// writer thread: it goes out after the reconnect.
#[test]
fn a_message_sent_just_after_the_server_closed_goes_out_after_the_reconnect() {
    let server = echo_server();
    let addr = server.local_addr();
    let config = NodeConfig {
        // The drop counts as healthy, so the one reconnect comes after this delay, by which
        // time the new server listens.
        reconnect_after_drop: Duration::from_millis(500),
        stable_after: Duration::ZERO,
        ..NodeConfig::default()
    };
    let client = Client::connect(addr, config).unwrap();
    client
        .request(Message::new(&Header::new(3, 0), b"up"), WAIT)
        .unwrap();
    // Over loopback, the close has reached the client's socket when this returns.
    server.shutdown();
    drop(server);
    client
        .send(Message::new(&Header::new(5, 1), b"after"), Priority::Normal)
        .unwrap();
    let server = Server::bind(addr, NodeConfig::default()).unwrap();
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    server
        .handle(5, None, move |req: &Request<'_>, _: &mut Responder<'_>| {
            let _ = tx.lock().unwrap().send(req.to_owned());
        })
        .unwrap();
    let got = rx
        .recv_timeout(WAIT)
        .expect("the message after the reconnect");
    assert_eq!(&got.body[..], b"after");
    client.close();
    server.shutdown();
}

#[test]
fn reconnects_after_the_server_restarts_and_delivers_what_was_queued() {
    let server = echo_server();
    let addr = server.local_addr();
    let client = Client::connect(addr, NodeConfig::default()).unwrap();
    let events = client.events();
    let id = client.id();
    // A reply makes the connection count as healthy (reconnect at once after a drop).
    client
        .request(Message::new(&Header::new(3, 0), b"up"), WAIT)
        .unwrap();

    server.shutdown();
    drop(server);
    wait_event(
        &events,
        WAIT,
        |e| matches!(e, NodeEvent::Closed { id: c, reason: CloseReason::Eof } if *c == id),
    );
    wait_event(
        &events,
        WAIT,
        |e| matches!(e, NodeEvent::Reconnecting { id: c, .. } if *c == id),
    );

    // Queued while no server listens.
    const COUNT: usize = 20;
    for i in 0..COUNT {
        client
            .send(
                Message::new(&Header::new(5, i as i32), &body_of(i, 100)),
                Priority::Normal,
            )
            .unwrap();
    }

    let server = Server::bind(addr, NodeConfig::default()).unwrap();
    server.handle(3, None, echo).unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let sink = received.clone();
    server
        .handle(5, None, move |req: &Request<'_>, _: &mut Responder<'_>| {
            let mut got = sink.lock().unwrap();
            got.push(req.to_owned());
            if got.len() == COUNT {
                let _ = tx.send(());
            }
        })
        .unwrap();
    // Failed connects back off 0, 4, 13 s: allow for a few of them.
    rx.recv_timeout(Duration::from_secs(40)).unwrap();
    let got = received.lock().unwrap();
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.header.message_id, Some(i as i32));
        assert!(m.body == body_of(i, 100));
    }
    drop(got);
    wait_event(
        &events,
        WAIT,
        |e| matches!(e, NodeEvent::Connected { id: c, .. } if *c == id),
    );
    assert_eq!(client.id(), id);
    // The same client works as before.
    let reply = client
        .request(Message::new(&Header::new(3, 0), b"again"), WAIT)
        .unwrap();
    assert_eq!(&reply.body[..], b"again");
    client.close();
    server.shutdown();
}

#[test]
fn banned_addresses_are_closed_and_refused_at_accept() {
    let server = echo_server();
    let events = server.events();
    let first = Client::connect(server.local_addr(), NodeConfig::default()).unwrap();
    let first_events = first.events();
    let NodeEvent::Connected { id: on_server, .. } =
        wait_event(&events, WAIT, |e| matches!(e, NodeEvent::Connected { .. }))
    else {
        unreachable!()
    };

    server.ban(LOCALHOST);
    wait_event(&events, WAIT, |e| *e == NodeEvent::Banned { ip: LOCALHOST });
    // The connection from the banned address closes.
    wait_event(&events, WAIT, |e| {
        *e == NodeEvent::Closed {
            id: on_server,
            reason: CloseReason::Banned,
        }
    });
    wait_event(&first_events, WAIT, |e| {
        matches!(
            e,
            NodeEvent::Closed {
                reason: CloseReason::Eof,
                ..
            }
        )
    });
    let bans = server.export_bans(1_000_000);
    assert_eq!(bans.len(), 1);
    assert_eq!(bans[0].ip, LOCALHOST);
    first.close();

    // A new connection is refused at accept. The TCP connect itself may succeed (the
    // kernel completes it before the server sees it), so the refusal shows in the events.
    let second = Client::connect(server.local_addr(), NodeConfig::default());
    let refused = wait_event(&events, WAIT, |e| matches!(e, NodeEvent::Refused { .. }));
    let NodeEvent::Refused { peer, reason } = refused else {
        unreachable!()
    };
    assert_eq!(peer.ip(), LOCALHOST);
    assert!(matches!(reason, Refused::Banned { .. }), "{reason:?}");
    if let Ok(second) = second {
        second.close();
    }
    assert!(server.connections().is_empty());

    // After an unban, connections are welcome again.
    server.unban(LOCALHOST);
    wait_event(&events, WAIT, |e| {
        *e == NodeEvent::Unbanned { ip: LOCALHOST }
    });
    let third = Client::connect(server.local_addr(), NodeConfig::default()).unwrap();
    let reply = third
        .request(Message::new(&Header::new(3, 0), b"ok"), WAIT)
        .unwrap();
    assert_eq!(&reply.body[..], b"ok");
    third.close();
    server.shutdown();
}

#[test]
fn ids_stay_distinct_across_clients() {
    let server = echo_server();
    let a = Client::connect(server.local_addr(), NodeConfig::default()).unwrap();
    let b = Client::connect(server.local_addr(), NodeConfig::default()).unwrap();
    wait_until(WAIT, || server.connections().len() == 2);
    let ids: Vec<ConnId> = server.connections();
    assert_ne!(ids[0], ids[1]);
    drop(a);
    wait_until(WAIT, || server.connections().len() == 1);
    b.close();
    server.shutdown();
}

/// A broadcast to more peers than one settle writes to at once: the first are written by the
/// broadcasting thread, the writers of the rest are woken, and every peer gets it.
#[test]
fn a_broadcast_to_many_peers_reaches_every_one() {
    const PEERS: usize = 80;
    let server = echo_server();
    let events = server.events();
    let clients: Vec<Client> = (0..PEERS)
        .map(|_| Client::connect(server.local_addr(), NodeConfig::default()).unwrap())
        .collect();
    let subs: Vec<_> = clients.iter().map(|c| c.subscribe(9).unwrap()).collect();
    for _ in 0..PEERS {
        wait_event(&events, WAIT, |e| matches!(e, NodeEvent::Connected { .. }));
    }
    let (queued, refused) = server.broadcast(
        Message::new(&Header::new(9, 1), b"to all"),
        Priority::Normal,
    );
    assert_eq!((queued, refused.len()), (PEERS, 0));
    for (i, sub) in subs.iter().enumerate() {
        let m = sub
            .recv_timeout(WAIT)
            .unwrap_or_else(|e| panic!("peer {i}: {e}"));
        assert_eq!(&m.body[..], b"to all");
    }
    for c in &clients {
        c.close();
    }
    server.shutdown();
}

/// A service that panics is reported as an event; the server goes on serving, on the same
/// connection, and still shuts down.
#[test]
fn a_panicking_service_is_reported_and_the_server_goes_on() {
    let server = Server::bind("127.0.0.1:0", NodeConfig::default()).unwrap();
    server
        .handle(3, None, |req: &Request<'_>, out: &mut Responder<'_>| {
            if req.message.header.message_id == Some(2) {
                panic!("a bug in a service (expected by this test)");
            }
            echo(req, out);
        })
        .unwrap();
    let events = server.events();
    let client = Client::connect(server.local_addr(), NodeConfig::default()).unwrap();
    client
        .send(Message::new(&Header::new(3, 2), b"boom"), Priority::Normal)
        .unwrap();
    let e = wait_event(&events, WAIT, |e| {
        matches!(e, NodeEvent::ServicePanicked { .. })
    });
    assert!(
        matches!(
            e,
            NodeEvent::ServicePanicked {
                service: 3,
                message: Some(2),
                ..
            }
        ),
        "{e:?}"
    );
    let reply = client
        .request(Message::new(&Header::new(3, 4), b"still here"), WAIT)
        .unwrap();
    assert_eq!(&reply.body[..], b"still here");
    client.close();
    server.shutdown();
}

/// Streams opened after the client closed end at once, and waits may be as long as they like
/// (`Duration::MAX` was once a panic, adding to it).
#[test]
fn streams_opened_after_close_end_and_waits_may_be_endless() {
    let server = echo_server();
    let client = Client::connect(server.local_addr(), NodeConfig::default()).unwrap();
    client
        .send(Message::new(&Header::new(3, 2), b"x"), Priority::Normal)
        .unwrap();
    assert!(client.drain_to(0, Duration::MAX));
    let reply = client
        .request(Message::new(&Header::new(3, 2), b"y"), Duration::MAX)
        .unwrap();
    assert_eq!(&reply.body[..], b"y");
    client.close();
    assert!(client.subscribe(9).unwrap().recv().is_none());
    assert!(client.incoming().recv().is_none());
    assert!(client.events().recv().is_none());
    server.shutdown();
}

//! Shutdown, drop, full queues and failed connects, over loopback TCP (the std adapter's
//! `loopback.rs` has the same tests). Every wait is on a real condition with a generous
//! timeout, never a fixed sleep.

use flowee_smol::{
    Client, CloseReason, Events, Header, Message, NodeConfig, NodeEvent, Priority, Request,
    Responder, SendError, Server, reply_header,
};
use smol::future::FutureExt;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::num::NonZeroUsize;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

mod common;

/// How long any condition may take to come true on a loaded machine.
const WAIT: Duration = Duration::from_secs(10);

fn echo(req: &Request<'_>, out: &mut Responder<'_>) {
    let _ = out.reply(Message::new(
        &reply_header(req.message.header),
        req.message.body,
    ));
}

/// A new client's request to service 3 at `addr` comes back as `body`.
async fn assert_echoes(addr: SocketAddr, body: &[u8]) {
    let client = Client::connect(addr, NodeConfig::default()).await.unwrap();
    let reply = client
        .request(Message::new(&Header::new(3, 2), body), WAIT)
        .await
        .unwrap();
    assert_eq!(&reply.body[..], body);
    client.close().await;
}

fn body_of(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 31 + j) as u8).collect()
}

/// `f`, or a panic naming `what` if it takes longer than [`WAIT`].
async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    f.or(async {
        smol::Timer::after(WAIT).await;
        panic!("{what}: not done in {WAIT:?}")
    })
    .await
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

/// The first event that matches.
async fn wait_event(events: &mut Events, matches: impl Fn(&NodeEvent) -> bool) -> NodeEvent {
    within("waiting for an event", async {
        loop {
            let e = events.next().await.expect("the event stream ended");
            if matches(&e) {
                return e;
            }
        }
    })
    .await
}

#[test]
fn the_port_is_free_as_soon_as_shutdown_returns() {
    smol::block_on(async {
        let first = Server::bind("127.0.0.1:0", NodeConfig::default())
            .await
            .unwrap();
        let addr = first.local_addr();
        first.shutdown().await;
        drop(first);
        for round in 0..200 {
            // Shut down right after bind (before the accept task has run, most likely), or
            // with connections arriving meanwhile: either way the port must be free after.
            let server = Server::bind(addr, NodeConfig::default())
                .await
                .unwrap_or_else(|e| panic!("round {round}: bind {addr}: {e}"));
            let peers: Vec<TcpStream> = (0..round % 3)
                .filter_map(|_| TcpStream::connect(addr).ok())
                .collect();
            within("shutdown", server.shutdown()).await;
            drop(peers);
            // Dropping after the shutdown changes nothing.
            drop(server);
        }
        // Still usable as a server after all that.
        let server = Server::bind(addr, NodeConfig::default()).await.unwrap();
        server.handle(3, None, echo).unwrap();
        assert_echoes(addr, b"up").await;
        server.shutdown().await;
    });
}

#[test]
fn a_server_dropped_right_after_bind_lets_go_of_its_port() {
    smol::block_on(async {
        for _ in 0..50 {
            let server = Server::bind("127.0.0.1:0", NodeConfig::default())
                .await
                .unwrap();
            let addr = server.local_addr();
            drop(server);
            // The drop shuts down in the background: the port comes free soon after.
            let end = Instant::now() + WAIT;
            loop {
                match TcpListener::bind(addr) {
                    Ok(_) => break,
                    Err(e) => assert!(Instant::now() < end, "{addr} still taken: {e}"),
                }
                smol::Timer::after(Duration::from_millis(1)).await;
            }
        }
    });
}

#[test]
fn shutdown_writes_what_is_queued_first() {
    smol::block_on(async {
        let server = common::server_for_3(echo).await;
        let mut events = server.events();
        let client = Client::connect(server.local_addr(), NodeConfig::default())
            .await
            .unwrap();
        let mut client_events = client.events();
        let mut sub = client.subscribe(9).unwrap();
        let NodeEvent::Connected { id, .. } =
            wait_event(&mut events, |e| matches!(e, NodeEvent::Connected { .. })).await
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
        within("shutdown", server.shutdown()).await;
        for i in 0..COUNT {
            let m = within("a queued message", sub.next())
                .await
                .unwrap_or_else(|| panic!("the stream ended before message {i}"));
            assert_eq!(m.header.message_id, Some(i as i32));
            assert!(m.body == body_of(i, 16 * 1024), "message {i} damaged");
        }
        wait_event(&mut client_events, |e| {
            matches!(
                e,
                NodeEvent::Closed {
                    reason: CloseReason::Eof,
                    ..
                }
            )
        })
        .await;
        assert_eq!(sub.lost(), 0);
        client.close().await;
    });
}

#[test]
fn dropping_a_client_writes_what_is_queued_first() {
    // A peer that accepts and does not read until told, so the queue is still full when
    // the client is dropped.
    let (addr, go_tx, reader) = peer_reading_when_told();
    const COUNT: usize = 300;
    const LEN: usize = 16 * 1024;
    smol::block_on(async {
        let client = Client::connect(addr, NodeConfig::default()).await.unwrap();
        for i in 0..COUNT {
            client
                .send(
                    Message::new(&Header::new(9, i as i32), &body_of(i, LEN)),
                    Priority::Normal,
                )
                .unwrap();
        }
        assert!(client.stats().unwrap().queued_bytes > 0);
        // About 5 MB queued; the drop writes it in the background, as the std client does.
        drop(client);
        // Time for a drop that threw the queue away to have done so.
        smol::Timer::after(Duration::from_millis(200)).await;
    });
    go_tx.send(()).unwrap();
    let total = reader.join().unwrap();
    assert!(total >= COUNT * LEN, "{total} < {COUNT} × 16 KiB");
}

#[test]
fn a_full_queue_gives_the_message_back() {
    // A peer that accepts and does not read until told: the socket buffers fill, then the
    // one-message queue.
    let (addr, go_tx, reader) = peer_reading_when_told();

    smol::block_on(async {
        let mut config = NodeConfig::default();
        config.connection.normal_queue_len = NonZeroUsize::new(1).unwrap();
        let client = Client::connect(addr, config).await.unwrap();
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
            smol::future::yield_now().await;
        }
        assert!(accepted >= 1);

        // Once the peer reads, the queue drains and takes messages again.
        go_tx.send(()).unwrap();
        let end = Instant::now() + WAIT;
        while client
            .send(
                Message::new(&Header::new(4, -1), b"again"),
                Priority::Normal,
            )
            .is_err()
        {
            assert!(Instant::now() < end, "the queue never drained");
            // A poll interval, not a synchronisation: the send is tried again.
            smol::Timer::after(Duration::from_millis(1)).await;
        }
        client.close().await;
        let total = reader.join().unwrap();
        assert!(
            total >= accepted * body.len(),
            "{total} < {accepted} × 64 KiB"
        );
    });
}

#[test]
fn a_failed_connect_keeps_its_io_error() {
    // A port nobody listens on (bound, then let go).
    let addr: SocketAddr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let e = smol::block_on(Client::connect(addr, NodeConfig::default()))
        .err()
        .expect("nothing listens");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    // The operating system's own error, not a summary of it.
    assert!(e.raw_os_error().is_some(), "{e:?}");
}

#[test]
fn drain_to_waits_until_the_peer_has_read() {
    let (addr, go_tx, reader) = peer_reading_when_told();
    smol::block_on(async {
        let client = Client::connect(addr, NodeConfig::default()).await.unwrap();
        queue_32_mib(&client);
        let queued = client.stats().unwrap().queued_bytes;
        assert!(queued > 0);
        // Already at or below the mark: no wait.
        assert!(
            smol::future::poll_once(client.drain_to(queued))
                .await
                .is_some()
        );
        // The peer reads nothing yet, so the queue cannot empty.
        assert!(smol::future::poll_once(client.drain_to(0)).await.is_none());
        go_tx.send(()).unwrap();
        within("the queue drains", client.drain_to(0)).await;
        assert_eq!(client.stats().unwrap().queued_bytes, 0);
        client.close().await;
    });
    assert!(reader.join().unwrap() >= 32 << 20);
}

#[test]
fn drain_to_returns_when_the_client_closes() {
    let (addr, go_tx, reader) = peer_reading_when_told();
    smol::block_on(async {
        let client = Client::connect(addr, NodeConfig::default()).await.unwrap();
        queue_32_mib(&client);
        let waiting = smol::spawn({
            let client = client.clone();
            async move { client.drain_to(0).await }
        });
        // The peer never reads: the close gives up on the queue after its grace time, and the
        // wait ends with it.
        within("the close", client.close()).await;
        within("drain_to after the close", waiting).await;
    });
    // What the peer finally reads is what the sockets held: the queue never drained.
    drop(go_tx);
    assert!(reader.join().unwrap() < 32 << 20);
}

/// A message sent right after the server closed, before the client has read the close, is not
/// written to the closed socket (TCP would take it and lose it): it goes out after the
/// reconnect.
#[test]
fn a_message_sent_just_after_the_server_closed_goes_out_after_the_reconnect() {
    smol::block_on(async {
        let server = common::server_for_3(echo).await;
        let addr = server.local_addr();
        let config = NodeConfig {
            // The drop counts as healthy, so the one reconnect comes after this delay, by
            // which time the new server listens.
            reconnect_after_drop: Duration::from_millis(500),
            stable_after: Duration::ZERO,
            ..NodeConfig::default()
        };
        let client = Client::connect(addr, config).await.unwrap();
        client
            .request(Message::new(&Header::new(3, 0), b"up"), WAIT)
            .await
            .unwrap();
        // Over loopback, the close has reached the client's socket when this returns.
        server.shutdown().await;
        client
            .send(Message::new(&Header::new(5, 1), b"after"), Priority::Normal)
            .unwrap();
        let server = Server::bind(addr, NodeConfig::default()).await.unwrap();
        let (tx, rx) = smol::channel::bounded(1);
        server
            .handle(5, None, move |req: &Request<'_>, _: &mut Responder<'_>| {
                let _ = tx.try_send(req.to_owned());
            })
            .unwrap();
        let got = within("the message after the reconnect", rx.recv())
            .await
            .unwrap();
        assert_eq!(&got.body[..], b"after");
        client.close().await;
        server.shutdown().await;
    });
}

#[test]
fn drain_to_waits_while_reconnecting_and_ends_at_close() {
    // A peer that accepts once, then goes away for good.
    let raw = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = raw.local_addr().unwrap();
    smol::block_on(async {
        let client = Client::connect(addr, NodeConfig::default()).await.unwrap();
        let mut events = client.events();
        // The listener goes first, so no reconnect can slip into its backlog.
        let (stream, _) = raw.accept().unwrap();
        drop(raw);
        drop(stream);
        // A failed connect after the drop: the next try is seconds away, no task runs.
        wait_event(
            &mut events,
            |e| matches!(e, NodeEvent::Reconnecting { attempt, .. } if *attempt >= 2),
        )
        .await;
        client
            .send(Message::new(&Header::new(4, 1), b"later"), Priority::Normal)
            .unwrap();
        // What is queued waits for a connection that never comes.
        let mut drained = std::pin::pin!(client.drain_to(0));
        assert!(smol::future::poll_once(&mut drained).await.is_none());
        // No connection task ends here: the close itself must end the wait.
        within(
            "the close, and drain_to after it",
            smol::future::zip(client.close(), drained),
        )
        .await;
    });
}

/// A peer that breaks the protocol and keeps sending is cut off: its socket is closed (so the
/// flood fails rather than filling anything), and the server goes on serving others.
#[test]
fn a_broken_peer_that_keeps_sending_is_cut_off() {
    smol::block_on(async {
        let server = common::server_for_3(echo).await;
        let addr = server.local_addr();
        let (done_tx, done_rx) = mpsc::channel();
        thread::spawn(move || {
            let mut peer = TcpStream::connect(addr).unwrap();
            let mut writer = peer.try_clone().unwrap();
            // A plausible frame length, then not a header; then a flood.
            let mut garbage = vec![0x40, 0x00];
            garbage.extend((0..62u8).map(|i| i.wrapping_mul(97) | 0x80));
            let flood = thread::spawn(move || {
                let _ = std::io::Write::write_all(&mut writer, &garbage);
                let chunk = vec![0x55u8; 64 * 1024];
                for _ in 0..1024 {
                    if std::io::Write::write_all(&mut writer, &chunk).is_err() {
                        return true;
                    }
                }
                false
            });
            peer.set_read_timeout(Some(WAIT)).unwrap();
            let mut buf = [0u8; 4096];
            // EOF or a reset: the server closed the socket.
            let closed = loop {
                match peer.read(&mut buf) {
                    Ok(0) | Err(_) => break true,
                    Ok(_) => {}
                }
            };
            let _ = done_tx.send((closed, flood.join().unwrap()));
        });
        let (closed, flood_cut) = smol::unblock(move || done_rx.recv_timeout(2 * WAIT))
            .await
            .expect("the peer thread finished");
        assert!(closed, "the server never closed the broken peer's socket");
        assert!(flood_cut, "64 MiB were written to a closed connection");
        assert_echoes(addr, b"still here").await;
        server.shutdown().await;
    });
}

/// A service that panics is reported as an event; the server goes on serving, on the same
/// connection, and still shuts down (a panic once left a task uncounted, so shutdown waited
/// for ever).
#[test]
fn a_panicking_service_is_reported_and_the_server_goes_on() {
    smol::block_on(async {
        let server = Server::bind("127.0.0.1:0", NodeConfig::default())
            .await
            .unwrap();
        server
            .handle(3, None, |req: &Request<'_>, out: &mut Responder<'_>| {
                if req.message.header.message_id == Some(2) {
                    panic!("a bug in a service (expected by this test)");
                }
                echo(req, out);
            })
            .unwrap();
        let mut events = server.events();
        let client = Client::connect(server.local_addr(), NodeConfig::default())
            .await
            .unwrap();
        client
            .send(Message::new(&Header::new(3, 2), b"boom"), Priority::Normal)
            .unwrap();
        let e = wait_event(&mut events, |e| {
            matches!(e, NodeEvent::ServicePanicked { .. })
        })
        .await;
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
            .await
            .unwrap();
        assert_eq!(&reply.body[..], b"still here");
        client.close().await;
        within("the shutdown", server.shutdown()).await;
    });
}

/// Streams opened after the client closed end at once (they used to wait for ever).
#[test]
fn streams_opened_after_close_end_at_once() {
    smol::block_on(async {
        let server = Server::bind("127.0.0.1:0", NodeConfig::default())
            .await
            .unwrap();
        let client = Client::connect(server.local_addr(), NodeConfig::default())
            .await
            .unwrap();
        client.close().await;
        let mut sub = client.subscribe(9).unwrap();
        let mut others = client.incoming();
        let mut events = client.events();
        assert!(within("the subscription", sub.next()).await.is_none());
        assert!(within("incoming", others.next()).await.is_none());
        assert!(within("the events", events.next()).await.is_none());
        server.shutdown().await;
    });
}

/// A request may wait as long as it likes: `Duration::MAX` is a timeout too (once a panic,
/// adding to it).
#[test]
fn a_request_may_wait_for_ever() {
    smol::block_on(async {
        let server = Server::bind("127.0.0.1:0", NodeConfig::default())
            .await
            .unwrap();
        server.handle(3, None, echo).unwrap();
        let client = Client::connect(server.local_addr(), NodeConfig::default())
            .await
            .unwrap();
        let reply = within(
            "the reply",
            client.request(Message::new(&Header::new(3, 2), b"x"), Duration::MAX),
        )
        .await
        .unwrap();
        assert_eq!(&reply.body[..], b"x");
        client.close().await;
        server.shutdown().await;
    });
}

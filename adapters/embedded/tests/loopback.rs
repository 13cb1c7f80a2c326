//! The embedded client over a real loopback socket (smol's, through `embedded-io-adapters`)
//! against the `flowee-smol` server: messages both ways, a 1 MiB reply in chunks, requests,
//! keepalive, a server restart with queued messages, and a ban at accept.

use embedded_io_adapters::futures_03::FromFutures;
use flowee_embedded::{
    Client, Clock, CloseReason, Config, Error, Event, Fixed, Header, Instant, Message, Priority,
};
use flowee_proto::Connection;
use flowee_smol::{NodeConfig, NodeEvent, Request, Responder, Server, reply_header};
use smol::Async;
use smol::future::FutureExt;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long any condition may take to come true on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(10);

/// The host's monotonic clock, in milliseconds since the test started.
struct HostClock(std::time::Instant);

impl Clock for HostClock {
    fn now(&self) -> Instant {
        Instant::from_millis(self.0.elapsed().as_millis() as u64)
    }

    async fn sleep_until(&self, at: Instant) {
        smol::Timer::at(self.0 + Duration::from_millis(at.as_millis())).await;
    }
}

type Socket = FromFutures<Async<TcpStream>>;
type TestClient = Client<Socket, HostClock>;

async fn open(addr: SocketAddr) -> Socket {
    let stream = Async::<TcpStream>::connect(addr).await.expect("connect");
    stream.get_ref().set_nodelay(true).expect("nodelay");
    FromFutures::new(stream)
}

async fn client(addr: SocketAddr, config: Config) -> TestClient {
    Client::new(
        open(addr).await,
        HostClock(std::time::Instant::now()),
        config,
    )
}

/// The next event, within [`PATIENCE`].
async fn next(client: &mut TestClient) -> Event<'_> {
    let deadline = client.clock().now() + PATIENCE;
    match client.next_before(deadline).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("no event within {PATIENCE:?}"),
        Err(e) => panic!("client error: {e}"),
    }
}

/// Awaits `f`, failing the test after [`PATIENCE`].
async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    f.or(async {
        smol::Timer::after(PATIENCE).await;
        panic!("{what}: not within {PATIENCE:?}")
    })
    .await
}

/// A server whose service 3 answers each request with its body, keeping the request id.
async fn echo_server(config: NodeConfig) -> Server {
    let server = Server::bind("127.0.0.1:0", config).await.expect("bind");
    server
        .handle(3, None, |req: &Request<'_>, out: &mut Responder<'_>| {
            let reply = reply_header(req.message.header);
            let _ = out.reply(Message::new(&reply, req.message.body));
        })
        .expect("handle");
    server
}

/// A server that forwards every message of service 5 into a channel.
async fn sink_server(addr: &str) -> std::io::Result<(Server, smol::channel::Receiver<Vec<u8>>)> {
    let server = Server::bind(addr, NodeConfig::default()).await?;
    let (tx, rx) = smol::channel::unbounded();
    server
        .handle(5, None, move |req: &Request<'_>, _: &mut Responder<'_>| {
            let _ = tx.try_send(req.message.body.to_vec());
        })
        .expect("handle");
    Ok((server, rx))
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn small_messages_both_ways() {
    smol::block_on(async {
        let server = echo_server(NodeConfig::default()).await;
        let mut events = server.events();
        let mut client = client(server.local_addr(), Config::default()).await;
        // Over a `Send` socket and clock, the client's futures can move between threads.
        fn assert_send<T: Send>(_: &T) {}
        assert_send(&client.next());
        assert_send(&client.flush());
        assert_eq!(next(&mut client).await, Event::Connected);

        for i in 0..5u8 {
            let body = [b'm', i];
            client
                .send(Message::new(&Header::new(3, 2), &body), Priority::Normal)
                .unwrap();
        }
        for i in 0..5u8 {
            match next(&mut client).await {
                Event::Message(m) => {
                    assert_eq!((m.header.service_id, m.header.message_id), (3, Some(3)));
                    assert_eq!(m.body, [b'm', i]);
                }
                other => panic!("unexpected {other:?}"),
            }
        }

        // The server speaks first: a message pushed to the client's connection.
        let id = within("the server's connected event", async {
            loop {
                if let Some(NodeEvent::Connected { id, .. }) = events.next().await {
                    return id;
                }
            }
        })
        .await;
        server
            .replier(id)
            .send(Message::new(&Header::new(7, 1), b"push"), Priority::High)
            .unwrap();
        match next(&mut client).await {
            Event::Message(m) => {
                assert_eq!((m.header.service_id, m.body), (7, &b"push"[..]));
            }
            other => panic!("unexpected {other:?}"),
        }

        // Nothing else is coming: waiting with a deadline gives up.
        let soon = client.clock().now() + Duration::from_millis(50);
        assert!(client.next_before(soon).await.unwrap().is_none());
        let stats = client.stats();
        assert_eq!((stats.messages_out, stats.messages_in), (5, 6));

        client.close();
        assert_eq!(
            next(&mut client).await,
            Event::Closed {
                reason: CloseReason::Local
            }
        );
        assert!(matches!(client.next().await, Err(Error::Closed)));
        server.shutdown().await;
    });
}

#[test]
fn large_reply_arrives_chunk_by_chunk_in_fixed_memory() {
    let size = core::mem::size_of::<Connection<Fixed>>();
    assert!(size < 24 * 1024, "Connection<Fixed> is {size} bytes");
    // The client adds only its socket and clock: reads go straight into the connection's
    // receive buffer, so a larger `READ` costs nothing.
    let whole = core::mem::size_of::<TestClient>();
    assert!(whole < size + 256, "the client is {whole} bytes");
    assert_eq!(
        whole,
        core::mem::size_of::<Client<Socket, HostClock, Fixed, 65536>>()
    );

    smol::block_on(async {
        let server = Server::bind("127.0.0.1:0", NodeConfig::default())
            .await
            .unwrap();
        server
            .handle(3, Some(4), |req: &Request<'_>, out: &mut Responder<'_>| {
                let reply = reply_header(req.message.header);
                let _ = out.reply(Message::new(&reply, &pattern(1 << 20)));
            })
            .unwrap();
        let mut client = client(server.local_addr(), Config::default()).await;
        let request = Header::new(3, 4).with_int(11, 42).unwrap();
        client
            .send(Message::new(&request, b""), Priority::Normal)
            .unwrap();

        let expected = pattern(1 << 20);
        let mut at = 0usize;
        let mut chunks = 0;
        let mut started = false;
        loop {
            match next(&mut client).await {
                Event::Connected => {}
                Event::SequenceStart { header, total } => {
                    assert!(!started);
                    started = true;
                    assert_eq!(header.request_id(), Some(42));
                    assert_eq!(header.message_id, Some(5));
                    assert_eq!(total, 1 << 20);
                }
                Event::SequenceChunk(data) => {
                    assert!(started);
                    assert!(data.len() <= 9000);
                    assert!(data == &expected[at..at + data.len()], "chunk at {at}");
                    at += data.len();
                    chunks += 1;
                }
                Event::SequenceEnd { received } => {
                    assert_eq!(received, 1 << 20);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(at, 1 << 20);
        assert!(chunks > 100, "{chunks} chunks");
        assert_eq!(client.stats().messages_in, 1);
        server.shutdown().await;
    });
}

#[test]
fn requests_match_replies_by_request_id() {
    smol::block_on(async {
        let server = echo_server(NodeConfig::default()).await;
        let mut client = client(server.local_addr(), Config::default()).await;
        for id in 1..=3 {
            let header = Header::new(3, 8).with_int(11, id).unwrap();
            let body = [id as u8; 3];
            client
                .send(Message::new(&header, &body), Priority::Normal)
                .unwrap();
        }
        client.flush().await.unwrap();

        let mut answered = [false; 3];
        while answered.contains(&false) {
            match next(&mut client).await {
                Event::Connected => {}
                Event::Message(m) => {
                    let id = m.header.request_id().expect("a request id");
                    assert_eq!(m.header.message_id, Some(9));
                    assert_eq!(m.body, [id as u8; 3]);
                    let slot = &mut answered[(id - 1) as usize];
                    assert!(!*slot, "request {id} answered twice");
                    *slot = true;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        server.shutdown().await;
    });
}

#[test]
fn keepalive_pings_are_answered() {
    smol::block_on(async {
        let server = echo_server(NodeConfig::default()).await;
        let config = Config {
            ping_interval: Duration::from_millis(200),
            pong_timeout: Some(PATIENCE),
            ..Config::default()
        };
        let mut client = client(server.local_addr(), config).await;
        let mut pongs = 0;
        while pongs < 3 {
            match next(&mut client).await {
                Event::Connected => {}
                Event::Pong { rtt } => {
                    assert!(rtt < PATIENCE);
                    pongs += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(client.stats().last_rtt.is_some());
        assert!(client.is_connected());
        server.shutdown().await;
    });
}

#[test]
fn queued_messages_survive_a_server_restart() {
    smol::block_on(async {
        let (server, rx) = sink_server("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr();
        let mut client = client(addr, Config::default()).await;
        assert_eq!(next(&mut client).await, Event::Connected);
        client
            .send(
                Message::new(&Header::new(5, 1), b"before"),
                Priority::Normal,
            )
            .unwrap();
        client.flush().await.unwrap();
        assert_eq!(within("first message", rx.recv()).await.unwrap(), b"before");

        server.shutdown().await;
        drop(server);
        match next(&mut client).await {
            Event::Closed { reason } => {
                assert_eq!(reason, CloseReason::Eof);
                assert!(reason.should_reconnect());
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(!client.is_connected());
        assert!(matches!(client.next().await, Err(Error::Closed)));

        // Disconnected: messages queue for the next connection.
        for body in [&b"queued 1"[..], b"queued 2"] {
            client
                .send(Message::new(&Header::new(5, 1), body), Priority::Normal)
                .unwrap();
        }
        assert_eq!(client.stats().queued_normal, 2);
        assert!(matches!(client.flush().await, Err(Error::Closed)));

        // The same port again (the old listener may take a moment to go away).
        let (server, rx) = within("rebinding the port", async {
            loop {
                match sink_server(&addr.to_string()).await {
                    Ok(bound) => return bound,
                    Err(_) => smol::Timer::after(Duration::from_millis(20)).await,
                };
            }
        })
        .await;
        let _old = client.reconnect(open(addr).await);
        assert_eq!(next(&mut client).await, Event::Connected);
        client.flush().await.unwrap();
        assert_eq!(within("queued 1", rx.recv()).await.unwrap(), b"queued 1");
        assert_eq!(within("queued 2", rx.recv()).await.unwrap(), b"queued 2");
        assert_eq!(client.stats().queued_normal, 0);
        server.shutdown().await;
    });
}

#[test]
fn banned_address_is_closed_at_accept() {
    smol::block_on(async {
        let server = echo_server(NodeConfig::default()).await;
        let mut events = server.events();
        server.ban("127.0.0.1".parse().unwrap());
        let mut client = client(server.local_addr(), Config::default()).await;

        // The TCP connect succeeds; the server closes the socket at once.
        let mut reason = None;
        while reason.is_none() {
            let deadline = client.clock().now() + PATIENCE;
            match client.next_before(deadline).await {
                Ok(Some(Event::Connected)) => {}
                Ok(Some(Event::Closed { reason: r })) => reason = Some(r),
                Ok(Some(other)) => panic!("unexpected {other:?}"),
                Ok(None) => panic!("not closed within {PATIENCE:?}"),
                // A reset instead of an orderly close: the Closed event follows.
                Err(Error::Read(_)) => {}
                Err(e) => panic!("client error: {e}"),
            }
        }
        assert_eq!(reason, Some(CloseReason::Eof));
        within("the refusal", async {
            loop {
                if let Some(NodeEvent::Refused { .. }) = events.next().await {
                    return;
                }
            }
        })
        .await;
        server.shutdown().await;
    });
}

/// A peer that reads nothing until it has written everything (as the C++ stops reading while
/// more than 750 answers wait for us): the client must read while its writes wait, or both
/// ends wait for each other for ever.
#[test]
fn a_peer_that_reads_only_after_writing_does_not_deadlock_the_client() {
    use std::io::{Read, Write};
    // More than the sockets' buffers hold, each way.
    const COUNT: usize = 4000;
    const BODY: usize = 8000;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut frame = Vec::new();
        flowee_proto::frame::FrameEncoder::new()
            .encode(&Header::new(7, 1), &pattern(BODY), &mut frame)
            .unwrap();
        for _ in 0..COUNT {
            s.write_all(&frame).unwrap();
        }
        // Only now read what the client sent: the same frames.
        let mut left = COUNT * frame.len();
        let mut buf = vec![0; 64 * 1024];
        while left > 0 {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
        let _ = done.send(left);
    });
    smol::block_on(async {
        let mut client = client(addr, Config::default()).await;
        let body = pattern(BODY);
        let (mut sent, mut got) = (0, 0);
        let give_up = std::time::Instant::now() + 3 * PATIENCE;
        while sent < COUNT || got < COUNT || client.connection().wants_transmit() {
            assert!(
                std::time::Instant::now() < give_up,
                "stuck: {sent} sent, {got} received"
            );
            if sent < COUNT
                && client
                    .send(Message::new(&Header::new(7, 1), &body), Priority::Normal)
                    .is_ok()
            {
                sent += 1;
            }
            if got == COUNT {
                // Nothing more comes: only write.
                client.flush().await.unwrap();
                continue;
            }
            let deadline = client.clock().now() + Duration::from_millis(100);
            match client.next_before(deadline).await {
                Ok(Some(Event::Message(m))) => {
                    assert_eq!(m.body.len(), BODY);
                    got += 1;
                }
                Ok(_) => {}
                Err(e) => panic!("client error: {e}"),
            }
        }
    });
    assert_eq!(finished.recv_timeout(PATIENCE), Ok(0));
}

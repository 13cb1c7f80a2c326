//! The embedded client against an in-memory peer on a virtual clock: partial writes and tiny
//! reads, backpressure, keepalive and timeouts raced against stalled sockets, socket errors
//! and EOF, all deterministic.

use embedded_io_async::{ErrorKind, ErrorType, Read, Write};
use flowee_embedded::{
    Client, Clock, CloseReason, Config, Error, Event, Fixed, Header, Instant, Message,
};
use flowee_proto::{Connection, Priority};
use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

/// Virtual time: sleeping jumps straight to the deadline.
#[derive(Clone, Default)]
struct VirtualClock(Rc<Cell<u64>>);

impl Clock for VirtualClock {
    fn now(&self) -> Instant {
        Instant::from_millis(self.0.get())
    }

    async fn sleep_until(&self, at: Instant) {
        self.0.set(self.0.get().max(at.as_millis()));
    }
}

/// The other end of the socket: a server [`Connection`] run inside the socket's calls.
struct Peer {
    server: Connection,
    clock: VirtualClock,
    to_client: VecDeque<u8>,
    /// Bytes one write takes at most.
    max_write: usize,
    /// Bytes one read gives at most.
    max_read: usize,
    /// Send every message back.
    echo: bool,
    /// Writes never complete.
    stall_writes: bool,
    /// After the queued bytes, reads see EOF.
    eof: bool,
    fail_read: Option<ErrorKind>,
    fail_write: Option<ErrorKind>,
    writes: usize,
    received: Vec<(Header, Vec<u8>)>,
}

impl Peer {
    fn new(clock: &VirtualClock) -> Self {
        Peer {
            server: Connection::accepted(clock.now(), Config::default()),
            clock: clock.clone(),
            to_client: VecDeque::new(),
            max_write: usize::MAX,
            max_read: usize::MAX,
            echo: true,
            stall_writes: false,
            eof: false,
            fail_read: None,
            fail_write: None,
            writes: 0,
            received: Vec::new(),
        }
    }

    /// Lets the server handle what came in and queues what it sends.
    fn pump(&mut self) {
        let now = self.clock.now();
        self.server.handle_timeout(now);
        let mut replies = Vec::new();
        while let Some(event) = self.server.poll_event() {
            if let Event::Message(m) = event {
                self.received.push((*m.header, m.body.to_vec()));
                if self.echo {
                    replies.push((*m.header, m.body.to_vec()));
                }
            }
        }
        for (header, body) in replies {
            self.server
                .send(now, Message::new(&header, &body), Priority::Normal)
                .unwrap();
        }
        while let Some(data) = self.server.poll_transmit() {
            let n = data.len();
            self.to_client.extend(data);
            self.server.consume_transmit(n);
        }
    }
}

impl ErrorType for Peer {
    type Error = ErrorKind;
}

impl Read for Peer {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorKind> {
        if let Some(e) = self.fail_read {
            return Err(e);
        }
        if self.to_client.is_empty() {
            if self.eof {
                return Ok(0);
            }
            // Nothing to read: the clock's sleep wins the race.
            return std::future::pending().await;
        }
        let n = buf.len().min(self.max_read).min(self.to_client.len());
        for (slot, byte) in buf.iter_mut().zip(self.to_client.drain(..n)) {
            *slot = byte;
        }
        Ok(n)
    }
}

impl Write for Peer {
    async fn write(&mut self, data: &[u8]) -> Result<usize, ErrorKind> {
        if let Some(e) = self.fail_write {
            return Err(e);
        }
        if self.stall_writes {
            return std::future::pending().await;
        }
        self.writes += 1;
        let n = data.len().min(self.max_write);
        let taken = self.server.handle_input(self.clock.now(), &data[..n]);
        assert_eq!(taken, n, "the server's heap buffers take everything");
        self.pump();
        Ok(n)
    }

    async fn flush(&mut self) -> Result<(), ErrorKind> {
        Ok(())
    }
}

type TestClient<const READ: usize = 1024> = Client<Peer, VirtualClock, Fixed, READ>;

fn client<const READ: usize>(config: Config, setup: impl FnOnce(&mut Peer)) -> TestClient<READ> {
    let clock = VirtualClock::default();
    let mut peer = Peer::new(&clock);
    setup(&mut peer);
    Client::new(peer, clock, config)
}

/// The next event within a minute of virtual time.
async fn next<const READ: usize>(client: &mut TestClient<READ>) -> Event<'_> {
    let deadline = client.clock().now() + Duration::from_secs(60);
    match client.next_before(deadline).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("no event"),
        Err(e) => panic!("client error: {e}"),
    }
}

fn body(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[test]
fn partial_writes_and_tiny_reads_keep_the_stream_intact() {
    smol::block_on(async {
        let mut client: TestClient = client(Config::default(), |peer| {
            peer.max_write = 3;
            peer.max_read = 5;
        });
        assert_eq!(next(&mut client).await, Event::Connected);

        let bodies = [body(0, 1), body(1, 2), body(100, 3)];
        for (i, b) in bodies.iter().enumerate() {
            let header = Header::new(3, i as i32);
            client
                .send(Message::new(&header, b), Priority::Normal)
                .unwrap();
        }
        for (i, b) in bodies.iter().enumerate() {
            match next(&mut client).await {
                Event::Message(m) => {
                    assert_eq!(m.header.message_id, Some(i as i32));
                    assert_eq!(m.body, &b[..]);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        // The largest body that goes in one frame.
        let big = body(8000, 4);
        client
            .send(Message::new(&Header::new(3, 9), &big), Priority::Normal)
            .unwrap();
        match next(&mut client).await {
            Event::Message(m) => assert_eq!(m.body, &big[..]),
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            client.io().writes > 8000 / 3,
            "{} writes",
            client.io().writes
        );
    });
}

/// Receives a 100 kB sequence through the 9000-byte receive buffer, with reads of at most
/// `max_read` and `READ` bytes written straight into it: reads are cut to the room left
/// behind a delivered frame (backpressure).
async fn receive_sequence<const READ: usize>(max_read: usize) {
    let mut client: TestClient<READ> = client(Config::default(), |peer| peer.max_read = max_read);
    assert_eq!(next(&mut client).await, Event::Connected);
    let big = body(100_000, 9);
    let peer = client.io_mut();
    let now = peer.clock.now();
    peer.server
        .send(
            now,
            Message::new(&Header::new(9, 1), &big),
            Priority::Normal,
        )
        .unwrap();
    peer.pump();

    let mut got = Vec::new();
    loop {
        match next(&mut client).await {
            Event::SequenceStart { header, total } => {
                assert_eq!((header.service_id, total), (9, 100_000));
            }
            Event::SequenceChunk(data) => got.extend_from_slice(data),
            Event::SequenceEnd { received } => {
                assert_eq!(received, 100_000);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(got == big);
}

#[test]
fn a_sequence_passes_through_the_fixed_receive_buffer() {
    smol::block_on(async {
        receive_sequence::<1024>(700).await;
        receive_sequence::<1024>(usize::MAX).await;
        receive_sequence::<16384>(usize::MAX).await;
        receive_sequence::<16>(usize::MAX).await;
    });
}

#[test]
fn pings_go_out_on_the_virtual_clock() {
    smol::block_on(async {
        let config = Config {
            ping_interval: Duration::from_secs(1),
            ..Config::default()
        };
        let mut client: TestClient = client(config, |_| {});
        let mut pongs = 0;
        while let Some(event) = client.next_before(Instant::from_secs(5)).await.unwrap() {
            match event {
                Event::Connected => {}
                Event::Pong { rtt } => {
                    assert_eq!(rtt, Duration::ZERO);
                    pongs += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!((4..=5).contains(&pongs), "{pongs} pongs");
        assert_eq!(client.clock().now(), Instant::from_secs(5));
    });
}

#[test]
fn a_stalled_write_loses_to_the_pong_deadline_and_the_message_survives() {
    smol::block_on(async {
        let config = Config {
            ping_interval: Duration::from_secs(1),
            pong_timeout: Some(Duration::from_secs(3)),
            ..Config::default()
        };
        let mut client: TestClient = client(config, |peer| peer.stall_writes = true);
        assert_eq!(next(&mut client).await, Event::Connected);
        client
            .send(Message::new(&Header::new(5, 1), b"later"), Priority::Normal)
            .unwrap();
        assert_eq!(
            next(&mut client).await,
            Event::Closed {
                reason: CloseReason::PongTimeout
            }
        );
        // The ping went out at 1 s (queued behind nothing it could overtake), its pong was
        // due 3 s later.
        assert_eq!(client.clock().now(), Instant::from_secs(4));
        assert!(matches!(client.next().await, Err(Error::Closed)));

        let peer = Peer::new(client.clock());
        let old = client.reconnect(peer);
        assert!(old.stall_writes);
        assert_eq!(next(&mut client).await, Event::Connected);
        match next(&mut client).await {
            Event::Message(m) => assert_eq!(m.body, b"later"),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(client.io().received.len(), 1);
    });
}

#[test]
fn socket_errors_come_back_once_then_the_close() {
    smol::block_on(async {
        let mut client: TestClient = client(Config::default(), |peer| {
            peer.fail_read = Some(ErrorKind::ConnectionReset)
        });
        assert_eq!(next(&mut client).await, Event::Connected);
        assert!(matches!(
            client.next().await,
            Err(Error::Read(ErrorKind::ConnectionReset))
        ));
        assert_eq!(
            client.next().await.unwrap(),
            Event::Closed {
                reason: CloseReason::Eof
            }
        );
        assert!(matches!(client.next().await, Err(Error::Closed)));

        let mut client = client_with_failing_write();
        assert_eq!(next(&mut client).await, Event::Connected);
        client
            .send(Message::new(&Header::new(5, 1), b"x"), Priority::Normal)
            .unwrap();
        assert!(matches!(
            client.next().await,
            Err(Error::Write(ErrorKind::BrokenPipe))
        ));
        assert!(matches!(client.flush().await, Err(Error::Closed)));
        assert_eq!(
            client.next().await.unwrap(),
            Event::Closed {
                reason: CloseReason::Eof
            }
        );
        // The message was never written: it waits for the next connection.
        assert_eq!(client.stats().queued_normal, 1);
    });
}

fn client_with_failing_write() -> TestClient {
    client(Config::default(), |peer| {
        peer.fail_write = Some(ErrorKind::BrokenPipe)
    })
}

#[test]
fn eof_after_data_delivers_the_data_first() {
    smol::block_on(async {
        let mut client: TestClient = client(Config::default(), |peer| peer.eof = true);
        let peer = client.io_mut();
        let now = peer.clock.now();
        peer.server
            .send(
                now,
                Message::new(&Header::new(9, 2), b"last words"),
                Priority::Normal,
            )
            .unwrap();
        peer.pump();
        assert_eq!(next(&mut client).await, Event::Connected);
        match next(&mut client).await {
            Event::Message(m) => assert_eq!(m.body, b"last words"),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            next(&mut client).await,
            Event::Closed {
                reason: CloseReason::Eof
            }
        );
        // Messages sent now wait for a reconnect.
        client
            .send(
                Message::new(&Header::new(5, 1), b"queued"),
                Priority::Normal,
            )
            .unwrap();
        assert!(!client.is_connected());
        let clock = client.clock().clone();
        client.reconnect(Peer::new(&clock));
        client.flush().await.unwrap();
        assert_eq!(client.io().received[0].1, b"queued");
    });
}

#[test]
fn a_client_can_start_before_its_socket_is_connected() {
    smol::block_on(async {
        let clock = VirtualClock::default();
        let mut client: TestClient =
            Client::new_disconnected(Peer::new(&clock), clock.clone(), Config::default());
        client
            .send(Message::new(&Header::new(5, 1), b"early"), Priority::Normal)
            .unwrap();
        assert!(!client.is_connected());
        assert!(matches!(client.next().await, Err(Error::Closed)));
        assert!(client.io().received.is_empty());

        // The socket connected in place.
        client.restart();
        assert_eq!(next(&mut client).await, Event::Connected);
        match next(&mut client).await {
            Event::Message(m) => assert_eq!(m.body, b"early"),
            other => panic!("unexpected {other:?}"),
        }
    });
}

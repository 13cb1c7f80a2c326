//! Ready-made hosts: one [`Connection`] with an application on top, and a scripted raw peer.

use crate::net::{Action, Host, Socket, Trace};
use flowee_proto::connection::Stats;
use flowee_proto::{CloseReason, Config, Connection, Event, Header, Instant, Misbehaviour};
use std::any::Any;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

/// An owned copy of an [`Event`], to keep in logs and assertions.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Received {
    /// [`Event::Connected`].
    Connected,
    /// [`Event::Message`].
    Message {
        /// The header.
        header: Header,
        /// The body.
        body: Vec<u8>,
    },
    /// [`Event::SequenceStart`].
    SequenceStart {
        /// The header.
        header: Header,
        /// The announced size.
        total: u32,
    },
    /// [`Event::SequenceChunk`].
    SequenceChunk(Vec<u8>),
    /// [`Event::SequenceEnd`].
    SequenceEnd {
        /// Bytes received.
        received: u64,
    },
    /// [`Event::Pong`].
    Pong {
        /// The round trip.
        rtt: Duration,
    },
    /// [`Event::Misbehaved`].
    Misbehaved {
        /// What.
        kind: Misbehaviour,
        /// Points added.
        points: u32,
        /// Score afterwards.
        score: u32,
    },
    /// [`Event::Closed`].
    Closed(CloseReason),
    /// An event this version of the simulator does not know ([`Event`] is
    /// `#[non_exhaustive]`), as its `Debug` text. It is never taken for a close.
    Other(String),
}

impl From<Event<'_>> for Received {
    fn from(e: Event<'_>) -> Self {
        match e {
            Event::Connected => Received::Connected,
            Event::Message(m) => Received::Message {
                header: *m.header,
                body: m.body.to_vec(),
            },
            Event::SequenceStart { header, total } => Received::SequenceStart { header, total },
            Event::SequenceChunk(d) => Received::SequenceChunk(d.to_vec()),
            Event::SequenceEnd { received } => Received::SequenceEnd { received },
            Event::Pong { rtt } => Received::Pong { rtt },
            Event::Misbehaved {
                kind,
                points,
                score,
            } => Received::Misbehaved {
                kind,
                points,
                score,
            },
            Event::Closed { reason } => Received::Closed(reason),
            other => Received::Other(format!("{other:?}")),
        }
    }
}

impl Received {
    /// A one-line description for traces (bodies as length and hash).
    pub fn describe(&self) -> String {
        match self {
            Received::Message { header, body } => format!(
                "message {}/{} {:?} {} bytes #{:016x}",
                header.service_id,
                header.message_id_or_minus_one(),
                header.ints,
                body.len(),
                fnv(body)
            ),
            Received::SequenceChunk(d) => format!("chunk {} bytes #{:016x}", d.len(), fnv(d)),
            other => format!("{other:?}"),
        }
    }
}

/// FNV-1a of some bytes.
pub fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xCBF2_9CE4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
    })
}

/// The application on a [`ConnectionHost`].
pub trait App: 'static {
    /// Called for every event, with the connection (to reply, punish or close).
    fn on_event(&mut self, now: Instant, event: &Received, conn: &mut Connection) {
        let _ = (now, event, conn);
    }
}

/// An application that only records (the host's log has everything).
impl App for () {}

/// A host with one [`Connection`]: a client that connects once, or a server that accepts the
/// first connection. Every event goes to the application and into [`ConnectionHost::log`].
pub struct ConnectionHost<A: App = ()> {
    config: Config,
    conn: Option<Connection>,
    socket: Option<Socket>,
    actions: VecDeque<Action>,
    /// The application.
    pub app: A,
    /// Every event, with the time it was polled.
    pub log: Vec<(Instant, Received)>,
    /// When a connect attempt failed.
    pub connect_failures: Vec<Instant>,
}

impl<A: App> ConnectionHost<A> {
    /// A client; its connection exists (and takes messages) before it connects.
    pub fn client(now: Instant, config: Config, app: A) -> Self {
        ConnectionHost {
            config,
            conn: Some(Connection::connecting(now, config)),
            socket: None,
            actions: VecDeque::new(),
            app,
            log: Vec::new(),
            connect_failures: Vec::new(),
        }
    }

    /// A client with a connection made by the caller, e.g. one that starts with the messages
    /// an earlier connection left ([`Connection::with_outbox`]).
    pub fn client_from(conn: Connection, app: A) -> Self {
        ConnectionHost {
            config: *conn.config(),
            conn: Some(conn),
            socket: None,
            actions: VecDeque::new(),
            app,
            log: Vec::new(),
            connect_failures: Vec::new(),
        }
    }

    /// A server; its connection is made when the first peer connects.
    pub fn server(config: Config, app: A) -> Self {
        ConnectionHost {
            config,
            conn: None,
            socket: None,
            actions: VecDeque::new(),
            app,
            log: Vec::new(),
            connect_failures: Vec::new(),
        }
    }

    /// The connection (a server has none before its first peer).
    pub fn conn(&mut self) -> &mut Connection {
        self.conn.as_mut().expect("no connection yet")
    }

    /// The connection, if any.
    pub fn connection(&self) -> Option<&Connection> {
        self.conn.as_ref()
    }

    /// The connection's counters.
    pub fn stats(&self) -> Stats {
        self.conn
            .as_ref()
            .map(Connection::stats)
            .unwrap_or_default()
    }

    /// The socket in use.
    pub fn socket(&self) -> Option<Socket> {
        self.socket
    }

    /// The messages received, in order.
    pub fn messages(&self) -> Vec<(Header, Vec<u8>)> {
        self.log
            .iter()
            .filter_map(|(_, e)| match e {
                Received::Message { header, body } => Some((*header, body.clone())),
                _ => None,
            })
            .collect()
    }

    /// When and why the connection closed.
    pub fn closed(&self) -> Option<(Instant, CloseReason)> {
        self.log.iter().find_map(|(t, e)| match e {
            Received::Closed(r) => Some((*t, *r)),
            _ => None,
        })
    }
}

impl<A: App> Host for ConnectionHost<A> {
    fn accept(&mut self, now: Instant, socket: Socket, _from: SocketAddr) -> bool {
        if self.conn.is_some() {
            return false;
        }
        self.conn = Some(Connection::accepted(now, self.config));
        self.socket = Some(socket);
        true
    }

    fn connected(&mut self, now: Instant, _tag: u64, socket: Socket) {
        self.socket = Some(socket);
        if let Some(c) = &mut self.conn {
            c.handle_connected(now);
        }
    }

    fn connect_failed(&mut self, now: Instant, _tag: u64) {
        self.connect_failures.push(now);
    }

    fn input(&mut self, now: Instant, socket: Socket, data: &[u8]) -> usize {
        match &mut self.conn {
            Some(c) if self.socket == Some(socket) => c.handle_input(now, data),
            _ => data.len(),
        }
    }

    fn eof(&mut self, now: Instant, socket: Socket) {
        if let Some(c) = &mut self.conn {
            if self.socket == Some(socket) {
                c.handle_eof(now);
            }
        }
    }

    fn transmit(&mut self, socket: Socket) -> Option<&[u8]> {
        if self.socket != Some(socket) {
            return None;
        }
        self.conn.as_mut()?.poll_transmit()
    }

    fn consume(&mut self, _socket: Socket, n: usize) {
        if let Some(c) = &mut self.conn {
            c.consume_transmit(n);
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.conn.as_ref()?.poll_timeout()
    }

    fn timeout(&mut self, now: Instant) {
        if let Some(c) = &mut self.conn {
            c.handle_timeout(now);
            if let Some(at) = c.poll_timeout() {
                assert!(
                    at > now,
                    "stale deadline {at:?} after handle_timeout({now:?})"
                );
            }
        }
    }

    fn run(&mut self, now: Instant, trace: &mut Trace, name: &str) {
        let Some(conn) = &mut self.conn else {
            return;
        };
        while let Some(event) = conn.poll_event() {
            let received = Received::from(event);
            trace.record(now, name, format_args!("{}", received.describe()));
            self.app.on_event(now, &received, conn);
            if let (Received::Closed(_), Some(s)) = (&received, self.socket) {
                self.actions.push_back(Action::Close(s));
            }
            self.log.push((now, received));
        }
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A scripted peer that writes raw bytes and records what it gets: for bad input, silent or
/// dead peers, and byte-exact checks.
#[derive(Debug, Default)]
pub struct RawHost {
    socket: Option<Socket>,
    out: Vec<u8>,
    actions: VecDeque<Action>,
    /// Takes no input at all when false (a peer that stopped reading).
    pub reads: bool,
    /// Everything received.
    pub received: Vec<u8>,
    /// When the peer closed.
    pub eof_at: Option<Instant>,
    /// When the connection came up.
    pub connected_at: Option<Instant>,
    /// When a connect failed.
    pub connect_failed_at: Option<Instant>,
}

impl RawHost {
    /// A raw peer that reads everything it is sent.
    pub fn new() -> Self {
        RawHost {
            reads: true,
            ..RawHost::default()
        }
    }

    /// A raw peer that never reads.
    pub fn deaf() -> Self {
        RawHost::default()
    }

    /// Queues bytes to write.
    pub fn write(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Closes the socket.
    pub fn close(&mut self) {
        if let Some(s) = self.socket {
            self.actions.push_back(Action::Close(s));
        }
    }
}

impl Host for RawHost {
    fn accept(&mut self, now: Instant, socket: Socket, _from: SocketAddr) -> bool {
        if self.socket.is_some() {
            return false;
        }
        self.socket = Some(socket);
        self.connected_at = Some(now);
        true
    }

    fn connected(&mut self, now: Instant, _tag: u64, socket: Socket) {
        self.socket = Some(socket);
        self.connected_at = Some(now);
    }

    fn connect_failed(&mut self, now: Instant, _tag: u64) {
        self.connect_failed_at = Some(now);
    }

    fn input(&mut self, _now: Instant, _socket: Socket, data: &[u8]) -> usize {
        if !self.reads {
            return 0;
        }
        self.received.extend_from_slice(data);
        data.len()
    }

    fn eof(&mut self, now: Instant, _socket: Socket) {
        self.eof_at.get_or_insert(now);
    }

    fn transmit(&mut self, socket: Socket) -> Option<&[u8]> {
        (self.socket == Some(socket) && !self.out.is_empty()).then_some(&self.out[..])
    }

    fn consume(&mut self, _socket: Socket, n: usize) {
        self.out.drain(..n);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    fn timeout(&mut self, _now: Instant) {}

    fn run(&mut self, _now: Instant, _trace: &mut Trace, _name: &str) {}

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

//! Many connections: admission and bans, service routing, requests, broadcast and reconnect
//! decisions, as one state machine with no I/O.
//!
//! The adapter tells the node what happens on its sockets and clock ([`Node::accept`],
//! [`Node::handle_connected`], [`Node::handle_input`] or [`Node::input_room`],
//! [`Node::handle_eof`], [`Node::handle_timeout`]) and does what [`Node::poll_output`] asks:
//! open or close a TCP connection, write a connection's bytes ([`Node::poll_transmit`]), hand
//! an event or message to the application, persist a ban.
//!
//! Connections are named by [`ConnId`]s that carry a generation: an id whose connection is
//! gone is refused with a typed error, never mistaken for a newer connection. An outgoing
//! connection keeps its id across reconnects, and what was queued on it goes out after the
//! reconnect (at-least-once: a message that was partly written when the connection dropped is
//! sent again from its start; one the socket took whole is not, as TCP cannot say whether the
//! peer read it, and a request among those fails at the drop with [`RequestError::Closed`]).
//!
//! Without an allocator every table is a fixed array, and connections use
//! [`Fixed`](crate::storage::Fixed) storage. Two such nodes joined in memory (this example runs
//! in builds with and without `alloc`):
//!
//! ```
//! use core::time::Duration;
//! use flowee_proto::node::{Node, NodeConfig, Output};
//! use flowee_proto::storage::Fixed;
//! use flowee_proto::{Header, Instant, Message, Priority};
//!
//! let now = Instant::ZERO;
//! let mut client: Node<Fixed> = Node::new(now, NodeConfig::default());
//! let mut server: Node<Fixed> = Node::new(now, NodeConfig::default());
//! let c = client.connect(now, "10.0.0.1:1235".parse().unwrap()).unwrap();
//! let s = server.accept(now, "10.0.0.2:40000".parse().unwrap()).unwrap();
//! while client.poll_output().is_some() {} // Connect: the adapter opens the socket.
//! client.handle_connected(now, c).unwrap();
//! // A message borrows its header and its body.
//! let (greeting, question) = (Header::new(3, 7), Header::new(3, 0));
//! client.send(now, c, Message::new(&greeting, b"hello"), Priority::Normal).unwrap();
//! let ask = Message::new(&question, b"ask");
//! let request = client.request(now, c, ask, Duration::from_secs(5)).unwrap();
//! let (mut hello_seen, mut answered) = (false, false);
//! for _ in 0..10 {
//!     // The sockets: what one node writes, the other reads.
//!     while let Some(bytes) = client.poll_transmit(c) {
//!         let n = server.handle_input(now, s, bytes).unwrap();
//!         client.consume_transmit(c, n);
//!         if n == 0 { break; }
//!     }
//!     while let Some(bytes) = server.poll_transmit(s) {
//!         let n = client.handle_input(now, c, bytes).unwrap();
//!         server.consume_transmit(s, n);
//!         if n == 0 { break; }
//!     }
//!     // The server answers the request: same service, message id + 1, the ints copied.
//!     let mut reply = None;
//!     while let Some(output) = server.poll_output() {
//!         if let Output::Message { message, .. } = output {
//!             match message.header.message_id {
//!                 Some(0) => reply = Some(*message.header),
//!                 _ => hello_seen |= message.body == b"hello",
//!             }
//!         }
//!     }
//!     if let Some(asked) = reply {
//!         let mut header = Header::new(3, 1);
//!         header.ints = asked.ints;
//!         server.send(now, s, Message::new(&header, b"answer"), Priority::Normal).unwrap();
//!     }
//!     while let Some(output) = client.poll_output() {
//!         if let Output::Reply { request: r, message, .. } = output {
//!             answered |= r == request && message.body == b"answer";
//!         }
//!     }
//! }
//! assert!(hello_seen && answered);
//! ```

mod admission;
mod bounded;
mod routing;

pub use admission::BanRecord;
pub use routing::{HandleId, HandleSet, MAX_HANDLES, MAX_SUBSCRIPTIONS, RouteError, Scope};

#[cfg(feature = "alloc")]
use crate::connection::EncodedMessage;
use crate::connection::{
    CloseReason, Config, Connection, Event, Message, Misbehaviour, Outbox, Priority, Role,
    SendError,
};
use crate::header::{Header, tags};
use crate::storage::{DefaultStorage, Storage};
use crate::time::Instant;
use admission::{AllowList, BanChange, Bans, RateLimiter, Scores};
use bounded::{List, Map, MinHeap};
use core::fmt;
use core::net::{IpAddr, SocketAddr};
use core::num::{NonZeroU32, NonZeroUsize};
use core::time::Duration;
use routing::Router;

/// Free room of a connection's receive buffer, lent by [`Node::input_room`] so input can be
/// written in place (saving [`Node::handle_input`]'s copy). It borrows the node until
/// [`NodeInputRoom::commit`]; dropping it takes nothing.
#[derive(Debug)]
pub struct NodeInputRoom<'a, S: Storage = DefaultStorage> {
    node: &'a mut Node<S>,
    index: u32,
    len: usize,
}

impl<S: Storage> NodeInputRoom<'_, S> {
    /// The room to write into: empty when nothing can be taken now.
    pub fn buf(&mut self) -> &mut [u8] {
        match self.node.live_at(self.index) {
            Some(conn) => conn.input_room_buf(self.len),
            None => &mut [],
        }
    }

    /// Takes the first `n` bytes of the room as input that arrived at `now` (at most the
    /// room's length) and parses them; returns how many were taken.
    pub fn commit(self, now: Instant, n: usize) -> usize {
        let now = self.node.tick(now);
        let taken = self
            .node
            .live_at(self.index)
            .map_or(0, |conn| conn.commit_input(now, self.len, n));
        self.node.touch(self.index);
        taken
    }
}

/// Connection slots without `alloc`.
const FIXED_CONNECTIONS: usize = 4;
/// Pending requests without `alloc`.
const FIXED_REQUESTS: usize = 16;
/// Timer entries without `alloc`.
const FIXED_TIMERS: usize = 64;
/// Queued node outputs without `alloc`.
const FIXED_OUTPUTS: usize = 64;

/// A connection of a [`Node`]. Stays valid across reconnects of an outgoing connection; once
/// the connection is removed, every call with it fails with [`NodeError::UnknownConnection`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    index: u32,
    generation: u32,
}

impl ConnId {
    pub(crate) const fn new(index: u32, generation: u32) -> Self {
        ConnId { index, generation }
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}.{}", self.index, self.generation)
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A request made with [`Node::request`]: its RequestId (header tag 11).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub i32);

/// Why a request got no reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestError {
    /// No reply within the timeout.
    Timeout,
    /// The connection was removed (closed for good), closed while the reply was arriving in
    /// pieces, or dropped after its socket took the request whole (the reply could only have
    /// come on that socket; a request still queued goes out again after the reconnect).
    Closed,
}

/// Misuse of a [`Node`] API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeError {
    /// The id names no connection (it was removed, or never existed).
    UnknownConnection(ConnId),
    /// [`NodeConfig::max_connections`] connections exist.
    TooManyConnections,
    /// A routing table is full, or the handle is unknown.
    Route(RouteError),
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeError::UnknownConnection(id) => write!(f, "unknown connection {id}"),
            NodeError::TooManyConnections => f.write_str("connection limit reached"),
            NodeError::Route(e) => e.fmt(f),
        }
    }
}

impl core::error::Error for NodeError {}

impl From<RouteError> for NodeError {
    fn from(e: RouteError) -> Self {
        NodeError::Route(e)
    }
}

/// Why an incoming connection was refused at accept (close the socket at once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refused {
    /// The address is banned until then.
    Banned {
        /// When the ban ends.
        until: Instant,
    },
    /// The NetProtect rate limiter refused it (spec §7.3).
    RateLimited,
    /// [`NodeConfig::max_connections_per_ip`] connections from this address exist.
    TooManyFromAddress,
    /// [`NodeConfig::max_connections`] connections exist.
    Full,
}

impl Refused {
    /// A short, stable, snake_case name.
    pub fn name(&self) -> &'static str {
        match self {
            Refused::Banned { .. } => "banned",
            Refused::RateLimited => "rate_limited",
            Refused::TooManyFromAddress => "too_many_from_address",
            Refused::Full => "full",
        }
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Banned { .. } => f.write_str("the address is banned"),
            Refused::RateLimited => f.write_str("connecting too often"),
            Refused::TooManyFromAddress => f.write_str("too many connections from this address"),
            Refused::Full => f.write_str("connection limit reached"),
        }
    }
}

impl core::error::Error for Refused {}

/// A login cookie for the historical API login (spec §6.2), at most 128 bytes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Cookie(heapless::Vec<u8, 128>);

impl Cookie {
    /// A cookie from its text (the first line of the Hub's `api-cookie` file); `None` if it is
    /// longer than 128 bytes.
    pub fn new(text: &[u8]) -> Option<Self> {
        heapless::Vec::from_slice(text).ok().map(Cookie)
    }

    /// The cookie's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Cookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cookie({} bytes)", self.0.len())
    }
}

/// The historical login: service 1, message 0, body tag 2 = the cookie as a string.
const LOGIN_SERVICE: i32 = 1;
const LOGIN_MESSAGE: i32 = 0;
const LOGIN_TAG: u32 = 2;

/// Settings of a [`Node`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// Settings of every connection (its own ban threshold is replaced by the node's per-IP
    /// one).
    pub connection: Config,
    /// Connections the node holds at most (without `alloc` also at most 4).
    pub max_connections: NonZeroUsize,
    /// Incoming connections allowed at once from one address (the Hub's
    /// `-api_connection_per_ip`); `None`: no limit.
    pub max_connections_per_ip: Option<NonZeroU32>,
    /// Per-IP score at which an address is banned (C++: 1000).
    pub ban_threshold: NonZeroU32,
    /// How long a ban lasts (C++: 24 h).
    pub ban_duration: Duration,
    /// Points a per-IP score loses per hour (C++: 100).
    pub score_decay_per_hour: u32,
    /// Bans kept at most; when full, the ban ending soonest makes room.
    pub max_bans: NonZeroUsize,
    /// Per-IP scores kept at most; when full, the lowest score makes room.
    pub max_scores: NonZeroUsize,
    /// The Hub's NetProtect rate limiter on incoming connections (loopback and allowed
    /// addresses exempt).
    pub rate_limit: bool,
    /// Entries the rate limiter's log keeps at most.
    pub rate_log_len: NonZeroUsize,
    /// Addresses the allow-list holds at most.
    pub max_allowed: NonZeroUsize,
    /// Delay before reconnecting after an established outgoing connection dropped (the C++ waits
    /// 15 s by accident). A connection that dropped within [`NodeConfig::stable_after`] of
    /// connecting backs off instead, so a peer that accepts and closes at once is not hammered.
    pub reconnect_after_drop: Duration,
    /// An outgoing connection that drops sooner than this after connecting counts as a failed
    /// attempt: such drops in a row back off like failed connects (0, 4, 13, 32, 44… s, never
    /// less than [`NodeConfig::reconnect_after_drop`]). One that lived longer is healthy.
    pub stable_after: Duration,
    /// Requests waiting for a reply, at most. A request counts until its [`Output::Reply`] or
    /// [`Output::RequestFailed`] has been polled, so a failure is never lost.
    pub max_pending_requests: NonZeroUsize,
    /// Outgoing connections log in with this cookie first thing after every connect (the
    /// historical API login; off by default).
    pub login_cookie: Option<Cookie>,
    /// Incoming connections must log in with this cookie as their first message (within the
    /// introduction window, 4 s unless configured); off by default.
    pub require_login: Option<Cookie>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            connection: Config::default(),
            max_connections: nz(10_000),
            max_connections_per_ip: None,
            ban_threshold: NonZeroU32::new(1000).unwrap_or(NonZeroU32::MIN),
            ban_duration: Duration::from_secs(24 * 3600),
            score_decay_per_hour: 100,
            max_bans: nz(10_000),
            max_scores: nz(10_000),
            rate_limit: false,
            rate_log_len: nz(4096),
            max_allowed: nz(64),
            reconnect_after_drop: Duration::ZERO,
            stable_after: Duration::from_secs(10),
            max_pending_requests: nz(10_000),
            login_cookie: None,
            require_login: None,
        }
    }
}

const fn nz(n: usize) -> NonZeroUsize {
    match NonZeroUsize::new(n) {
        Some(n) => n,
        None => NonZeroUsize::MIN,
    }
}

/// Something the adapter must do or tell the application. Borrowed data stays valid until
/// the next call on the node.
#[derive(Debug)]
#[non_exhaustive]
pub enum Output<'a> {
    /// Open a TCP connection to `addr` for `id`, then call [`Node::handle_connected`] or
    /// [`Node::handle_connect_failed`].
    Connect {
        /// The connection.
        id: ConnId,
        /// Where to.
        addr: SocketAddr,
    },
    /// `id` has bytes to write: call [`Node::poll_transmit`] until it returns `None`. Said
    /// once until then, or until everything handed out is written (so a writer that stops
    /// after a budget of writes, with the queue just emptied, still hears of the next bytes).
    Transmit {
        /// The connection.
        id: ConnId,
    },
    /// Close the TCP connection of `id` now.
    Disconnect {
        /// The connection.
        id: ConnId,
    },
    /// A connection event: connected, pong, misbehaviour, closed; and the pieces of a message
    /// delivered in pieces ([`Event::SequenceStart`], [`Event::SequenceChunk`]s,
    /// [`Event::SequenceEnd`], with [`SequenceDelivery::Chunks`](crate::connection::SequenceDelivery::Chunks)
    /// or fixed storage without reassembly), unless it is a reply ([`Output::ReplyPart`]).
    Event {
        /// The connection.
        id: ConnId,
        /// The event.
        event: Event<'a>,
        /// Handles scoped to this connection; for the pieces of a message, also the handles
        /// subscribed to the message (as for [`Output::Message`]).
        handles: HandleSet,
    },
    /// A message, for the handles subscribed to it (none: no service claims it).
    Message {
        /// The connection it came on.
        id: ConnId,
        /// The message.
        message: Message<'a>,
        /// Handles subscribed to it.
        handles: HandleSet,
    },
    /// The reply to a request made with [`Node::request`].
    Reply {
        /// The connection.
        id: ConnId,
        /// The request it answers.
        request: RequestId,
        /// The reply.
        message: Message<'a>,
    },
    /// A piece of the reply to a request made with [`Node::request`], when the reply comes in
    /// pieces: an [`Event::SequenceStart`] (with the reply's header), [`Event::SequenceChunk`]s,
    /// then an [`Event::SequenceEnd`], which completes the request. The request's timeout does
    /// not run while its reply arrives; a close before the end fails it
    /// ([`RequestError::Closed`]).
    ReplyPart {
        /// The connection.
        id: ConnId,
        /// The request it answers.
        request: RequestId,
        /// The piece.
        event: Event<'a>,
    },
    /// A request will get no reply.
    RequestFailed {
        /// The connection.
        id: ConnId,
        /// The request.
        request: RequestId,
        /// Why.
        error: RequestError,
    },
    /// An outgoing connection will reconnect at `at` (an [`Output::Connect`] follows then).
    Reconnecting {
        /// The connection.
        id: ConnId,
        /// When.
        at: Instant,
        /// Failed attempts in a row so far: failed connects, or connections that dropped
        /// within [`NodeConfig::stable_after`]; 0 after a drop of a healthy connection.
        attempt: u32,
    },
    /// The connection is gone for good; its id is no longer valid. `unsent` messages
    /// (high priority, normal) were still queued and are dropped.
    Removed {
        /// The connection.
        id: ConnId,
        /// Messages that were never sent.
        unsent: (usize, usize),
    },
    /// An address was banned (persist it with [`Node::export_bans`]).
    Banned {
        /// The address.
        ip: IpAddr,
        /// Until when.
        until: Instant,
    },
    /// A ban ended.
    Unbanned {
        /// The address.
        ip: IpAddr,
    },
}

/// Table sizes of a [`Node`] (see [`Node::usage`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeUsage {
    /// Connections held (at most [`NodeConfig::max_connections`]).
    pub connections: usize,
    /// Connection slots allocated, free ones included (same bound).
    pub slots: usize,
    /// Bans (at most [`NodeConfig::max_bans`]).
    pub bans: usize,
    /// Per-IP scores (at most [`NodeConfig::max_scores`]).
    pub scores: usize,
    /// Rate limiter log entries (at most [`NodeConfig::rate_log_len`]).
    pub rate_log: usize,
    /// Requests waiting for replies (at most [`NodeConfig::max_pending_requests`]).
    pub requests: usize,
    /// Timer entries (a small multiple of connections plus requests).
    pub timers: usize,
    /// Outputs waiting to be polled (at most 4·[`NodeConfig::max_connections`] +
    /// [`NodeConfig::max_pending_requests`] + 2·[`NodeConfig::max_bans`] + 64).
    pub queued_outputs: usize,
    /// Outputs dropped because outputs were not polled: ban notices only (the ban table stays
    /// right and can be exported); every other output always has room.
    pub dropped_outputs: u64,
}

/// Outputs the node makes itself (owned, queued).
#[derive(Clone, Copy, Debug)]
enum Queued {
    Connect(ConnId, SocketAddr),
    Disconnect(ConnId),
    RequestFailed(ConnId, RequestId, RequestError),
    Reconnecting(ConnId, Instant, u32),
    Removed(ConnId, (usize, usize)),
    Banned(IpAddr, Instant),
    Unbanned(IpAddr),
}

impl Queued {
    fn output(self) -> Output<'static> {
        match self {
            Queued::Connect(id, addr) => Output::Connect { id, addr },
            Queued::Disconnect(id) => Output::Disconnect { id },
            Queued::RequestFailed(id, request, error) => {
                Output::RequestFailed { id, request, error }
            }
            Queued::Reconnecting(id, at, attempt) => Output::Reconnecting { id, at, attempt },
            Queued::Removed(id, unsent) => Output::Removed { id, unsent },
            Queued::Banned(ip, until) => Output::Banned { ip, until },
            Queued::Unbanned(ip) => Output::Unbanned { ip },
        }
    }
}

/// Whether we opened a connection or accepted it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Outgoing,
    Incoming,
}

// Slots hold a live connection most of the time, and boxing it would need an allocator.
#[allow(clippy::large_enum_variant)]
enum State<S: Storage> {
    Free,
    Live(Connection<S>),
    /// Outgoing, between TCP connections: reconnect at `at`.
    Waiting {
        outbox: Outbox<S>,
        at: Instant,
    },
}

impl<S: Storage> State<S> {
    fn live(&self) -> Option<&Connection<S>> {
        match self {
            State::Live(conn) => Some(conn),
            _ => None,
        }
    }

    fn live_mut(&mut self) -> Option<&mut Connection<S>> {
        match self {
            State::Live(conn) => Some(conn),
            _ => None,
        }
    }

    /// When the slot next needs [`Node::handle_timeout`]: the connection's deadline, or the
    /// reconnect.
    fn deadline(&self) -> Option<Instant> {
        match self {
            State::Live(conn) => conn.poll_timeout(),
            State::Waiting { at, .. } => Some(*at),
            State::Free => None,
        }
    }
}

struct Slot<S: Storage> {
    generation: u32,
    state: State<S>,
    direction: Direction,
    peer: SocketAddr,
    /// Failed connects in a row (the C++ backoff step); back to 0 when a write on the socket
    /// completes (spec §8.2), not on connect.
    attempts: u32,
    /// Connections in a row that dropped within [`NodeConfig::stable_after`] of connecting.
    quick_drops: u32,
    /// When the current TCP connection came up (outgoing).
    connected_at: Option<Instant>,
    /// Earliest deadline in the timer heap for this slot.
    scheduled: Option<Instant>,
    in_ready: bool,
    transmit_notified: bool,
    awaiting_login: bool,
    /// [`Node::close`] was called: never reconnect, whatever the close reason.
    closing: bool,
    /// The adapter was told to connect and has not answered yet.
    dialing: bool,
    /// Where the pieces of the message being received in pieces go.
    sequence: Option<Streaming>,
}

/// The route of a message received in pieces, decided at its start.
#[derive(Clone, Copy, Debug)]
enum Streaming {
    /// The reply to this request.
    Reply(i32),
    /// A message for these handles.
    Routed(HandleSet),
}

/// Timer heap keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Slot(u32),
    Request(i32),
    Bans,
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    conn: ConnId,
    deadline: Instant,
    /// The request's service: a reply comes on the same service.
    service: i32,
    /// Its reply is arriving in pieces: no timeout.
    streaming: bool,
    /// Its message's serial in the connection's normal-priority queue (see
    /// [`Node::fail_requests_written_on`]).
    serial: u64,
}

/// The Meta service's CommandFailed (service 0, message 2), the Hub's error reply to any
/// request (spec §9.3).
const COMMAND_FAILED: (i32, Option<i32>) = (0, Some(2));

impl Pending {
    /// Whether a message on `conn` carrying this request's id answers it: a message of the
    /// same service (the Hub answers with message id + 1, spec §9.2; an echo server with the
    /// same id) or a CommandFailed. A message of another service with the same RequestId
    /// (the peer's own request, say) is not a reply.
    fn answered_by(&self, conn: ConnId, header: &Header) -> bool {
        conn == self.conn
            && (header.service_id == self.service
                || (header.service_id, header.message_id) == COMMAND_FAILED)
    }
}

/// Room for every structural output the tables can cause at once (a few per connection, one
/// per request), plus ban notices; saturating, so any configuration works.
fn output_bound(config: &NodeConfig) -> usize {
    config
        .max_connections
        .get()
        .saturating_mul(4)
        .saturating_add(config.max_pending_requests.get())
        .saturating_add(config.max_bans.get().saturating_mul(2))
        .saturating_add(64)
}

/// The C++ reconnect backoff after failed connects: ⌊s³/2⌋ seconds for step s < 5, else 44.
pub fn connect_backoff(attempt: u32) -> Duration {
    match attempt {
        0..=4 => Duration::from_secs(u64::from(attempt.pow(3) / 2)),
        _ => Duration::from_secs(44),
    }
}

/// Many connections with admission, routing, requests, broadcast and reconnects. See the
/// [module documentation](self).
pub struct Node<S: Storage = DefaultStorage> {
    config: NodeConfig,
    now: Instant,
    slots: List<Slot<S>, FIXED_CONNECTIONS>,
    free: List<u32, FIXED_CONNECTIONS>,
    live: usize,
    ready: List<u32, FIXED_CONNECTIONS>,
    queued: bounded::Queue<Queued, FIXED_OUTPUTS>,
    timers: MinHeap<(Instant, Key), FIXED_TIMERS>,
    bans: Bans,
    scores: Scores,
    rate: RateLimiter,
    allowed: AllowList,
    router: Router,
    requests: Map<i32, Pending, FIXED_REQUESTS>,
    next_request: i32,
    /// A connection whose `Closed` was just handed out; freed at the next poll so the id still
    /// works while the application looks at that event.
    remove_next: Option<ConnId>,
    /// Informational outputs (bans) dropped because the output queue was full.
    dropped_outputs: u64,
    /// `RequestFailed` outputs queued and not handed out yet (they count against
    /// [`NodeConfig::max_pending_requests`]).
    failures_queued: usize,
}

impl<S: Storage> fmt::Debug for Node<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("now", &self.now)
            .field("connections", &self.live)
            .field("bans", &self.bans.len())
            .field("requests", &self.requests.len())
            .finish_non_exhaustive()
    }
}

impl<S: Storage> Node<S> {
    /// A node with no connections.
    pub fn new(now: Instant, config: NodeConfig) -> Self {
        let max = config.max_connections.get();
        Node {
            now,
            slots: List::new(max),
            free: List::new(max),
            live: 0,
            ready: List::new(max),
            queued: bounded::Queue::new(output_bound(&config)),
            timers: MinHeap::new(usize::MAX),
            bans: Bans::new(config.max_bans.get()),
            scores: Scores::new(config.max_scores.get(), config.score_decay_per_hour),
            rate: RateLimiter::new(config.rate_log_len.get()),
            allowed: AllowList::new(config.max_allowed.get()),
            router: Router::new(),
            requests: Map::new(config.max_pending_requests.get()),
            next_request: 0,
            remove_next: None,
            dropped_outputs: 0,
            failures_queued: 0,
            config,
        }
    }

    /// The settings.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// How full each table is, to check against the configured bounds.
    pub fn usage(&self) -> NodeUsage {
        NodeUsage {
            connections: self.live,
            slots: self.slots.len(),
            bans: self.bans.len(),
            scores: self.scores.len(),
            rate_log: self.rate.len(),
            requests: self.requests.len(),
            timers: self.timers.len(),
            queued_outputs: self.queued.len(),
            dropped_outputs: self.dropped_outputs,
        }
    }

    /// Connections held (live or waiting to reconnect).
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether the node holds no connection.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    fn tick(&mut self, now: Instant) -> Instant {
        if now > self.now {
            self.now = now;
        }
        self.now
    }

    fn connection_config(&self, direction: Direction) -> Config {
        let mut c = self.config.connection;
        // The node bans per address; a connection never bans itself first.
        c.ban_threshold = NonZeroU32::MAX;
        if direction == Direction::Incoming && self.config.require_login.is_some() {
            c.introduction_timeout = c.introduction_timeout.or(Some(Duration::from_secs(4)));
        }
        c
    }

    fn slot(&self, id: ConnId) -> Result<&Slot<S>, NodeError> {
        match self.slots.get(id.index as usize) {
            Some(s) if s.generation == id.generation && !matches!(s.state, State::Free) => Ok(s),
            _ => Err(NodeError::UnknownConnection(id)),
        }
    }

    fn slot_mut(&mut self, id: ConnId) -> Result<&mut Slot<S>, NodeError> {
        match self.slots.get_mut(id.index as usize) {
            Some(s) if s.generation == id.generation && !matches!(s.state, State::Free) => Ok(s),
            _ => Err(NodeError::UnknownConnection(id)),
        }
    }

    /// The live connection in slot `index`, whatever its generation.
    fn live_at(&mut self, index: u32) -> Option<&mut Connection<S>> {
        self.slots.get_mut(index as usize)?.state.live_mut()
    }

    fn id_of(&self, index: u32) -> ConnId {
        let generation = self.slots.get(index as usize).map_or(0, |s| s.generation);
        ConnId::new(index, generation)
    }

    /// Takes a free slot for a new connection.
    fn allocate(
        &mut self,
        state: State<S>,
        direction: Direction,
        peer: SocketAddr,
    ) -> Option<ConnId> {
        if self.live >= self.config.max_connections.get() {
            return None;
        }
        let slot = Slot {
            generation: 1,
            state,
            direction,
            peer,
            attempts: 0,
            quick_drops: 0,
            connected_at: None,
            scheduled: None,
            in_ready: false,
            transmit_notified: false,
            awaiting_login: direction == Direction::Incoming && self.config.require_login.is_some(),
            closing: false,
            dialing: false,
            sequence: None,
        };
        let index = match self.free.pop() {
            Some(i) => {
                let old = self.slots.get_mut(i as usize)?;
                let generation = old.generation.wrapping_add(1).max(1);
                // The index may still be in the ready list; it must not go in twice.
                let in_ready = old.in_ready;
                *old = Slot {
                    generation,
                    in_ready,
                    ..slot
                };
                i
            }
            None => {
                let i = self.slots.len() as u32;
                self.slots.push(slot).ok()?;
                i
            }
        };
        self.live += 1;
        Some(self.id_of(index))
    }

    /// Command: open a connection to `addr` (an [`Output::Connect`] follows). Messages can be
    /// sent to it at once; they wait until it is up.
    pub fn connect(&mut self, now: Instant, addr: SocketAddr) -> Result<ConnId, NodeError> {
        let now = self.tick(now);
        let conn = Connection::connecting(now, self.connection_config(Direction::Outgoing));
        let id = self
            .allocate(State::Live(conn), Direction::Outgoing, addr)
            .ok_or(NodeError::TooManyConnections)?;
        self.queue(Queued::Connect(id, addr));
        Ok(id)
    }

    /// Input: a TCP connection from `peer` was accepted. Refused ones must be closed at once.
    pub fn accept(&mut self, now: Instant, peer: SocketAddr) -> Result<ConnId, Refused> {
        let now = self.tick(now);
        let ip = peer.ip();
        let exempt = self.allowed.contains(ip);
        if !exempt {
            if let Some(until) = self.bans.banned_until(ip, now) {
                return Err(Refused::Banned { until });
            }
            if self.rate_limited(ip) && !self.rate.allows(ip, now) {
                return Err(Refused::RateLimited);
            }
            if let Some(max) = self.config.max_connections_per_ip {
                let from_ip = self
                    .slots
                    .iter()
                    .filter(|s| {
                        matches!(s.state, State::Live(_))
                            && s.direction == Direction::Incoming
                            && admission::canonical(s.peer.ip()) == admission::canonical(ip)
                    })
                    .count();
                if from_ip >= max.get() as usize {
                    return Err(Refused::TooManyFromAddress);
                }
            }
        }
        let conn = Connection::accepted(now, self.connection_config(Direction::Incoming));
        let id = self
            .allocate(State::Live(conn), Direction::Incoming, peer)
            .ok_or(Refused::Full)?;
        if !exempt && self.rate_limited(ip) {
            self.rate.record(ip, now);
        }
        self.touch(id.index);
        Ok(id)
    }

    /// Whether the rate limiter looks at `ip` (loopback is neither checked nor recorded).
    fn rate_limited(&self, ip: IpAddr) -> bool {
        self.config.rate_limit && !ip.to_canonical().is_loopback()
    }

    /// Input: the TCP connect for `id` succeeded. Ignored unless a connect was asked for.
    pub fn handle_connected(&mut self, now: Instant, id: ConnId) -> Result<(), NodeError> {
        let now = self.tick(now);
        let cookie = self.config.login_cookie.clone();
        let slot = self.slot_mut(id)?;
        if !core::mem::take(&mut slot.dialing) {
            return Ok(());
        }
        slot.connected_at = Some(now);
        if let Some(conn) = slot.state.live_mut() {
            conn.handle_connected(now);
            if let Some(cookie) = cookie {
                let mut body = [0u8; 140];
                let mut w = crate::cmf::Writer::new(&mut body[..]);
                w.add(LOGIN_TAG, crate::cmf::Value::String(cookie.as_bytes()));
                if let Ok(body) = w.finish() {
                    let header = Header::new(LOGIN_SERVICE, LOGIN_MESSAGE);
                    let _ = conn.send_first(now, Message::new(&header, body));
                }
            }
        }
        self.touch(id.index);
        Ok(())
    }

    /// Input: the TCP connect for `id` failed. The node decides when to try again
    /// (backoff 0, 4, 13, 32, 44, 44… s). Ignored unless a connect was asked for.
    pub fn handle_connect_failed(&mut self, now: Instant, id: ConnId) -> Result<(), NodeError> {
        let now = self.tick(now);
        let slot = self.slot_mut(id)?;
        if !core::mem::take(&mut slot.dialing) {
            return Ok(());
        }
        // Closed by `close` or a ban: its `Closed` event (reported already, or next) removes
        // it through the deferred path. Removing it here could free the slot while a removal
        // of it is pending.
        if slot.closing || !matches!(&slot.state, State::Live(conn) if !conn.is_closed()) {
            self.touch(id.index);
            return Ok(());
        }
        let State::Live(conn) = core::mem::replace(&mut slot.state, State::Free) else {
            return Ok(());
        };
        slot.attempts = slot.attempts.saturating_add(1);
        let attempt = slot.attempts;
        let at = now + connect_backoff(attempt);
        slot.state = State::Waiting {
            outbox: conn.into_outbox(),
            at,
        };
        self.queue(Queued::Reconnecting(id, at, attempt));
        self.touch(id.index);
        Ok(())
    }

    /// Input: bytes from `id`'s socket; returns how many were taken (see
    /// [`Connection::handle_input`]).
    pub fn handle_input(
        &mut self,
        now: Instant,
        id: ConnId,
        data: &[u8],
    ) -> Result<usize, NodeError> {
        let now = self.tick(now);
        let slot = self.slot_mut(id)?;
        let n = match slot.state.live_mut() {
            Some(conn) => conn.handle_input(now, data),
            None => data.len(),
        };
        self.touch(id.index);
        Ok(n)
    }

    /// Input without a copy: lends the free room of `id`'s receive buffer, so its socket can
    /// read straight into it (see [`Connection::input_room`]). The room is empty when `id`
    /// takes no input now: poll outputs, then ask again.
    pub fn input_room(&mut self, id: ConnId) -> Result<NodeInputRoom<'_, S>, NodeError> {
        let slot = self.slot_mut(id)?;
        let len = slot
            .state
            .live_mut()
            .map_or(0, |conn| conn.prepare_input_room());
        // Making the room may have armed the buffer release (see
        // `Connection::prepare_input_room`), even if nothing is committed.
        if len > 0 {
            self.schedule(id.index);
        }
        Ok(NodeInputRoom {
            node: self,
            index: id.index,
            len,
        })
    }

    /// Input: `id`'s socket reached EOF or broke.
    pub fn handle_eof(&mut self, now: Instant, id: ConnId) -> Result<(), NodeError> {
        let now = self.tick(now);
        if let Some(conn) = self.slot_mut(id)?.state.live_mut() {
            conn.handle_eof(now);
        }
        self.touch(id.index);
        Ok(())
    }

    /// Input: the clock reached [`Node::poll_timeout`] (extra calls are harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.tick(now);
        while let Some((at, key)) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            match key {
                Key::Slot(index) => self.slot_timeout(now, index, at),
                Key::Request(rid) => {
                    if self
                        .requests
                        .get(&rid)
                        .is_some_and(|p| p.deadline <= now && !p.streaming)
                    {
                        if let Some(p) = self.requests.remove(&rid) {
                            self.queue(Queued::RequestFailed(
                                p.conn,
                                RequestId(rid),
                                RequestError::Timeout,
                            ));
                        }
                    }
                }
                Key::Bans => {
                    let mut ended = List::<IpAddr, { admission::FIXED_BANS }>::new(usize::MAX);
                    self.bans.expire(now, |ip| {
                        let _ = ended.push(ip);
                    });
                    for ip in ended.iter() {
                        self.queue(Queued::Unbanned(*ip));
                    }
                    self.scores.prune(now);
                    if let Some(next) = self.bans.next_expiry() {
                        self.push_timer(next, Key::Bans);
                    }
                }
            }
        }
    }

    fn slot_timeout(&mut self, now: Instant, index: u32, at: Instant) {
        let Some(slot) = self.slots.get_mut(index as usize) else {
            return;
        };
        if slot.scheduled != Some(at) {
            return; // stale entry
        }
        slot.scheduled = None;
        match &mut slot.state {
            State::Live(conn) => conn.handle_timeout(now),
            State::Waiting { at, .. } if *at <= now => {
                let State::Waiting { outbox, .. } =
                    core::mem::replace(&mut slot.state, State::Free)
                else {
                    return;
                };
                let mut config = self.config.connection;
                config.ban_threshold = NonZeroU32::MAX;
                slot.state = State::Live(Connection::with_outbox(
                    now,
                    Role::Connecting,
                    config,
                    outbox,
                ));
                slot.transmit_notified = false;
                let (id, addr) = (ConnId::new(index, slot.generation), slot.peer);
                self.queue(Queued::Connect(id, addr));
            }
            _ => {}
        }
        self.touch(index);
    }

    /// Marks a slot for event polling and brings its timer up to date.
    fn touch(&mut self, index: u32) {
        self.mark_ready(index);
        self.schedule(index);
    }

    /// [`Node::touch`] for a change that moves no deadline (a message queued).
    fn mark_ready(&mut self, index: u32) {
        let Some(slot) = self.slots.get_mut(index as usize) else {
            return;
        };
        if !slot.in_ready {
            slot.in_ready = true;
            let _ = self.ready.push(index);
        }
    }

    fn push_timer(&mut self, at: Instant, key: Key) {
        // Stale entries are skipped when they come up; if they pile up, start over from the
        // deadlines that are current.
        let bound = 4 * (self.slots.len() + self.requests.len()) + 64;
        if self.timers.len() >= bound || self.timers.is_full() {
            self.rebuild_timers();
        }
        // After a rebuild the heap holds one entry per deadline, within its size.
        let _ = self.timers.push((at, key));
    }

    fn rebuild_timers(&mut self) {
        self.timers.clear();
        for (i, s) in self.slots.iter_mut().enumerate() {
            s.scheduled = s.state.deadline();
            if let Some(d) = s.scheduled {
                self.timers.push((d, Key::Slot(i as u32)));
            }
        }
        for (rid, p) in self.requests.iter() {
            self.timers.push((p.deadline, Key::Request(*rid)));
        }
        if let Some(next) = self.bans.next_expiry() {
            self.timers.push((next, Key::Bans));
        }
    }

    fn queue(&mut self, q: Queued) {
        if let Queued::RequestFailed(..) = q {
            self.failures_queued += 1;
        }
        let Err(q) = self.queued.push(q) else {
            return;
        };
        // Full (the adapter is not polling): ban notices give way; the ban table itself stays
        // right and can be exported. Everything else fits by construction.
        let informational = |q: &Queued| matches!(q, Queued::Banned(..) | Queued::Unbanned(..));
        if self.queued.remove_first(informational) {
            self.dropped_outputs += 1;
            let _ = self.queued.push(q);
        } else if informational(&q) {
            self.dropped_outputs += 1;
        } else if self.queued.push(q).is_err() {
            // Cannot happen: the bound has room for every structural output, and requests
            // count until their failure is handed out. Counted, should it ever.
            self.dropped_outputs += 1;
            if let Queued::RequestFailed(..) = q {
                self.failures_queued -= 1;
            }
            // Checked by the `node` fuzz target, which runs with debug assertions.
            debug_assert!(false, "the output queue's bound is too small");
        }
    }

    /// Output: when [`Node::handle_timeout`] should be called next (possibly a little early).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|(at, _)| at)
    }

    /// Command: queue a message on `id` (see [`Connection::send`]).
    pub fn send<'a>(
        &mut self,
        now: Instant,
        id: ConnId,
        message: Message<'a>,
        priority: Priority,
    ) -> Result<(), SendError<Message<'a>>> {
        let now = self.tick(now);
        let Ok(slot) = self.slot_mut(id) else {
            return Err(SendError::UnknownConnection(message));
        };
        let result = match &mut slot.state {
            State::Live(conn) => conn.send(now, message, priority),
            State::Waiting { outbox, .. } => outbox.send(message, priority),
            State::Free => Err(SendError::UnknownConnection(message)),
        };
        // Queuing sets no timer (`Connection::send` and `Outbox::send` leave them alone).
        self.mark_ready(id.index);
        result
    }

    /// Command: send a request; the reply comes as [`Output::Reply`], or
    /// [`Output::RequestFailed`] after `timeout`. The node sets the RequestId (header tag 11).
    /// A reply is a message on the same connection with that RequestId, on the same service
    /// (the Hub answers with message id + 1, spec §9.2, an echo with the same id; any id is
    /// taken), or a CommandFailed (service 0, message 2, §9.3); any other message, even with
    /// that RequestId, is routed as usual.
    /// [`SendError::QueueFull`] when [`NodeConfig::max_pending_requests`] are pending. An
    /// error gives the message back as it was given, without the RequestId.
    pub fn request<'a>(
        &mut self,
        now: Instant,
        id: ConnId,
        message: Message<'a>,
        timeout: Duration,
    ) -> Result<RequestId, SendError<Message<'a>>> {
        let now = self.tick(now);
        if self.slot(id).is_err() {
            return Err(SendError::UnknownConnection(message));
        }
        // A request counts until its reply or failure is handed out, so every failure has
        // room in the output queue.
        if self.requests.len().saturating_add(self.failures_queued) >= self.requests.capacity() {
            return Err(SendError::QueueFull(message));
        }
        let rid = self.fresh_request_id();
        let mut header = *message.header;
        if header.ints.set(tags::REQUEST_ID, rid).is_err() {
            return Err(SendError::Invalid(
                message,
                crate::frame::EncodeError::HeaderFull,
            ));
        }
        let deadline = now + timeout;
        // A refused request gives back the caller's message, without the RequestId.
        self.send(
            now,
            id,
            Message::new(&header, message.body),
            Priority::Normal,
        )
        .map_err(|e| e.map(|_| message))?;
        let serial = match self.slot(id).map(|s| &s.state) {
            Ok(State::Live(conn)) => conn.outbox().normal_serial(),
            Ok(State::Waiting { outbox, .. }) => outbox.normal_serial(),
            // Cannot happen (the send went into one of the two); never counts as sent.
            _ => u64::MAX,
        };
        let pending = Pending {
            conn: id,
            deadline,
            service: message.header.service_id,
            streaming: false,
            serial,
        };
        let _ = self.requests.insert(rid, pending);
        self.push_timer(deadline, Key::Request(rid));
        Ok(RequestId(rid))
    }

    fn fresh_request_id(&mut self) -> i32 {
        loop {
            self.next_request = if self.next_request >= i32::MAX - 1 {
                1
            } else {
                self.next_request + 1
            };
            if self.requests.get(&self.next_request).is_none() {
                return self.next_request;
            }
        }
    }

    /// Command: queue one message on many connections, encoded once (with `alloc` one shared
    /// buffer). Connections that cannot take it are reported to `refused` (the id and why);
    /// returns how many queued it.
    pub fn broadcast(
        &mut self,
        now: Instant,
        message: &Message<'_>,
        priority: Priority,
        to: impl IntoIterator<Item = ConnId>,
        mut refused: impl FnMut(ConnId, SendError<()>),
    ) -> usize {
        let now = self.tick(now);
        #[cfg(feature = "alloc")]
        let encoded = match EncodedMessage::new(message) {
            Ok(e) => e,
            Err(e) => {
                for id in to {
                    refused(id, SendError::Invalid((), e));
                }
                return 0;
            }
        };
        let mut queued = 0;
        for id in to {
            let Ok(slot) = self.slot_mut(id) else {
                refused(id, SendError::UnknownConnection(()));
                continue;
            };
            #[cfg(feature = "alloc")]
            let result = match &mut slot.state {
                State::Live(conn) => conn
                    .send_encoded(now, &encoded, priority)
                    .map_err(|e| e.map(drop)),
                State::Waiting { outbox, .. } => outbox
                    .send_encoded(&encoded, priority)
                    .map_err(|e| e.map(drop)),
                State::Free => Err(SendError::UnknownConnection(())),
            };
            #[cfg(not(feature = "alloc"))]
            let result = match &mut slot.state {
                State::Live(conn) => conn.send(now, *message, priority).map_err(|e| e.map(drop)),
                State::Waiting { outbox, .. } => {
                    outbox.send(*message, priority).map_err(|e| e.map(drop))
                }
                State::Free => Err(SendError::UnknownConnection(())),
            };
            match result {
                Ok(()) => queued += 1,
                Err(e) => refused(id, e),
            }
            self.touch(id.index);
        }
        queued
    }

    /// Command: close `id` for good (no reconnect); its [`Output::Removed`] follows.
    pub fn close(&mut self, now: Instant, id: ConnId) -> Result<(), NodeError> {
        let now = self.tick(now);
        let slot = self.slot_mut(id)?;
        slot.closing = true;
        match &mut slot.state {
            State::Live(conn) => conn.close(now),
            State::Waiting { .. } => {
                self.remove(id.index);
                return Ok(());
            }
            State::Free => {}
        }
        self.touch(id.index);
        Ok(())
    }

    /// Command: add misbehaviour points to `id` and its address (see
    /// [`Connection::punish`]); at the threshold the address is banned.
    pub fn punish(&mut self, now: Instant, id: ConnId, points: u32) -> Result<(), NodeError> {
        self.tick(now);
        let slot = self.slot_mut(id)?;
        // The connection reports it as an event; the address is scored here and now, so a
        // close right after cannot lose the points.
        if let Some(conn) = slot.state.live_mut() {
            conn.punish(points);
        }
        self.touch(id.index);
        self.on_misbehaved(id.index, points);
        Ok(())
    }

    /// The misbehaviour score of an address.
    pub fn score(&self, ip: IpAddr) -> u32 {
        self.scores.get(ip, self.now)
    }

    /// Command: ban an address for [`NodeConfig::ban_duration`]; its connections close.
    pub fn ban(&mut self, now: Instant, ip: IpAddr) {
        let now = self.tick(now);
        let until = now + self.config.ban_duration;
        let change = self.bans.ban(ip, until);
        self.note_ban(change, ip);
        self.scores.forget(ip);
        let ip = admission::canonical(ip);
        self.close_peers(now, |_, peer| admission::canonical(peer) == ip);
    }

    /// Connections to or from the addresses `banned` picks close as banned, and those
    /// waiting to reconnect to one never do.
    fn close_peers(&mut self, now: Instant, banned: impl Fn(&Bans, IpAddr) -> bool) {
        for i in 0..self.slots.len() as u32 {
            let Some(slot) = self.slots.get_mut(i as usize) else {
                continue;
            };
            if !banned(&self.bans, slot.peer.ip()) {
                continue;
            }
            slot.closing = true;
            match &mut slot.state {
                State::Live(conn) => {
                    conn.force_close(now, CloseReason::Banned);
                    self.touch(i);
                }
                State::Waiting { .. } => self.remove(i),
                State::Free => {}
            }
        }
    }

    /// Reports a change of the ban table and keeps its expiry timer.
    fn note_ban(&mut self, change: BanChange, ip: IpAddr) {
        match change {
            BanChange::Added { evicted } => {
                if let Some(old) = evicted {
                    self.queue(Queued::Unbanned(old.ip));
                }
                if let Some(until) = self.bans.banned_until(ip, self.now) {
                    self.queue(Queued::Banned(ip, until));
                }
            }
            BanChange::Extended => {
                if let Some(until) = self.bans.banned_until(ip, self.now) {
                    self.queue(Queued::Banned(ip, until));
                }
            }
            BanChange::Dropped => {}
        }
        if let Some(next) = self.bans.next_expiry() {
            self.push_timer(next, Key::Bans);
        }
    }

    /// Command: lift a ban.
    pub fn unban(&mut self, ip: IpAddr) {
        if self.bans.unban(ip) {
            self.queue(Queued::Unbanned(ip));
        }
    }

    /// When the ban on `ip` ends, if it is banned.
    pub fn banned_until(&self, ip: IpAddr) -> Option<Instant> {
        self.bans.banned_until(ip, self.now)
    }

    /// The bans in force, as plain data with wall-clock ends (`unix_now`: the current time in
    /// seconds since 1970), to persist across restarts.
    pub fn export_bans(&self, unix_now: u64) -> impl Iterator<Item = BanRecord> + '_ {
        self.bans.export(self.now, unix_now)
    }

    /// Restores bans saved with [`Node::export_bans`]; ones already over are skipped, and a ban
    /// never gets shorter. Connections of the addresses it bans anew close, as with
    /// [`Node::ban`]. Returns how many records were taken (added or extending a ban),
    /// leaving out those that later records of the same import pushed out of a full table
    /// (it keeps the bans ending last). The restored bans are not reported as [`Output::Banned`] (the
    /// caller has them); bans from before that made room are reported as
    /// [`Output::Unbanned`].
    pub fn import_bans(
        &mut self,
        now: Instant,
        unix_now: u64,
        records: impl IntoIterator<Item = BanRecord>,
    ) -> usize {
        let now = self.tick(now);
        let import = self.bans.begin_import();
        let mut taken = 0usize;
        for record in records {
            match self.bans.import(now, unix_now, record, import) {
                Some(BanChange::Added { evicted }) => {
                    taken += 1;
                    match evicted {
                        // Added and pushed out by this same import: never in force for the
                        // caller, so nothing to report.
                        Some(old) if old.same_import => taken = taken.saturating_sub(1),
                        // Reported at once: nothing is collected, so nothing is cut off.
                        Some(old) => self.queue(Queued::Unbanned(old.ip)),
                        None => {}
                    }
                }
                Some(BanChange::Extended) => taken += 1,
                Some(BanChange::Dropped) | None => {}
            }
        }
        if let Some(next) = self.bans.next_expiry() {
            self.push_timer(next, Key::Bans);
        }
        self.close_peers(now, |bans, peer| bans.added_by(peer, import));
        taken
    }

    /// Command: exempt an address from bans and rate limits; false if the allow-list is full.
    pub fn allow(&mut self, ip: IpAddr) -> bool {
        self.allowed.add(ip)
    }

    /// Command: remove an address from the allow-list.
    pub fn disallow(&mut self, ip: IpAddr) {
        self.allowed.remove(ip);
    }

    /// Command: a handle (a part of the application) with this scope.
    pub fn open_handle(&mut self, scope: Scope) -> Result<HandleId, NodeError> {
        if let Scope::Connection(id) = scope {
            self.slot(id)?;
        }
        Ok(self.router.open(scope)?)
    }

    /// Command: close a handle; only its own subscriptions go.
    pub fn close_handle(&mut self, handle: HandleId) -> Result<(), NodeError> {
        Ok(self.router.close(handle)?)
    }

    /// Command: `handle` receives messages of `service` (and `message`, if given).
    pub fn subscribe(
        &mut self,
        handle: HandleId,
        service: i32,
        message: Option<i32>,
    ) -> Result<(), NodeError> {
        Ok(self.router.subscribe(handle, service, message)?)
    }

    /// Command: undoes a [`Node::subscribe`].
    pub fn unsubscribe(
        &mut self,
        handle: HandleId,
        service: i32,
        message: Option<i32>,
    ) -> Result<(), NodeError> {
        Ok(self.router.unsubscribe(handle, service, message)?)
    }

    /// The connection of `id`, if it has a live one (not while waiting to reconnect).
    pub fn connection(&self, id: ConnId) -> Option<&Connection<S>> {
        self.slot(id).ok()?.state.live()
    }

    /// Bytes waiting to be sent on `id`, also while it waits to reconnect (they go out after
    /// the reconnect); `None` if there is no such connection.
    pub fn queued_bytes(&self, id: ConnId) -> Option<usize> {
        match &self.slot(id).ok()?.state {
            State::Live(conn) => Some(conn.queued_bytes()),
            State::Waiting { outbox, .. } => Some(outbox.pending_bytes()),
            State::Free => None,
        }
    }

    /// Moves the body of the [`Output::Message`] or [`Output::Reply`] just polled from `id`
    /// into `out` without copying, if it was reassembled from a sequence; see
    /// [`Connection::take_body`]. The way to keep a large body while replying through the
    /// node.
    #[cfg(feature = "alloc")]
    pub fn take_body(&mut self, id: ConnId, out: &mut alloc::vec::Vec<u8>) -> Option<usize> {
        self.slot_mut(id).ok()?.state.live_mut()?.take_body(out)
    }

    /// The peer address of `id`.
    pub fn peer(&self, id: ConnId) -> Option<SocketAddr> {
        self.slot(id).ok().map(|s| s.peer)
    }

    /// Whether we opened `id` (true) or accepted it.
    pub fn is_outgoing(&self, id: ConnId) -> Option<bool> {
        self.slot(id)
            .ok()
            .map(|s| s.direction == Direction::Outgoing)
    }

    /// Every connection held.
    pub fn connections(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !matches!(s.state, State::Free))
            .map(|(i, s)| ConnId::new(i as u32, s.generation))
    }

    /// Output: bytes to write on `id`'s socket (see [`Connection::poll_transmit`]).
    pub fn poll_transmit(&mut self, id: ConnId) -> Option<&[u8]> {
        let slot = self.slot_mut(id).ok()?;
        match &mut slot.state {
            State::Live(conn) if conn.wants_transmit() => conn.poll_transmit(),
            _ => {
                slot.transmit_notified = false;
                None
            }
        }
    }

    /// Input: `n` bytes of the last [`Node::poll_transmit`] for `id` were written.
    pub fn consume_transmit(&mut self, id: ConnId, n: usize) {
        if let Ok(slot) = self.slot_mut(id) {
            if let Some(conn) = slot.state.live_mut() {
                conn.consume_transmit(n);
                // A completed write ends the run of failed connects (spec §8.2).
                if n > 0 {
                    slot.attempts = 0;
                }
                if !conn.wants_transmit() {
                    slot.transmit_notified = false;
                }
            }
            self.touch(id.index);
        }
    }

    /// Frees a slot, failing its requests and handles.
    fn remove(&mut self, index: u32) {
        let id = self.id_of(index);
        let Some(slot) = self.slots.get_mut(index as usize) else {
            return;
        };
        let unsent = match core::mem::replace(&mut slot.state, State::Free) {
            State::Live(conn) => conn.into_outbox().len(),
            State::Waiting { outbox, .. } => outbox.len(),
            State::Free => return,
        };
        slot.scheduled = None;
        self.live -= 1;
        let _ = self.free.push(index);
        self.router.forget_connection(id);
        // A connect not handed out yet is for a connection that no longer exists.
        self.queued
            .retain(|q| !matches!(q, Queued::Connect(c, _) if *c == id));
        self.fail_requests(id, |_| true);
        self.queue(Queued::Removed(id, unsent));
    }

    /// A connection closed: reconnect it later, or remove it.
    fn on_closed(&mut self, index: u32, reason: CloseReason) {
        let id = self.id_of(index);
        self.queue(Queued::Disconnect(id));
        let now = self.now;
        let after_drop = self.config.reconnect_after_drop;
        let stable_after = self.config.stable_after;
        let Some(slot) = self.slots.get_mut(index as usize) else {
            return;
        };
        // An answer to a connect still in flight is for a socket that is being closed.
        slot.dialing = false;
        let connected_at = slot.connected_at.take();
        if slot.direction == Direction::Outgoing && reason.should_reconnect() && !slot.closing {
            if !matches!(slot.state, State::Live(_)) {
                return;
            }
            let State::Live(conn) = core::mem::replace(&mut slot.state, State::Free) else {
                return;
            };
            let (delay, attempt) = match connected_at {
                // Healthy: reconnect promptly (spec §13.8).
                Some(at) if now - at >= stable_after => {
                    slot.quick_drops = 0;
                    (after_drop, 0)
                }
                // Dropped soon after connecting (a peer that accepts and closes at once): back
                // off, even when a write completed and reset the failed-connect count.
                Some(_) => {
                    slot.quick_drops = slot.quick_drops.saturating_add(1);
                    (
                        connect_backoff(slot.quick_drops).max(after_drop),
                        slot.quick_drops,
                    )
                }
                // Never connected: a failed connect.
                None => {
                    slot.attempts = slot.attempts.saturating_add(1);
                    (connect_backoff(slot.attempts), slot.attempts)
                }
            };
            let at = now + delay;
            slot.state = State::Waiting {
                outbox: conn.into_outbox(),
                at,
            };
            slot.transmit_notified = false;
            self.queue(Queued::Reconnecting(id, at, attempt));
            self.touch(index);
            self.fail_requests_written_on(index);
        } else {
            // Freed at the next poll, after the application has seen the `Closed`.
            self.remove_next = Some(id);
        }
    }

    /// After a drop, before the reconnect: the requests of the connection that the old socket
    /// took whole fail ([`RequestError::Closed`]), as their replies could only have come on it.
    /// Those still queued (one taken in part among them) go out whole on the next socket. The
    /// queue's serials tell them apart, not their RequestIds, which the application's own
    /// messages may carry too.
    fn fail_requests_written_on(&mut self, index: u32) {
        let id = self.id_of(index);
        let Some(State::Waiting { outbox, .. }) = self.slots.get(index as usize).map(|s| &s.state)
        else {
            return;
        };
        let sent = outbox.normal_sent();
        self.fail_requests(id, |p| p.serial <= sent);
    }

    /// Fails the requests of `id` that `fails` picks, with [`RequestError::Closed`].
    fn fail_requests(&mut self, id: ConnId, fails: impl Fn(&Pending) -> bool) {
        let mut failed = List::<i32, FIXED_REQUESTS>::new(usize::MAX);
        self.requests.retain(|rid, p| {
            let keep = p.conn != id || !fails(p);
            if !keep {
                let _ = failed.push(*rid);
            }
            keep
        });
        for rid in failed.iter() {
            self.queue(Queued::RequestFailed(
                id,
                RequestId(*rid),
                RequestError::Closed,
            ));
        }
    }

    /// Per-IP scoring of a misbehaviour; bans at the threshold.
    fn on_misbehaved(&mut self, index: u32, points: u32) {
        let Some(slot) = self.slots.get(index as usize) else {
            return;
        };
        let ip = slot.peer.ip();
        if self.allowed.contains(ip) {
            return;
        }
        let score = self.scores.add(ip, self.now, points);
        if score >= self.config.ban_threshold.get() {
            self.ban(self.now, ip);
        }
    }

    /// Output: the next thing to do or deliver.
    pub fn poll_output(&mut self) -> Option<Output<'_>> {
        loop {
            // Only if the slot still holds that connection (never a newer one).
            if let Some(id) = self.remove_next.take() {
                if self.slot(id).is_ok() {
                    self.remove(id.index);
                }
            }
            if let Some(q) = self.queued.pop() {
                match q {
                    Queued::Connect(id, _) => {
                        if let Ok(slot) = self.slot_mut(id) {
                            slot.dialing = true;
                        }
                    }
                    Queued::RequestFailed(..) => {
                        self.failures_queued = self.failures_queued.saturating_sub(1)
                    }
                    _ => {}
                }
                return Some(q.output());
            }
            let index = *self.ready.get(0)?;
            match self.next_step(index) {
                Step::Again => {}
                Step::Transmit(id) => return Some(Output::Transmit { id }),
                Step::Event(id, event, handles) => {
                    return Some(Output::Event { id, event, handles });
                }
                // Borrowed data: a path of its own that always returns what it borrows.
                Step::Deliver => return self.deliver(index),
            }
        }
    }

    /// Works out what the ready slot `index` has next, handling what needs no borrow.
    fn next_step(&mut self, index: u32) -> Step {
        let id = self.id_of(index);
        let now = self.now;
        let Some(slot) = self.slots.get_mut(index as usize) else {
            self.ready.swap_remove(0);
            return Step::Again;
        };
        let State::Live(conn) = &mut slot.state else {
            slot.in_ready = false;
            self.ready.swap_remove(0);
            return Step::Again;
        };
        match conn.next_event_borrows() {
            None => {
                slot.in_ready = false;
                self.ready.swap_remove(0);
                let transmit = conn.wants_transmit() && !slot.transmit_notified;
                slot.transmit_notified |= transmit;
                self.schedule(index);
                if transmit {
                    Step::Transmit(id)
                } else {
                    Step::Again
                }
            }
            Some(false) => {
                let Some(event) = conn.poll_prepared_event().and_then(|e| e.to_static()) else {
                    return Step::Again;
                };
                // A message received in pieces that the close cuts off.
                let sequence = match event {
                    Event::Closed { .. } => slot.sequence.take(),
                    _ => None,
                };
                // The handles that watch the connection, before a close forgets them.
                let handles = self.router.watching(id);
                match event {
                    // Application points were scored by `Node::punish` already.
                    Event::Misbehaved { kind, points, .. } if kind != Misbehaviour::Application => {
                        self.on_misbehaved(index, points)
                    }
                    Event::Closed { reason } => {
                        // A reply cut off halfway will not complete.
                        if let Some(Streaming::Reply(rid)) = sequence {
                            if self.requests.remove(&rid).is_some() {
                                self.queue(Queued::RequestFailed(
                                    id,
                                    RequestId(rid),
                                    RequestError::Closed,
                                ));
                            }
                        }
                        self.on_closed(index, reason)
                    }
                    _ => {}
                }
                Step::Event(id, event, handles)
            }
            Some(true) if slot.awaiting_login => {
                let ok = match conn.poll_prepared_event() {
                    Some(Event::Message(m)) => is_login(&m, self.config.require_login.as_ref()),
                    _ => false,
                };
                if ok {
                    slot.awaiting_login = false;
                } else {
                    conn.force_close(now, CloseReason::LoginFailed);
                }
                Step::Again
            }
            Some(true) => Step::Deliver,
        }
    }

    /// Brings the timer of slot `index` up to date.
    fn schedule(&mut self, index: u32) {
        let Some(slot) = self.slots.get_mut(index as usize) else {
            return;
        };
        let deadline = slot.state.deadline();
        if let Some(d) = deadline {
            if slot.scheduled.is_none_or(|s| d < s) {
                slot.scheduled = Some(d);
                self.push_timer(d, Key::Slot(index));
            }
        }
    }

    /// Hands out received data of slot `index` (which [`Node::next_step`] found).
    fn deliver(&mut self, index: u32) -> Option<Output<'_>> {
        let id = self.id_of(index);
        let requests = &mut self.requests;
        let router = &self.router;
        let Slot {
            state, sequence, ..
        } = self.slots.get_mut(index as usize)?;
        let State::Live(conn) = state else {
            return None;
        };
        match conn.poll_prepared_event()? {
            Event::Message(message) => {
                let reply = message.header.request_id().filter(|rid| {
                    requests
                        .get(rid)
                        .is_some_and(|p| p.answered_by(id, message.header))
                });
                Some(match reply {
                    Some(rid) => {
                        requests.remove(&rid);
                        Output::Reply {
                            id,
                            request: RequestId(rid),
                            message,
                        }
                    }
                    None => Output::Message {
                        id,
                        handles: router.matching(id, message.header),
                        message,
                    },
                })
            }
            // A message in pieces: routed (or matched to its request) at its start.
            Event::SequenceStart { header, total } => {
                let route = route_sequence(requests, router, id, &header);
                *sequence = Some(route);
                Some(piece(id, Event::SequenceStart { header, total }, route))
            }
            event => Some(match *sequence {
                Some(route) => {
                    // The end completes a reply.
                    if let Event::SequenceEnd { .. } = event {
                        *sequence = None;
                        if let Streaming::Reply(rid) = route {
                            requests.remove(&rid);
                        }
                    }
                    piece(id, event, route)
                }
                None => Output::Event {
                    id,
                    event,
                    handles: router.watching(id),
                },
            }),
        }
    }
}

/// Where the pieces of a message starting with `header` go: the reply to a request (whose
/// timeout then stops), or the handles the message is for and those watching the connection.
fn route_sequence(
    requests: &mut Map<i32, Pending, FIXED_REQUESTS>,
    router: &Router,
    id: ConnId,
    header: &Header,
) -> Streaming {
    let reply = header
        .request_id()
        .filter(|rid| requests.get(rid).is_some_and(|p| p.answered_by(id, header)));
    match reply.and_then(|rid| requests.get_mut(&rid).map(|p| (rid, p))) {
        Some((rid, pending)) => {
            pending.streaming = true;
            Streaming::Reply(rid)
        }
        None => Streaming::Routed(router.watching(id).union(router.matching(id, header))),
    }
}

/// A piece of a message received in pieces, where `route` says.
fn piece(id: ConnId, event: Event<'_>, route: Streaming) -> Output<'_> {
    match route {
        Streaming::Reply(rid) => Output::ReplyPart {
            id,
            request: RequestId(rid),
            event,
        },
        Streaming::Routed(handles) => Output::Event { id, event, handles },
    }
}

/// What [`Node::next_step`] found.
enum Step {
    Again,
    Transmit(ConnId),
    Event(ConnId, Event<'static>, HandleSet),
    Deliver,
}

/// Whether a message is the historical login with the expected cookie.
fn is_login(m: &Message<'_>, cookie: Option<&Cookie>) -> bool {
    let Some(cookie) = cookie else {
        return true;
    };
    (m.header.service_id, m.header.message_id) == (LOGIN_SERVICE, Some(LOGIN_MESSAGE))
        && crate::cmf::Reader::new(m.body)
            .map_while(Result::ok)
            .any(|t| t.tag == LOGIN_TAG && t.value.as_str_bytes() == Some(cookie.as_bytes()))
}

#[cfg(test)]
mod tests;

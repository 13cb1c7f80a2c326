//! What the `flowee-proto` adapters share, whatever runs them: the [`Service`] trait that
//! handles messages, the [`NodeEvent`]s applications see, and [`Dispatch`], which drains a
//! [`Node`]'s outputs and tells the adapter which sockets to wake, open or close.
//!
//! Nothing here waits, and the only I/O is [`listen`], which opens both servers' listening
//! socket: `flowee-smol` and `flowee-std` call [`Dispatch::pump`] with their node locked and
//! act on the [`Actions`] it returns.

use flowee_proto::frame::MAX_FRAME_LEN;
use flowee_proto::node::{
    ConnId, HandleId, MAX_HANDLES, NodeError, Output, Refused, RequestError, RequestId, Scope,
};
use flowee_proto::{
    CloseReason, Event, Header, Instant, Message, Misbehaviour, Node, OwnedMessage, Priority,
    SendError,
};
use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

/// Something that happened to a node's connections.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeEvent {
    /// A connection is up (ours connected, or we accepted one).
    Connected {
        /// The connection.
        id: ConnId,
        /// The peer.
        peer: SocketAddr,
    },
    /// A connection closed.
    Closed {
        /// The connection.
        id: ConnId,
        /// Why.
        reason: CloseReason,
    },
    /// An outgoing connection will try again.
    Reconnecting {
        /// The connection.
        id: ConnId,
        /// Failed attempts so far.
        attempt: u32,
    },
    /// A connection is gone for good; `unsent` messages (high, normal) were still queued.
    Removed {
        /// The connection.
        id: ConnId,
        /// Messages never sent.
        unsent: (usize, usize),
    },
    /// An incoming connection was refused at accept.
    Refused {
        /// Who.
        peer: SocketAddr,
        /// Why.
        reason: Refused,
    },
    /// A peer misbehaved.
    Misbehaved {
        /// The connection.
        id: ConnId,
        /// What it did.
        kind: Misbehaviour,
        /// Points added.
        points: u32,
        /// The connection's score.
        score: u32,
    },
    /// A ping was answered.
    Pong {
        /// The connection.
        id: ConnId,
        /// The round trip.
        rtt: Duration,
    },
    /// An address was banned.
    Banned {
        /// The address.
        ip: IpAddr,
    },
    /// A ban ended.
    Unbanned {
        /// The address.
        ip: IpAddr,
    },
    /// A [`Service`] panicked while it handled a message from `id`. The panic is caught (the
    /// panic hook has printed it): the message counts as handled, without an answer, and the
    /// adapter and the connection go on.
    ServicePanicked {
        /// The connection the message came on.
        id: ConnId,
        /// The message's service id.
        service: i32,
        /// The message's id, if it had one.
        message: Option<i32>,
    },
}

/// A message delivered to a [`Service`], borrowed for the duration of the call.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The connection it came on.
    pub connection: ConnId,
    /// The peer's address.
    pub peer: Option<SocketAddr>,
    /// The message.
    pub message: Message<'a>,
}

impl Request<'_> {
    /// An owned copy, to work on after the call returns.
    pub fn to_owned(&self) -> OwnedMessage {
        OwnedMessage::from(self.message)
    }
}

/// What a [`Service`] may do while it handles a message: reply, send on other connections,
/// punish or close. Calls go straight into the node (no copy, no allocation).
pub struct Responder<'a> {
    node: &'a mut Node,
    id: ConnId,
    now: Instant,
}

impl<'a> Responder<'a> {
    /// A responder for a message that came on `id`.
    pub fn new(node: &'a mut Node, id: ConnId, now: Instant) -> Self {
        Responder { node, id, now }
    }

    /// Sends a message back on the connection the request came on (normal priority).
    pub fn reply<'m>(&mut self, message: Message<'m>) -> Result<(), SendError<Message<'m>>> {
        self.node.send(self.now, self.id, message, Priority::Normal)
    }

    /// Sends a message on any connection.
    pub fn send<'m>(
        &mut self,
        to: ConnId,
        message: Message<'m>,
        priority: Priority,
    ) -> Result<(), SendError<Message<'m>>> {
        self.node.send(self.now, to, message, priority)
    }

    /// Adds misbehaviour points to the peer (and its address).
    pub fn punish(&mut self, points: u32) {
        let _ = self.node.punish(self.now, self.id, points);
    }

    /// Closes the connection.
    pub fn close(&mut self) {
        let _ = self.node.close(self.now, self.id);
    }

    /// Bytes waiting to be written to the peer the request came from: a service answering a
    /// peer that reads slowly can hold back its replies instead of queueing them.
    pub fn queued(&self) -> usize {
        self.node.queued_bytes(self.id).unwrap_or(0)
    }

    /// The connection the request came on.
    pub fn connection(&self) -> ConnId {
        self.id
    }
}

/// Handles messages. It runs with the node locked: it must be quick and must not call back
/// into the adapter (use the [`Responder`]); for slow work, copy the message
/// ([`Request::to_owned`]) and reply later from elsewhere. A panic in it is caught and reported
/// as [`NodeEvent::ServicePanicked`].
pub trait Service: Send + Sync + 'static {
    /// Handles one message.
    fn call(&self, request: &Request<'_>, out: &mut Responder<'_>);
}

impl<F> Service for F
where
    F: Fn(&Request<'_>, &mut Responder<'_>) + Send + Sync + 'static,
{
    fn call(&self, request: &Request<'_>, out: &mut Responder<'_>) {
        self(request, out)
    }
}

/// A header for a reply: the request's service, message id + 1, and its header ints with
/// tags above 10 (the RequestId among them), as the Hub answers.
pub fn reply_header(request: &Header) -> Header {
    let mut h = Header::new(
        request.service_id,
        request.message_id.unwrap_or(-1).saturating_add(1),
    );
    for (tag, value) in request.ints.iter().filter(|(t, _)| *t > 10) {
        let _ = h.ints.set(tag, value);
    }
    h
}

/// Connections the system may hold, handshake done, before a server accepts them. Rust's
/// `TcpListener::bind` asks for 128: in a burst of connects beyond that, handshakes are dropped
/// and retried a second or more later, so a peer that connected may not be accepted for
/// seconds (the C++ asks for the system's maximum). The system caps this at its own limit
/// (`net.core.somaxconn` on Linux).
pub const LISTEN_BACKLOG: i32 = 4096;

/// A socket listening on `addr` with [`LISTEN_BACKLOG`], otherwise as `TcpListener::bind`
/// makes it (on Unix, the address may be reused at once after a restart).
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// The timeout to give [`Node::request`] for a request that must not fail before `timeout`
/// has passed: the adapters' clocks count whole milliseconds, rounded down, so a deadline
/// counted from one could come up to a millisecond early.
pub fn node_timeout(timeout: Duration) -> Duration {
    timeout.saturating_add(Duration::from_millis(1))
}

/// A one-line description of why a connection closed, for logs.
pub fn describe_close(reason: &CloseReason) -> String {
    format!("{} ({reason})", reason.name())
}

/// Calls `service` with `request`; false if it panicked. A service runs inside the adapter's
/// pump, with the node locked: unwinding out of it would stop whichever task or thread
/// pumped (perhaps the one that runs the node's timers), so the panic ends here.
fn call(service: &dyn Service, request: &Request<'_>, node: &mut Node, now: Instant) -> bool {
    let id = request.connection;
    catch_unwind(AssertUnwindSafe(|| {
        service.call(request, &mut Responder::new(node, id, now))
    }))
    .is_ok()
}

/// What the adapter has to do after a [`Dispatch::pump`]. Keep one and pass it to every
/// pump: its lists are reused, so steady traffic allocates nothing.
#[derive(Debug, Default)]
pub struct Actions {
    /// Connections with bytes to write.
    pub wake: Vec<ConnId>,
    /// Connections whose socket must be closed.
    pub disconnect: Vec<ConnId>,
    /// Connections to open.
    pub connect: Vec<(ConnId, SocketAddr)>,
}

impl Actions {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.wake.is_empty() && self.disconnect.is_empty() && self.connect.is_empty()
    }
}

/// Called once with a request's outcome.
pub type Waiter = Box<dyn FnOnce(Result<OwnedMessage, RequestError>) + Send>;
/// Called with every event; returns false once it wants no more.
pub type Listener = Box<dyn FnMut(&NodeEvent) -> bool + Send>;

/// Routes a node's outputs to services, request waiters and event listeners.
pub struct Dispatch {
    sinks: Vec<Option<Arc<dyn Service>>>,
    unclaimed: Option<Arc<dyn Service>>,
    waiters: BTreeMap<RequestId, Waiter>,
    listeners: Vec<Listener>,
    peers: BTreeMap<ConnId, SocketAddr>,
    /// The header of the message being handed to services, copied out of the node.
    header: Header,
    /// Small message bodies, copied here so services can use the node while they look at them.
    scratch: Vec<u8>,
    /// Large (reassembled) message bodies, traded here by [`Node::take_body`] instead of
    /// copied; the node gets the previous one's memory back in exchange.
    lent: Vec<u8>,
    /// Replies arriving in pieces ([`Output::ReplyPart`]), joined for their waiters; bounded
    /// by the connection's `max_sequence_size` (more than announced closes the connection).
    parts: BTreeMap<RequestId, (Header, Vec<u8>)>,
}

impl Default for Dispatch {
    fn default() -> Self {
        Dispatch {
            sinks: (0..MAX_HANDLES).map(|_| None).collect(),
            unclaimed: None,
            waiters: BTreeMap::new(),
            listeners: Vec::new(),
            peers: BTreeMap::new(),
            header: Header::default(),
            scratch: Vec::new(),
            lent: Vec::new(),
            parts: BTreeMap::new(),
        }
    }
}

impl Dispatch {
    /// Opens a node-wide handle for the messages of `service` (and `message`, if given) and
    /// sends them to `sink` (`None`: nowhere, yet).
    pub fn open_sink(
        &mut self,
        node: &mut Node,
        service: i32,
        message: Option<i32>,
        sink: Option<Arc<dyn Service>>,
    ) -> Result<HandleId, NodeError> {
        let handle = node.open_handle(Scope::Node)?;
        if let Err(e) = node.subscribe(handle, service, message) {
            let _ = node.close_handle(handle);
            return Err(e);
        }
        self.set_sink(handle, sink);
        Ok(handle)
    }

    /// Closes a handle opened by [`Dispatch::open_sink`], and forgets its sink.
    pub fn close_sink(&mut self, node: &mut Node, handle: HandleId) -> Result<(), NodeError> {
        self.set_sink(handle, None);
        node.close_handle(handle)
    }

    /// Where the messages of a handle go (`None`: nowhere).
    pub fn set_sink(&mut self, handle: HandleId, service: Option<Arc<dyn Service>>) {
        self.sinks[handle.index()] = service;
    }

    /// Where messages no handle claims go (by default: nowhere).
    pub fn set_unclaimed(&mut self, service: Option<Arc<dyn Service>>) {
        self.unclaimed = service;
    }

    /// Calls `waiter` with the reply to `request`, or its failure.
    pub fn wait(&mut self, request: RequestId, waiter: Waiter) {
        self.waiters.insert(request, waiter);
    }

    /// Adds an event listener.
    pub fn listen(&mut self, listener: Listener) {
        self.listeners.push(listener);
    }

    /// Records a connection's peer (for [`Request::peer`] and [`NodeEvent::Connected`]).
    pub fn add_peer(&mut self, id: ConnId, peer: SocketAddr) {
        self.peers.insert(id, peer);
    }

    /// The peer of a connection.
    pub fn peer(&self, id: ConnId) -> Option<SocketAddr> {
        self.peers.get(&id).copied()
    }

    /// Lets go of every sink, waiter and listener, so the streams fed by them end (the node
    /// is shutting down). Waiters hear [`RequestError::Closed`].
    pub fn close_all(&mut self) {
        for sink in &mut self.sinks {
            *sink = None;
        }
        self.unclaimed = None;
        for (_, waiter) in core::mem::take(&mut self.waiters) {
            waiter(Err(RequestError::Closed));
        }
        self.listeners.clear();
    }

    /// Tells every listener about an event the adapter saw itself (an accept, a refusal).
    pub fn emit(&mut self, event: &NodeEvent) {
        self.listeners.retain_mut(|l| l(event));
    }

    /// Drains the node's outputs: calls services, answers waiters, tells listeners, and puts
    /// in `actions` (emptied first) which sockets to wake, close or open.
    pub fn pump(&mut self, node: &mut Node, now: Instant, actions: &mut Actions) {
        actions.wake.clear();
        actions.disconnect.clear();
        actions.connect.clear();
        while let Some(output) = node.poll_output() {
            match output {
                Output::Transmit { id } => actions.wake.push(id),
                Output::Disconnect { id } => actions.disconnect.push(id),
                Output::Connect { id, addr } => actions.connect.push((id, addr)),
                Output::Message {
                    id,
                    message,
                    handles,
                } => {
                    // Services may use the node to reply while they look at the message, so
                    // it leaves the node first: the header and small bodies are copied into
                    // reused buffers, reassembled bodies (the only ones this long) traded
                    // without a copy.
                    let Dispatch {
                        sinks,
                        unclaimed,
                        peers,
                        header,
                        scratch,
                        lent,
                        ..
                    } = self;
                    // Looked up before the copies below, so that its stores have landed when
                    // the request reads them (read back at once, they stall the CPU).
                    let peer = peers.get(&id).copied();
                    *header = *message.header;
                    let body: &[u8] = if message.body.len() >= MAX_FRAME_LEN {
                        match node.take_body(id, lent) {
                            Some(len) => &lent[..len],
                            // Cannot happen: only a sequence makes a body this long, and the
                            // node's heap storage always lends it.
                            None => continue,
                        }
                    } else {
                        scratch.clear();
                        scratch.extend_from_slice(message.body);
                        scratch
                    };
                    let request = Request {
                        connection: id,
                        peer,
                        message: Message::new(header, body),
                    };
                    let mut panicked = false;
                    if handles.is_empty() {
                        if let Some(s) = unclaimed {
                            panicked |= !call(&**s, &request, node, now);
                        }
                    }
                    for i in handles.indices() {
                        if let Some(s) = &sinks[i] {
                            panicked |= !call(&**s, &request, node, now);
                        }
                    }
                    if panicked {
                        let event = NodeEvent::ServicePanicked {
                            id,
                            service: header.service_id,
                            message: header.message_id,
                        };
                        self.emit(&event);
                    }
                }
                Output::Reply {
                    request, message, ..
                } => {
                    if let Some(w) = self.waiters.remove(&request) {
                        w(Ok(OwnedMessage::from(message)));
                    }
                }
                Output::ReplyPart { request, event, .. } => match event {
                    Event::SequenceStart { header, .. } => {
                        self.parts.insert(request, (header, Vec::new()));
                    }
                    Event::SequenceChunk(data) => {
                        if let Some((_, body)) = self.parts.get_mut(&request) {
                            body.extend_from_slice(data);
                        }
                    }
                    Event::SequenceEnd { .. } => {
                        let part = self.parts.remove(&request);
                        if let (Some((header, body)), Some(w)) =
                            (part, self.waiters.remove(&request))
                        {
                            w(Ok(OwnedMessage::new(header, body)));
                        }
                    }
                    _ => {}
                },
                Output::RequestFailed { request, error, .. } => {
                    self.parts.remove(&request);
                    if let Some(w) = self.waiters.remove(&request) {
                        w(Err(error));
                    }
                }
                other => {
                    if let Some(event) = self.event(&other) {
                        if let NodeEvent::Removed { id, .. } = event {
                            self.peers.remove(&id);
                        }
                        self.emit(&event);
                    }
                }
            }
        }
    }

    fn event(&self, o: &Output<'_>) -> Option<NodeEvent> {
        Some(match *o {
            Output::Event { id, event, .. } => match event {
                Event::Connected => NodeEvent::Connected {
                    id,
                    peer: self.peers.get(&id).copied()?,
                },
                Event::Closed { reason } => NodeEvent::Closed { id, reason },
                Event::Misbehaved {
                    kind,
                    points,
                    score,
                } => NodeEvent::Misbehaved {
                    id,
                    kind,
                    points,
                    score,
                },
                Event::Pong { rtt } => NodeEvent::Pong { id, rtt },
                _ => return None,
            },
            Output::Reconnecting { id, attempt, .. } => NodeEvent::Reconnecting { id, attempt },
            Output::Removed { id, unsent } => NodeEvent::Removed { id, unsent },
            Output::Banned { ip, .. } => NodeEvent::Banned { ip },
            Output::Unbanned { ip } => NodeEvent::Unbanned { ip },
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowee_proto::node::{NodeConfig, Scope};
    use std::sync::Mutex;

    /// Connects the system completes before the server accepts any: more than the 128 of
    /// `TcpListener::bind`. (Linux drops the handshake of a connect past a full backlog, so
    /// it would wait a second for a retry.)
    #[cfg(target_os = "linux")]
    #[test]
    fn the_listen_backlog_holds_a_burst_of_connects() {
        let limit: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        // A system that allows fewer than this cannot show it (Linux before 5.4: 128).
        let burst = 300;
        if limit < burst {
            eprintln!("net.core.somaxconn is {limit}: the system caps the backlog, not shown");
            return;
        }
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut open = Vec::new();
        for i in 0..burst {
            let c = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500));
            open.push(c.unwrap_or_else(|e| panic!("connect {i} of {burst}: {e}")));
        }
        drop(listener);
    }

    /// Adds a listener to `d` that keeps every event it hears.
    fn recording_listener(d: &mut Dispatch) -> Arc<Mutex<Vec<NodeEvent>>> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let kept = seen.clone();
        d.listen(Box::new(move |e| {
            kept.lock().unwrap().push(e.clone());
            true
        }));
        seen
    }

    #[test]
    fn services_reply_in_place_and_listeners_hear_events() {
        let mut node: Node = Node::new(Instant::ZERO, NodeConfig::default());
        let mut d = Dispatch::default();
        let seen = recording_listener(&mut d);
        let h = node.open_handle(Scope::Node).unwrap();
        node.subscribe(h, 3, None).unwrap();
        d.set_sink(
            h,
            Some(Arc::new(|req: &Request<'_>, out: &mut Responder<'_>| {
                let _ = out.reply(Message::new(
                    &reply_header(req.message.header),
                    req.message.body,
                ));
            })),
        );
        let peer: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let id = node.accept(Instant::ZERO, peer).unwrap();
        d.add_peer(id, peer);
        let frame = [0x0A, 0x00, 0x08, 0x03, 0x10, 0x02, 0x58, 0x07, 0x04, 0xAA];
        node.handle_input(Instant::ZERO, id, &frame).unwrap();
        let mut actions = Actions::default();
        d.pump(&mut node, Instant::ZERO, &mut actions);
        assert_eq!(actions.wake, vec![id]);
        assert_eq!(
            node.poll_transmit(id).unwrap(),
            [0x0A, 0x00, 0x08, 0x03, 0x10, 0x03, 0x58, 0x07, 0x04, 0xAA]
        );
        node.consume_transmit(id, 10);
        node.close(Instant::ZERO, id).unwrap();
        d.pump(&mut node, Instant::ZERO, &mut actions);
        assert_eq!(actions.disconnect, vec![id]);
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen[0],
            NodeEvent::Closed {
                id,
                reason: CloseReason::Local
            }
        );
        assert_eq!(seen[1], NodeEvent::Removed { id, unsent: (0, 0) });
    }

    #[test]
    fn a_panicking_service_is_reported_and_the_others_still_run() {
        let mut node: Node = Node::new(Instant::ZERO, NodeConfig::default());
        let mut d = Dispatch::default();
        let seen = recording_listener(&mut d);
        // Two handles on service 3: the first panics on message 2, the second echoes.
        for panics in [true, false] {
            let h = node.open_handle(Scope::Node).unwrap();
            node.subscribe(h, 3, None).unwrap();
            d.set_sink(
                h,
                Some(Arc::new(
                    move |req: &Request<'_>, out: &mut Responder<'_>| {
                        if panics && req.message.header.message_id == Some(2) {
                            panic!("a bug in a service (expected by this test)");
                        }
                        if !panics {
                            let _ = out.reply(Message::new(
                                &reply_header(req.message.header),
                                req.message.body,
                            ));
                        }
                    },
                )),
            );
        }
        let id = node
            .accept(Instant::ZERO, "10.0.0.1:5000".parse().unwrap())
            .unwrap();
        let mut actions = Actions::default();
        // Message 2 (panics in the first service), then message 4 (does not).
        for message in [2, 4] {
            let frame = [
                0x0A, 0x00, 0x08, 0x03, 0x10, message, 0x58, 0x07, 0x04, 0xAA,
            ];
            node.handle_input(Instant::ZERO, id, &frame).unwrap();
            d.pump(&mut node, Instant::ZERO, &mut actions);
            let reply = [
                0x0A,
                0x00,
                0x08,
                0x03,
                0x10,
                message + 1,
                0x58,
                0x07,
                0x04,
                0xAA,
            ];
            assert_eq!(node.poll_transmit(id), Some(&reply[..]));
            node.consume_transmit(id, reply.len());
        }
        assert_eq!(
            *seen.lock().unwrap(),
            [NodeEvent::ServicePanicked {
                id,
                service: 3,
                message: Some(2)
            }]
        );
        assert!(node.connection(id).is_some());
    }

    /// A node with one accepted connection and `service` subscribed to service 3.
    fn node_with_service(
        service: impl Fn(&Request<'_>, &mut Responder<'_>) + Send + Sync + 'static,
    ) -> (Node, Dispatch, ConnId) {
        let mut node: Node = Node::new(Instant::ZERO, NodeConfig::default());
        let mut d = Dispatch::default();
        let h = node.open_handle(Scope::Node).unwrap();
        node.subscribe(h, 3, None).unwrap();
        d.set_sink(h, Some(Arc::new(service)));
        let id = node
            .accept(Instant::ZERO, "10.0.0.1:5000".parse().unwrap())
            .unwrap();
        (node, d, id)
    }

    /// Replies with the request's body.
    fn echo(req: &Request<'_>, out: &mut Responder<'_>) {
        let _ = out.reply(Message::new(
            &reply_header(req.message.header),
            req.message.body,
        ));
    }

    #[test]
    fn services_see_what_waits_for_their_peer() {
        // Before and after each reply of two: what the service saw waiting.
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let (mut node, mut d, id) = node_with_service(move |req, out| {
            let before = out.queued();
            echo(req, out);
            s2.lock().unwrap().push((before, out.queued()));
        });
        // Two messages (service 3, message 2, body 0xAA); the replies are 10 bytes each.
        let frame = [0x0A, 0x00, 0x08, 0x03, 0x10, 0x02, 0x58, 0x07, 0x04, 0xAA];
        node.handle_input(Instant::ZERO, id, &[frame, frame].concat())
            .unwrap();
        d.pump(&mut node, Instant::ZERO, &mut Actions::default());
        assert_eq!(*seen.lock().unwrap(), [(0, 10), (10, 20)]);
        // What is transmitted no longer waits.
        assert_eq!(node.poll_transmit(id).map(<[u8]>::len), Some(20));
        node.consume_transmit(id, 20);
        assert_eq!(node.connection(id).unwrap().queued_bytes(), 0);
    }

    #[test]
    fn long_bodies_reach_services_intact_and_replies_carry_them() {
        use flowee_proto::Connection;
        use flowee_proto::frame::FrameEncoder;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let (mut node, mut d, id) = node_with_service(move |req, out| {
            s2.lock().unwrap().push(req.message.body.to_vec());
            echo(req, out);
        });
        // Long bodies (reassembled, so lent) and short ones (copied), in turn.
        let bodies: Vec<Vec<u8>> = [20_000, 5, 30_000, 9_000, 20_000]
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|b| (b * (i + 1)) as u8).collect())
            .collect();
        let mut client: Connection = Connection::connecting(Instant::ZERO, Default::default());
        client.handle_connected(Instant::ZERO);
        let mut replies = Vec::new();
        for body in &bodies {
            let mut wire = Vec::new();
            FrameEncoder::new()
                .encode(&Header::new(3, 1), body, &mut wire)
                .unwrap();
            node.handle_input(Instant::ZERO, id, &wire).unwrap();
            d.pump(&mut node, Instant::ZERO, &mut Actions::default());
            while let Some(data) = node.poll_transmit(id) {
                let n = data.len();
                client.handle_input(Instant::ZERO, data);
                node.consume_transmit(id, n);
            }
            while let Some(event) = client.poll_event() {
                if let Event::Message(m) = event {
                    replies.push(m.body.to_vec());
                }
            }
        }
        assert_eq!(*seen.lock().unwrap(), bodies);
        assert_eq!(replies, bodies);
    }
}

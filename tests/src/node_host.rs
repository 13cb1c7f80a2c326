//! A host running a whole [`Node`]: every connection it opens or accepts is a simulated socket.

use crate::hosts::fnv;
use crate::net::{Action, Host, Socket, Trace};
use flowee_proto::node::{ConnId, NodeConfig, NodeUsage, Output, Refused, RequestError, RequestId};
use flowee_proto::{Event, Header, Instant, Node};
use std::any::Any;
use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

/// An owned copy of an [`Output`] (minus transmit notices, which the host handles).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum NodeReceived {
    /// [`Output::Event`]: the event's debug text and the handle indices it is for.
    Event {
        /// The connection.
        id: ConnId,
        /// `format!("{event:?}")`.
        event: String,
        /// [`flowee_proto::node::HandleSet::indices`].
        handles: Vec<usize>,
    },
    /// [`Output::Event`] with [`Event::Closed`], kept typed.
    Closed {
        /// The connection.
        id: ConnId,
        /// Why.
        reason: flowee_proto::CloseReason,
    },
    /// [`Output::Message`].
    Message {
        /// The connection.
        id: ConnId,
        /// The header.
        header: Header,
        /// The body.
        body: Vec<u8>,
        /// The handle indices it is for.
        handles: Vec<usize>,
    },
    /// [`Output::Reply`].
    Reply {
        /// The connection.
        id: ConnId,
        /// The request.
        request: RequestId,
        /// The reply's header.
        header: Header,
        /// The reply's body.
        body: Vec<u8>,
    },
    /// [`Output::ReplyPart`]: a piece of a reply that arrives chunk by chunk.
    ReplyPart {
        /// The connection.
        id: ConnId,
        /// The request.
        request: RequestId,
        /// The piece: `start <header> <total>`, `chunk <len> #<fnv>` or `end <received>`.
        part: String,
    },
    /// [`Output::RequestFailed`].
    RequestFailed {
        /// The connection.
        id: ConnId,
        /// The request.
        request: RequestId,
        /// Why.
        error: RequestError,
    },
    /// [`Output::Reconnecting`].
    Reconnecting {
        /// The connection.
        id: ConnId,
        /// When.
        at: Instant,
        /// Failed attempts so far.
        attempt: u32,
    },
    /// [`Output::Connect`].
    Connect {
        /// The connection.
        id: ConnId,
        /// Where to.
        addr: SocketAddr,
    },
    /// [`Output::Disconnect`].
    Disconnect {
        /// The connection.
        id: ConnId,
    },
    /// [`Output::Removed`].
    Removed {
        /// The connection.
        id: ConnId,
        /// Unsent messages.
        unsent: (usize, usize),
    },
    /// [`Output::Banned`].
    Banned {
        /// The address.
        ip: IpAddr,
        /// Until when.
        until: Instant,
    },
    /// [`Output::Unbanned`].
    Unbanned {
        /// The address.
        ip: IpAddr,
    },
}

impl NodeReceived {
    fn from_output(o: &Output<'_>) -> Option<Self> {
        Some(match o {
            Output::Transmit { .. } => return None,
            Output::Connect { id, addr } => NodeReceived::Connect {
                id: *id,
                addr: *addr,
            },
            Output::Disconnect { id } => NodeReceived::Disconnect { id: *id },
            Output::Event {
                id,
                event: Event::Closed { reason },
                ..
            } => NodeReceived::Closed {
                id: *id,
                reason: *reason,
            },
            Output::Event { id, event, handles } => NodeReceived::Event {
                id: *id,
                event: format!("{event:?}"),
                handles: handles.indices().collect(),
            },
            Output::Message {
                id,
                message,
                handles,
            } => NodeReceived::Message {
                id: *id,
                header: *message.header,
                body: message.body.to_vec(),
                handles: handles.indices().collect(),
            },
            Output::Reply {
                id,
                request,
                message,
            } => NodeReceived::Reply {
                id: *id,
                request: *request,
                header: *message.header,
                body: message.body.to_vec(),
            },
            Output::ReplyPart { id, request, event } => NodeReceived::ReplyPart {
                id: *id,
                request: *request,
                part: match event {
                    Event::SequenceStart { header, total } => format!("start {header:?} {total}"),
                    Event::SequenceChunk(data) => {
                        format!("chunk {} #{:016x}", data.len(), fnv(data))
                    }
                    Event::SequenceEnd { received } => format!("end {received}"),
                    other => format!("{other:?}"),
                },
            },
            Output::RequestFailed { id, request, error } => NodeReceived::RequestFailed {
                id: *id,
                request: *request,
                error: *error,
            },
            Output::Reconnecting { id, at, attempt } => NodeReceived::Reconnecting {
                id: *id,
                at: *at,
                attempt: *attempt,
            },
            Output::Removed { id, unsent } => NodeReceived::Removed {
                id: *id,
                unsent: *unsent,
            },
            Output::Banned { ip, until } => NodeReceived::Banned {
                ip: *ip,
                until: *until,
            },
            Output::Unbanned { ip } => NodeReceived::Unbanned { ip: *ip },
            _ => return None,
        })
    }

    fn describe(&self) -> String {
        match self {
            NodeReceived::Message {
                id, header, body, ..
            } => format!(
                "{id} message {}/{} {:?} {} bytes #{:016x}",
                header.service_id,
                header.message_id_or_minus_one(),
                header.ints,
                body.len(),
                fnv(body)
            ),
            NodeReceived::Reply {
                id, request, body, ..
            } => format!(
                "{id} reply {request:?} {} bytes #{:016x}",
                body.len(),
                fnv(body)
            ),
            other => format!("{other:?}"),
        }
    }
}

/// The application on a [`NodeHost`].
pub trait NodeApp: 'static {
    /// Called for every output (transmit notices aside), with the node to act on.
    fn on_output(&mut self, now: Instant, output: &NodeReceived, node: &mut Node) {
        let _ = (now, output, node);
    }
}

/// An application that only records (the host's log has everything).
impl NodeApp for () {}

/// A host running a [`Node`]. It turns the node's outputs into socket actions, keeps a log
/// of everything else, and checks after every timeout that no deadline is stale.
pub struct NodeHost<A: NodeApp = ()> {
    /// The node.
    pub node: Node,
    /// The application.
    pub app: A,
    /// Every output, with the time it was polled.
    pub log: Vec<(Instant, NodeReceived)>,
    /// Connections refused at accept.
    pub refused: Vec<(Instant, SocketAddr, Refused)>,
    sockets: BTreeMap<Socket, ConnId>,
    conns: BTreeMap<ConnId, Socket>,
    connecting: BTreeMap<u64, ConnId>,
    /// Connections the node said have bytes to write (its Transmit notices are edge
    /// triggered: a lost one would leave data unwritten, and this host would show it).
    writable: std::collections::BTreeSet<ConnId>,
    next_tag: u64,
    actions: VecDeque<Action>,
    /// The largest table sizes seen, for memory bounds.
    pub peak: NodeUsage,
}

impl<A: NodeApp> NodeHost<A> {
    /// A host with a fresh node.
    pub fn new(now: Instant, config: NodeConfig, app: A) -> Self {
        NodeHost {
            node: Node::new(now, config),
            app,
            log: Vec::new(),
            refused: Vec::new(),
            sockets: BTreeMap::new(),
            conns: BTreeMap::new(),
            connecting: BTreeMap::new(),
            writable: std::collections::BTreeSet::new(),
            next_tag: 0,
            actions: VecDeque::new(),
            peak: NodeUsage::default(),
        }
    }

    /// Messages received, with the connection.
    pub fn messages(&self) -> Vec<(ConnId, Header, Vec<u8>)> {
        self.log
            .iter()
            .filter_map(|(_, o)| match o {
                NodeReceived::Message {
                    id, header, body, ..
                } => Some((*id, *header, body.clone())),
                _ => None,
            })
            .collect()
    }

    /// How many outputs match `f`.
    pub fn count(&self, f: impl Fn(&NodeReceived) -> bool) -> usize {
        self.log.iter().filter(|(_, o)| f(o)).count()
    }

    fn note_peak(&mut self) {
        let u = self.node.usage();
        let p = &mut self.peak;
        p.connections = p.connections.max(u.connections);
        p.slots = p.slots.max(u.slots);
        p.bans = p.bans.max(u.bans);
        p.scores = p.scores.max(u.scores);
        p.rate_log = p.rate_log.max(u.rate_log);
        p.requests = p.requests.max(u.requests);
        p.timers = p.timers.max(u.timers);
        p.queued_outputs = p.queued_outputs.max(u.queued_outputs);
    }
}

impl<A: NodeApp> Host for NodeHost<A> {
    fn accept(&mut self, now: Instant, socket: Socket, from: SocketAddr) -> bool {
        match self.node.accept(now, from) {
            Ok(id) => {
                self.sockets.insert(socket, id);
                self.conns.insert(id, socket);
                true
            }
            Err(r) => {
                self.refused.push((now, from, r));
                false
            }
        }
    }

    fn connected(&mut self, now: Instant, tag: u64, socket: Socket) {
        if let Some(id) = self.connecting.remove(&tag) {
            self.sockets.insert(socket, id);
            self.conns.insert(id, socket);
            let _ = self.node.handle_connected(now, id);
        }
    }

    fn connect_failed(&mut self, now: Instant, tag: u64) {
        if let Some(id) = self.connecting.remove(&tag) {
            let _ = self.node.handle_connect_failed(now, id);
        }
    }

    fn input(&mut self, now: Instant, socket: Socket, data: &[u8]) -> usize {
        match self.sockets.get(&socket) {
            Some(&id) => self.node.handle_input(now, id, data).unwrap_or(data.len()),
            None => data.len(),
        }
    }

    fn eof(&mut self, now: Instant, socket: Socket) {
        if let Some(id) = self.sockets.remove(&socket) {
            self.conns.remove(&id);
            let _ = self.node.handle_eof(now, id);
        }
    }

    fn transmit(&mut self, socket: Socket) -> Option<&[u8]> {
        let id = *self.sockets.get(&socket)?;
        if !self.writable.contains(&id) {
            return None;
        }
        if self.node.connection(id).is_none_or(|c| !c.wants_transmit()) {
            // Drained: the node will notify again.
            self.writable.remove(&id);
            let _ = self.node.poll_transmit(id);
            return None;
        }
        self.node.poll_transmit(id)
    }

    fn consume(&mut self, socket: Socket, n: usize) {
        if let Some(&id) = self.sockets.get(&socket) {
            self.node.consume_transmit(id, n);
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.node.poll_timeout()
    }

    fn timeout(&mut self, now: Instant) {
        self.node.handle_timeout(now);
        if let Some(at) = self.node.poll_timeout() {
            assert!(
                at > now,
                "stale deadline {at:?} after handle_timeout({now:?})"
            );
        }
    }

    fn run(&mut self, now: Instant, trace: &mut Trace, name: &str) {
        while let Some(output) = self.node.poll_output() {
            if let Output::Transmit { id } = output {
                self.writable.insert(id);
                continue;
            }
            let received = NodeReceived::from_output(&output);
            let Some(received) = received else { continue };
            match &received {
                NodeReceived::Connect { id, addr } => {
                    self.next_tag += 1;
                    self.connecting.insert(self.next_tag, *id);
                    self.actions.push_back(Action::Connect {
                        to: *addr,
                        tag: self.next_tag,
                    });
                }
                NodeReceived::Disconnect { id } => {
                    if let Some(s) = self.conns.remove(id) {
                        self.sockets.remove(&s);
                        self.actions.push_back(Action::Close(s));
                    }
                }
                _ => {}
            }
            trace.record(now, name, format_args!("{}", received.describe()));
            self.app.on_output(now, &received, &mut self.node);
            self.log.push((now, received));
        }
        self.note_peak();
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

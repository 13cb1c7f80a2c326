//! The client: one outgoing connection, reconnected as the node decides.

use crate::runtime::{CONNECT_TIMEOUT, Runtime};
use crate::{Events, NodeEvent, Subscription};
use flowee_proto::connection::Stats;
use flowee_proto::node::{ConnId, HandleId, NodeConfig, NodeError, RequestError};
use flowee_proto::{Message, OwnedMessage, Priority, SendError};
use std::fmt;
use std::io;
use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

/// How long [`Client::close`] and [`Server::shutdown`](crate::Server::shutdown) wait for
/// queued messages to be written.
pub(crate) const GRACE: Duration = Duration::from_secs(5);

/// Shuts the runtime down when the last handle that owns it goes.
pub(crate) struct Owner(pub(crate) Arc<Runtime>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.shutdown(GRACE);
    }
}

/// A connection to a Flowee server (a Hub, an Indexer, or a [`Server`](crate::Server)).
///
/// Cheap to clone; every clone talks to the same connection, from any thread. Sending never
/// blocks: a full queue gives the message back in [`SendError::QueueFull`]. When the
/// connection drops, the client reconnects by itself (backoff 0, 4, 13, 32, 44 s after failed
/// connects) and sends what was queued, from the start of any message that was cut short
/// (at-least-once delivery for what the old socket had not taken whole; a message it took
/// whole just before the drop is not sent again, as TCP cannot say whether the peer read it:
/// where that matters, use [`Client::request`], which then fails with `Closed` at once). Dropping the last clone closes it like
/// [`Client::close`].
#[derive(Clone)]
pub struct Client {
    rt: Arc<Runtime>,
    _owner: Arc<Owner>,
    id: ConnId,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why a request got no reply.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestFailure {
    /// It could not be queued.
    NotSent(SendError<()>),
    /// No reply in time.
    Timeout,
    /// The connection was closed for good.
    Closed,
}

impl fmt::Display for RequestFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestFailure::NotSent(e) => write!(f, "request not sent: {e}"),
            RequestFailure::Timeout => f.write_str("no reply in time"),
            RequestFailure::Closed => f.write_str("connection closed"),
        }
    }
}

impl std::error::Error for RequestFailure {}

impl Client {
    /// Connects to `addr` (its first resolved address) and waits until the TCP connection is
    /// up; fails if that first attempt fails. From then on it reconnects by itself.
    pub fn connect(addr: impl ToSocketAddrs, config: NodeConfig) -> io::Result<Client> {
        let addr = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "address did not resolve"))?;
        let rt = Runtime::new(config)?;
        let owner = Arc::new(Owner(rt.clone()));
        let events = rt.events();
        let id = rt
            .with(|inner, now| inner.node.connect(now, addr))
            .map_err(|e| io::Error::other(e.to_string()))?;
        // The connect thread gives up after CONNECT_TIMEOUT; the rest is a guard.
        let end = std::time::Instant::now() + CONNECT_TIMEOUT + Duration::from_secs(5);
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            match events.recv_timeout(left) {
                Ok(NodeEvent::Connected { id: c, .. }) if c == id => break,
                Ok(NodeEvent::Reconnecting { id: c, .. } | NodeEvent::Removed { id: c, .. })
                    if c == id =>
                {
                    return Err(rt.take_connect_error(id).unwrap_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::ConnectionRefused,
                            format!("could not connect to {addr}"),
                        )
                    }));
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("connecting to {addr} took too long"),
                    ));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(io::Error::other("client stopped"));
                }
            }
        }
        Ok(Client {
            rt,
            _owner: owner,
            id,
        })
    }

    /// The connection's id.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Queues a message (copied into the send queue); never blocks.
    pub fn send<'m>(
        &self,
        message: Message<'m>,
        priority: Priority,
    ) -> Result<(), SendError<Message<'m>>> {
        self.rt
            .with(|inner, now| inner.node.send(now, self.id, message, priority))
    }

    /// Blocks until at most `max_queued` bytes wait in the send queue or the client is closed
    /// (true), or until `timeout` passes (false). While the client waits to reconnect, what is
    /// queued waits too. [`Client::send`] never blocks; calling this between sends lets the
    /// socket set the pace, so a fast sender does not pile up its messages in memory.
    pub fn drain_to(&self, max_queued: usize, timeout: Duration) -> bool {
        self.rt.drain_to(self.id, max_queued, timeout)
    }

    /// Sends a request (the node sets its RequestId, header tag 11) and blocks until the reply
    /// that carries the same RequestId comes, or `timeout` passes. Any number of threads may
    /// wait on requests at once.
    pub fn request(
        &self,
        message: Message<'_>,
        timeout: Duration,
    ) -> Result<OwnedMessage, RequestFailure> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.rt.with(|inner, now| {
            let request = inner
                .node
                .request(now, self.id, message, flowee_service::node_timeout(timeout))
                .map_err(|e| RequestFailure::NotSent(e.map(drop)))?;
            // With the node locked, so the reply cannot be dispatched before the waiter exists.
            inner.dispatch.wait(
                request,
                Box::new(move |r| {
                    let _ = tx.try_send(r);
                }),
            );
            Ok(())
        })?;
        // The node times requests out; the extra second only guards against a stopped runtime.
        match rx.recv_timeout(timeout.saturating_add(Duration::from_secs(1))) {
            Ok(Ok(m)) => Ok(m),
            Ok(Err(RequestError::Timeout)) | Err(RecvTimeoutError::Timeout) => {
                Err(RequestFailure::Timeout)
            }
            _ => Err(RequestFailure::Closed),
        }
    }

    /// Routes messages of `service` (and `message`, if given) to `handler`, which runs on the
    /// socket's reader thread with the node locked (see [`Service`](crate::Service)); its
    /// [`Responder`](crate::Responder) sends on this connection. The fastest way to take
    /// messages: no copy, no allocation, no thread switch.
    pub fn handle(
        &self,
        service: i32,
        message: Option<i32>,
        handler: impl crate::Service,
    ) -> Result<HandleId, NodeError> {
        self.rt.handle(service, message, Arc::new(handler))
    }

    /// Stops routing to a handler registered with [`Client::handle`].
    pub fn unhandle(&self, handle: HandleId) -> Result<(), NodeError> {
        self.rt.unhandle(handle)
    }

    /// A blocking stream of the messages of `service_id` (all message ids). Dropping it
    /// unsubscribes.
    pub fn subscribe(&self, service_id: i32) -> io::Result<Subscription> {
        let (handle, feed) = self
            .rt
            .subscribe(service_id)
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Subscription::new(feed, Some(handle), self.rt.clone()))
    }

    /// A blocking stream of every message that no [`Client::subscribe`] claims (replies to
    /// [`Client::request`] go to the request instead). Replaces the previous such stream.
    pub fn incoming(&self) -> Subscription {
        Subscription::new(self.rt.incoming(), None, self.rt.clone())
    }

    /// A blocking stream of connection events (connected, closed with reason, reconnecting,
    /// …).
    pub fn events(&self) -> Events {
        Events::new(self.rt.events())
    }

    /// The connection's counters, while it is up.
    pub fn stats(&self) -> Option<Stats> {
        self.rt.lock().node.connection(self.id).map(|c| c.stats())
    }

    /// Writes what is queued (waiting at most five seconds), then closes and joins the
    /// client's threads. Later calls, and calls on clones, return at once.
    pub fn close(&self) {
        self.rt.shutdown(GRACE);
    }
}

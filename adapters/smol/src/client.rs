//! The client: one outgoing connection, reconnected as the node decides.

use crate::runtime::{GRACE, Runtime};
use crate::{Events, NodeEvent};
use flowee_proto::connection::Stats;
use flowee_proto::node::{ConnId, HandleId, NodeConfig, NodeError, RequestError};
use flowee_proto::{Message, OwnedMessage, Priority, SendError};
use smol::channel::Receiver;
use smol::future::FutureExt;
use smol::net::AsyncToSocketAddrs;
use smol::stream::Stream;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

/// A connection to a Flowee server (a Hub, an Indexer, or a [`Server`](crate::Server)).
///
/// Cheap to clone; every clone talks to the same connection, from any task. Sending never
/// waits: a full queue gives the message back in [`SendError::QueueFull`]. When the
/// connection drops, the client reconnects by itself (backoff 0, 4, 13, 32, 44 s after failed
/// connects) and sends what was queued, from the start of any message that was cut short
/// (at-least-once delivery for what the old socket had not taken whole; a message it took
/// whole just before the drop is not sent again, as TCP cannot say whether the peer read it:
/// where that matters, use [`Client::request`], which then fails with `Closed` at once). Dropping the last clone starts [`Client::close`] in the
/// background: what is queued is still written (for at most five seconds), as with the std
/// adapter; await [`Client::close`] to know when it is done.
#[derive(Clone)]
pub struct Client {
    rt: Arc<Runtime>,
    id: ConnId,
    _owner: Arc<Owner>,
}

/// Shared by the clones of a client: when the last one goes, the connection closes (after
/// writing what is queued, in the background).
struct Owner(Arc<Runtime>);

impl Drop for Owner {
    fn drop(&mut self) {
        let rt = self.0.clone();
        smol::spawn(async move { rt.shutdown(GRACE).await }).detach();
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
    pub async fn connect(addr: impl AsyncToSocketAddrs, config: NodeConfig) -> io::Result<Client> {
        let addr = smol::net::resolve(addr)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "address did not resolve"))?;
        let rt = Runtime::new(config);
        let (events, _) = rt.events();
        let now = rt.now();
        let id = rt
            .lock()
            .node
            .connect(now, addr)
            .map_err(|e| io::Error::other(e.to_string()))?;
        rt.pump();
        loop {
            match events.recv().await {
                Ok(NodeEvent::Connected { id: c, .. }) if c == id => break,
                Ok(NodeEvent::Reconnecting { id: c, .. } | NodeEvent::Removed { id: c, .. })
                    if c == id =>
                {
                    // The connect's own error (refused, unreachable, timed out, …).
                    let error = rt.take_connect_error(id).unwrap_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::ConnectionRefused,
                            format!("could not connect to {addr}"),
                        )
                    });
                    rt.shutdown(Duration::ZERO).await;
                    return Err(error);
                }
                Ok(_) => {}
                Err(_) => return Err(io::Error::other("client stopped")),
            }
        }
        Ok(Client {
            _owner: Arc::new(Owner(rt.clone())),
            rt,
            id,
        })
    }

    /// The connection's id.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Queues a message (copied into the send queue); never waits.
    pub fn send<'m>(
        &self,
        message: Message<'m>,
        priority: Priority,
    ) -> Result<(), SendError<Message<'m>>> {
        let now = self.rt.now();
        let result = self.rt.lock().node.send(now, self.id, message, priority);
        self.rt.pump();
        result
    }

    /// Waits until at most `max_queued` bytes wait in the send queue, or the client is closed.
    /// While the client waits to reconnect, what is queued waits too. [`Client::send`] never
    /// waits; awaiting this between sends lets the socket set the pace, as a `Sink`'s
    /// `poll_ready` does, so a fast sender does not pile up its messages in memory.
    pub async fn drain_to(&self, max_queued: usize) {
        self.rt.drain_to(self.id, max_queued).await
    }

    /// Sends a request (the node sets its RequestId, header tag 11) and waits for the reply
    /// that carries the same RequestId.
    pub async fn request(
        &self,
        message: Message<'_>,
        timeout: Duration,
    ) -> Result<OwnedMessage, RequestFailure> {
        let now = self.rt.now();
        let reply = {
            let mut inner = self.rt.lock();
            let request = inner
                .node
                .request(now, self.id, message, flowee_service::node_timeout(timeout))
                .map_err(|e| RequestFailure::NotSent(e.map(drop)))?;
            Runtime::wait_for(&mut inner, request)
        };
        self.rt.pump();
        // The node times requests out; the extra second only guards against a stopped runtime.
        let guard = async {
            smol::Timer::after(timeout.saturating_add(Duration::from_secs(1))).await;
            Ok(Err(RequestError::Timeout))
        };
        match reply.recv().or(guard).await {
            Ok(Ok(m)) => Ok(m),
            Ok(Err(RequestError::Timeout)) => Err(RequestFailure::Timeout),
            _ => Err(RequestFailure::Closed),
        }
    }

    /// Routes messages of `service` (and `message`, if given) to `handler`, called in the
    /// runtime with the node locked (see [`Service`](crate::Service)); its
    /// [`Responder`](crate::Responder) sends on this connection. The fastest way to take
    /// messages: no copy, no allocation, no task switch.
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

    /// A stream of the messages of `service_id` (all message ids). Dropping it unsubscribes.
    pub fn subscribe(&self, service_id: i32) -> io::Result<Subscription> {
        let (handle, rx, lost) = self
            .rt
            .subscribe(service_id)
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Subscription {
            rx: Box::pin(rx),
            lost,
            handle: Some(handle),
            rt: self.rt.clone(),
        })
    }

    /// A stream of every message that no [`Client::subscribe`] claims (replies to
    /// [`Client::request`] go to the request instead). Replaces the previous such stream.
    pub fn incoming(&self) -> Subscription {
        let (rx, lost) = self.rt.incoming();
        Subscription {
            rx: Box::pin(rx),
            lost,
            handle: None,
            rt: self.rt.clone(),
        }
    }

    /// A stream of connection events (connected, closed with reason, reconnecting, …).
    pub fn events(&self) -> Events {
        let (rx, lost) = self.rt.events();
        Events {
            rx: Box::pin(rx),
            lost,
        }
    }

    /// The connection's counters, while it is up.
    pub fn stats(&self) -> Option<Stats> {
        self.rt.lock().node.connection(self.id).map(|c| c.stats())
    }

    /// Writes what is queued (waiting at most five seconds), then closes.
    pub async fn close(&self) {
        self.rt.shutdown(GRACE).await;
    }
}

/// The messages of one service, as a [`Stream`]. Messages that find it full (4096 unread)
/// are counted in [`Subscription::lost`] rather than kept. Dropping it unsubscribes.
pub struct Subscription {
    rx: Pin<Box<Receiver<OwnedMessage>>>,
    lost: Arc<AtomicU64>,
    /// `None` for [`Client::incoming`].
    handle: Option<HandleId>,
    rt: Arc<Runtime>,
}

impl Subscription {
    /// The next message.
    pub async fn next(&mut self) -> Option<OwnedMessage> {
        self.rx.recv().await.ok()
    }

    /// Messages dropped because the stream was not read.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

impl Stream for Subscription {
    type Item = OwnedMessage;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<OwnedMessage>> {
        self.rx.as_mut().poll_next(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut inner = self.rt.lock();
        match self.handle {
            Some(handle) => {
                let inner = &mut *inner;
                let _ = inner.dispatch.close_sink(&mut inner.node, handle);
            }
            None => inner.dispatch.set_unclaimed(None),
        }
    }
}

//! Blocking streams of what a node delivers: [`Subscription`] (messages of a service) and
//! [`Events`] (connection events), both bounded with a count of what was dropped.

use crate::NodeEvent;
use crate::runtime::Runtime;
use flowee_proto::OwnedMessage;
use flowee_proto::node::HandleId;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::Duration;

/// The receiving end of a bounded channel, with the count of items that found it full.
pub(crate) struct Feed<T> {
    rx: Receiver<T>,
    lost: Arc<AtomicU64>,
}

impl<T> Feed<T> {
    pub(crate) fn new(rx: Receiver<T>, lost: Arc<AtomicU64>) -> Self {
        Feed { rx, lost }
    }

    pub(crate) fn recv(&self) -> Option<T> {
        self.rx.recv().ok()
    }

    pub(crate) fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.rx.recv_timeout(timeout)
    }

    pub(crate) fn try_recv(&self) -> Result<T, TryRecvError> {
        self.rx.try_recv()
    }

    fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

/// The messages of one service (see [`Client::subscribe`](crate::Client::subscribe)), or
/// those no subscription claims ([`Client::incoming`](crate::Client::incoming)), as a
/// blocking [`Iterator`] that ends when the client closes. Messages that find it full (4096
/// unread) are counted in [`Subscription::lost`] rather than kept, so a slow reader never
/// holds up the connection. Dropping it unsubscribes.
pub struct Subscription {
    feed: Feed<OwnedMessage>,
    /// `None` for [`Client::incoming`](crate::Client::incoming).
    handle: Option<HandleId>,
    rt: Arc<Runtime>,
}

impl Subscription {
    pub(crate) fn new(
        feed: Feed<OwnedMessage>,
        handle: Option<HandleId>,
        rt: Arc<Runtime>,
    ) -> Self {
        Subscription { feed, handle, rt }
    }

    /// Waits for the next message; `None` once the client is closed.
    pub fn recv(&self) -> Option<OwnedMessage> {
        self.feed.recv()
    }

    /// Waits at most `timeout` for the next message.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<OwnedMessage, RecvTimeoutError> {
        self.feed.recv_timeout(timeout)
    }

    /// The next message if one is waiting, without blocking.
    pub fn try_recv(&self) -> Result<OwnedMessage, TryRecvError> {
        self.feed.try_recv()
    }

    /// Messages dropped because the subscription was not read.
    pub fn lost(&self) -> u64 {
        self.feed.lost()
    }
}

impl Iterator for Subscription {
    type Item = OwnedMessage;

    fn next(&mut self) -> Option<OwnedMessage> {
        self.feed.recv()
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("handle", &self.handle)
            .field("lost", &self.lost())
            .finish_non_exhaustive()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        match self.handle {
            Some(handle) => {
                let _ = self.rt.unhandle(handle);
            }
            None => self.rt.drop_incoming(),
        }
    }
}

/// A blocking [`Iterator`] of [`NodeEvent`]s (connected, closed with the reason,
/// reconnecting, refused, banned, …) that ends when the client or server is shut down.
/// Events that find it full (4096 unread) are counted in [`Events::lost`] rather than kept.
pub struct Events {
    feed: Feed<NodeEvent>,
}

impl Events {
    pub(crate) fn new(feed: Feed<NodeEvent>) -> Self {
        Events { feed }
    }

    /// Waits for the next event; `None` once the client or server is shut down.
    pub fn recv(&self) -> Option<NodeEvent> {
        self.feed.recv()
    }

    /// Waits at most `timeout` for the next event.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<NodeEvent, RecvTimeoutError> {
        self.feed.recv_timeout(timeout)
    }

    /// The next event if one is waiting, without blocking.
    pub fn try_recv(&self) -> Result<NodeEvent, TryRecvError> {
        self.feed.try_recv()
    }

    /// Events dropped because the stream was not read.
    pub fn lost(&self) -> u64 {
        self.feed.lost()
    }
}

impl Iterator for Events {
    type Item = NodeEvent;

    fn next(&mut self) -> Option<NodeEvent> {
        self.feed.recv()
    }
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events")
            .field("lost", &self.lost())
            .finish_non_exhaustive()
    }
}

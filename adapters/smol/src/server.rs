//! The server: accepts connections and routes their messages to services.

use crate::runtime::{GRACE, Runtime};
use crate::{Events, Replier, Service};
use flowee_proto::node::{BanRecord, ConnId, HandleId, NodeConfig, NodeError};
use flowee_proto::{Message, Priority, SendError};
use smol::Async;
use smol::net::AsyncToSocketAddrs;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// A Flowee server: accepts connections (bans and rate limits from the node), answers pings,
/// and hands messages to the [`Service`]s registered by service id. Dropping it stops
/// accepting at once and starts [`Server::shutdown`] in the background (what is queued is
/// still written, for at most five seconds); await [`Server::shutdown`] to know when the
/// port is free and every connection is closed.
pub struct Server {
    rt: Arc<Runtime>,
    local: SocketAddr,
}

impl Server {
    /// Listens on `addr` (port 0 picks a free one; see [`Server::local_addr`]), with room for
    /// [`LISTEN_BACKLOG`](flowee_service::LISTEN_BACKLOG) connections not yet accepted.
    pub async fn bind(addr: impl AsyncToSocketAddrs, config: NodeConfig) -> io::Result<Server> {
        let addr = smol::net::resolve(addr)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "address did not resolve"))?;
        let listener = Async::new(flowee_service::listen(addr)?)?;
        let local = listener.get_ref().local_addr()?;
        let rt = Runtime::new(config);
        // A task of the runtime, so that `shutdown` waits for it (and the listener it drops).
        let acceptor = rt.clone();
        rt.spawn(acceptor.run_acceptor(listener));
        Ok(Server { rt, local })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Routes messages of `service` (and `message`, if given) to `handler`.
    pub fn handle(
        &self,
        service: i32,
        message: Option<i32>,
        handler: impl Service,
    ) -> Result<HandleId, NodeError> {
        self.rt.handle(service, message, Arc::new(handler))
    }

    /// Stops routing to a handler registered with [`Server::handle`].
    pub fn unhandle(&self, handle: HandleId) -> Result<(), NodeError> {
        self.rt.unhandle(handle)
    }

    /// Handles every message no service claims (by default they are dropped).
    pub fn handle_unclaimed(&self, handler: impl Service) {
        self.rt
            .lock()
            .dispatch
            .set_unclaimed(Some(Arc::new(handler)));
    }

    /// A stream of connection events (opened, closed with reason, refused, banned, …).
    pub fn events(&self) -> Events {
        let (rx, lost) = self.rt.events();
        Events {
            rx: Box::pin(rx),
            lost,
        }
    }

    /// A handle to send on connection `id` from any task.
    pub fn replier(&self, id: ConnId) -> Replier {
        Replier {
            rt: self.rt.clone(),
            id,
        }
    }

    /// The connections open now.
    pub fn connections(&self) -> Vec<ConnId> {
        self.rt.lock().node.connections().collect()
    }

    /// The address of a connection's peer.
    pub fn peer(&self, id: ConnId) -> Option<SocketAddr> {
        self.rt.peer(id)
    }

    /// Sends one message to every connection (encoded once); returns how many queued it, and
    /// the connections that could not.
    pub fn broadcast(
        &self,
        message: Message<'_>,
        priority: Priority,
    ) -> (usize, Vec<(ConnId, SendError<()>)>) {
        let now = self.rt.now();
        let mut refused = Vec::new();
        let queued = {
            let mut inner = self.rt.lock();
            let to: Vec<ConnId> = inner.node.connections().collect();
            inner
                .node
                .broadcast(now, &message, priority, to, |id, e| refused.push((id, e)))
        };
        self.rt.pump();
        (queued, refused)
    }

    /// Bans an address (its connections close; it is refused at accept).
    pub fn ban(&self, ip: IpAddr) {
        let now = self.rt.now();
        self.rt.lock().node.ban(now, ip);
        self.rt.pump();
    }

    /// Lifts a ban.
    pub fn unban(&self, ip: IpAddr) {
        self.rt.lock().node.unban(ip);
        self.rt.pump();
    }

    /// The bans in force, with wall-clock ends, to persist.
    pub fn export_bans(&self, unix_now: u64) -> Vec<BanRecord> {
        self.rt.lock().node.export_bans(unix_now).collect()
    }

    /// Restores saved bans; returns how many were still running.
    pub fn import_bans(
        &self,
        unix_now: u64,
        records: impl IntoIterator<Item = BanRecord>,
    ) -> usize {
        let now = self.rt.now();
        let n = self.rt.lock().node.import_bans(now, unix_now, records);
        self.rt.pump();
        n
    }

    /// Stops accepting, writes what is queued (waiting at most five seconds), then closes
    /// every connection. When it returns, the listening socket is closed (the port can be
    /// bound again) and every connection's task has ended.
    pub async fn shutdown(&self) {
        self.rt.shutdown(GRACE).await;
    }
}

impl Drop for Server {
    /// Stops accepting at once, and shuts down like [`Server::shutdown`] in the background.
    fn drop(&mut self) {
        self.rt.stop_accepting();
        let rt = self.rt.clone();
        smol::spawn(async move { rt.shutdown(GRACE).await }).detach();
    }
}

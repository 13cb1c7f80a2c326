//! The server: accepts connections and routes their messages to services.

use crate::client::GRACE;
use crate::runtime::{Admission, Runtime};
use crate::{Events, Replier, Service};
use flowee_proto::node::{BanRecord, ConnId, HandleId, NodeConfig, NodeError};
use flowee_proto::{Message, Priority, SendError};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How long the shutdown's wake-up connect to its own listener may take.
const WAKE_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause after an accept error such as running out of descriptors, rather than spinning.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);

/// A Flowee server: accepts connections (bans and rate limits from the node), answers pings,
/// and hands messages to the [`Service`]s registered by service id. Dropping it shuts it
/// down like [`Server::shutdown`].
pub struct Server {
    rt: Arc<Runtime>,
    local: SocketAddr,
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Listens on `addr` (port 0 picks a free one; see [`Server::local_addr`]), with room for
    /// [`LISTEN_BACKLOG`](flowee_service::LISTEN_BACKLOG) connections not yet accepted.
    pub fn bind(addr: impl ToSocketAddrs, config: NodeConfig) -> io::Result<Server> {
        // The first address that can be listened on, as `TcpListener::bind` picks it.
        let mut last = io::Error::new(io::ErrorKind::NotFound, "address did not resolve");
        let mut listening = None;
        for addr in addr.to_socket_addrs()? {
            match flowee_service::listen(addr) {
                Ok(l) => {
                    listening = Some(l);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let listener = listening.ok_or(last)?;
        let local = listener.local_addr()?;
        let rt = Runtime::new(config)?;
        rt.set_accepting(true);
        let acceptor = rt.clone();
        let spawned = thread::Builder::new()
            .name("flowee-accept".into())
            .spawn(move || run_acceptor(&acceptor, &listener));
        let handle = match spawned {
            Ok(handle) => handle,
            Err(e) => {
                rt.shutdown(Duration::ZERO);
                return Err(e);
            }
        };
        Ok(Server {
            rt,
            local,
            acceptor: Mutex::new(Some(handle)),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Routes messages of `service` (and `message`, if given) to `handler`, which runs on the
    /// socket's reader thread with the node locked (see [`Service`]).
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

    /// A blocking stream of connection events (opened, closed with reason, refused, banned,
    /// …).
    pub fn events(&self) -> Events {
        Events::new(self.rt.events())
    }

    /// A handle to send on connection `id` from any thread.
    pub fn replier(&self, id: ConnId) -> Replier {
        Replier::new(self.rt.clone(), id)
    }

    /// The connections open now.
    pub fn connections(&self) -> Vec<ConnId> {
        self.rt.lock().node.connections().collect()
    }

    /// The address of a connection's peer.
    pub fn peer(&self, id: ConnId) -> Option<SocketAddr> {
        self.rt.lock().dispatch.peer(id)
    }

    /// Sends one message to every connection (encoded once); returns how many queued it, and
    /// the connections that could not.
    pub fn broadcast(
        &self,
        message: Message<'_>,
        priority: Priority,
    ) -> (usize, Vec<(ConnId, SendError<()>)>) {
        let mut refused = Vec::new();
        let queued = self.rt.with(|inner, now| {
            let to: Vec<ConnId> = inner.node.connections().collect();
            inner
                .node
                .broadcast(now, &message, priority, to, |id, e| refused.push((id, e)))
        });
        (queued, refused)
    }

    /// Bans an address for the configured time (its connections close; it is refused at
    /// accept).
    pub fn ban(&self, ip: IpAddr) {
        self.rt.with(|inner, now| inner.node.ban(now, ip));
    }

    /// Lifts a ban.
    pub fn unban(&self, ip: IpAddr) {
        self.rt.with(|inner, _| inner.node.unban(ip));
    }

    /// The bans in force, with wall-clock ends (`unix_now`: seconds since 1970), to persist.
    pub fn export_bans(&self, unix_now: u64) -> Vec<BanRecord> {
        self.rt.lock().node.export_bans(unix_now).collect()
    }

    /// Restores saved bans; returns how many were still running.
    pub fn import_bans(
        &self,
        unix_now: u64,
        records: impl IntoIterator<Item = BanRecord>,
    ) -> usize {
        self.rt
            .with(|inner, now| inner.node.import_bans(now, unix_now, records))
    }

    /// Stops accepting, writes what is queued (waiting at most five seconds), closes every
    /// connection and joins the server's threads. Later calls return at once.
    pub fn shutdown(&self) {
        let acceptor = self
            .acceptor
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(acceptor) = acceptor {
            self.rt.set_accepting(false);
            // Wake the blocking accept with a connection of our own; if that fails, the
            // thread ends at its next accept instead of being joined.
            let mut wake = self.local;
            if wake.ip().is_unspecified() {
                wake.set_ip(match wake.ip() {
                    IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
                });
            }
            if TcpStream::connect_timeout(&wake, WAKE_TIMEOUT).is_ok() {
                let _ = acceptor.join();
            }
        }
        self.rt.shutdown(GRACE);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Accept thread: blocking accepts, each handed to the node, until the server stops.
fn run_acceptor(rt: &Arc<Runtime>, listener: &TcpListener) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                if rt.add_incoming(stream, peer) == Admission::Stopped {
                    return;
                }
            }
            Err(_) if !rt.accepting() => return,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                ) => {}
            // Out of descriptors and the like: wait a little rather than spin.
            Err(_) => thread::sleep(ACCEPT_ERROR_PAUSE),
        }
    }
}

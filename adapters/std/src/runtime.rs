//! What [`Client`](crate::Client) and [`Server`](crate::Server) share: one [`Node`] behind a
//! mutex, a reader and a writer thread per socket, a timer thread, connect threads, and the
//! dispatch of the node's outputs.
//!
//! The mutex is never held across blocking I/O or a sleep: readers read into their own
//! buffer, writers copy the node's bytes into theirs, and both lock only to hand bytes over.
//! Where the platform can write to a blocking socket without waiting (Linux, Android),
//! whoever changed the node writes what it has at once, under the lock, up to four writes,
//! and the writer thread is woken only for the rest: an answer leaves from the thread that
//! read the request, with no hand-over between threads.
//! Every change to the node is followed, under the same lock, by [`Runtime::settle`], which
//! drains the node's outputs and acts on them (writes or wakes writers, shuts sockets down,
//! starts connects), so an action can never reach a socket that replaced the one it was meant
//! for.

use crate::NodeEvent;
use crate::feed::Feed;
use flowee_proto::node::{ConnId, HandleId, NodeConfig, NodeError};
use flowee_proto::{Instant, Node, OwnedMessage};
use flowee_service::{Actions, Dispatch, Request, Responder, Service};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// Bytes a reader takes from its socket per read (its own buffer).
const READ_BUF: usize = 64 * 1024;
/// Bytes of a read the node gets at a time: the answers to each piece are written (or handed
/// to the writer thread) before the next piece is handled, so the peer gets answers while
/// later requests are still being handled and both ends work at once (the smol adapter reads this much at a time while it
/// answers, for the same reason).
const INPUT_PIECE: usize = 16 * 1024;
/// Bytes a writer copies from the node per write at most.
const WRITE_BUF: usize = 256 * 1024;
/// How long the writer waits, at a time, for the reader to read a close that has arrived.
const CLOSE_READ_WAIT: Duration = Duration::from_millis(5);
/// How long an outgoing TCP connect may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Unread items a subscription or event stream holds before it counts drops.
pub(crate) const STREAM_CAPACITY: usize = 4096;
/// Rounds in a row in which the node took none of the held-back input before the reader
/// stops yielding and waits a little between offers.
const STALL_SPINS: u32 = 64;
/// That little wait.
const STALL_WAIT: Duration = Duration::from_millis(1);
/// Rounds of draining and acting in one [`Runtime::settle`] at most.
const SETTLE_ROUNDS: usize = 4;
/// Writes one [`Runtime::settle`] makes at once per socket at most, each up to 1 MiB and no
/// more than the socket's free room, under the lock (the smol adapter writes up to 16 in a
/// row the same way); the writer thread writes the rest without the lock. Writing bulk at once
/// measured 1.2× the 1 MiB echo of leaving all but 64 KiB to the writer thread.
const WRITES_AT_ONCE: usize = 4;
/// Connections one [`Runtime::settle`] writes to at once at most; the writers of the others
/// are woken, so a message to thousands of peers does not hold the lock for thousands of
/// system calls.
const AT_ONCE_CONNECTIONS: usize = 64;

/// Locks a mutex, ignoring poisoning: a panic in a service must not take the adapter down.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A service that copies messages into a bounded channel (a subscription).
struct ChannelSink {
    tx: SyncSender<OwnedMessage>,
    lost: Arc<AtomicU64>,
}

impl Service for ChannelSink {
    fn call(&self, request: &Request<'_>, _out: &mut Responder<'_>) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(request.to_owned()) {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One TCP stream of a connection, shared by its reader and writer threads. Its flags change
/// only with the node locked, so the writer's wait on `wake` misses nothing.
struct Socket {
    stream: TcpStream,
    /// Wakes the writer (used with the runtime's mutex).
    wake: Condvar,
    /// The node said it has bytes to write; cleared when `poll_transmit` runs dry.
    pending: AtomicBool,
    /// The socket was let go: the writer stops, the reader's read returns.
    closed: AtomicBool,
    /// The writer holds bytes it took from the node and has not reported written yet: until
    /// it does, nobody else may write (the node would hand out the same bytes again).
    writing: AtomicBool,
}

impl Socket {
    fn new(stream: TcpStream) -> Arc<Self> {
        // Small frames must not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        Arc::new(Socket {
            stream,
            wake: Condvar::new(),
            // The writer looks once at the start, so a transmit said before it ran is not lost.
            pending: AtomicBool::new(true),
            closed: AtomicBool::new(false),
            writing: AtomicBool::new(false),
        })
    }

    /// Writes what the node has for `id` without waiting, while the writer holds nothing and,
    /// with `look_for_input`, nothing waits to be read. Returns whether all of it went out (the
    /// writer need not wake up). A failed write is left to the writer, whose blocking write
    /// fails too and closes the socket.
    fn write_at_once(&self, node: &mut Node, id: ConnId, look_for_input: bool) -> bool {
        if self.writing.load(Ordering::SeqCst)
            || self.closed.load(Ordering::SeqCst)
            || (look_for_input && waiting(&self.stream) != Waiting::Nothing)
        {
            return false;
        }
        for _ in 0..WRITES_AT_ONCE {
            let Some(data) = node.poll_transmit(id) else {
                return true;
            };
            let len = data.len();
            match send_now(&self.stream, data) {
                Some(Ok(n)) => {
                    node.consume_transmit(id, n);
                    if n < len {
                        return false;
                    }
                }
                Some(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                // Full, failed, or not possible here: the writer takes over.
                _ => return false,
            }
        }
        false
    }

    /// Shuts the stream down both ways (a blocked read returns, a blocked write fails) and
    /// stops the writer.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.stream.shutdown(Shutdown::Both);
        self.wake.notify_all();
    }
}

/// What waits to be read on a socket, looked at without reading it. Bytes written while the
/// peer's close waits unread are lost (TCP takes them, the peer never reads them), so nothing
/// is written until the reader has read that close and told the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waiting {
    Nothing,
    Data,
    /// The peer's close, or an error.
    Close,
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn waiting(stream: &TcpStream) -> Waiting {
    use rustix::io::Errno;
    use rustix::net::{RecvFlags, recv};
    let mut byte = [0u8; 1];
    match recv(stream, &mut byte, RecvFlags::PEEK | RecvFlags::DONTWAIT) {
        Ok((_, 0)) => Waiting::Close,
        Ok(_) => Waiting::Data,
        Err(Errno::AGAIN | Errno::INTR) => Waiting::Nothing,
        Err(_) => Waiting::Close,
    }
}

/// Without `MSG_DONTWAIT` a blocking socket cannot be looked at without waiting; nothing is
/// written at once there either ([`send_now`]).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn waiting(_stream: &TcpStream) -> Waiting {
    Waiting::Nothing
}

/// `send` with `MSG_DONTWAIT`: a write to a blocking socket that takes what fits and never
/// waits. `None` where the platform has no such flag.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn send_now(stream: &TcpStream, data: &[u8]) -> Option<io::Result<usize>> {
    use rustix::net::{SendFlags, send};
    Some(send(stream, data, SendFlags::DONTWAIT | SendFlags::NOSIGNAL).map_err(io::Error::from))
}

/// `send` with `MSG_DONTWAIT`: a write to a blocking socket that takes what fits and never
/// waits. `None` where the platform has no such flag.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn send_now(_stream: &TcpStream, _data: &[u8]) -> Option<io::Result<usize>> {
    None
}

/// Everything behind the runtime's mutex.
pub(crate) struct Inner {
    pub(crate) node: Node,
    pub(crate) dispatch: Dispatch,
    /// The socket each connection has now.
    conns: BTreeMap<ConnId, Arc<Socket>>,
    /// The deadline the timer thread sleeps until (`Instant::MAX`: none); `None` while it is
    /// awake (it looks at the node again before sleeping).
    timer_sleep: Option<Instant>,
    /// Reused by every pump, so steady traffic allocates nothing.
    actions: Actions,
    /// Set by [`Runtime::shutdown`]: no new sockets, connects or threads.
    stopping: bool,
    /// A server takes incoming connections.
    accepting: bool,
    /// Why the last connect of a connection failed (for [`Client::connect`](crate::Client)).
    connect_error: Option<(ConnId, io::Error)>,
    /// Threads waiting on [`Runtime::progress`] for a queue to drain.
    progress_waiters: usize,
}

/// What happened to an accepted socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// The node took it.
    Accepted,
    /// The node refused it (a ban, a limit); it is closed.
    Refused,
    /// The server no longer accepts; it is closed.
    Stopped,
}

/// The shared machinery.
pub(crate) struct Runtime {
    inner: Mutex<Inner>,
    /// Wakes the timer thread (used with `inner`).
    timer: Condvar,
    /// Writers made progress, sockets closed or the runtime is stopping (used with `inner`,
    /// by the shutdown and [`Runtime::drain_to`]).
    progress: Condvar,
    /// The node's clock starts here.
    epoch: std::time::Instant,
    /// Threads to join at shutdown (only pushed to with `inner` locked and not stopping).
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// The shutdown is over; also serialises shutdowns.
    finished: Mutex<bool>,
}

impl Runtime {
    /// A runtime with its timer thread running.
    pub(crate) fn new(config: NodeConfig) -> io::Result<Arc<Self>> {
        let rt = Arc::new(Runtime {
            inner: Mutex::new(Inner {
                node: Node::new(Instant::ZERO, config),
                dispatch: Dispatch::default(),
                conns: BTreeMap::new(),
                timer_sleep: None,
                actions: Actions::default(),
                stopping: false,
                accepting: false,
                connect_error: None,
                progress_waiters: 0,
            }),
            timer: Condvar::new(),
            progress: Condvar::new(),
            epoch: std::time::Instant::now(),
            threads: Mutex::new(Vec::new()),
            finished: Mutex::new(false),
        });
        let timer = rt.clone();
        rt.spawn("flowee-timer", move || timer.run_timer())?;
        Ok(rt)
    }

    /// The node's clock: milliseconds since the runtime started.
    pub(crate) fn now(&self) -> Instant {
        Instant::from_millis(u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// Runs `f` on the locked node with the current time, then drains the node's outputs and
    /// acts on them before unlocking.
    pub(crate) fn with<R>(self: &Arc<Self>, f: impl FnOnce(&mut Inner, Instant) -> R) -> R {
        self.with_reading(None, f)
    }

    /// [`Runtime::with`] from the reader of `reading`, which reads its socket next anyway:
    /// what the node has for that connection is written at once without looking for input
    /// first (a system call per answer).
    fn with_reading<R>(
        self: &Arc<Self>,
        reading: Option<ConnId>,
        f: impl FnOnce(&mut Inner, Instant) -> R,
    ) -> R {
        let mut inner = self.lock();
        let now = self.now();
        let result = f(&mut inner, now);
        self.settle(&mut inner, now, reading);
        result
    }

    /// Starts a thread and keeps its handle for the shutdown to join.
    fn spawn(&self, name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
        let handle = thread::Builder::new().name(name.into()).spawn(f)?;
        let mut threads = lock(&self.threads);
        threads.retain(|h| !h.is_finished());
        threads.push(handle);
        Ok(())
    }

    /// Drains the node's outputs (calling services, waiters, listeners) and acts on them: shuts
    /// closed sockets down, writes at once or wakes writers, starts connects, and wakes the timer thread if the
    /// node's next deadline moved before the one it sleeps on. Runs with the node locked; only
    /// non-blocking calls. `reading`: see [`Runtime::with_reading`].
    fn settle(self: &Arc<Self>, inner: &mut Inner, now: Instant, reading: Option<ConnId>) {
        let mut actions = std::mem::take(&mut inner.actions);
        for _ in 0..SETTLE_ROUNDS {
            inner.dispatch.pump(&mut inner.node, now, &mut actions);
            if !actions.disconnect.is_empty() {
                for id in &actions.disconnect {
                    if let Some(socket) = inner.conns.remove(id) {
                        socket.close();
                    }
                }
                // Less may be queued now (the shutdown waits on that).
                self.progress.notify_all();
            }
            let mut at_once = AT_ONCE_CONNECTIONS;
            for id in &actions.wake {
                if let Some(socket) = inner.conns.get(id) {
                    let all = at_once > 0 && {
                        at_once -= 1;
                        socket.write_at_once(&mut inner.node, *id, reading != Some(*id))
                    };
                    if !all {
                        socket.pending.store(true, Ordering::SeqCst);
                        socket.wake.notify_one();
                    }
                }
            }
            // Less may be queued now. Only a waiter is woken: a wake-up is a system call.
            if !actions.wake.is_empty() && inner.progress_waiters > 0 {
                self.progress.notify_all();
            }
            let mut failed = false;
            for (id, addr) in actions.connect.drain(..) {
                if inner.stopping {
                    break;
                }
                let rt = self.clone();
                if self
                    .spawn("flowee-connect", move || rt.run_connect(id, addr))
                    .is_err()
                {
                    // The node decides when to try again.
                    let _ = inner.node.handle_connect_failed(now, id);
                    failed = true;
                }
            }
            if !failed {
                break;
            }
        }
        inner.actions = actions;
        if let (Some(sleeping), Some(next)) = (inner.timer_sleep, inner.node.poll_timeout()) {
            if next < sleeping {
                self.timer.notify_one();
            }
        }
    }

    /// A stream of the node's events; events that find it full are counted as lost. Ended at
    /// once if the runtime has stopped.
    pub(crate) fn events(&self) -> Feed<NodeEvent> {
        let (tx, rx) = mpsc::sync_channel(STREAM_CAPACITY);
        let lost = Arc::new(AtomicU64::new(0));
        let counter = lost.clone();
        let mut inner = self.lock();
        if !inner.stopping {
            inner
                .dispatch
                .listen(Box::new(move |e| match tx.try_send(e.clone()) {
                    Ok(()) => true,
                    Err(TrySendError::Full(_)) => {
                        counter.fetch_add(1, Ordering::Relaxed);
                        true
                    }
                    Err(TrySendError::Disconnected(_)) => false,
                }));
        }
        Feed::new(rx, lost)
    }

    /// Opens a node-wide handle subscribed to `service` (and `message`, if given).
    /// Routes `service` (and `message`, if given) to `handler`.
    pub(crate) fn handle(
        &self,
        service: i32,
        message: Option<i32>,
        handler: Arc<dyn Service>,
    ) -> Result<HandleId, NodeError> {
        let inner = &mut *self.lock();
        inner
            .dispatch
            .open_sink(&mut inner.node, service, message, Some(handler))
    }

    /// Stops routing to a handle.
    pub(crate) fn unhandle(&self, handle: HandleId) -> Result<(), NodeError> {
        let inner = &mut *self.lock();
        inner.dispatch.close_sink(&mut inner.node, handle)
    }

    /// A bounded stream of the messages of `service`, and its handle (to unsubscribe). Ended
    /// at once if the runtime has stopped.
    pub(crate) fn subscribe(
        &self,
        service: i32,
    ) -> Result<(HandleId, Feed<OwnedMessage>), NodeError> {
        let (tx, rx) = mpsc::sync_channel(STREAM_CAPACITY);
        let lost = Arc::new(AtomicU64::new(0));
        let inner = &mut *self.lock();
        // Once stopping, no sink: the sender drops here and the feed ends at once.
        let sink = (!inner.stopping).then(|| {
            Arc::new(ChannelSink {
                tx,
                lost: lost.clone(),
            }) as Arc<dyn Service>
        });
        let handle = inner
            .dispatch
            .open_sink(&mut inner.node, service, None, sink)?;
        Ok((handle, Feed::new(rx, lost)))
    }

    /// A bounded stream of every message no handle claims (it replaces any earlier one).
    /// Ended at once if the runtime has stopped.
    pub(crate) fn incoming(&self) -> Feed<OwnedMessage> {
        let (tx, rx) = mpsc::sync_channel(STREAM_CAPACITY);
        let lost = Arc::new(AtomicU64::new(0));
        let mut inner = self.lock();
        if !inner.stopping {
            let sink = ChannelSink {
                tx,
                lost: lost.clone(),
            };
            inner.dispatch.set_unclaimed(Some(Arc::new(sink)));
        }
        Feed::new(rx, lost)
    }

    /// Stops handing unclaimed messages to a stream.
    pub(crate) fn drop_incoming(&self) {
        self.lock().dispatch.set_unclaimed(None);
    }

    /// Why the last connect of `id` failed, if it did.
    pub(crate) fn take_connect_error(&self, id: ConnId) -> Option<io::Error> {
        let mut inner = self.lock();
        match inner.connect_error.take() {
            Some((c, e)) if c == id => Some(e),
            other => {
                inner.connect_error = other;
                None
            }
        }
    }

    /// Lets a server take incoming connections (or stops it).
    pub(crate) fn set_accepting(&self, accepting: bool) {
        self.lock().accepting = accepting;
    }

    /// Whether a server still takes incoming connections.
    pub(crate) fn accepting(&self) -> bool {
        let inner = self.lock();
        inner.accepting && !inner.stopping
    }

    /// Hands an accepted socket to the node. Refused sockets are closed at once.
    pub(crate) fn add_incoming(self: &Arc<Self>, stream: TcpStream, peer: SocketAddr) -> Admission {
        let socket = Socket::new(stream);
        let rt = self.clone();
        self.with(|inner, now| {
            if inner.stopping || !inner.accepting {
                return Admission::Stopped;
            }
            match inner.node.accept(now, peer) {
                Ok(id) => {
                    inner.dispatch.add_peer(id, peer);
                    inner.dispatch.emit(&NodeEvent::Connected { id, peer });
                    rt.start_socket(inner, now, id, socket.clone());
                    Admission::Accepted
                }
                Err(reason) => {
                    inner.dispatch.emit(&NodeEvent::Refused { peer, reason });
                    socket.close();
                    Admission::Refused
                }
            }
        })
    }

    /// Connect thread: opens the TCP connection for `id`, then tells the node how it went.
    fn run_connect(self: Arc<Self>, id: ConnId, addr: SocketAddr) {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(stream) => {
                let socket = Socket::new(stream);
                let rt = self.clone();
                self.with(|inner, now| {
                    if inner.stopping || inner.node.handle_connected(now, id).is_err() {
                        // Closed meanwhile: the socket goes with this thread.
                        return;
                    }
                    inner.dispatch.add_peer(id, addr);
                    rt.start_socket(inner, now, id, socket.clone());
                });
            }
            Err(e) => {
                self.with(|inner, now| {
                    inner.connect_error = Some((id, e));
                    let _ = inner.node.handle_connect_failed(now, id);
                });
                // The connection is no longer live (the shutdown waits on that).
                self.progress.notify_all();
            }
        }
    }

    /// Makes `socket` the one of `id` and starts its reader and writer threads (with the node
    /// locked, so the shutdown cannot miss them).
    fn start_socket(
        self: &Arc<Self>,
        inner: &mut Inner,
        now: Instant,
        id: ConnId,
        socket: Arc<Socket>,
    ) {
        if let Some(old) = inner.conns.insert(id, socket.clone()) {
            old.close();
        }
        let (reader, writer) = (self.clone(), self.clone());
        let (rs, ws) = (socket.clone(), socket.clone());
        let started = self
            .spawn("flowee-read", move || reader.run_reader(id, rs))
            .and_then(|()| self.spawn("flowee-write", move || writer.run_writer(id, ws)));
        if started.is_err() {
            inner.conns.remove(&id);
            socket.close();
            let _ = inner.node.handle_eof(now, id);
        }
    }

    /// Reader thread: blocking reads into its own buffer, without the lock; each read goes to
    /// the node. At EOF or an error the node hears of it, unless the socket was let go.
    fn run_reader(self: Arc<Self>, id: ConnId, socket: Arc<Socket>) {
        let mut buf = vec![0u8; READ_BUF];
        loop {
            let n = match (&socket.stream).read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            if !self.input(id, &socket, &buf[..n]) {
                return;
            }
        }
        self.with(|inner, now| {
            if is_current(inner, id, &socket) {
                inner.conns.remove(&id);
                socket.close();
                let _ = inner.node.handle_eof(now, id);
            }
        });
    }

    /// Gives `data` to the node; what it does not take (backpressure) is offered again after
    /// its outputs were dispatched. False once the socket is no longer this connection's.
    fn input(self: &Arc<Self>, id: ConnId, socket: &Arc<Socket>, mut data: &[u8]) -> bool {
        let mut stalls = 0;
        while !data.is_empty() {
            let taken = self.with_reading(Some(id), |inner, now| {
                if !is_current(inner, id, socket) {
                    return None;
                }
                let piece = &data[..data.len().min(INPUT_PIECE)];
                Some(
                    inner
                        .node
                        .handle_input(now, id, piece)
                        .unwrap_or(piece.len()),
                )
            });
            let Some(taken) = taken else {
                return false;
            };
            data = data.get(taken..).unwrap_or_default();
            if taken > 0 {
                stalls = 0;
            } else if stalls < STALL_SPINS {
                stalls += 1;
                thread::yield_now();
            } else {
                thread::sleep(STALL_WAIT);
            }
        }
        true
    }

    /// Writer thread: waits until the node has bytes for `id`, copies up to 256 KiB of them
    /// (many frames) into its own buffer, writes without the lock, and tells the node how many
    /// went out (partial writes are normal).
    fn run_writer(self: Arc<Self>, id: ConnId, socket: Arc<Socket>) {
        let mut buf = Vec::with_capacity(WRITE_BUF);
        loop {
            {
                let mut inner = self.lock();
                loop {
                    if socket.closed.load(Ordering::SeqCst) || !is_current(&inner, id, &socket) {
                        return;
                    }
                    if socket.pending.load(Ordering::SeqCst)
                        && waiting(&socket.stream) == Waiting::Close
                    {
                        // The reader is about to read the close and let the socket go (which
                        // wakes this thread); what is queued then goes out after a reconnect.
                        inner = socket
                            .wake
                            .wait_timeout(inner, CLOSE_READ_WAIT)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                        continue;
                    }
                    if socket.pending.load(Ordering::SeqCst) {
                        match inner.node.poll_transmit(id) {
                            Some(data) => {
                                buf.clear();
                                buf.extend_from_slice(&data[..data.len().min(WRITE_BUF)]);
                                socket.writing.store(true, Ordering::SeqCst);
                                break;
                            }
                            // Dry: the node says Transmit again when there is more.
                            None => socket.pending.store(false, Ordering::SeqCst),
                        }
                    }
                    inner = socket
                        .wake
                        .wait(inner)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
            let written = loop {
                if buf.is_empty() {
                    break Some(0);
                }
                match (&socket.stream).write(&buf) {
                    Ok(0) => break None,
                    Ok(n) => break Some(n),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break None,
                }
            };
            let Some(n) = written else {
                // The reader sees the shutdown and tells the node.
                socket.close();
                return;
            };
            self.with(|inner, _| {
                socket.writing.store(false, Ordering::SeqCst);
                if is_current(inner, id, &socket) {
                    inner.node.consume_transmit(id, n);
                }
                if inner.progress_waiters > 0 {
                    self.progress.notify_all();
                }
            });
        }
    }

    /// Timer thread: sleeps until the node's deadline (or a wake-up), then handles the
    /// timeout if the clock says it is due.
    fn run_timer(self: Arc<Self>) {
        let mut inner = self.lock();
        loop {
            if inner.stopping {
                return;
            }
            let now = self.now();
            match inner.node.poll_timeout() {
                // Trust the clock, not the wait: only what is due now is handled.
                Some(at) if at <= now => {
                    inner.node.handle_timeout(now);
                    self.settle(&mut inner, now, None);
                }
                next => {
                    inner.timer_sleep = Some(next.unwrap_or(Instant::MAX));
                    inner = match next {
                        Some(at) => {
                            let wait = Duration::from_millis(at.as_millis() - now.as_millis());
                            self.timer
                                .wait_timeout(inner, wait)
                                .map(|(guard, _)| guard)
                                .unwrap_or_else(|e| e.into_inner().0)
                        }
                        None => self
                            .timer
                            .wait(inner)
                            .unwrap_or_else(PoisonError::into_inner),
                    };
                    inner.timer_sleep = None;
                }
            }
        }
    }

    /// Blocks until at most `max_queued` bytes wait to be written on `id`, also while it waits
    /// to reconnect (true), the connection is gone or the runtime is stopping (true), or
    /// `timeout` passes (false).
    pub(crate) fn drain_to(&self, id: ConnId, max_queued: usize, timeout: Duration) -> bool {
        // No end if the clock cannot reach it (`Duration::MAX`: wait for as long as it takes).
        let end = std::time::Instant::now().checked_add(timeout);
        let mut inner = self.lock();
        loop {
            match inner.node.queued_bytes(id) {
                Some(q) if q > max_queued && !inner.stopping => {}
                _ => return true,
            }
            let left = end.map_or(Duration::MAX, |end| {
                end.saturating_duration_since(std::time::Instant::now())
            });
            if left.is_zero() {
                return false;
            }
            inner = self.wait_for_progress(inner, left);
        }
    }

    /// Waits at most `timeout` for [`Runtime::progress`], counted in `progress_waiters` so
    /// that progress is only signalled while someone waits for it.
    fn wait_for_progress<'a>(
        &self,
        mut inner: MutexGuard<'a, Inner>,
        timeout: Duration,
    ) -> MutexGuard<'a, Inner> {
        inner.progress_waiters += 1;
        let mut inner = self
            .progress
            .wait_timeout(inner, timeout)
            .map(|(guard, _)| guard)
            .unwrap_or_else(|e| e.into_inner().0);
        inner.progress_waiters -= 1;
        inner
    }

    /// Writes what is queued (waiting at most `grace`), closes every connection, ends every
    /// stream and waiter, and joins the threads. Later calls return at once.
    pub(crate) fn shutdown(self: &Arc<Self>, grace: Duration) {
        let mut finished = lock(&self.finished);
        if *finished {
            return;
        }
        let end = std::time::Instant::now() + grace;
        let mut inner = self.lock();
        while queued(&inner) > 0 {
            let left = end.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            inner = self.wait_for_progress(inner, left);
        }
        let now = self.now();
        inner.stopping = true;
        inner.accepting = false;
        // Those waiting for a queue to drain return now.
        self.progress.notify_all();
        let ids: Vec<ConnId> = inner.node.connections().collect();
        for id in ids {
            let _ = inner.node.close(now, id);
        }
        self.settle(&mut inner, now, None);
        for socket in std::mem::take(&mut inner.conns).into_values() {
            socket.close();
        }
        // Dropping the dispatch ends every subscription and event stream and fails every
        // waiting request; it is dropped last, unlocked, in case a service held a client.
        let dispatch = std::mem::take(&mut inner.dispatch);
        drop(inner);
        self.timer.notify_all();
        self.join_threads();
        *finished = true;
        drop(finished);
        drop(dispatch);
    }

    /// Joins every thread the runtime started (but not the calling one).
    fn join_threads(&self) {
        let me = thread::current().id();
        loop {
            let handles = std::mem::take(&mut *lock(&self.threads));
            if handles.is_empty() {
                return;
            }
            for handle in handles {
                if handle.thread().id() != me {
                    let _ = handle.join();
                }
            }
        }
    }
}

/// Whether `socket` is still the one of `id`.
fn is_current(inner: &Inner, id: ConnId, socket: &Arc<Socket>) -> bool {
    inner.conns.get(&id).is_some_and(|s| Arc::ptr_eq(s, socket))
}

/// Bytes queued on the connections that are up or connecting.
fn queued(inner: &Inner) -> usize {
    inner
        .node
        .connections()
        .filter_map(|id| inner.node.connection(id))
        .map(|c| c.stats().queued_bytes)
        .sum()
}

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests {
    use super::*;
    use flowee_proto::{Header, Message, Priority};
    use std::net::TcpListener;

    /// A node with one accepted connection and `body` queued on it, the socket it writes to
    /// and the peer's end of that socket.
    fn queued(body: &[u8]) -> (Node, ConnId, Arc<Socket>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (stream, addr) = listener.accept().unwrap();
        let mut node = Node::new(Instant::ZERO, NodeConfig::default());
        let id = node.accept(Instant::ZERO, addr).unwrap();
        node.send(
            Instant::ZERO,
            id,
            Message::new(&Header::new(3, 1), body),
            Priority::Normal,
        )
        .unwrap();
        peer.set_nonblocking(true).unwrap();
        (node, id, Socket::new(stream), peer)
    }

    fn unread(mut peer: &TcpStream) -> usize {
        let mut buf = [0u8; 4096];
        let mut total = 0;
        // Loopback delivers within the send call; a short wait covers a slow machine.
        let end = std::time::Instant::now() + Duration::from_millis(200);
        loop {
            match peer.read(&mut buf) {
                Ok(n) if n > 0 => total += n,
                _ if total > 0 || std::time::Instant::now() > end => return total,
                _ => thread::sleep(Duration::from_millis(1)),
            }
        }
    }

    #[test]
    fn what_the_socket_takes_is_written_at_once() {
        let (mut node, id, socket, peer) = queued(b"hello");
        assert!(socket.write_at_once(&mut node, id, true));
        assert_eq!(node.queued_bytes(id), Some(0));
        assert!(unread(&peer) > 5);
    }

    #[test]
    fn nothing_is_written_at_once_while_the_writer_holds_bytes() {
        let (mut node, id, socket, peer) = queued(b"hello");
        let queued = node.queued_bytes(id);
        // The writer took the bytes and writes them without the lock: writing them here too
        // would send them twice.
        socket.writing.store(true, Ordering::SeqCst);
        assert!(!socket.write_at_once(&mut node, id, true));
        assert_eq!(node.queued_bytes(id), queued);
        assert_eq!(unread(&peer), 0);
    }

    /// Waits until `what` waits to be read on the socket.
    fn until_waiting(socket: &Socket, what: Waiting) {
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while waiting(&socket.stream) != what {
            assert!(std::time::Instant::now() < end, "{what:?} never arrived");
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn nothing_is_written_at_once_to_a_peer_that_has_closed() {
        let (mut node, id, socket, peer) = queued(b"hello");
        drop(peer);
        // The close has arrived, unread: the reader reads it before anything is written.
        until_waiting(&socket, Waiting::Close);
        let queued = node.queued_bytes(id);
        assert!(!socket.write_at_once(&mut node, id, true));
        assert_eq!(node.queued_bytes(id), queued);
    }

    #[test]
    fn nothing_is_written_at_once_while_input_waits_unless_its_reader_writes() {
        let (mut node, id, socket, mut peer) = queued(b"hello");
        peer.write_all(b"unread").unwrap();
        until_waiting(&socket, Waiting::Data);
        let queued = node.queued_bytes(id);
        assert!(!socket.write_at_once(&mut node, id, true));
        assert_eq!(node.queued_bytes(id), queued);
        // The reader, which reads what waits next, writes its answers at once.
        assert!(socket.write_at_once(&mut node, id, false));
        assert!(unread(&peer) > 5);
    }

    #[test]
    fn the_writer_writes_nothing_while_the_peers_close_waits_unread() {
        let (node, id, socket, peer) = queued(b"hello");
        let rt = Runtime::new(NodeConfig::default()).unwrap();
        {
            let mut inner = rt.lock();
            inner.node = node;
            inner.conns.insert(id, socket.clone());
        }
        let queued = rt.lock().node.queued_bytes(id);
        drop(peer);
        until_waiting(&socket, Waiting::Close);
        let writer = {
            let (rt, socket) = (rt.clone(), socket.clone());
            thread::spawn(move || rt.run_writer(id, socket))
        };
        // Something that must not happen: given time, the writer would have written.
        thread::sleep(Duration::from_millis(100));
        assert_eq!(rt.lock().node.queued_bytes(id), queued);
        // The reader reads the close and lets the socket go; the writer stops.
        {
            let _inner = rt.lock();
            socket.close();
        }
        writer.join().unwrap();
        assert_eq!(rt.lock().node.queued_bytes(id), queued);
        rt.shutdown(Duration::ZERO);
    }

    #[test]
    fn more_than_the_socket_takes_is_left_to_the_writer() {
        // More than loopback socket buffers hold while the peer reads nothing.
        let (mut node, id, socket, _peer) = queued(&vec![7u8; 32 << 20]);
        assert!(!socket.write_at_once(&mut node, id, true));
        let left = node.queued_bytes(id).unwrap();
        assert!(left > 0 && left < 32 << 20, "{left} bytes left");
    }

    #[test]
    fn what_a_full_socket_does_not_take_is_left_to_the_writer() {
        let (mut node, id, socket, _peer) = queued(b"hello");
        // Fill the socket while the peer reads nothing.
        let junk = vec![0u8; 1 << 20];
        while let Some(Ok(_)) = send_now(&socket.stream, &junk) {}
        let queued = node.queued_bytes(id);
        assert!(!socket.write_at_once(&mut node, id, true));
        assert_eq!(node.queued_bytes(id), queued);
    }
}

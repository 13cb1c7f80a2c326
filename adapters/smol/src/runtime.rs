//! What [`Client`](crate::Client) and [`Server`](crate::Server) share: one [`Node`] behind a
//! mutex, a task per socket, a timer task, and the dispatch of the node's outputs.
//!
//! The mutex is never held across an `.await`: socket reads and writes are non-blocking calls
//! made while it is held only for as long as the call takes, and waiting happens without it.

use crate::NodeEvent;
use event_listener::Event;
use flowee_proto::node::{ConnId, HandleId, NodeConfig, NodeError, RequestError, RequestId};
use flowee_proto::{Instant, Node, OwnedMessage};
use flowee_service::{Actions, Dispatch, Request, Responder, Service};
use smol::Async;
use smol::channel::{Receiver, Sender, TrySendError};
use smol::future::FutureExt;
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Bytes read from a socket in a row at most before the task lets others run, so one busy
/// peer cannot starve the others.
const READ_BUDGET: usize = 1 << 20;
/// Writes per wake-up at most. Each takes up to 1 MiB while holding the runtime's lock, so
/// other connections wait for at most 16 MiB of copying.
const WRITE_BUDGET: usize = 16;
/// The most one read takes while reads bring nothing to answer: all the room the node lends,
/// which grows with the traffic up to the connection's receive buffer.
const WHOLE_ROOM: usize = usize::MAX;
/// What one read brings is handled and answered before the next read. While reads bring
/// answers to write, they are this small: the peer gets answers while later requests are still
/// being read, so both ends work at once (tokio-util flushes every 8 KiB for the same reason).
/// While they bring none (a large message arriving), reads take the whole buffer.
const ANSWERED_READ: usize = 16 * 1024;
/// The node's deadlines are rounded up to this grain, so the timer task wakes at most once per
/// grain however many connections have deadlines (10,000 idle connections pinging every second
/// have thousands a second), and each wake-up handles all that came due in it. Protocol
/// deadlines are seconds long; a few milliseconds late changes nothing.
const TIMER_GRAIN_MS: u64 = 10;
/// The most bytes waiting on a connection that whoever queued them writes at once. More is bulk
/// traffic, which the connection's task writes between its reads, pacing itself by the socket.
const AT_ONCE_QUEUED: usize = 64 * 1024;
/// Connections one pump writes to at once at most; the tasks of the others are woken, so a
/// message to thousands of peers does not hold the lock for thousands of system calls.
const AT_ONCE_CONNECTIONS: usize = 64;
/// How long an outgoing TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the accept loop waits after a failed accept (out of descriptors and the like).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);
/// How long a graceful shutdown (or the one a drop starts) waits for queues to empty.
pub(crate) const GRACE: Duration = Duration::from_secs(5);
/// Unread items a subscription or event stream holds before it counts drops.
pub(crate) const STREAM_CAPACITY: usize = 4096;

/// A service that copies messages into a channel (a subscription).
pub(crate) struct ChannelSink {
    pub(crate) tx: Sender<OwnedMessage>,
    pub(crate) lost: Arc<AtomicU64>,
}

impl Service for ChannelSink {
    fn call(&self, request: &Request<'_>, _out: &mut Responder<'_>) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(request.to_owned()) {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A task [`Runtime::shutdown`] waits for; dropped when the task ends, or is dropped.
struct Running(Arc<Runtime>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.tasks.fetch_sub(1, Ordering::SeqCst);
        self.0.tasks_done.notify(usize::MAX);
    }
}

/// What [`Runtime::pump_and_flush`] did.
struct Flushed {
    /// The socket is full.
    blocked: bool,
    /// More is left to write.
    more: bool,
    /// Something was written.
    wrote: bool,
}

/// What one read of a socket did.
enum ReadOutcome {
    /// `n` bytes (0: nothing was waiting); `more` if they filled the room.
    Got { n: usize, more: bool },
    /// Nothing was read: the node takes no input now (backpressure).
    Full,
    /// EOF or an error: the socket reads no more.
    Closed,
}

/// Writes what the node has for `id` without waiting, at most [`WRITE_BUDGET`] writes, if no
/// more than [`AT_ONCE_QUEUED`] bytes wait and nothing waits to be read.
/// Returns whether all of it went out, and whether anything did. A failed write is left to
/// the connection's task, whose next write fails too.
fn write_at_once(node: &mut Node, id: ConnId, stream: &Async<TcpStream>) -> (bool, bool) {
    let mut wrote = false;
    if node.queued_bytes(id).is_none_or(|q| q > AT_ONCE_QUEUED) || input_waiting(stream) {
        return (false, wrote);
    }
    for _ in 0..WRITE_BUDGET {
        let Some(data) = node.poll_transmit(id) else {
            return (true, wrote);
        };
        let len = data.len();
        match stream.get_ref().write(data) {
            Ok(n) => {
                wrote |= n > 0;
                node.consume_transmit(id, n);
                if n < len {
                    return (false, wrote);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return (false, wrote),
        }
    }
    (false, wrote)
}

/// Whether the socket has something to read: data, the peer's close or an error. The
/// connection's task reads before it writes; written here first, a message could go to a peer
/// that has closed already (its close not read yet), and TCP would take it and lose it.
fn input_waiting(stream: &Async<TcpStream>) -> bool {
    let mut byte = [0u8; 1];
    !matches!(stream.get_ref().peek(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// `at` rounded up to [`TIMER_GRAIN_MS`] (the end of time stays where it is).
fn grain(at: Instant) -> Instant {
    match at.as_millis().checked_next_multiple_of(TIMER_GRAIN_MS) {
        Some(ms) => Instant::from_millis(ms),
        None => at,
    }
}

/// (still open, more likely waiting, held back, bytes read)
fn read_state(outcome: ReadOutcome) -> (bool, bool, bool, usize) {
    match outcome {
        ReadOutcome::Got { n, more } => (true, more, false, n),
        ReadOutcome::Full => (true, false, true, 0),
        ReadOutcome::Closed => (false, false, false, 0),
    }
}

/// A live connection's socket, shared by its task and the pump, and its wake-up.
struct Signal {
    stream: Arc<Async<TcpStream>>,
    event: Event,
    /// Set with the node locked once this socket is done with: the node closed it, or a
    /// reconnect replaced it (an outgoing connection keeps its id). The task then neither reads
    /// nor writes for the connection again, whose id may name a newer socket by then.
    disconnect: AtomicBool,
}

/// The signal of a connection the node just made live, registered under the same lock, so a
/// disconnect the node decides before the connection's task starts is not lost.
fn register(inner: &mut Inner, id: ConnId, stream: Arc<Async<TcpStream>>) -> Arc<Signal> {
    let signal = Arc::new(Signal {
        stream,
        event: Event::new(),
        disconnect: AtomicBool::new(false),
    });
    if let Some(old) = inner.conns.insert(id, signal.clone()) {
        old.disconnect.store(true, Ordering::SeqCst);
        old.event.notify(usize::MAX);
    }
    signal
}

/// Forgets the signal of a connection whose task ended, unless the node has reconnected it
/// already: a newer socket of the same connection stays.
fn unregister(inner: &mut Inner, id: ConnId, signal: &Arc<Signal>) {
    if inner.conns.get(&id).is_some_and(|s| Arc::ptr_eq(s, signal)) {
        inner.conns.remove(&id);
    }
}

pub(crate) struct Inner {
    pub(crate) node: Node,
    pub(crate) dispatch: Dispatch,
    conns: BTreeMap<ConnId, Arc<Signal>>,
    /// Reused by every pump, so steady traffic allocates nothing.
    actions: Actions,
    /// The deadline the timer task sleeps until (`None` while it is awake).
    timer_sleep: Option<Instant>,
    /// Why the last connect of a connection failed (for [`Client::connect`](crate::Client)).
    connect_error: Option<(ConnId, io::Error)>,
}

/// The shared machinery.
pub(crate) struct Runtime {
    inner: Mutex<Inner>,
    timer: Event,
    epoch: std::time::Instant,
    /// Set by [`Runtime::shutdown`] with the node locked: no new connections after it.
    stopping: AtomicBool,
    /// A server's accept loop runs (cleared by [`Runtime::stop_accepting`], never set again).
    accepting: AtomicBool,
    /// Wakes the accept loop to look at `accepting`.
    accept_stop: Event,
    tasks: AtomicU64,
    tasks_done: Event,
    /// Notified after a write, when a connection's task ends and when stopping: wakes those
    /// waiting for a send queue to drain ([`Runtime::drain_to`]).
    written: Event,
}

impl Runtime {
    pub(crate) fn new(config: NodeConfig) -> Arc<Self> {
        let rt = Arc::new(Runtime {
            inner: Mutex::new(Inner {
                node: Node::new(Instant::ZERO, config),
                dispatch: Dispatch::default(),
                conns: BTreeMap::new(),
                actions: Actions::default(),
                timer_sleep: None,
                connect_error: None,
            }),
            timer: Event::new(),
            epoch: std::time::Instant::now(),
            stopping: AtomicBool::new(false),
            accepting: AtomicBool::new(true),
            accept_stop: Event::new(),
            tasks: AtomicU64::new(0),
            tasks_done: Event::new(),
            written: Event::new(),
        });
        let timer = rt.clone();
        rt.spawn(async move { timer.run_timer().await });
        rt
    }

    /// The node's clock: milliseconds since the runtime started.
    pub(crate) fn now(&self) -> Instant {
        Instant::from_millis(self.epoch.elapsed().as_millis() as u64)
    }

    fn to_std(&self, at: Instant) -> std::time::Instant {
        self.epoch + Duration::from_millis(at.as_millis())
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic in a service must not take the whole adapter down with it.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts a task that [`Runtime::shutdown`] waits for. It counts as ended however it ends:
    /// the executor drops a detached task that panics, and the count must not outlive it.
    pub(crate) fn spawn(self: &Arc<Self>, f: impl Future<Output = ()> + Send + 'static) {
        self.tasks.fetch_add(1, Ordering::SeqCst);
        let running = Running(self.clone());
        smol::spawn(async move {
            let _running = running;
            f.await;
        })
        .detach();
    }

    /// Routes messages of `service` (and `message`, if given) to `handler`.
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

    /// A stream of the node's events; events that find it full are counted as lost. Ended at
    /// once if the runtime has stopped.
    pub(crate) fn events(&self) -> (Receiver<NodeEvent>, Arc<AtomicU64>) {
        let (tx, rx) = smol::channel::bounded(STREAM_CAPACITY);
        let lost = Arc::new(AtomicU64::new(0));
        let counter = lost.clone();
        let mut inner = self.lock();
        // Looked at with the node locked, as `shutdown` sets it: once stopping, no listener,
        // so the sender drops here and the stream ends at once.
        if !self.stopping.load(Ordering::SeqCst) {
            inner
                .dispatch
                .listen(Box::new(move |e| match tx.try_send(e.clone()) {
                    Ok(()) => true,
                    Err(TrySendError::Full(_)) => {
                        counter.fetch_add(1, Ordering::Relaxed);
                        true
                    }
                    Err(TrySendError::Closed(_)) => false,
                }));
        }
        (rx, lost)
    }

    /// A bounded stream of the messages of `service`, and its handle (to unsubscribe). Ended
    /// at once if the runtime has stopped.
    pub(crate) fn subscribe(
        &self,
        service: i32,
    ) -> Result<(HandleId, Receiver<OwnedMessage>, Arc<AtomicU64>), NodeError> {
        let (tx, rx) = smol::channel::bounded(STREAM_CAPACITY);
        let lost = Arc::new(AtomicU64::new(0));
        let inner = &mut *self.lock();
        let sink = (!self.stopping.load(Ordering::SeqCst)).then(|| {
            Arc::new(ChannelSink {
                tx,
                lost: lost.clone(),
            }) as Arc<dyn Service>
        });
        let handle = inner
            .dispatch
            .open_sink(&mut inner.node, service, None, sink)?;
        Ok((handle, rx, lost))
    }

    /// A bounded stream of every message no handle claims (it replaces any earlier one).
    /// Ended at once if the runtime has stopped.
    pub(crate) fn incoming(&self) -> (Receiver<OwnedMessage>, Arc<AtomicU64>) {
        let (tx, rx) = smol::channel::bounded(STREAM_CAPACITY);
        let lost = Arc::new(AtomicU64::new(0));
        let mut inner = self.lock();
        if !self.stopping.load(Ordering::SeqCst) {
            let sink = ChannelSink {
                tx,
                lost: lost.clone(),
            };
            inner.dispatch.set_unclaimed(Some(Arc::new(sink)));
        }
        (rx, lost)
    }

    /// Registers a waiter for a request (with the node locked, so the reply cannot be
    /// dispatched before the waiter exists).
    pub(crate) fn wait_for(
        inner: &mut Inner,
        request: RequestId,
    ) -> Receiver<Result<OwnedMessage, RequestError>> {
        let (tx, rx) = smol::channel::bounded(1);
        inner.dispatch.wait(
            request,
            Box::new(move |r| {
                let _ = tx.try_send(r);
            }),
        );
        rx
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

    /// Stops a server's accept loop (it drops the listener, freeing the port) and makes
    /// [`Runtime::add_incoming`] refuse sockets from now on.
    pub(crate) fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::SeqCst);
        self.accept_stop.notify(usize::MAX);
    }

    /// A server's accept loop, started with [`Runtime::spawn`] so that
    /// [`Runtime::shutdown`] returns only once the listener is closed.
    pub(crate) async fn run_acceptor(self: Arc<Self>, listener: Async<TcpListener>) {
        loop {
            // Listen before looking, so a stop in between is not lost.
            let stopped = self.accept_stop.listen();
            if !self.accepting.load(Ordering::SeqCst) {
                break;
            }
            let accepted = async { Some(listener.accept().await) }
                .or(async {
                    stopped.await;
                    None
                })
                .await;
            match accepted {
                Some(Ok((stream, peer))) => {
                    self.add_incoming(stream, peer);
                }
                // Out of descriptors and the like: wait a little rather than spin (a stop
                // meanwhile is seen at the top of the loop).
                Some(Err(_)) => {
                    smol::Timer::after(ACCEPT_ERROR_PAUSE).await;
                }
                None => break,
            }
        }
        drop(listener);
    }

    /// Takes an accepted socket; false if the node refused it or the server stops (it is
    /// closed then).
    pub(crate) fn add_incoming(
        self: &Arc<Self>,
        stream: Async<TcpStream>,
        peer: SocketAddr,
    ) -> bool {
        let _ = stream.get_ref().set_nodelay(true);
        let stream = Arc::new(stream);
        let now = self.now();
        let accepted = {
            let mut inner = self.lock();
            // Looked at with the node locked: `shutdown` sets `stopping` under the same lock
            // before it closes every connection, so none slips in after that.
            if self.stopping.load(Ordering::SeqCst) || !self.accepting.load(Ordering::SeqCst) {
                return false;
            }
            let result = inner.node.accept(now, peer);
            let event = match result {
                Ok(id) => {
                    inner.dispatch.add_peer(id, peer);
                    NodeEvent::Connected { id, peer }
                }
                Err(reason) => NodeEvent::Refused { peer, reason },
            };
            inner.dispatch.emit(&event);
            let stream = stream.clone();
            result.map(|id| (id, register(&mut inner, id, stream)))
        };
        match accepted {
            Ok((id, signal)) => {
                let rt = self.clone();
                self.spawn(async move { rt.run_connection(id, stream, signal).await });
                self.pump();
                true
            }
            Err(_) => false,
        }
    }

    /// Drains the node's outputs (calling services), then writes (see [`write_at_once`]),
    /// wakes, closes and opens sockets.
    pub(crate) fn pump(self: &Arc<Self>) {
        self.pump_except(None);
    }

    /// [`Runtime::pump`], without waking the task of `serving` (it is about to write).
    fn pump_except(self: &Arc<Self>, serving: Option<&Arc<Signal>>) {
        let now = self.now();
        let (connects, wake_timer, wrote) = {
            let mut guard = self.lock();
            let inner = &mut *guard;
            inner
                .dispatch
                .pump(&mut inner.node, now, &mut inner.actions);
            // Notifying never blocks, so it is done with the lock held (nothing to collect).
            for id in &inner.actions.disconnect {
                if let Some(s) = inner.conns.get(id) {
                    s.disconnect.store(true, Ordering::SeqCst);
                    s.event.notify(usize::MAX);
                }
            }
            let mut wrote = false;
            let mut at_once = AT_ONCE_CONNECTIONS;
            for id in &inner.actions.wake {
                if let Some(s) = inner.conns.get(id) {
                    if serving.is_some_and(|me| Arc::ptr_eq(me, s)) {
                        continue;
                    }
                    // Written here, it needs no wake-up of the task (from another thread, a
                    // system call and a switch); the task writes what the socket did not take.
                    let (all, some) = if at_once > 0 {
                        at_once -= 1;
                        write_at_once(&mut inner.node, *id, &s.stream)
                    } else {
                        (false, false)
                    };
                    wrote |= some;
                    if !all {
                        s.event.notify(usize::MAX);
                    }
                }
            }
            let connects: Vec<_> = inner.actions.connect.drain(..).collect();
            // Wake the timer only if a deadline came before the one it sleeps until.
            let wake_timer = match (inner.timer_sleep, inner.node.poll_timeout()) {
                (Some(sleeping), Some(next)) => grain(next) < sleeping,
                _ => false,
            };
            (connects, wake_timer, wrote)
        };
        if wrote {
            self.written.notify(usize::MAX);
        }
        for (id, addr) in connects {
            let rt = self.clone();
            self.spawn(async move { rt.connect(id, addr).await });
        }
        if wake_timer {
            self.timer.notify(usize::MAX);
        }
    }

    async fn connect(self: Arc<Self>, id: ConnId, addr: SocketAddr) {
        let attempt = Async::<TcpStream>::connect(addr)
            .or(async {
                smol::Timer::after(CONNECT_TIMEOUT).await;
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no connection to {addr} after {} s",
                        CONNECT_TIMEOUT.as_secs()
                    ),
                ))
            })
            .await;
        let now = self.now();
        match attempt {
            Ok(stream) => {
                let _ = stream.get_ref().set_nodelay(true);
                let stream = Arc::new(stream);
                let signal = {
                    let mut inner = self.lock();
                    if inner.node.handle_connected(now, id).is_err() {
                        return;
                    }
                    inner.dispatch.add_peer(id, addr);
                    register(&mut inner, id, stream.clone())
                };
                let rt = self.clone();
                self.spawn(async move { rt.run_connection(id, stream, signal).await });
            }
            Err(e) => {
                let mut inner = self.lock();
                inner.connect_error = Some((id, e));
                let _ = inner.node.handle_connect_failed(now, id);
                // No task ends here to say the connection is no longer live.
                self.written.notify(usize::MAX);
            }
        }
        self.pump();
    }

    /// Drains the node's outputs, then writes what it has for `id` without waiting, all under
    /// one lock. Returns whether the socket is full, and whether more is left to write. With
    /// `full` (the last write found the socket full and it has not been writable since) it
    /// does not try: a write would only fail again.
    fn pump_and_flush(
        self: &Arc<Self>,
        id: ConnId,
        signal: &Arc<Signal>,
        full: bool,
    ) -> io::Result<Flushed> {
        self.pump_except(Some(signal));
        let mut inner = self.lock();
        let mut flushed = Flushed {
            blocked: false,
            more: false,
            wrote: false,
        };
        if signal.disconnect.load(Ordering::SeqCst) {
            return Ok(flushed);
        }
        let stream = &signal.stream;
        if full {
            let more = inner
                .node
                .connection(id)
                .is_some_and(|c| c.wants_transmit());
            flushed.blocked = more;
            flushed.more = more;
            return Ok(flushed);
        }
        for _ in 0..WRITE_BUDGET {
            let Some(data) = inner.node.poll_transmit(id) else {
                return Ok(flushed);
            };
            match stream.get_ref().write(data) {
                Ok(n) => {
                    flushed.wrote |= n > 0;
                    inner.node.consume_transmit(id, n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    flushed.blocked = true;
                    flushed.more = true;
                    return Ok(flushed);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        flushed.more = inner
            .node
            .connection(id)
            .is_some_and(|c| c.wants_transmit());
        Ok(flushed)
    }

    /// Reads once from the socket straight into the node's receive buffer for `id`, at most
    /// `limit` bytes. The lock is held for the read, which never waits (the socket is
    /// non-blocking), in place of the copy a separate read buffer would cost.
    fn read(&self, id: ConnId, signal: &Signal, limit: usize) -> ReadOutcome {
        let mut inner = self.lock();
        if signal.disconnect.load(Ordering::SeqCst) {
            return ReadOutcome::Closed;
        }
        let stream = &signal.stream;
        let Ok(mut room) = inner.node.input_room(id) else {
            return ReadOutcome::Closed;
        };
        let buf = room.buf();
        let len = buf.len().min(limit);
        if len == 0 {
            return ReadOutcome::Full;
        }
        let n = loop {
            match stream.get_ref().read(&mut buf[..len]) {
                Ok(0) => return ReadOutcome::Closed,
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return ReadOutcome::Got { n: 0, more: false };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return ReadOutcome::Closed,
            }
        };
        room.commit(self.now(), n);
        // A short read most likely drained the socket: skip the read that would say so.
        ReadOutcome::Got { n, more: n == len }
    }

    /// Whether the node takes input for `id` again (after backpressure).
    fn has_room(&self, id: ConnId) -> bool {
        let mut inner = self.lock();
        match inner.node.input_room(id) {
            Ok(mut room) => !room.buf().is_empty(),
            // Gone: the next read says so.
            Err(_) => true,
        }
    }

    async fn run_connection(
        self: Arc<Self>,
        id: ConnId,
        stream: Arc<Async<TcpStream>>,
        signal: Arc<Signal>,
    ) {
        // The node took no input at the last read (backpressure).
        let mut held_back = false;
        let mut open = true;
        let mut eof_told = false;
        // The last read filled the buffer: more is likely waiting.
        let mut unread = false;
        // Bytes read in a row without letting other tasks run.
        let mut burst = 0;
        // How much the next read takes (see `ANSWERED_READ`).
        let mut limit = WHOLE_ROOM;
        // The last write found the socket full, and it has not been writable since.
        let mut full = false;
        loop {
            // EOF goes to the node only after every byte before it.
            if !open && !eof_told {
                eof_told = true;
                self.eof(id, &signal);
            }
            if held_back {
                self.pump();
                held_back = !self.has_room(id);
            }
            // Listen before looking, so a wake-up in between is not lost.
            event_listener::listener!(signal.event => listener);
            let (blocked, more) = match self.pump_and_flush(id, &signal, full) {
                Ok(flushed) => {
                    if flushed.wrote {
                        self.written.notify(usize::MAX);
                    }
                    limit = if flushed.wrote {
                        ANSWERED_READ
                    } else {
                        WHOLE_ROOM
                    };
                    (flushed.blocked, flushed.more)
                }
                Err(_) => {
                    self.eof(id, &signal);
                    (true, false)
                }
            };
            full = blocked;
            if signal.disconnect.load(Ordering::SeqCst) {
                break;
            }
            if !blocked && more {
                // The write budget ran out with more to write: read what came meanwhile and
                // let the other tasks run before writing on, so a peer that reads as fast as
                // it is written to is still heard.
                if open && !held_back {
                    (open, unread, held_back, _) = read_state(self.read(id, &signal, limit));
                }
                burst = 0;
                smol::future::yield_now().await;
                continue;
            }
            if unread && open && !held_back {
                // The answers to the last read are written (or the socket is full); read on
                // without waiting.
                let got;
                (open, unread, held_back, got) = read_state(self.read(id, &signal, limit));
                burst += got;
                if burst >= READ_BUDGET {
                    burst = 0;
                    // A peer that never stops sending keeps this loop from waiting for
                    // `writable`: try a write again once per budget.
                    full = false;
                    smol::future::yield_now().await;
                }
                continue;
            }
            burst = 0;
            let readable = async {
                if open && !held_back {
                    let _ = stream.readable().await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            let writable = async {
                if blocked {
                    let _ = stream.writable().await;
                    full = false;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            // Writable first: when a wake-up reports both, `full` is cleared (the read below
            // happens anyway).
            writable.or(readable).or(listener).await;
            if open && !held_back {
                (open, unread, held_back, _) = read_state(self.read(id, &signal, limit));
            }
        }
        // The socket closes when the last of `stream` and the signal's copy goes, here.
        drop(stream);
        unregister(&mut self.lock(), id, &signal);
        drop(signal);
        self.written.notify(usize::MAX);
    }

    /// Waits until at most `max_queued` bytes wait to be written on `id` (also while it waits
    /// to reconnect), the connection is gone, or the runtime is stopping.
    pub(crate) async fn drain_to(&self, id: ConnId, max_queued: usize) {
        loop {
            event_listener::listener!(self.written => listener);
            let queued = self.lock().node.queued_bytes(id);
            match queued {
                Some(q) if q > max_queued && !self.stopping.load(Ordering::SeqCst) => {
                    listener.await
                }
                _ => return,
            }
        }
    }

    /// The socket of `signal` reads no more (or failed): tells the node, unless the socket is
    /// done with already (see [`Signal::disconnect`]).
    fn eof(self: &Arc<Self>, id: ConnId, signal: &Signal) {
        let now = self.now();
        {
            let mut inner = self.lock();
            if !signal.disconnect.load(Ordering::SeqCst) {
                let _ = inner.node.handle_eof(now, id);
            }
        }
        self.pump();
    }

    async fn run_timer(self: Arc<Self>) {
        loop {
            let listener = self.timer.listen();
            if self.stopping.load(Ordering::SeqCst) && self.lock().node.is_empty() {
                return;
            }
            let deadline = {
                let mut inner = self.lock();
                let deadline = inner.node.poll_timeout().map(grain);
                inner.timer_sleep = Some(deadline.unwrap_or(Instant::MAX));
                deadline
            };
            match deadline {
                Some(at) => {
                    let sleep = async {
                        smol::Timer::at(self.to_std(at)).await;
                    };
                    sleep.or(listener).await;
                }
                None => listener.await,
            }
            self.lock().timer_sleep = None;
            // Trust the clock, not the timer: only what is due now is handled.
            let now = self.now();
            if deadline.is_some_and(|at| at <= now) {
                self.lock().node.handle_timeout(now);
                self.pump();
            }
        }
    }

    /// Queued bytes on every connection (for a graceful shutdown).
    fn queued(&self) -> usize {
        let inner = self.lock();
        inner
            .node
            .connections()
            .filter_map(|id| inner.node.connection(id))
            .map(|c| c.stats().queued_bytes)
            .sum()
    }

    /// Closes every connection once what is queued has been written (or `grace` has passed),
    /// and stops the tasks.
    pub(crate) async fn shutdown(self: &Arc<Self>, grace: Duration) {
        self.stop_accepting();
        let end = std::time::Instant::now() + grace;
        loop {
            event_listener::listener!(self.written => listener);
            let left = end.saturating_duration_since(std::time::Instant::now());
            if self.queued() == 0 || left.is_zero() {
                break;
            }
            listener
                .or(async {
                    smol::Timer::after(left).await;
                })
                .await;
        }
        let now = self.now();
        {
            let mut inner = self.lock();
            self.stopping.store(true, Ordering::SeqCst);
            self.written.notify(usize::MAX);
            let ids: Vec<ConnId> = inner.node.connections().collect();
            for id in ids {
                let _ = inner.node.close(now, id);
            }
        }
        self.pump();
        // Streams and waiters end; nothing will feed them any more.
        self.lock().dispatch.close_all();
        // Wait for the connection tasks and the timer task to end.
        while self.tasks.load(Ordering::SeqCst) > 0 {
            let listener = self.tasks_done.listen();
            if self.tasks.load(Ordering::SeqCst) == 0 {
                break;
            }
            self.timer.notify(usize::MAX);
            listener
                .or(async {
                    smol::Timer::after(Duration::from_millis(50)).await;
                })
                .await;
        }
    }

    /// The peer of a connection.
    pub(crate) fn peer(&self, id: ConnId) -> Option<SocketAddr> {
        self.lock().dispatch.peer(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowee_proto::{Header, Message, Priority};

    /// A node with one accepted connection and `body` queued on it, its non-blocking socket,
    /// and the peer's end of that socket.
    fn queued(body: &[u8]) -> (Node, ConnId, Async<TcpStream>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (stream, addr) = listener.accept().unwrap();
        let mut node = Node::new(Instant::ZERO, NodeConfig::default());
        let id = node.accept(Instant::ZERO, addr).unwrap();
        let header = Header::new(3, 1);
        node.send(
            Instant::ZERO,
            id,
            Message::new(&header, body),
            Priority::Normal,
        )
        .unwrap();
        (node, id, Async::new(stream).unwrap(), peer)
    }

    #[test]
    fn a_task_that_ends_late_leaves_the_reconnected_socket_alone() {
        let (node, id, stream, mut peer) = queued(b"");
        let rt = Runtime::new(NodeConfig::default());
        let mut inner = rt.lock();
        inner.node = node;
        let stream = Arc::new(stream);
        let old = register(&mut inner, id, stream.clone());
        // The node reconnected before the old socket's task ended: the old socket is done with.
        let new = register(&mut inner, id, stream.clone());
        assert!(old.disconnect.load(Ordering::SeqCst));
        assert!(!new.disconnect.load(Ordering::SeqCst));
        drop(inner);
        // The old task neither reads into the connection, nor ends it, nor writes for it.
        peer.write_all(b"for the old socket").unwrap();
        until_input_waits(&stream);
        assert!(matches!(rt.read(id, &old, WHOLE_ROOM), ReadOutcome::Closed));
        assert!(input_waiting(&stream));
        rt.eof(id, &old);
        rt.lock()
            .node
            .send(
                Instant::ZERO,
                id,
                Message::new(&Header::new(3, 1), b"new"),
                Priority::Normal,
            )
            .unwrap();
        let queued = rt.lock().node.queued_bytes(id);
        assert!(queued.is_some_and(|q| q > 0));
        let flushed = rt.pump_and_flush(id, &old, false).unwrap();
        assert!(!flushed.wrote && !flushed.more);
        assert_eq!(rt.lock().node.queued_bytes(id), queued);
        // When it ends, the newer socket stays registered.
        let mut inner = rt.lock();
        unregister(&mut inner, id, &old);
        assert!(inner.conns.get(&id).is_some_and(|s| Arc::ptr_eq(s, &new)));
        unregister(&mut inner, id, &new);
        assert!(inner.conns.is_empty());
    }

    /// Reads from `peer` until more than `have` bytes came in all, or 10 s passed; returns the
    /// bytes read in all.
    fn read_past(peer: &mut TcpStream, mut have: usize, want: usize) -> usize {
        peer.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let end = std::time::Instant::now() + Duration::from_secs(10);
        let mut buf = vec![0u8; 1 << 16];
        while have < want && std::time::Instant::now() < end {
            if let Ok(n) = peer.read(&mut buf) {
                have += n;
            }
        }
        have
    }

    /// The task's last write of a budget empties the queue: a message sent after that still
    /// goes out at once (the node once announced nothing more, and the message waited until
    /// the peer spoke).
    #[test]
    fn a_send_after_a_budget_that_emptied_the_queue_goes_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (stream, addr) = listener.accept().unwrap();
        let rt = Runtime::new(NodeConfig::default());
        assert!(rt.add_incoming(Async::new(stream).unwrap(), addr));
        let id = rt.lock().node.connections().next().unwrap();
        // One slice per broadcast, more bytes than are written at once: the task writes them,
        // exactly one budget.
        let body = vec![7u8; AT_ONCE_QUEUED / WRITE_BUDGET + 1000];
        let queued = {
            let mut inner = rt.lock();
            for _ in 0..WRITE_BUDGET {
                let header = Header::new(3, 1);
                let sent = inner.node.broadcast(
                    rt.now(),
                    &Message::new(&header, &body),
                    Priority::Normal,
                    [id],
                    |_, e| panic!("{e:?}"),
                );
                assert_eq!(sent, 1);
            }
            inner.node.queued_bytes(id).unwrap()
        };
        rt.pump();
        let got = read_past(&mut peer, 0, queued);
        assert_eq!(got, queued);
        let header = Header::new(3, 2);
        rt.lock()
            .node
            .send(
                rt.now(),
                id,
                Message::new(&header, b"late"),
                Priority::Normal,
            )
            .unwrap();
        rt.pump();
        assert!(read_past(&mut peer, got, got + 1) > got, "the late message");
    }

    #[test]
    fn a_task_that_panics_still_counts_as_ended() {
        let rt = Runtime::new(NodeConfig::default());
        let before = rt.tasks.load(Ordering::SeqCst);
        rt.spawn(async { panic!("a bug in a task (expected by this test)") });
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while rt.tasks.load(Ordering::SeqCst) != before {
            assert!(std::time::Instant::now() < end, "the task still counts");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn what_the_socket_takes_is_written_at_once() {
        let (mut node, id, stream, mut peer) = queued(b"hello");
        assert_eq!(write_at_once(&mut node, id, &stream), (true, true));
        assert_eq!(node.queued_bytes(id), Some(0));
        let mut buf = [0u8; 64];
        assert!(peer.read(&mut buf).unwrap() > 5);
    }

    /// Nothing is written at once: what is queued stays for the task.
    fn assert_left_to_the_task(node: &mut Node, id: ConnId, stream: &Async<TcpStream>) {
        let queued = node.queued_bytes(id);
        assert_eq!(write_at_once(node, id, stream), (false, false));
        assert_eq!(node.queued_bytes(id), queued);
    }

    /// Waits until something waits to be read on `stream`.
    fn until_input_waits(stream: &Async<TcpStream>) {
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while !input_waiting(stream) {
            assert!(std::time::Instant::now() < end, "nothing arrived");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn bulk_is_left_to_the_task() {
        let (mut node, id, stream, _peer) = queued(&vec![7u8; AT_ONCE_QUEUED + 1]);
        assert_left_to_the_task(&mut node, id, &stream);
    }

    #[test]
    fn what_a_full_socket_does_not_take_is_left_to_the_task() {
        let (mut node, id, stream, _peer) = queued(b"hello");
        // Fill the socket while the peer reads nothing.
        let junk = vec![0u8; 1 << 20];
        while stream.get_ref().write(&junk).is_ok() {}
        assert_left_to_the_task(&mut node, id, &stream);
    }

    #[test]
    fn nothing_is_written_at_once_to_a_peer_that_has_closed() {
        let (mut node, id, stream, peer) = queued(b"hello");
        drop(peer);
        // The close has arrived, unread: the task reads it before it writes anything.
        until_input_waits(&stream);
        assert_left_to_the_task(&mut node, id, &stream);
    }

    #[test]
    fn nothing_is_written_at_once_while_input_waits() {
        let (mut node, id, stream, mut peer) = queued(b"hello");
        peer.write_all(b"unread").unwrap();
        until_input_waits(&stream);
        assert_left_to_the_task(&mut node, id, &stream);
        // Once it is read, writing at once goes on.
        let mut buf = [0u8; 16];
        assert_eq!(stream.get_ref().read(&mut buf).unwrap(), 6);
        assert_eq!(write_at_once(&mut node, id, &stream), (true, true));
    }

    #[test]
    fn deadlines_round_up_to_the_grain() {
        let ms = Instant::from_millis;
        assert_eq!(grain(ms(0)), ms(0));
        assert_eq!(grain(ms(1)), ms(TIMER_GRAIN_MS));
        assert_eq!(grain(ms(TIMER_GRAIN_MS)), ms(TIMER_GRAIN_MS));
        assert_eq!(grain(ms(TIMER_GRAIN_MS + 1)), ms(2 * TIMER_GRAIN_MS));
        for at in [12_345, 99_999, u64::MAX - 3, u64::MAX] {
            let g = grain(ms(at));
            assert!(
                g >= ms(at) && g.as_millis() - at < TIMER_GRAIN_MS,
                "{at} -> {g:?}"
            );
        }
    }
}

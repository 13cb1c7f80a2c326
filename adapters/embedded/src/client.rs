//! The client: one [`Connection`] driven over one socket by one clock.

use crate::clock::Clock;
use crate::error::Error;
use crate::select::{Either, select, yield_now};
use core::fmt;
use core::time::Duration;
use embedded_io_async::{Read, Write};
use flowee_proto::connection::Stats;
use flowee_proto::storage::{Fixed, Storage};
use flowee_proto::{Config, Connection, Event, Instant, Message, Priority, Role, SendError};

/// Loop turns [`Client::next`] and [`Client::flush`] make before giving the executor a turn,
/// so a socket that is always ready cannot starve the other tasks.
const TURNS_PER_YIELD: u32 = 32;
/// How long a write the socket does not take waits before reads go first. A peer that stops
/// reading until we read its answers (the C++ does while more than 750 wait) must not wait
/// for us while we wait for it.
const WRITE_PATIENCE: Duration = Duration::from_millis(50);

/// A Flowee client over any socket with `embedded-io-async` [`Read`] + [`Write`] (an
/// `embassy-net` `TcpSocket`, a UART bridge, a host socket through `embedded-io-adapters`).
///
/// It owns a [`Connection`] with storage `S` (by default [`Fixed`]: 9000-byte buffers, about
/// 20 KB, sequences delivered chunk by chunk), the socket `T` and the clock `C`. The socket
/// reads straight into the connection's receive buffer, at most `READ` bytes at a time.
/// Nothing is allocated, and nothing happens until it is polled:
/// [`Client::send`] only queues; [`Client::next`] writes, reads and keeps the connection alive
/// until an event is ready.
///
/// # Cancel safety
///
/// While it waits, the client races a socket read or write against the clock and drops the
/// loser, so `T`'s `read` and `write` must be side-effect-free on cancel (as the traits
/// recommend; `embassy-net`'s sockets and `embedded-io-adapters` are). `T`'s `write` should
/// not hold data back: the client calls the socket's `flush` only in [`Client::flush`].
///
/// Then [`Client::next`] and [`Client::flush`] are cancel safe too: dropping them unfinished
/// loses nothing, so they can be raced against other work with any `select`.
///
/// # Sizes
///
/// With [`Fixed`], a body goes out whole only if its frames fit the send queue (`TX`, 9000
/// bytes by default): larger ones are refused with [`SendError::TooLarge`], so pick a larger
/// `TX` for uploads. Received bodies of any size arrive as
/// [`Event::SequenceStart`], [`Event::SequenceChunk`]s and [`Event::SequenceEnd`]. `READ`
/// must be at least 1 (checked at compile time); 1024 makes a 9000-byte frame nine reads. It
/// costs no memory: it only bounds each read (for sockets that prefer small ones).
pub struct Client<T, C, S: Storage = Fixed, const READ: usize = 1024> {
    conn: Connection<S>,
    io: T,
    clock: C,
    /// A write waited [`WRITE_PATIENCE`] in vain: reads go first, with writes tried between
    /// them without waiting, until a read finds nothing.
    write_stalled: bool,
}

impl<T, C, S, const READ: usize> Client<T, C, S, READ>
where
    T: Read + Write,
    C: Clock,
    S: Storage,
{
    /// A read into an empty buffer returns 0, which would look like EOF.
    const READ_IS_NOT_EMPTY: () = assert!(READ > 0, "Client: READ must be at least 1");

    /// A client over `io`, a socket that is already connected. The first event is
    /// [`Event::Connected`].
    pub fn new(io: T, clock: C, config: Config) -> Self {
        let mut client = Self::new_disconnected(io, clock, config);
        client.restart();
        client
    }

    /// A client whose socket is not connected yet (an `embassy-net` socket before its
    /// `connect`): messages queue, and [`Client::next`] returns [`Error::Closed`] until
    /// [`Client::restart`] (or [`Client::reconnect`]) says the socket is up.
    pub fn new_disconnected(io: T, clock: C, config: Config) -> Self {
        let () = Self::READ_IS_NOT_EMPTY;
        let now = clock.now();
        Client {
            conn: Connection::connecting(now, config),
            io,
            clock,
            write_stalled: false,
        }
    }

    /// Queues a message; it is written by the next [`Client::next`] or [`Client::flush`].
    /// After the connection closed and its [`Event::Closed`] was returned, messages queue for
    /// the next connection (see [`Client::reconnect`]). Errors give the message back.
    pub fn send<'a>(
        &mut self,
        message: Message<'a>,
        priority: Priority,
    ) -> Result<(), SendError<Message<'a>>> {
        self.settle();
        let now = self.clock.now();
        self.conn.send(now, message, priority)
    }

    /// Drives the connection until it has an event, and returns it: writes what is queued
    /// (many frames per write), answers the clock (pings, timeouts) and reads the socket.
    ///
    /// The event borrows the client until the next call. After [`Event::Closed`] it returns
    /// [`Error::Closed`] until [`Client::reconnect`]. A socket error comes back as
    /// [`Error::Read`] or [`Error::Write`] once; the events after it end with
    /// [`Event::Closed`].
    pub async fn next(&mut self) -> Result<Event<'_>, Error<T::Error>> {
        self.drive(None).await?;
        self.conn.poll_event().ok_or(Error::Closed)
    }

    /// Like [`Client::next`], but gives up with `None` once the clock reaches `deadline` (to
    /// wait for a reply with a timeout, say). The connection's work goes on at the next call.
    pub async fn next_before(
        &mut self,
        deadline: Instant,
    ) -> Result<Option<Event<'_>>, Error<T::Error>> {
        if !self.drive(Some(deadline)).await? {
            return Ok(None);
        }
        self.conn.poll_event().ok_or(Error::Closed).map(Some)
    }

    /// Writes everything queued, then flushes the socket. It does not read, so it waits for a
    /// peer that stops reading until its answers are read (the C++ does while more than 750
    /// wait for us): with answers coming, use [`Client::next`], which reads and writes. Fails with [`Error::Closed`] when the
    /// connection is (or becomes) closed; [`Client::next`] then says why.
    pub async fn flush(&mut self) -> Result<(), Error<T::Error>> {
        self.settle();
        let mut turns = 0u32;
        loop {
            let now = self.clock.now();
            self.handle_due_timers(now);
            if !self.conn.is_established() {
                return Err(Error::Closed);
            }
            turns = turns.wrapping_add(1);
            if turns % TURNS_PER_YIELD == 0 {
                yield_now().await;
            }
            let deadline = self.conn.poll_timeout();
            let Client {
                conn, io, clock, ..
            } = self;
            if let Some(data) = conn.poll_transmit() {
                let written = select(io.write(data), sleep(clock, deadline)).await;
                if let Either::First(result) = written {
                    Self::wrote(conn, clock.now(), result)?;
                }
                continue;
            }
            match select(io.flush(), sleep(clock, deadline)).await {
                Either::First(Ok(())) if !conn.wants_transmit() => return Ok(()),
                Either::First(Ok(())) | Either::Second(()) => {}
                Either::First(Err(e)) => {
                    conn.handle_eof(clock.now());
                    return Err(Error::Write(e));
                }
            }
        }
    }

    /// Closes the connection now (queued messages stay queued for [`Client::reconnect`]); the
    /// next event is [`Event::Closed`] with
    /// [`CloseReason::Local`](flowee_proto::CloseReason::Local). The socket stays open: close
    /// it through [`Client::io_mut`] or [`Client::into_parts`].
    pub fn close(&mut self) {
        let now = self.clock.now();
        self.conn.close(now);
    }

    /// Goes on over a new, already connected socket, for when the old one died: a new
    /// connection starts with the messages the old one had not (fully) sent, which go out
    /// first (at least once: a message cut off mid-write is sent again whole). An open
    /// connection is closed first and its unread events are dropped. Returns the old socket.
    pub fn reconnect(&mut self, io: T) -> T {
        let old = core::mem::replace(&mut self.io, io);
        self.restart();
        old
    }

    /// Like [`Client::reconnect`], for a socket that was connected again in place (through
    /// [`Client::io_mut`], as `embassy-net` sockets are).
    pub fn restart(&mut self) {
        let now = self.clock.now();
        if self.conn.is_established() || self.conn.is_closed() {
            self.conn.close(now);
            self.start_over(now);
        }
        self.conn.handle_connected(now);
    }

    /// Whether the connection is up (not closed, and not waiting for a reconnect).
    pub fn is_connected(&self) -> bool {
        self.conn.is_established()
    }

    /// The connection's counters and queue lengths.
    pub fn stats(&self) -> Stats {
        self.conn.stats()
    }

    /// The connection, to read its state.
    pub fn connection(&self) -> &Connection<S> {
        &self.conn
    }

    /// The connection, for commands the client does not wrap
    /// ([`Connection::punish`], [`Connection::send_first`]). Drive it only through the client.
    pub fn connection_mut(&mut self) -> &mut Connection<S> {
        &mut self.conn
    }

    /// The socket.
    pub fn io(&self) -> &T {
        &self.io
    }

    /// The socket, to close or reconnect it in place (then call [`Client::restart`]).
    pub fn io_mut(&mut self) -> &mut T {
        &mut self.io
    }

    /// The clock.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// The socket and the clock back; queued messages are dropped.
    pub fn into_parts(self) -> (T, C) {
        (self.io, self.clock)
    }

    /// Runs until an event is ready (true) or the clock reaches `until` (false).
    async fn drive(&mut self, until: Option<Instant>) -> Result<bool, Error<T::Error>> {
        self.settle();
        let mut turns = 0u32;
        loop {
            let now = self.clock.now();
            self.handle_due_timers(now);
            // `has_event` also lets go of the last event, whose bytes may be what left no
            // room for input.
            if self.conn.has_event() {
                return Ok(true);
            }
            // Closed and reported (or waiting for a reconnect): nothing will ever come.
            if !self.conn.is_established() {
                return Err(Error::Closed);
            }
            if until.is_some_and(|at| at <= now) {
                return Ok(false);
            }
            turns = turns.wrapping_add(1);
            if turns % TURNS_PER_YIELD == 0 {
                yield_now().await;
                continue;
            }
            let deadline = earliest(self.conn.poll_timeout(), until);
            let patience = earliest(deadline, Some(now + WRITE_PATIENCE));
            let Client {
                conn,
                io,
                clock,
                write_stalled,
            } = self;
            if let Some(data) = conn.poll_transmit() {
                // Writing first keeps the queues short. After a stall, a write is only tried.
                let wait = if *write_stalled { Some(now) } else { patience };
                match select(io.write(data), sleep(clock, wait)).await {
                    Either::First(result) => {
                        *write_stalled = false;
                        Self::wrote(conn, clock.now(), result)?;
                        continue;
                    }
                    Either::Second(()) if !*write_stalled => {
                        *write_stalled = true;
                        continue;
                    }
                    Either::Second(()) => {}
                }
            } else {
                *write_stalled = false;
            }
            // The socket reads straight into the receive buffer. A read cut short by the
            // clock takes nothing (the socket's `read` is cancel safe), nor does the room.
            let mut room = conn.input_room();
            let buf = room.buf();
            let len = buf.len().min(READ);
            // While writes stall, a read that finds nothing within the patience gives the
            // writes their turn again.
            let wait = if *write_stalled { patience } else { deadline };
            if len == 0 {
                // Not reached: with the last event let go, the receive buffer (at least one
                // maximum frame) has room, or holds a complete frame. Wait for the clock.
                sleep(clock, wait).await;
                *write_stalled = false;
                continue;
            }
            match select(io.read(&mut buf[..len]), sleep(clock, wait)).await {
                Either::First(Ok(0)) => conn.handle_eof(clock.now()),
                Either::First(Ok(n)) => {
                    room.commit(clock.now(), n);
                }
                Either::First(Err(e)) => {
                    conn.handle_eof(clock.now());
                    return Err(Error::Read(e));
                }
                Either::Second(()) => *write_stalled = false,
            }
        }
    }

    /// Applies the result of a socket write.
    fn wrote(
        conn: &mut Connection<S>,
        now: Instant,
        result: Result<usize, T::Error>,
    ) -> Result<(), Error<T::Error>> {
        match result {
            // A socket that takes nothing from a non-empty buffer is gone.
            Ok(0) => conn.handle_eof(now),
            Ok(n) => conn.consume_transmit(n),
            Err(e) => {
                conn.handle_eof(now);
                return Err(Error::Write(e));
            }
        }
        Ok(())
    }

    /// Handles the connection's timers if the clock says they are due (the timer future is
    /// only a hint).
    fn handle_due_timers(&mut self, now: Instant) {
        if self.conn.poll_timeout().is_some_and(|at| at <= now) {
            self.conn.handle_timeout(now);
        }
    }

    /// Once a closed connection's [`Event::Closed`] was returned, replaces it by one waiting
    /// for a socket, holding the unsent messages, so [`Client::send`] can go on queueing.
    fn settle(&mut self) {
        if self.conn.is_closed() && !self.conn.has_event() {
            let now = self.clock.now();
            self.start_over(now);
        }
    }

    /// A new connecting connection with the closed one's unsent messages.
    fn start_over(&mut self, now: Instant) {
        self.write_stalled = false;
        let config = *self.conn.config();
        self.conn = match self.conn.take_outbox() {
            Some(outbox) => Connection::with_outbox(now, Role::Connecting, config, outbox),
            None => Connection::connecting(now, config),
        };
    }
}

impl<T, C, S: Storage, const READ: usize> fmt::Debug for Client<T, C, S, READ> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("connection", &self.conn)
            .finish_non_exhaustive()
    }
}

/// The earlier of two optional deadlines.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Sleeps until `at`, or forever without a deadline.
async fn sleep<C: Clock>(clock: &C, at: Option<Instant>) {
    match at {
        Some(at) => clock.sleep_until(at).await,
        None => core::future::pending().await,
    }
}

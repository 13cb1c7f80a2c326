//! One TCP stream speaking the protocol, as a state machine with no I/O.
//!
//! Feed it what happens ([`Connection::handle_input`] or [`Connection::input_room`],
//! [`Connection::handle_eof`], [`Connection::handle_timeout`], [`Connection::handle_connected`]),
//! tell it what the application wants ([`Connection::send`], [`Connection::close`],
//! [`Connection::punish`]), and do what it asks ([`Connection::poll_transmit`],
//! [`Connection::poll_timeout`], [`Connection::poll_event`]). The order of calls does not
//! matter: extra or early calls do nothing, and pending output waits. See the crate
//! documentation for the run loop.

mod config;
mod event;
mod inbox;
mod queue;
#[cfg(test)]
mod tests;
mod timer;

pub use config::{Config, Points, SequenceDelivery};
pub use event::{CloseReason, Event, Misbehaviour, ProtocolError, Stats};
#[cfg(feature = "alloc")]
pub use queue::{EncodedMessage, OwnedMessage};
pub use queue::{Message, Priority, QueueEntry, SendError};
pub use timer::Timer;

/// Free room of a connection's receive buffer, lent by [`Connection::input_room`] so input
/// can be written in place (saving [`Connection::handle_input`]'s copy). It borrows the
/// connection until [`InputRoom::commit`]; dropping it takes nothing.
#[derive(Debug)]
pub struct InputRoom<'a, S: Storage = DefaultStorage> {
    conn: &'a mut Connection<S>,
    len: usize,
}

impl<S: Storage> InputRoom<'_, S> {
    /// The room to write into: empty when nothing can be taken now.
    pub fn buf(&mut self) -> &mut [u8] {
        self.conn.input_room_buf(self.len)
    }

    /// Takes the first `n` bytes of the room as input that arrived at `now` (at most the
    /// room's length) and parses them; returns how many were taken.
    pub fn commit(self, now: Instant, n: usize) -> usize {
        self.conn.commit_input(now, self.len, n)
    }
}

use crate::frame::{FrameEncoder, MAX_FRAME_LEN, PING_FRAME, PONG_FRAME};
use crate::score::Score;
use crate::storage::{ByteStore, DefaultStorage, Fifo, Storage};
use crate::time::Instant;
use core::time::Duration;
use inbox::{Effect, Inbox};
use queue::{OutQueue, Refused};
use timer::TimerTable;

/// Which end of the TCP connection this is. It decides who pings (spec §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum Role {
    /// We opened the connection (a client): we ping.
    Connecting,
    /// We accepted it (a server): we expect pings and answer with pongs.
    Accepting,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Connecting side before the TCP connection is up: messages queue, nothing is sent.
    Connecting,
    Established,
    Closed(CloseReason),
}

/// Where the transmit cursor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Ping,
    Pong,
    High,
    Normal,
}

/// A small queue of events that are not received data (repeats of one kind are merged).
const NOTICES: usize = 16;
/// Parsing pauses while fewer notice slots than this are free, so a burst of misbehaviour
/// cannot overflow the notice queue.
const NOTICE_RESERVE: usize = 2;
/// Pongs handed out by one [`Connection::poll_transmit`] at most (a burst of pings is answered
/// in few writes).
const PONG_BATCH: usize = 64;
/// [`PONG_BATCH`] pong frames in a row.
static PONGS: [u8; PONG_FRAME.len() * PONG_BATCH] = {
    let mut all = [0; PONG_FRAME.len() * PONG_BATCH];
    let mut i = 0;
    while i < all.len() {
        all[i] = PONG_FRAME[i % PONG_FRAME.len()];
        i += 1;
    }
    all
};

/// Our pings awaiting a pong, at most; more only when pong timeouts are off.
const MAX_PINGS_OUT: usize = 4;
/// The most bytes one [`Connection::poll_transmit`] hands out, so a high-priority frame queued
/// meanwhile waits for at most one such batch. A socket takes up to its send buffer per write
/// (megabytes on a fast link), and fewer, larger writes cost the kernel less per byte (the C++
/// batches 250 KiB).
const MAX_BATCH: usize = 1024 * 1024;

/// The messages a closed connection did not finish sending, to queue on the next connection.
///
/// Messages that were partly transmitted start again from their first byte: delivery is
/// at-least-once across a reconnect (spec §13.8).
pub struct Outbox<S: Storage = DefaultStorage> {
    high: OutQueue<S::TxHigh, S::Queue>,
    normal: OutQueue<S::Tx, S::Queue>,
    encoder: FrameEncoder,
}

impl<S: Storage> Outbox<S> {
    /// An empty outbox with room as `config` says.
    pub fn new(config: &Config) -> Self {
        Outbox {
            encoder: FrameEncoder::with_chunk_size(config.chunk_size.get()),
            high: OutQueue::new(
                S::tx_high(config.high_queue_bytes.get()),
                S::queue(config.high_queue_len.get().saturating_add(1)),
                config.high_queue_len.get(),
            ),
            normal: OutQueue::new(
                S::tx(config.normal_queue_bytes.get()),
                S::queue(config.normal_queue_len.get().saturating_add(1)),
                config.normal_queue_len.get(),
            ),
        }
    }

    /// Messages waiting: `(high priority, normal)`.
    pub fn len(&self) -> (usize, usize) {
        (self.high.len(), self.normal.len())
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.high.is_empty() && self.normal.is_empty()
    }

    /// Bytes waiting.
    pub fn pending_bytes(&self) -> usize {
        self.high.pending_bytes() + self.normal.pending_bytes()
    }

    /// The serial of the last normal-priority message queued (1 for the first).
    pub(crate) fn normal_serial(&self) -> u64 {
        self.normal.pushed()
    }

    /// How many normal-priority messages went out whole: those of serials up to this.
    pub(crate) fn normal_sent(&self) -> u64 {
        self.normal.completed()
    }

    /// Queues a message (see [`Connection::send`]), for a connection that is not up.
    pub fn send<'a>(
        &mut self,
        message: Message<'a>,
        priority: Priority,
    ) -> Result<(), SendError<Message<'a>>> {
        let result = match priority {
            Priority::High if message.body.len() > self.encoder.chunk_size() => {
                Err(Refused::TooLarge)
            }
            Priority::High => self.high.push(&self.encoder, message.header, message.body),
            Priority::Normal => self
                .normal
                .push(&self.encoder, message.header, message.body),
        };
        result.map_err(|refused| refused.with(message))
    }

    /// Queues a message encoded once for many connections.
    #[cfg(feature = "alloc")]
    pub fn send_encoded(
        &mut self,
        message: &EncodedMessage,
        priority: Priority,
    ) -> Result<(), SendError<EncodedMessage>> {
        let result = match priority {
            Priority::High if !message.is_single_frame() => Err(Refused::TooLarge),
            Priority::High => self.high.push_shared(message),
            Priority::Normal => self.normal.push_shared(message),
        };
        result.map_err(|refused| refused.with(message.clone()))
    }
}

impl<S: Storage> core::fmt::Debug for Outbox<S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Outbox")
            .field("messages", &self.len())
            .field("bytes", &self.pending_bytes())
            .finish()
    }
}

/// Heap memory held by a connection's buffers, by buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapUsage {
    /// The receive buffer (at most [`Config::receive_buffer`]).
    pub receive: usize,
    /// Sequence reassembly (at most [`Config::max_sequence_size`]).
    pub reassembly: usize,
    /// The high-priority queue (at most [`Config::high_queue_bytes`]).
    pub high_queue: usize,
    /// The normal queue (at most [`Config::normal_queue_bytes`]).
    pub normal_queue: usize,
}

impl HeapUsage {
    /// All of it.
    pub fn total(&self) -> usize {
        self.receive + self.reassembly + self.high_queue + self.normal_queue
    }
}

/// An event that is not received data (small, so the notice queue stays small).
#[derive(Clone, Copy, Debug)]
enum Notice {
    Connected,
    Pong(Duration),
    Misbehaved(Misbehaviour, u32, u32),
}

impl Notice {
    /// Folds an older notice of the same kind into this one: points add up, the latest
    /// score and RTT stay. False for another kind.
    fn absorb(&mut self, older: Notice) -> bool {
        match (self, older) {
            (Notice::Misbehaved(k, points, _), Notice::Misbehaved(k2, p2, _)) if *k == k2 => {
                *points = points.saturating_add(p2);
                true
            }
            (Notice::Pong(_), Notice::Pong(_)) | (Notice::Connected, Notice::Connected) => true,
            _ => false,
        }
    }

    fn event(self) -> Event<'static> {
        match self {
            Notice::Connected => Event::Connected,
            Notice::Pong(rtt) => Event::Pong { rtt },
            Notice::Misbehaved(kind, points, score) => Event::Misbehaved {
                kind,
                points,
                score,
            },
        }
    }
}

/// One protocol connection. See the [module documentation](self).
///
/// `S` chooses where its buffers live: [`Heap`](crate::storage::Heap) (with `alloc`, the
/// default) or [`Fixed`](crate::storage::Fixed) arrays.
pub struct Connection<S: Storage = DefaultStorage> {
    config: Config,
    role: Role,
    state: State,
    closed_reported: bool,
    now: Instant,
    timers: TimerTable,
    inbox: Inbox<S::Rx, S::Reassembly>,
    outbox: Outbox<S>,
    source: Option<Source>,
    frame_left: usize,
    returned: usize,
    ping_pending: bool,
    /// Pongs not yet written, the one partly written included.
    pongs_owed: u32,
    /// When our unanswered pings were queued, oldest first: pongs answer them in order.
    pings_out: heapless::Deque<Instant, MAX_PINGS_OUT>,
    /// `handle_input` left bytes unread since the last ping (our application was not polling),
    /// so a ping may be waiting in them: a ping timeout then is not the peer's fault.
    held_back_input: bool,
    /// The last time data went through the buffers (for releasing idle ones).
    last_busy: Instant,
    /// Bytes of preface ([`Connection::send_first`]) at the head of the high queue.
    preface_len: usize,
    /// Events that are not received data, each with the number of deliveries that come
    /// before it, so events stay in the order things happened.
    notices: heapless::Deque<(u64, Notice), NOTICES>,
    score: Score,
    stats: Stats,
}

impl<S: Storage> core::fmt::Debug for Connection<S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Connection")
            .field("role", &self.role)
            .field("state", &self.state)
            .field("now", &self.now)
            .field("timers", &self.timers)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// `now + d`, at least one millisecond later, so a deadline set while handling a timeout is
/// never due at once.
fn after(now: Instant, d: Duration) -> Instant {
    now + d.max(Duration::from_millis(1))
}

impl<S: Storage> Connection<S> {
    /// The connecting side, before its TCP connection is up. Messages sent now wait until
    /// [`Connection::handle_connected`].
    pub fn connecting(now: Instant, config: Config) -> Self {
        Self::with_outbox(now, Role::Connecting, config, Outbox::new(&config))
    }

    /// The accepting side of a connection just accepted.
    pub fn accepted(now: Instant, config: Config) -> Self {
        Self::with_outbox(now, Role::Accepting, config, Outbox::new(&config))
    }

    /// A connection that starts with messages left by an earlier one (see
    /// [`Connection::take_outbox`]).
    pub fn with_outbox(now: Instant, role: Role, config: Config, outbox: Outbox<S>) -> Self {
        let inbox = Inbox::new(
            S::rx(config.receive_buffer.get().max(MAX_FRAME_LEN)),
            S::reassembly(config.max_sequence_size.get() as usize),
            config.sequence_delivery,
            config.max_sequence_size.get(),
        );
        let mut conn = Connection {
            config,
            role,
            state: State::Connecting,
            closed_reported: false,
            now,
            timers: TimerTable::default(),
            inbox,
            outbox,
            source: None,
            frame_left: 0,
            returned: 0,
            ping_pending: false,
            pongs_owed: 0,
            pings_out: heapless::Deque::new(),
            held_back_input: false,
            last_busy: now,
            preface_len: 0,
            notices: heapless::Deque::new(),
            score: Score::new(now),
            stats: Stats::default(),
        };
        if role == Role::Accepting {
            conn.state = State::Established;
            conn.timers
                .set(Timer::PingDeadline, after(now, config.first_ping_timeout));
            if let Some(window) = config.introduction_timeout {
                conn.timers.set(Timer::Introduction, after(now, window));
            }
        }
        conn
    }

    /// Which end this is.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The settings it was made with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether the TCP connection is up and the connection not closed.
    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// Why it closed, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        match self.state {
            State::Closed(reason) => Some(reason),
            _ => None,
        }
    }

    /// Whether it is closed (the [`Event::Closed`] may still wait to be polled).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed(_))
    }

    /// Bytes of heap memory its buffers hold now (0 with [`Fixed`](crate::storage::Fixed)
    /// storage, whose memory is part of the connection itself).
    pub fn heap_usage(&self) -> HeapUsage {
        HeapUsage {
            receive: self.inbox.rx_releasable(),
            reassembly: self.inbox.releasable() - self.inbox.rx_releasable(),
            high_queue: self.outbox.high.releasable(),
            normal_queue: self.outbox.normal.releasable(),
        }
    }

    /// Bytes waiting to be transmitted (as in [`Stats::queued_bytes`], without the rest).
    pub fn queued_bytes(&self) -> usize {
        self.outbox.pending_bytes()
    }

    /// Counters and queue lengths.
    pub fn stats(&self) -> Stats {
        let mut stats = self.stats;
        stats.queued_high = self.outbox.high.len();
        stats.queued_normal = self.outbox.normal.len();
        stats.queued_bytes = self.outbox.pending_bytes();
        stats.score = self.score.at(self.now, self.config.score_decay_per_hour);
        stats
    }

    fn update_clock(&mut self, now: Instant) -> Instant {
        if now > self.now {
            self.now = now;
        }
        self.now
    }

    /// Input: the connecting side's TCP connection is up. Starts the ping timer and lets
    /// queued messages go out.
    pub fn handle_connected(&mut self, now: Instant) {
        let now = self.update_clock(now);
        if self.state != State::Connecting {
            return;
        }
        self.state = State::Established;
        self.timers
            .set(Timer::Ping, after(now, self.config.ping_interval));
        self.notice(Notice::Connected);
    }

    /// Input: bytes from the peer. Returns how many were taken; fewer than offered means the
    /// receive buffer is full of data the application has not polled yet (backpressure): poll
    /// events, then offer the rest again. After the connection closed, everything is taken and
    /// ignored. Frames are parsed a few ahead of delivery, the rest as events are polled or at
    /// the next [`Connection::handle_timeout`], so each is parsed once.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) -> usize {
        let now = self.update_clock(now);
        if self.is_closed() {
            return data.len();
        }
        if self.state == State::Connecting && !data.is_empty() {
            // Data can only come over an established TCP connection.
            self.handle_connected(now);
        }
        // The last event's borrow has ended (this call needs `&mut self`), so its room can be
        // reused at once.
        self.inbox.release();
        let mut taken = 0;
        loop {
            let n = self.inbox.push(&data[taken..]);
            taken += n;
            self.received(now, n);
            if n == 0 || taken == data.len() || self.is_closed() {
                break;
            }
        }
        if taken < data.len() {
            self.held_back_input = true;
        }
        taken
    }

    /// Input without a copy: lends the free room of the receive buffer, so a socket can read
    /// straight into it; [`InputRoom::commit`] then takes the bytes written as
    /// [`Connection::handle_input`] would. An empty room means the buffer is full of data the
    /// application has not polled yet (backpressure: poll events, then ask again) or the
    /// connection no longer reads. The room is at least half the buffer, and after a read
    /// that filled it the buffer doubles (within [`Config::receive_buffer`]), so a busy
    /// connection soon reads in large pieces while an idle one keeps a small buffer. The time
    /// is given at the commit, when the bytes have arrived, so the room may be lent to a read
    /// that waits.
    ///
    /// ```
    /// # use flowee_proto::{frame::PING_FRAME, Connection, Config, Instant};
    /// let mut conn: Connection = Connection::accepted(Instant::ZERO, Config::default());
    /// let mut room = conn.input_room();
    /// let n = PING_FRAME.len();
    /// room.buf()[..n].copy_from_slice(&PING_FRAME); // a socket's `read` in real use
    /// assert_eq!(room.commit(Instant::from_millis(5), n), n);
    /// assert!(conn.poll_transmit().is_some()); // the pong
    /// ```
    pub fn input_room(&mut self) -> InputRoom<'_, S> {
        let len = self.prepare_input_room();
        InputRoom { conn: self, len }
    }

    /// Prepares [`Connection::input_room`]; returns its length.
    pub(crate) fn prepare_input_room(&mut self) -> usize {
        if self.is_closed() {
            return 0;
        }
        // The last event's borrow has ended, as in `handle_input`.
        self.inbox.release();
        let len = self.inbox.prepare_room();
        if len == 0 {
            self.held_back_input = true;
        }
        // The room may have been allocated just now, and a read may bring nothing: memory
        // that no input follows is still given back.
        self.schedule_release();
        len
    }

    /// The room [`Connection::prepare_input_room`] prepared, `len` bytes.
    pub(crate) fn input_room_buf(&mut self, len: usize) -> &mut [u8] {
        let room = self.inbox.room();
        let len = len.min(room.len());
        &mut room[..len]
    }

    /// Takes `n` bytes written into the prepared room (at most `len`, its length) at `now`.
    pub(crate) fn commit_input(&mut self, now: Instant, len: usize, n: usize) -> usize {
        let now = self.update_clock(now);
        let n = n.min(len);
        if n == 0 {
            return 0;
        }
        if self.state == State::Connecting {
            // Data can only come over an established TCP connection.
            self.handle_connected(now);
        }
        let n = self.inbox.commit(n);
        self.received(now, n);
        n
    }

    /// Counts `n` bytes just added to the receive buffer and parses what they complete.
    fn received(&mut self, now: Instant, n: usize) {
        self.last_busy = now;
        self.stats.bytes_in += n as u64;
        self.process_input(now, false);
    }

    /// Parses complete frames and applies what they mean: all of them if `all`, else only as
    /// far ahead of delivery as the inbox keeps parses (the rest is parsed as the application
    /// polls events, or at the next timeout). Once closed, frames already received are still
    /// parsed for delivery, with no other effect.
    fn process_input(&mut self, now: Instant, all: bool) {
        loop {
            let closed = self.is_closed();
            if !closed && self.notices.capacity() - self.notices.len() <= NOTICE_RESERVE {
                break;
            }
            if !all && self.inbox.ahead_full() {
                break;
            }
            let Some(result) = self.inbox.parse_next() else {
                break;
            };
            let effect = match result {
                Ok(effect) => effect,
                Err(_) if closed => break,
                Err(error) => {
                    self.misbehave(now, Misbehaviour::of(&error), None);
                    self.close_with(now, CloseReason::Protocol(error));
                    break;
                }
            };
            self.stats.frames_in += 1;
            if closed {
                continue;
            }
            match effect {
                Effect::Data => self.timers.clear(Timer::Introduction),
                Effect::Ping => self.on_ping(now),
                Effect::Pong => self.on_pong(now),
                Effect::Nothing => {}
            }
        }
    }

    fn on_ping(&mut self, now: Instant) {
        if self.role == Role::Connecting {
            self.misbehave(now, Misbehaviour::PingedClient, None);
            self.close_with(now, CloseReason::PeerPinged);
            // The C++ drops the connection at the ping: frames behind it are not delivered.
            self.inbox.end_at_parsed();
            return;
        }
        self.timers
            .set(Timer::PingDeadline, after(now, self.config.ping_timeout));
        self.held_back_input = false;
        if self.pongs_owed < self.config.max_owed_pongs.get() {
            self.pongs_owed += 1;
        } else {
            self.misbehave(now, Misbehaviour::PingFlood, None);
        }
    }

    fn on_pong(&mut self, now: Instant) {
        if self.role != Role::Connecting {
            return;
        }
        if let Some(sent) = self.pings_out.pop_front() {
            let rtt = now.saturating_duration_since(sent);
            self.stats.last_rtt = Some(rtt);
            self.timers.clear(Timer::PongDeadline);
            // The next unanswered ping keeps its own deadline.
            if let (Some(&next), Some(timeout)) = (self.pings_out.front(), self.config.pong_timeout)
            {
                let due = (next + timeout).max(after(now, Duration::ZERO));
                self.timers.set(Timer::PongDeadline, due);
            }
            self.notice(Notice::Pong(rtt));
        }
    }

    /// Input: the peer closed the stream or it broke. Complete messages already received are
    /// still delivered, then [`Event::Closed`] with [`CloseReason::Eof`], unless a frame
    /// received before the end closed it first (a protocol error, a ping to a client). Offer
    /// any bytes held back by backpressure first: input after EOF is ignored.
    pub fn handle_eof(&mut self, now: Instant) {
        let now = self.update_clock(now);
        // What came before the end counts first: a ping to a client, a protocol error.
        self.process_input(now, true);
        if !self.is_closed() {
            self.close_with(now, CloseReason::Eof);
        }
    }

    /// Input: the clock reached [`Connection::poll_timeout`] (earlier or extra calls are
    /// harmless). Afterwards `poll_timeout` is `None` or later than `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.update_clock(now);
        // Frames received but not yet parsed (the application has not polled them) count:
        // a ping among them is not a silent peer.
        self.process_input(now, true);
        while let Some(timer) = self.timers.pop_expired(now) {
            match timer {
                Timer::Ping => self.send_ping(now),
                Timer::PongDeadline => self.close_with(now, CloseReason::PongTimeout),
                Timer::PingDeadline => {
                    // Input not taken or not parsed may hold the ping: then the stall is
                    // ours, not the peer's.
                    if !self.held_back_input && !self.inbox.waits_for_application() {
                        self.misbehave(now, Misbehaviour::Silent, None);
                    }
                    self.close_with(now, CloseReason::PingTimeout);
                }
                Timer::Introduction => {
                    self.misbehave(now, Misbehaviour::Silent, None);
                    self.close_with(now, CloseReason::IntroductionTimeout);
                }
                Timer::ReleaseBuffers => self.release_idle_buffers(now),
            }
        }
    }

    fn send_ping(&mut self, now: Instant) {
        if self.state != State::Established || self.role != Role::Connecting {
            return;
        }
        if !self.ping_pending {
            // A ping still waiting to go out is not sent twice.
            if self.pings_out.is_full() {
                // Only when pong timeouts are off and the peer stopped answering long ago.
                self.pings_out.pop_front();
            }
            let _ = self.pings_out.push_back(now);
            self.ping_pending = true;
        }
        if let Some(timeout) = self.config.pong_timeout {
            if self.timers.get(Timer::PongDeadline).is_none() {
                self.timers.set(Timer::PongDeadline, after(now, timeout));
            }
        }
        self.timers
            .set(Timer::Ping, after(now, self.config.ping_interval));
    }

    fn release_idle_buffers(&mut self, now: Instant) {
        // Buffers busy since the timer was armed get their full idle time again.
        let due = self.last_busy + self.config.release_idle_buffers_after;
        if now < due {
            self.timers.set(Timer::ReleaseBuffers, due);
            return;
        }
        self.inbox.release_if_idle();
        if self.source.is_none() {
            self.outbox.high.release_if_empty();
            self.outbox.normal.release_if_empty();
        }
    }

    /// Arms the buffer release timer when idle buffers hold heap memory.
    fn schedule_release(&mut self) {
        if self.is_closed() || self.timers.get(Timer::ReleaseBuffers).is_some() {
            return;
        }
        let idle_in = if self.inbox.is_idle() {
            self.inbox.releasable()
        } else {
            0
        };
        let idle_out = [
            (self.outbox.high.is_empty(), self.outbox.high.releasable()),
            (
                self.outbox.normal.is_empty(),
                self.outbox.normal.releasable(),
            ),
        ]
        .iter()
        .filter(|(empty, _)| *empty)
        .map(|(_, n)| n)
        .sum::<usize>();
        if idle_in + idle_out > 0 {
            self.timers.set(
                Timer::ReleaseBuffers,
                after(self.now, self.config.release_idle_buffers_after),
            );
        }
    }

    /// Command: queue a message. Bodies above the chunk size go out as a sequence (normal
    /// priority only). Errors give the message back and change nothing.
    pub fn send<'a>(
        &mut self,
        now: Instant,
        message: Message<'a>,
        priority: Priority,
    ) -> Result<(), SendError<Message<'a>>> {
        self.update_clock(now);
        if self.is_closed() {
            return Err(SendError::Closed(message));
        }
        self.outbox.send(message, priority)
    }

    /// Command: queue a message encoded once for many connections (no copy).
    #[cfg(feature = "alloc")]
    pub fn send_encoded(
        &mut self,
        now: Instant,
        message: &EncodedMessage,
        priority: Priority,
    ) -> Result<(), SendError<EncodedMessage>> {
        self.update_clock(now);
        if self.is_closed() {
            return Err(SendError::Closed(message.clone()));
        }
        self.outbox.send_encoded(message, priority)
    }

    /// Command: close now. Received data not yet polled is dropped; the next event is
    /// [`Event::Closed`] with [`CloseReason::Local`]. Queued messages stay in the outbox.
    pub fn close(&mut self, now: Instant) {
        let now = self.update_clock(now);
        if self.is_closed() {
            return;
        }
        // Misbehaviour already noticed stays reported (it counts towards bans).
        self.inbox.clear();
        self.close_with(now, CloseReason::Local);
    }

    /// Command: add misbehaviour points from the application (e.g. for a bad request). At the
    /// ban threshold the connection closes with [`CloseReason::Banned`].
    pub fn punish(&mut self, points: u32) {
        let now = self.now;
        self.misbehave(now, Misbehaviour::Application, Some(points));
    }

    fn misbehave(&mut self, now: Instant, kind: Misbehaviour, points: Option<u32>) {
        let points = points.unwrap_or_else(|| self.config.points.of(kind));
        if points == 0 {
            return;
        }
        let score = self
            .score
            .add(now, points, self.config.score_decay_per_hour);
        self.notice(Notice::Misbehaved(kind, points, score));
        if score >= self.config.ban_threshold.get() && !self.is_closed() {
            // Nothing more from a banned peer reaches the application.
            self.inbox.clear();
            self.close_with(now, CloseReason::Banned);
        }
    }

    fn notice(&mut self, event: Notice) {
        let after = self.inbox.parsed_count();
        if self.notices.is_full() {
            self.compact_notices();
        }
        // Cannot fail: with fewer kinds than slots, a full queue holds two of one kind and
        // compacting freed a slot.
        let _ = self.notices.push_back((after, event));
    }

    /// Full (the application is not polling): merges the oldest notice that has a later one
    /// of the same kind into that one, so totals and the latest values survive.
    fn compact_notices(&mut self) {
        let len = self.notices.len();
        let mut merged = None;
        'search: for i in 0..len {
            for j in i + 1..len {
                let older = self.notices.iter().nth(i).map(|&(_, n)| n);
                if let (Some(older), Some((_, newer))) = (older, self.notices.iter_mut().nth(j)) {
                    if newer.absorb(older) {
                        merged = Some(i);
                        break 'search;
                    }
                }
            }
        }
        let Some(skip) = merged else {
            return;
        };
        let mut kept = heapless::Deque::new();
        for (at, notice) in self.notices.iter().enumerate() {
            if at != skip {
                let _ = kept.push_back(*notice);
            }
        }
        self.notices = kept;
    }

    fn close_with(&mut self, _now: Instant, reason: CloseReason) {
        if self.is_closed() {
            return;
        }
        self.state = State::Closed(reason);
        self.inbox.close_input();
        self.timers.clear_all();
        self.source = None;
        self.frame_left = 0;
        self.returned = 0;
        self.ping_pending = false;
        self.pongs_owed = 0;
    }

    /// Output: bytes to write to the socket, or `None`. Frames of many messages come as one
    /// slice; write what you can and report it with [`Connection::consume_transmit`].
    pub fn poll_transmit(&mut self) -> Option<&[u8]> {
        if self.state != State::Established {
            return None;
        }
        if self.frame_left == 0 {
            self.source = self.next_source();
            let first = match self.source? {
                Source::Ping | Source::Pong => PING_FRAME.len(),
                Source::High => frame_len(self.outbox.high.unsent()),
                Source::Normal => frame_len(self.outbox.normal.unsent()),
            };
            self.frame_left = first;
        }
        let source = self.source?;
        let (data, more_urgent) = match source {
            Source::Ping => (&PING_FRAME[PING_FRAME.len() - self.frame_left..], false),
            // The rest of the pong being written, then more whole ones.
            Source::Pong => {
                let batch = (self.pongs_owed as usize).min(PONG_BATCH);
                let start = PONG_FRAME.len() - self.frame_left;
                (&PONGS[start..batch * PONG_FRAME.len()], false)
            }
            Source::High => (
                self.outbox.high.unsent(),
                self.ping_pending || self.pongs_owed > 0,
            ),
            Source::Normal => (
                self.outbox.normal.unsent(),
                self.ping_pending || self.pongs_owed > 0 || !self.outbox.high.is_empty(),
            ),
        };
        // With something more urgent waiting, stop at the end of the current frame.
        let len = if more_urgent {
            self.frame_left
        } else {
            data.len().min(MAX_BATCH)
        };
        self.returned = len;
        Some(&data[..len])
    }

    fn next_source(&self) -> Option<Source> {
        if self.ping_pending {
            Some(Source::Ping)
        } else if self.pongs_owed > 0 {
            Some(Source::Pong)
        } else if !self.outbox.high.is_empty() {
            Some(Source::High)
        } else if !self.outbox.normal.is_empty() {
            Some(Source::Normal)
        } else {
            None
        }
    }

    /// Input: `n` bytes of the last [`Connection::poll_transmit`] were written.
    pub fn consume_transmit(&mut self, n: usize) {
        let n = n.min(self.returned);
        self.returned -= n;
        if n > 0 {
            self.last_busy = self.now;
            self.stats.bytes_out += n as u64;
            match self.source {
                Some(Source::Ping) => self.consume_ping(n),
                Some(Source::Pong) => self.consume_pongs(n),
                Some(Source::High) => self.consume_queued(n, true),
                Some(Source::Normal) => self.consume_queued(n, false),
                None => {}
            }
        }
        if self.source.is_none() && self.outbox.is_empty() {
            self.schedule_release();
        }
    }

    /// `n` bytes of the ping (one frame, of which `n` is at most what is left).
    fn consume_ping(&mut self, n: usize) {
        self.frame_left -= n.min(self.frame_left);
        if self.frame_left == 0 {
            self.stats.frames_out += 1;
            self.source = None;
            self.ping_pending = false;
        }
    }

    /// `n` bytes of pongs (at most the batch handed out, which starts `frame_left` bytes
    /// before the end of a pong).
    fn consume_pongs(&mut self, n: usize) {
        let written = PONG_FRAME.len() - self.frame_left + n;
        let done = written / PONG_FRAME.len();
        // `done` pongs were handed out, so at most `pongs_owed` (at most `PONG_BATCH`).
        self.pongs_owed -= done as u32;
        self.stats.frames_out += done as u64;
        self.frame_left = match written % PONG_FRAME.len() {
            // The batch handed out goes on with the next pong, in a later call.
            0 if self.returned > 0 => PONG_FRAME.len(),
            0 => 0,
            part => PONG_FRAME.len() - part,
        };
        if self.frame_left == 0 {
            self.source = None;
        }
    }

    /// `n` bytes of a queue's frames.
    fn consume_queued(&mut self, n: usize, high: bool) {
        // The batch handed out goes on into the next frame of the same queue, in this call
        // or a later one.
        let more = self.returned > 0;
        let (done, frames, left) = if high {
            consume_from(&mut self.outbox.high, self.frame_left, n, more)
        } else {
            consume_from(&mut self.outbox.normal, self.frame_left, n, more)
        };
        self.stats.messages_out += done as u64;
        self.stats.frames_out += frames;
        self.frame_left = left;
        if left == 0 {
            self.source = None;
        }
    }

    /// Whether [`Connection::poll_transmit`] has something to hand out.
    pub fn wants_transmit(&self) -> bool {
        self.state == State::Established && (self.frame_left > 0 || self.next_source().is_some())
    }

    /// Output: when [`Connection::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// What [`Connection::poll_event`] returns next: `Some(true)` for received data (which
    /// borrows the connection), `Some(false)` for any other event, `None` for nothing. The
    /// next `poll_event` returns exactly that event.
    pub(crate) fn next_event_borrows(&mut self) -> Option<bool> {
        self.prepare_event();
        let delivery_due = self.inbox.has_delivery();
        let notice_due = match self.notices.front() {
            Some(&(after, _)) => after <= self.inbox.released_count() || !delivery_due,
            None => false,
        };
        if notice_due {
            Some(false)
        } else if delivery_due {
            Some(true)
        } else if matches!(self.state, State::Closed(_)) && !self.closed_reported {
            Some(false)
        } else {
            None
        }
    }

    /// Whether [`Connection::poll_event`] has an event now (it lets go of the last one, as a
    /// poll would). Useful before returning the event's borrow from a loop.
    pub fn has_event(&mut self) -> bool {
        self.next_event_borrows().is_some()
    }

    /// Lets go of the last event and parses what backpressure held back: once the frames
    /// parsed ahead are used up, as many as are kept, in one go.
    #[inline]
    fn prepare_event(&mut self) {
        self.inbox.release();
        if !self.inbox.has_kept_parse() {
            self.process_input(self.now, false);
        }
    }

    /// Output: the next event. What it borrows stays valid until the next call. After
    /// [`Event::Closed`] it returns `None` for good.
    pub fn poll_event(&mut self) -> Option<Event<'_>> {
        self.prepare_event();
        self.poll_prepared_event()
    }

    /// Moves the body of the [`Event::Message`] just polled into `out` without copying it, if
    /// it was reassembled from a sequence: `out` then holds the body in `out[..len]` (past
    /// that, spare bytes), and the connection keeps `out`'s old allocation for the next
    /// sequence, so handing two buffers back and forth allocates nothing. `None`, with `out`
    /// untouched, for a message from a single frame (copy its body instead: it is at most one
    /// frame), for any other event, or for fixed storage.
    ///
    /// This lets the application keep a large body while it calls the connection again (to
    /// reply, say), which the borrow of the event forbids.
    #[cfg(feature = "alloc")]
    pub fn take_body(&mut self, out: &mut alloc::vec::Vec<u8>) -> Option<usize> {
        self.inbox.take_reassembled(out)
    }

    /// [`Connection::poll_event`] right after [`Connection::next_event_borrows`], which did
    /// its preparation already.
    pub(crate) fn poll_prepared_event(&mut self) -> Option<Event<'_>> {
        let released = self.inbox.released_count();
        let delivery_due = self.inbox.has_delivery();
        match self.notices.front() {
            Some(&(after, notice)) if after <= released || !delivery_due => {
                self.notices.pop_front();
                return Some(notice.event());
            }
            _ => {}
        }
        // Two steps, so the borrow of the inbox only lives on the path that returns it.
        if delivery_due {
            let event = self.inbox.next();
            if matches!(event, Some(Event::Message(_) | Event::SequenceEnd { .. })) {
                self.stats.messages_in += 1;
            }
            return event;
        }
        if self.inbox.is_idle() {
            self.schedule_release();
        }
        match self.state {
            State::Closed(reason) if !self.closed_reported => {
                self.closed_reported = true;
                Some(Event::Closed { reason })
            }
            _ => None,
        }
    }

    /// Closes at once for a reason decided outside (a ban of the peer's address): received
    /// data not yet polled is dropped, as after [`Connection::close`].
    pub(crate) fn force_close(&mut self, now: Instant, reason: CloseReason) {
        let now = self.update_clock(now);
        if self.is_closed() {
            return;
        }
        self.inbox.clear();
        self.close_with(now, reason);
    }

    /// The queued messages, and how far their sending got.
    pub(crate) fn outbox(&self) -> &Outbox<S> {
        &self.outbox
    }

    /// The messages not (fully) sent, whatever the state; partly sent ones start over. A
    /// preface ([`Connection::send_first`]) belongs to this connection and is left out.
    pub(crate) fn into_outbox(mut self) -> Outbox<S> {
        self.detach_outbox()
    }

    fn detach_outbox(&mut self) -> Outbox<S> {
        let mut outbox = core::mem::replace(&mut self.outbox, Outbox::new(&self.config));
        outbox.high.rewind();
        outbox.normal.rewind();
        if self.stats.bytes_out < self.preface_len as u64 {
            outbox.high.drop_front();
        }
        self.preface_len = 0;
        outbox
    }

    /// Command: queue a message at high priority ahead of everything queued, before anything
    /// was transmitted (a login that must be the first message). It may go over the queue's
    /// message count by one, and it is not carried to a next connection.
    pub fn send_first<'a>(
        &mut self,
        now: Instant,
        message: Message<'a>,
    ) -> Result<(), SendError<Message<'a>>> {
        self.update_clock(now);
        if self.is_closed() {
            return Err(SendError::Closed(message));
        }
        let outbox = &mut self.outbox;
        if message.body.len() > outbox.encoder.chunk_size() {
            return Err(SendError::TooLarge(message));
        }
        // Once `poll_transmit` handed out bytes, the adapter may be writing them.
        if self.stats.bytes_out > 0 || self.source.is_some() {
            return Err(SendError::TooLate(message));
        }
        let len = outbox
            .encoder
            .encoded_len(message.header, message.body.len());
        outbox
            .high
            .push_front(&outbox.encoder, message.header, message.body)
            .map_err(|refused| refused.with(message))?;
        self.preface_len += len;
        Ok(())
    }

    /// Once closed: takes the messages that were not (fully) sent, to give to the next
    /// connection ([`Connection::with_outbox`]). Partly sent ones start over; a preface
    /// ([`Connection::send_first`]) is left out. `None` while the connection is open (its
    /// queues are in use).
    pub fn take_outbox(&mut self) -> Option<Outbox<S>> {
        if !self.is_closed() {
            return None;
        }
        Some(self.detach_outbox())
    }
}

/// `n` transmitted bytes of a queue: the frames they complete are counted by walking their
/// length fields, and the queue advances once for all of them. Returns messages and frames
/// completed, and what is left of the current frame (see [`walk_frames`]).
fn consume_from<B: ByteStore, F: Fifo<QueueEntry>>(
    queue: &mut OutQueue<B, F>,
    frame_left: usize,
    n: usize,
    more: bool,
) -> (usize, u64, usize) {
    let (frames, left) = walk_frames(queue.unsent(), frame_left, n, more);
    (queue.advance(n), frames, left)
}

/// Walks `n` transmitted bytes of `data` (encoded frames, the first of which has `frame_left`
/// bytes left): returns how many frames they complete and how many bytes are left of the frame
/// they end in. Ending on a frame boundary with `more` handed out, that is the next frame's
/// length (the transmission goes on into it); without, 0.
fn walk_frames(data: &[u8], frame_left: usize, n: usize, more: bool) -> (u64, usize) {
    if n < frame_left {
        return (0, frame_left - n);
    }
    let mut end = frame_left;
    let mut frames = 1;
    loop {
        let next = if end < n || more {
            frame_len(data.get(end..).unwrap_or(&[]))
        } else {
            0
        };
        // A zero length (no frame there) cannot happen in a queue; stop rather than loop.
        if end == n || next == 0 {
            return (frames, next);
        }
        if end + next > n {
            return (frames, end + next - n);
        }
        end += next;
        frames += 1;
    }
}

/// Length of the frame at the front of encoded frames (0 if there are none).
fn frame_len(frames: &[u8]) -> usize {
    match frames {
        [lo, hi, ..] => usize::from(u16::from_le_bytes([*lo, *hi])),
        _ => 0,
    }
}

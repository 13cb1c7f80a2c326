//! The receive side: one buffer holds frames from the moment they arrive until the application
//! has seen them, so events borrow their bodies with no copy and memory stays bounded.
//!
//! `rx[start..parsed]` are validated frames not yet released (the first one, if any, is the
//! one to deliver next); `rx[parsed..end]` is an incomplete frame. Frames are parsed (and
//! their protocol effects applied) as soon as they are complete; delivery walks them later.

use super::config::SequenceDelivery;
use super::event::{Event, ProtocolError};
use super::queue::Message;
use crate::frame::{self, Frame};
use crate::header::{self, FrameHeader, FrameKind, Header};
use crate::sequence::{SequenceError, SequenceTracker};
use crate::storage::ByteStore;

/// What a newly parsed frame means to the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Something the application will see (a message or sequence data).
    Data,
    /// A ping.
    Ping,
    /// A pong.
    Pong,
    /// Nothing (another system frame).
    Nothing,
}

/// What to let go of at the next poll, once the application is done with the last delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Release {
    Nothing,
    /// The frame at `start`, of this length.
    Frame(usize),
    /// The frame at `start` and the reassembled body.
    Reassembled(usize),
}

pub(crate) struct Inbox<R, A> {
    rx: R,
    start: usize,
    parsed: usize,
    end: usize,
    first_frame: bool,
    /// The stream broke: nothing after the bad frame is parsed.
    failed: bool,
    /// No more input comes (EOF or close); frames already here are still parsed.
    input_closed: bool,
    delivery: SequenceDelivery,
    seq: Sequences<A>,
    /// Chunk delivery: 0 = at a frame's start, 1 = its data next, 2 = the sequence end next.
    step: u8,
    walked: u64,
    release: Release,
    /// Deliverable frames parsed, and fully delivered, so far: other events are ordered
    /// among deliveries by these counts.
    parsed_count: u64,
    released_count: u64,
    /// Frames parsed ahead of delivery, consecutive from `start`, so that each frame is
    /// parsed once: delivery takes its parse from here.
    heads: Heads,
    /// The last room lent for input was filled: the next one is larger.
    room_filled: bool,
    /// The header of the last single-frame message delivered, which its event borrows (a
    /// reassembled message borrows `seq.header`). A kept parse writes it field by field, so
    /// a delivery moves no header.
    delivered: Header,
}

/// How many parsed frames [`Inbox`] keeps for delivery. Input is parsed ahead only this far
/// (unless timers need all of it, see [`Inbox::ahead_full`]); a frame past it is parsed again
/// when delivered.
pub(crate) const PARSED_AHEAD: usize = 4;

/// A parsed frame in the receive buffer, by offset.
#[derive(Clone, Copy, Debug)]
struct Head {
    at: usize,
    len: usize,
    header: FrameHeader,
    header_len: usize,
}

/// A ring of [`PARSED_AHEAD`] heads (a power of two, so indices wrap with a mask).
struct Heads {
    ring: [Head; PARSED_AHEAD],
    first: usize,
    count: usize,
    /// Where the last head's frame ends (when `count > 0`), kept apart so that checking it
    /// does not load a head just stored.
    end: usize,
}

const _: () = assert!(PARSED_AHEAD.is_power_of_two());

impl Heads {
    const MASK: usize = PARSED_AHEAD - 1;

    fn new() -> Self {
        let empty = Head {
            at: 0,
            len: 0,
            header: FrameHeader::new(0),
            header_len: 0,
        };
        Heads {
            ring: [empty; PARSED_AHEAD],
            first: 0,
            count: 0,
            end: 0,
        }
    }

    fn front(&self) -> Option<&Head> {
        (self.count > 0).then(|| &self.ring[self.first])
    }

    /// Where the last head's frame ends, if there is one.
    fn end(&self) -> Option<usize> {
        (self.count > 0).then_some(self.end)
    }

    /// Adds a head unless full.
    fn push_back(&mut self, head: Head) {
        if self.count < PARSED_AHEAD {
            self.ring[(self.first + self.count) & Self::MASK] = head;
            self.count += 1;
            self.end = head.at + head.len;
        }
    }

    fn pop_front(&mut self) {
        if self.count > 0 {
            self.first = (self.first + 1) & Self::MASK;
            self.count -= 1;
        }
    }

    fn clear(&mut self) {
        self.count = 0;
    }

    fn is_full(&self) -> bool {
        self.count == PARSED_AHEAD
    }

    fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Forgets heads of frames before `at` (already delivered).
    fn drop_before(&mut self, at: usize) {
        while self.front().is_some_and(|head| head.at < at) {
            self.pop_front();
        }
    }

    /// The buffer's contents moved down by `by` bytes.
    fn shift_down(&mut self, by: usize) {
        for i in 0..self.count {
            self.ring[(self.first + i) & Self::MASK].at -= by;
        }
        if self.count > 0 {
            self.end -= by;
        }
    }
}

/// Sequence state: the rules, and with reassembly the body being joined.
struct Sequences<A> {
    tracker: SequenceTracker,
    reassemble: bool,
    buf: A,
    len: usize,
    header: Header,
    /// A finished body waits in `buf` to be delivered.
    complete: bool,
}

impl<A: ByteStore> Sequences<A> {
    /// Applies a sequence frame; returns whether it is delivered on its own.
    fn on_frame(&mut self, frame: &Frame<'_>) -> Result<bool, ProtocolError> {
        let Some(step) = self.tracker.on_frame(frame) else {
            return Ok(true);
        };
        let step = step?;
        if !self.reassemble {
            return Ok(true);
        }
        if step.first {
            self.len = 0;
            self.header = step.header;
        }
        let end = self.len + frame.body.len();
        // The tracker's limit is within the reassembly storage, so this only fails if the
        // storage cannot allocate; treat that like a sequence over the limit.
        if !self.buf.reserve(end) {
            return Err(ProtocolError::Sequence(SequenceError::TooLarge {
                announced: step.total,
                limit: u32::try_from(self.buf.capacity()).unwrap_or(u32::MAX),
            }));
        }
        self.buf.bytes_mut()[self.len..end].copy_from_slice(frame.body);
        self.len = end;
        if step.last {
            self.complete = true;
        }
        Ok(step.last)
    }
}

impl<R: ByteStore, A: ByteStore> Inbox<R, A> {
    pub(crate) fn new(rx: R, reasm: A, delivery: SequenceDelivery, max_sequence: u32) -> Self {
        // With no reassembly storage at all, sequences can only go chunk by chunk.
        let delivery = if reasm.max_capacity() == 0 {
            SequenceDelivery::Chunks
        } else {
            delivery
        };
        let limit = match delivery {
            SequenceDelivery::Reassemble => {
                max_sequence.min(u32::try_from(reasm.max_capacity()).unwrap_or(u32::MAX))
            }
            SequenceDelivery::Chunks => max_sequence,
        };
        Inbox {
            rx,
            start: 0,
            parsed: 0,
            end: 0,
            first_frame: true,
            failed: false,
            input_closed: false,
            delivery,
            seq: Sequences {
                tracker: SequenceTracker::new(limit),
                reassemble: delivery == SequenceDelivery::Reassemble,
                buf: reasm,
                len: 0,
                header: Header::default(),
                complete: false,
            },
            step: 0,
            walked: 0,
            release: Release::Nothing,
            parsed_count: 0,
            released_count: 0,
            heads: Heads::new(),
            room_filled: false,
            delivered: Header::default(),
        }
    }

    /// Deliverable frames parsed so far.
    pub(crate) fn parsed_count(&self) -> u64 {
        self.parsed_count
    }

    /// Deliverable frames delivered and released so far.
    pub(crate) fn released_count(&self) -> u64 {
        self.released_count
    }

    /// Copies as much of `data` as fits; returns how much.
    pub(crate) fn push(&mut self, data: &[u8]) -> usize {
        let n = self.make_room(data.len());
        self.room()[..n].copy_from_slice(&data[..n]);
        self.end += n;
        n
    }

    /// Makes the free room after the received bytes contiguous and at least `want` bytes
    /// long where the bound allows (moving unread bytes to the front, then growing the
    /// buffer); returns how much of `want` fits.
    fn make_room(&mut self, want: usize) -> usize {
        if self.failed || self.input_closed || want == 0 {
            return 0;
        }
        let n = want.min(self.rx.max_capacity() - (self.end - self.start));
        if n == 0 {
            return 0;
        }
        if self.end + n > self.rx.capacity() && self.start > 0 {
            self.heads.drop_before(self.start);
            self.heads.shift_down(self.start);
            self.rx.bytes_mut().copy_within(self.start..self.end, 0);
            self.parsed -= self.start;
            self.end -= self.start;
            self.start = 0;
        }
        if !self.rx.reserve(self.end + n) {
            return 0;
        }
        n
    }

    /// Prepares the room that [`Inbox::room`] lends for input written in place; returns its
    /// length. The room is what the buffer holds now, with at least half of it free, and
    /// twice that after a read filled the whole room: a busy connection grows to its bound
    /// within a few reads while an idle one keeps the smallest buffer.
    pub(crate) fn prepare_room(&mut self) -> usize {
        let capacity = self.rx.capacity();
        let want = if self.room_filled {
            self.room_filled = false;
            capacity.saturating_mul(2)
        } else {
            capacity / 2
        };
        let free = capacity - self.end;
        // A room is never empty while the bound has space left, so input cannot stall.
        if self.make_room(want.max(free).max(1)) == 0 {
            return 0;
        }
        self.room().len()
    }

    /// The free bytes after the received ones (see [`Inbox::prepare_room`]), within the
    /// bound.
    pub(crate) fn room(&mut self) -> &mut [u8] {
        if self.failed || self.input_closed {
            return &mut [];
        }
        let bound = self.rx.max_capacity() - (self.end - self.start);
        let end = self.end;
        let room = &mut self.rx.bytes_mut()[end..];
        let len = room.len().min(bound);
        &mut room[..len]
    }

    /// Counts `n` bytes written at the start of [`Inbox::room`] as received (at most the
    /// room's length); returns how many.
    pub(crate) fn commit(&mut self, n: usize) -> usize {
        let room = self.room().len();
        let n = n.min(room);
        self.end += n;
        self.room_filled = n == room && n > 0;
        n
    }

    /// Parses the next complete frame and applies its sequence rules. `None`: no complete
    /// frame, or delivery must catch up first (a finished sequence still waits in the
    /// reassembly buffer), or the stream already failed.
    pub(crate) fn parse_next(&mut self) -> Option<Result<Effect, ProtocolError>> {
        if self.failed {
            return None;
        }
        let at = self.parsed;
        let avail = &self.rx.bytes()[at..self.end];
        let len = match frame::peek_len(avail, self.first_frame) {
            Ok(Some(len)) if len <= avail.len() => len,
            Ok(_) => return None,
            Err(e) => return Some(Err(self.fail(e.into()))),
        };
        let frame = match frame::parse(&avail[..len]) {
            Ok(f) => f,
            Err(e) => return Some(Err(self.fail(e.into()))),
        };
        let (effect, deliver) = match frame.header.kind() {
            FrameKind::Message => (Effect::Data, true),
            FrameKind::Ping => (Effect::Ping, false),
            FrameKind::Pong => (Effect::Pong, false),
            FrameKind::OtherSystem => (Effect::Nothing, false),
            FrameKind::SequenceStart { .. } | FrameKind::SequenceNext { .. } => {
                if self.seq.complete
                    && matches!(frame.header.kind(), FrameKind::SequenceStart { .. })
                {
                    // The reassembly buffer still holds an undelivered message.
                    return None;
                }
                match self.seq.on_frame(&frame) {
                    Ok(deliver) => (Effect::Data, deliver),
                    Err(e) => return Some(Err(self.fail(e))),
                }
            }
        };
        self.first_frame = false;
        self.parsed = at + len;
        if deliver {
            self.parsed_count += 1;
        } else if self.start == at {
            self.start = self.parsed;
            return Some(Ok(effect));
        }
        // Keep the parse if the kept ones reach up to this frame (they stay consecutive).
        let consecutive = match self.heads.end() {
            Some(end) => end == at,
            None => self.start == at,
        };
        if consecutive {
            let head = Head {
                at,
                len,
                header: frame.header,
                header_len: frame.header_bytes.len(),
            };
            self.heads.push_back(head);
        }
        Some(Ok(effect))
    }

    fn fail(&mut self, e: ProtocolError) -> ProtocolError {
        self.failed = true;
        e
    }

    /// Lets go of what the last delivery borrowed. Inlined: most calls have nothing to let go
    /// of (`start` only moves here, so frames to skip only appear after a release).
    #[inline]
    pub(crate) fn release(&mut self) {
        if self.release != Release::Nothing {
            self.release_delivery();
        } else if self.start == self.end && self.end != 0 {
            // Everything was skipped when parsed (pings): start the buffer over, so an idle
            // connection can give it back.
            self.reset_empty();
        }
    }

    fn reset_empty(&mut self) {
        self.start = 0;
        self.parsed = 0;
        self.end = 0;
        self.heads.clear();
    }

    fn release_delivery(&mut self) {
        match core::mem::replace(&mut self.release, Release::Nothing) {
            Release::Nothing => {}
            Release::Frame(len) => {
                self.start += len;
                self.released_count += 1;
            }
            Release::Reassembled(len) => {
                self.start += len;
                self.released_count += 1;
                self.seq.len = 0;
                self.seq.complete = false;
            }
        }
        // The released frame's parse goes first, so the next one is found without a search.
        self.heads.drop_before(self.start);
        self.skip_undelivered();
        self.heads.drop_before(self.start);
        if self.start == self.end {
            self.reset_empty();
        }
    }

    /// Hands the body of the message just delivered to `out` without a copy, if it was
    /// reassembled and the storage can trade its memory; returns its length (the body is
    /// `out[..len]`) and releases the delivery.
    #[cfg(feature = "alloc")]
    pub(crate) fn take_reassembled(&mut self, out: &mut alloc::vec::Vec<u8>) -> Option<usize> {
        if !matches!(self.release, Release::Reassembled(_)) {
            return None;
        }
        let len = self.seq.len;
        if !self.seq.buf.swap_vec(out) {
            return None;
        }
        self.release_delivery();
        Some(len)
    }

    /// Whether frames parsed ahead of delivery are kept (parsing more can wait).
    pub(crate) fn has_kept_parse(&self) -> bool {
        !self.heads.is_empty()
    }

    /// Whether as many frames are parsed ahead of delivery as are kept: parsing more now
    /// would mean parsing them twice.
    pub(crate) fn ahead_full(&self) -> bool {
        self.heads.is_full()
    }

    /// Moves `start` past frames that were fully handled when parsed.
    fn skip_undelivered(&mut self) {
        while self.start < self.parsed && self.step == 0 {
            let Some((kind, len)) = self.frame_at_start() else {
                return;
            };
            let delivered = match kind {
                FrameKind::Message => true,
                FrameKind::SequenceStart { last, .. } | FrameKind::SequenceNext { last } => {
                    self.delivery == SequenceDelivery::Chunks || last
                }
                _ => false,
            };
            if delivered {
                return;
            }
            self.start += len;
        }
    }

    fn frame_at_start(&mut self) -> Option<(FrameKind, usize)> {
        let head = self.head()?;
        Some((head.header.kind(), head.len))
    }

    /// The frame at `start`: kept from when it arrived (the inlined common case), or parsed
    /// again. The cold path's result is rebuilt field by field, so that both paths meet in
    /// registers (met in memory, fields stored narrow are loaded wide: a store-forwarding
    /// stall per frame).
    #[inline]
    fn head(&mut self) -> Option<Head> {
        match self.heads.front() {
            Some(head) if head.at == self.start => Some(*head),
            _ => {
                let Head {
                    at,
                    len,
                    header,
                    header_len,
                } = self.head_again()?;
                Some(Head {
                    at,
                    len,
                    header,
                    header_len,
                })
            }
        }
    }

    #[cold]
    #[inline(never)]
    fn head_again(&mut self) -> Option<Head> {
        while let Some(head) = self.heads.front() {
            if head.at == self.start {
                return Some(*head);
            }
            if head.at > self.start {
                break;
            }
            self.heads.pop_front();
        }
        let bytes = &self.rx.bytes()[self.start..self.parsed];
        let len = frame::peek_len(bytes, false).ok().flatten()?;
        let frame = frame::parse(bytes.get(..len)?).ok()?;
        let head = Head {
            at: self.start,
            len,
            header: frame.header,
            header_len: frame.header_bytes.len(),
        };
        if self.heads.is_empty() {
            self.heads.push_back(head);
        }
        Some(head)
    }

    /// The frame a [`Head`] describes.
    fn frame(&self, head: Head) -> Frame<'_> {
        let bytes = &self.rx.bytes()[head.at..head.at + head.len];
        let (header_bytes, body) = bytes[2..].split_at(head.header_len);
        Frame {
            header: head.header,
            header_bytes,
            body,
            bytes,
        }
    }

    /// The next thing to deliver (a message or sequence event), in arrival order; what it
    /// borrows stays until the next [`Inbox::release`]. A message's event borrows its header
    /// from `delivered` (or, reassembled, from `seq.header`): the header is large, and a
    /// move of it would cost on the per-message path.
    pub(crate) fn next(&mut self) -> Option<Event<'_>> {
        self.release();
        if self.start >= self.parsed {
            return None;
        }
        // The common case, a kept parse of a message, is read in place field by field: copied
        // whole, its narrowly stored fields would be loaded wide (a store-forwarding stall).
        if let Some(head) = self.heads.front()
            && head.at == self.start
            && matches!(head.header.kind(), FrameKind::Message)
        {
            let (at, len, header_len) = (head.at, head.len, head.header_len);
            let (service_id, message_id) = (head.header.service_id, head.header.message_id);
            let has_ints = head.header.int_count() > 0;
            self.release = Release::Frame(len);
            let (header_bytes, body) = self.rx.bytes()[at + 2..at + len].split_at(header_len);
            let delivered = &mut self.delivered;
            delivered.service_id = service_id;
            delivered.message_id = message_id;
            if has_ints {
                header::read_ints(header_bytes, &mut delivered.ints);
            } else {
                delivered.ints.clear();
            }
            return Some(Event::Message(Message::new(&self.delivered, body)));
        }
        let head = self.head()?;
        let len = head.len;
        let reassemble = self.delivery == SequenceDelivery::Reassemble;
        match head.header.kind() {
            FrameKind::Message => {
                self.release = Release::Frame(len);
                self.delivered = self.frame(head).message_header();
                let body = self.frame(head).body;
                Some(Event::Message(Message::new(&self.delivered, body)))
            }
            FrameKind::SequenceStart { .. } | FrameKind::SequenceNext { .. } if reassemble => {
                self.release = Release::Reassembled(len);
                Some(Event::Message(Message::new(
                    &self.seq.header,
                    &self.seq.buf.bytes()[..self.seq.len],
                )))
            }
            FrameKind::SequenceStart { last, .. } => self.chunk_step(head, true, last),
            FrameKind::SequenceNext { last } => self.chunk_step(head, false, last),
            _ => {
                // Not reached: `release` leaves only deliverable frames at `start`.
                self.release = Release::Frame(len);
                None
            }
        }
    }

    fn chunk_step(&mut self, head: Head, first: bool, last: bool) -> Option<Event<'_>> {
        let len = head.len;
        match self.step {
            0 if first => {
                self.step = 1;
                self.walked = 0;
                let total = u32::try_from(head.header.sequence_start.unwrap_or(0)).unwrap_or(0);
                Some(Event::SequenceStart {
                    header: self.frame(head).message_header(),
                    total,
                })
            }
            0 | 1 => {
                self.walked += (len - 2 - head.header_len) as u64;
                if last {
                    self.step = 2;
                } else {
                    self.step = 0;
                    self.release = Release::Frame(len);
                }
                Some(Event::SequenceChunk(self.frame(head).body))
            }
            _ => {
                self.step = 0;
                self.release = Release::Frame(len);
                Some(Event::SequenceEnd {
                    received: self.walked,
                })
            }
        }
    }

    /// Whether [`Inbox::next`] has something to deliver.
    pub(crate) fn has_delivery(&self) -> bool {
        self.start < self.parsed
    }

    /// Drops everything received (after a local close).
    pub(crate) fn clear(&mut self) {
        self.heads.clear();
        self.start = 0;
        self.parsed = 0;
        self.end = 0;
        self.step = 0;
        self.release = Release::Nothing;
        self.released_count = self.parsed_count;
        self.failed = true;
        self.input_closed = true;
        self.seq.len = 0;
        self.seq.complete = false;
        self.seq.tracker.reset();
        self.rx.release();
        self.seq.buf.release();
    }

    /// Whether delivered and received data is all gone.
    pub(crate) fn is_idle(&self) -> bool {
        self.end == 0 && self.seq.len == 0 && self.seq.tracker.open_header().is_none()
    }

    /// Gives memory back when idle.
    pub(crate) fn release_if_idle(&mut self) {
        if self.is_idle() {
            self.rx.release();
            self.seq.buf.release();
        }
    }

    /// Bytes of memory that [`Inbox::release_if_idle`] could give back.
    pub(crate) fn releasable(&self) -> usize {
        self.rx.releasable() + self.seq.buf.releasable()
    }

    /// Bytes of memory the receive buffer could give back.
    pub(crate) fn rx_releasable(&self) -> usize {
        self.rx.releasable()
    }

    /// Whether a complete frame waits unparsed: parsing waits for the application to take
    /// what was parsed before it.
    pub(crate) fn waits_for_application(&self) -> bool {
        let avail = &self.rx.bytes()[self.parsed..self.end];
        !self.failed
            && matches!(frame::peek_len(avail, self.first_frame), Ok(Some(len)) if len <= avail.len())
    }

    /// The stream ends with the frame parsed last: frames already parsed are still delivered,
    /// later ones are not parsed.
    pub(crate) fn end_at_parsed(&mut self) {
        self.failed = true;
    }

    /// No more input comes; complete frames already received are still parsed and delivered.
    pub(crate) fn close_input(&mut self) {
        self.input_closed = true;
    }
}

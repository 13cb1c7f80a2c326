//! Outbound queues: messages are encoded into frames when they are queued, so transmitting is
//! handing out slices of one buffer (many frames per write) with no second copy.

use crate::cmf::SliceSink;
use crate::frame::{EncodeError, FrameEncoder};
use crate::header::Header;
use crate::storage::{ByteStore, Fifo};
use core::fmt;

/// Which queue a message goes to. High-priority frames go out before normal ones, also
/// between the chunks of a normal sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum Priority {
    /// Before everything else (pings use this too). Bodies up to the chunk size only.
    High,
    /// The main queue; large bodies are sent as sequences.
    Normal,
}

/// A message to send, or one received: its header and its body, both borrowed, so that a
/// message moves as a pointer and a slice however many header ints it may carry.
///
/// ```
/// use flowee_proto::{Header, Message};
///
/// // The header lives in a binding of its own: the message borrows it.
/// let header = Header::new(3, 2).with_int(11, 7).unwrap();
/// let message = Message::new(&header, b"\x0a\x02hi");
/// assert_eq!((message.header.service_id, message.header.request_id()), (3, Some(7)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    /// Service id, message id and custom header ints.
    pub header: &'a Header,
    /// The body, usually CMF.
    pub body: &'a [u8],
}

impl<'a> Message<'a> {
    /// A message.
    pub const fn new(header: &'a Header, body: &'a [u8]) -> Self {
        Message { header, body }
    }
}

/// A message that owns its body (with `alloc`), for handing received messages to other tasks
/// or threads.
#[cfg(feature = "alloc")]
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct OwnedMessage {
    /// Service id, message id and custom header ints.
    pub header: Header,
    /// The body.
    pub body: bytes::Bytes,
}

#[cfg(feature = "alloc")]
impl OwnedMessage {
    /// A message.
    pub fn new(header: Header, body: impl Into<bytes::Bytes>) -> Self {
        OwnedMessage {
            header,
            body: body.into(),
        }
    }

    /// A borrowed view, to send.
    pub fn as_message(&self) -> Message<'_> {
        Message::new(&self.header, &self.body)
    }
}

#[cfg(feature = "alloc")]
impl From<Message<'_>> for OwnedMessage {
    fn from(m: Message<'_>) -> Self {
        OwnedMessage {
            header: *m.header,
            body: bytes::Bytes::copy_from_slice(m.body),
        }
    }
}

/// Why a message was not queued. Every variant gives the message back: nothing is dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError<M> {
    /// The queue holds its maximum number of messages or bytes; try again after transmitting.
    QueueFull(M),
    /// The message can never be queued: a high-priority body above the chunk size, or more
    /// bytes than the queue can ever hold.
    TooLarge(M),
    /// The header or body would be refused by receivers.
    Invalid(M, EncodeError),
    /// The connection is closed.
    Closed(M),
    /// The node has no connection with that id (it was removed).
    UnknownConnection(M),
    /// [`Connection::send_first`](crate::connection::Connection::send_first) after
    /// transmitting began: the message can no longer be the first.
    TooLate(M),
}

impl<M> SendError<M> {
    /// The message that was not sent.
    pub fn into_message(self) -> M {
        match self {
            SendError::QueueFull(m)
            | SendError::TooLarge(m)
            | SendError::Invalid(m, _)
            | SendError::Closed(m)
            | SendError::UnknownConnection(m)
            | SendError::TooLate(m) => m,
        }
    }

    /// The same error carrying `f(message)`, e.g. `map(drop)` to keep only the reason.
    pub fn map<N>(self, f: impl FnOnce(M) -> N) -> SendError<N> {
        match self {
            SendError::QueueFull(m) => SendError::QueueFull(f(m)),
            SendError::TooLarge(m) => SendError::TooLarge(f(m)),
            SendError::Invalid(m, e) => SendError::Invalid(f(m), e),
            SendError::Closed(m) => SendError::Closed(f(m)),
            SendError::UnknownConnection(m) => SendError::UnknownConnection(f(m)),
            SendError::TooLate(m) => SendError::TooLate(f(m)),
        }
    }
}

impl<M> fmt::Display for SendError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::QueueFull(_) => f.write_str("send queue full"),
            SendError::TooLarge(_) => f.write_str("message too large for its queue"),
            SendError::Invalid(_, e) => write!(f, "invalid message: {e}"),
            SendError::Closed(_) => f.write_str("connection closed"),
            SendError::UnknownConnection(_) => f.write_str("unknown connection"),
            SendError::TooLate(_) => f.write_str("transmitting began: too late to send first"),
        }
    }
}

impl<M: fmt::Debug> core::error::Error for SendError<M> {}

/// A message encoded once, to be queued on many connections without encoding or copying it
/// again (a broadcast shares one buffer).
#[cfg(feature = "alloc")]
#[derive(Clone, PartialEq, Eq)]
pub struct EncodedMessage {
    frames: bytes::Bytes,
    single_frame: bool,
}

#[cfg(feature = "alloc")]
impl EncodedMessage {
    /// Encodes a message with the standard chunk size.
    pub fn new(message: &Message<'_>) -> Result<Self, EncodeError> {
        let encoder = FrameEncoder::new();
        let mut out =
            alloc::vec::Vec::with_capacity(encoder.encoded_len(message.header, message.body.len()));
        encoder.encode(message.header, message.body, &mut out)?;
        Ok(EncodedMessage {
            frames: out.into(),
            single_frame: message.body.len() <= encoder.chunk_size(),
        })
    }

    /// The frames, as they go on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.frames
    }

    /// Whether it is one frame (not a sequence); only those may go at high priority.
    pub fn is_single_frame(&self) -> bool {
        self.single_frame
    }
}

#[cfg(feature = "alloc")]
impl fmt::Debug for EncodedMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EncodedMessage({} bytes)", self.frames.len())
    }
}

/// One message in a send queue (opaque; see [`Storage`](crate::storage::Storage)).
#[derive(Clone, Debug)]
pub struct QueueEntry(Entry);

#[derive(Clone, Debug)]
enum Entry {
    /// This many bytes of encoded frames in the queue's own buffer.
    Inline(usize),
    /// Frames encoded elsewhere and shared.
    #[cfg(feature = "alloc")]
    Shared(bytes::Bytes),
}

impl QueueEntry {
    fn len(&self) -> usize {
        match &self.0 {
            Entry::Inline(n) => *n,
            #[cfg(feature = "alloc")]
            Entry::Shared(b) => b.len(),
        }
    }
}

/// Why a queue refused a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    Full,
    TooLarge,
    Invalid(EncodeError),
}

impl Refused {
    /// The error to give back with the message.
    pub(crate) fn with<M>(self, message: M) -> SendError<M> {
        match self {
            Refused::Full => SendError::QueueFull(message),
            Refused::TooLarge => SendError::TooLarge(message),
            Refused::Invalid(e) => SendError::Invalid(message, e),
        }
    }
}

/// One priority's queue: encoded frames in `buf[head..tail]`, described message by message in
/// `entries`; `sent` bytes of the front message have been transmitted.
pub(crate) struct OutQueue<B, F> {
    buf: B,
    head: usize,
    tail: usize,
    sent: usize,
    entries: F,
    limit: usize,
    /// Shared messages queued, and their bytes (they count against the byte bound too).
    shared: usize,
    shared_bytes: usize,
    /// Messages queued at the back, and messages transmitted whole, since the queue was made:
    /// the `n`th message pushed went out whole once `completed >= n` (the queue is first in,
    /// first out but for a preface pushed at the front before anything went out).
    pushed: u64,
    completed: u64,
}

impl<B: ByteStore, F: Fifo<QueueEntry>> OutQueue<B, F> {
    pub(crate) fn new(buf: B, entries: F, limit: usize) -> Self {
        OutQueue {
            buf,
            head: 0,
            tail: 0,
            sent: 0,
            // One entry stays free for a preface (`push_front`) when the storage allows.
            limit: limit.min(entries.max_len().saturating_sub(1).max(1)),
            entries,
            shared: 0,
            shared_bytes: 0,
            pushed: 0,
            completed: 0,
        }
    }

    /// Messages pushed at the back so far: the serial of the last one.
    pub(crate) fn pushed(&self) -> u64 {
        self.pushed
    }

    /// Messages transmitted whole so far.
    pub(crate) fn completed(&self) -> u64 {
        self.completed
    }

    /// Messages queued (including one partly transmitted).
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes still to transmit.
    pub(crate) fn pending_bytes(&self) -> usize {
        self.tail - self.head + self.shared_bytes - self.sent
    }

    /// Encodes a message at the back of the queue.
    pub(crate) fn push(
        &mut self,
        encoder: &FrameEncoder,
        header: &Header,
        body: &[u8],
    ) -> Result<(), Refused> {
        encoder
            .check(header, body.len())
            .map_err(Refused::Invalid)?;
        let needed = encoder.encoded_len(header, body.len());
        if needed > self.buf.max_capacity() {
            return Err(Refused::TooLarge);
        }
        if self.entries.len() >= self.limit
            || self.tail - self.head + self.shared_bytes + needed > self.buf.max_capacity()
        {
            return Err(Refused::Full);
        }
        let at = self.make_room(needed).ok_or(Refused::Full)?;
        let room = &mut self.buf.bytes_mut()[at..at + needed];
        if body.len() <= encoder.chunk_size() {
            encoder.write_single_into(header, body, room);
        } else {
            // Cannot fail: the header was checked and the room is exactly the encoded length.
            encoder
                .encode(header, body, &mut SliceSink::new(room))
                .map_err(Refused::Invalid)?;
        }
        self.entries
            .push_back(QueueEntry(Entry::Inline(needed)))
            .map_err(|_| Refused::Full)?;
        self.tail = at + needed;
        self.pushed += 1;
        Ok(())
    }

    /// Drops the front message (a preface that was never transmitted).
    pub(crate) fn drop_front(&mut self) {
        self.pop_front();
    }

    /// Encodes a message at the front of the queue; only before anything was transmitted.
    /// It may take the queue one message over its count bound (not over its byte bound).
    pub(crate) fn push_front(
        &mut self,
        encoder: &FrameEncoder,
        header: &Header,
        body: &[u8],
    ) -> Result<(), Refused> {
        encoder
            .check(header, body.len())
            .map_err(Refused::Invalid)?;
        let needed = encoder.encoded_len(header, body.len());
        if self.sent > 0 || needed > self.buf.max_capacity() {
            return Err(Refused::TooLarge);
        }
        if self.tail - self.head + self.shared_bytes + needed > self.buf.max_capacity()
            || self.entries.len() >= self.entries.max_len()
        {
            return Err(Refused::Full);
        }
        let at = self.make_room(needed).ok_or(Refused::Full)?;
        // Move the queued bytes up to make a gap at the head, then encode into it.
        let head = self.head;
        self.buf.bytes_mut().copy_within(head..at, head + needed);
        let mut sink = SliceSink::new(&mut self.buf.bytes_mut()[head..head + needed]);
        encoder
            .encode(header, body, &mut sink)
            .map_err(Refused::Invalid)?;
        self.entries
            .push_front(QueueEntry(Entry::Inline(needed)))
            .map_err(|_| Refused::Full)?;
        self.tail = at + needed;
        Ok(())
    }

    /// Queues frames encoded elsewhere.
    #[cfg(feature = "alloc")]
    pub(crate) fn push_shared(&mut self, frames: &EncodedMessage) -> Result<(), Refused> {
        let len = frames.frames.len();
        if len > self.buf.max_capacity() {
            return Err(Refused::TooLarge);
        }
        if self.entries.len() >= self.limit
            || self.tail - self.head + self.shared_bytes + len > self.buf.max_capacity()
        {
            return Err(Refused::Full);
        }
        self.entries
            .push_back(QueueEntry(Entry::Shared(frames.frames.clone())))
            .map_err(|_| Refused::Full)?;
        self.shared += 1;
        self.shared_bytes += len;
        self.pushed += 1;
        Ok(())
    }

    /// Finds `needed` free bytes at the tail, moving or growing the buffer; returns where.
    fn make_room(&mut self, needed: usize) -> Option<usize> {
        let used = self.tail - self.head;
        if self.tail + needed <= self.buf.capacity() {
            return Some(self.tail);
        }
        // Move the data to the front when that frees more than it moves, else grow.
        if self.head >= used || !self.buf.reserve(self.tail + needed) {
            if used + needed > self.buf.max_capacity() || !self.buf.reserve(used + needed) {
                return None;
            }
            self.buf.bytes_mut().copy_within(self.head..self.tail, 0);
            self.tail = used;
            self.head = 0;
        }
        Some(self.tail)
    }

    /// The bytes to transmit next: the rest of the front message and, while no shared message
    /// is queued, all the messages after it (they lie in the same buffer).
    pub(crate) fn unsent(&self) -> &[u8] {
        match self.entries.front() {
            None => &[],
            Some(QueueEntry(Entry::Inline(len))) => {
                let end = if self.shared == 0 {
                    self.tail
                } else {
                    self.head + len
                };
                &self.buf.bytes()[self.head + self.sent..end]
            }
            #[cfg(feature = "alloc")]
            Some(QueueEntry(Entry::Shared(b))) => &b[self.sent..],
        }
    }

    /// Marks `n` bytes of [`OutQueue::unsent`] as transmitted; returns how many messages that
    /// completed.
    pub(crate) fn advance(&mut self, mut n: usize) -> usize {
        let mut done = 0;
        while n > 0 {
            let Some(front) = self.entries.front() else {
                break;
            };
            let left = front.len() - self.sent;
            if n < left {
                self.sent += n;
                break;
            }
            n -= left;
            self.pop_front();
            done += 1;
        }
        self.completed += done as u64;
        done
    }

    fn pop_front(&mut self) {
        match self.entries.pop_front() {
            Some(QueueEntry(Entry::Inline(len))) => self.head += len,
            #[cfg(feature = "alloc")]
            Some(QueueEntry(Entry::Shared(b))) => {
                self.shared -= 1;
                self.shared_bytes -= b.len();
            }
            None => {}
        }
        self.sent = 0;
        if self.head == self.tail {
            self.head = 0;
            self.tail = 0;
        }
    }

    /// Forgets how much of the front message was transmitted, so it goes out whole again (on a
    /// new connection).
    pub(crate) fn rewind(&mut self) {
        self.sent = 0;
    }

    /// Gives buffer memory back if nothing is queued.
    pub(crate) fn release_if_empty(&mut self) {
        if self.entries.is_empty() {
            self.buf.release();
            self.entries.release();
        }
    }

    /// Bytes of memory that [`OutQueue::release_if_empty`] could give back.
    pub(crate) fn releasable(&self) -> usize {
        self.buf.releasable()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{HeapBytes, HeapFifo};

    type Q = OutQueue<HeapBytes, HeapFifo<QueueEntry>>;

    fn q(max_bytes: usize, limit: usize) -> Q {
        OutQueue::new(HeapBytes::new(max_bytes), HeapFifo::new(limit + 1), limit)
    }

    #[test]
    fn frames_are_contiguous_and_counted() {
        let mut q = q(1 << 20, 10);
        let enc = FrameEncoder::new();
        q.push(&enc, &Header::new(1, 1), b"a").unwrap();
        q.push(&enc, &Header::new(1, 2), b"bc").unwrap();
        assert_eq!(q.len(), 2);
        let wire = q.unsent().to_vec();
        assert_eq!(wire.len(), 8 + 9);
        assert_eq!(q.pending_bytes(), 17);
        assert_eq!(q.advance(5), 0);
        assert_eq!(q.unsent().len(), 12);
        assert_eq!(q.advance(12), 2);
        assert!(q.is_empty());
        assert_eq!(q.unsent(), &[] as &[u8]);
    }

    #[test]
    fn bounds() {
        let enc = FrameEncoder::new();
        let mut q = q(64, 2);
        assert_eq!(
            q.push(&enc, &Header::new(1, 1), &[0; 100]),
            Err(Refused::TooLarge)
        );
        q.push(&enc, &Header::new(1, 1), &[0; 20]).unwrap();
        q.push(&enc, &Header::new(1, 1), &[0; 20]).unwrap();
        assert_eq!(
            q.push(&enc, &Header::new(1, 1), &[0; 1]),
            Err(Refused::Full)
        );
        let mut q2 = self::q(40, 10);
        q2.push(&enc, &Header::new(1, 1), &[0; 20]).unwrap();
        assert_eq!(
            q2.push(&enc, &Header::new(1, 1), &[0; 20]),
            Err(Refused::Full)
        );
        assert!(matches!(
            q2.push(&enc, &Header::new(-1, 1), &[]),
            Err(Refused::Invalid(EncodeError::InvalidServiceId(-1)))
        ));
    }

    #[test]
    fn space_is_reused_after_transmission() {
        let enc = FrameEncoder::new();
        let mut q = q(64, 100);
        for i in 0..50 {
            q.push(&enc, &Header::new(1, i), &[i as u8; 20]).unwrap();
            q.push(&enc, &Header::new(1, i), &[i as u8; 20]).unwrap();
            let first = q.unsent()[..27].to_vec();
            assert_eq!(first[27 - 20..], [i as u8; 20]);
            assert_eq!(q.advance(27), 1);
            // The second message moves to the front of the buffer when the next one needs room.
            let n = q.unsent().len();
            assert_eq!(q.advance(n), 1);
        }
        assert!(q.releasable() > 0);
        q.release_if_empty();
        assert_eq!(q.releasable(), 0);
    }

    #[test]
    fn rewind_resends_the_whole_front_message() {
        let enc = FrameEncoder::new();
        let mut q = q(1 << 20, 10);
        q.push(&enc, &Header::new(1, 1), &[7; 9000]).unwrap();
        let whole = q.unsent().to_vec();
        q.advance(100);
        q.rewind();
        assert_eq!(q.unsent(), &whole[..]);
    }

    #[test]
    fn push_front_goes_first() {
        let enc = FrameEncoder::new();
        let mut q = q(1 << 20, 10);
        q.push(&enc, &Header::new(1, 1), b"second").unwrap();
        q.push_front(&enc, &Header::new(1, 0), b"first").unwrap();
        let mut wire = Vec::new();
        enc.encode(&Header::new(1, 0), b"first", &mut wire).unwrap();
        enc.encode(&Header::new(1, 1), b"second", &mut wire)
            .unwrap();
        assert_eq!(q.unsent(), &wire[..]);
        q.advance(3);
        assert_eq!(
            q.push_front(&enc, &Header::new(1, 0), b"x"),
            Err(Refused::TooLarge)
        );
    }

    #[test]
    fn shared_entries_interleave_with_inline_ones() {
        let enc = FrameEncoder::new();
        let mut q = q(1 << 20, 10);
        let shared = EncodedMessage::new(&Message::new(&Header::new(2, 2), b"shared")).unwrap();
        q.push(&enc, &Header::new(1, 1), b"a").unwrap();
        q.push_shared(&shared).unwrap();
        q.push(&enc, &Header::new(1, 3), b"b").unwrap();
        assert_eq!(q.unsent().len(), 8);
        assert_eq!(q.pending_bytes(), 8 + shared.as_bytes().len() + 8);
        q.advance(8);
        assert_eq!(q.unsent(), shared.as_bytes());
        let n = shared.as_bytes().len();
        assert_eq!(q.advance(n), 1);
        assert_eq!(q.unsent().len(), 8);
    }
}

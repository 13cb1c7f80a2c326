//! Frame writer: the C++ byte order for messages and sequence chunks (spec §2.3, §3.3, §4.1).

use super::{CHUNK_SIZE, MAX_FRAME_LEN, PING_FRAME, PONG_FRAME};
use crate::cmf::{CapacityError, Sink, varint};
use crate::header::{Header, SYSTEM_SERVICE, tags};
use core::fmt;

/// Which frame of a message this is; it decides the header layout (spec §4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Chunk {
    /// A message in one frame: ServiceId, MessageId (if the header has one), custom ints,
    /// HeaderEnd.
    Single,
    /// First chunk of a sequence: as `Single` (MessageId written even when −1), then
    /// SequenceStart = `total`, LastInSequence = false.
    First {
        /// The whole body's length.
        total: u32,
    },
    /// A middle chunk: ServiceId, MessageId (only if ≥ 0), LastInSequence = false.
    Middle,
    /// The last chunk: ServiceId, MessageId (only if ≥ 0), LastInSequence = true.
    Last,
}

/// Why a message could not be encoded. Nothing is written when encoding fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The output has no room for the frames.
    Capacity(CapacityError),
    /// The service id is negative or 0x7FFF_FFFF (the peer would refuse the frame), or it is
    /// the system service 126 (the peer would take it for a ping or pong and drop it).
    InvalidServiceId(i32),
    /// The message id is 0x7FFF_FFFF, which receivers do not read as an int, or it is negative
    /// (other than −1) on a sequence, whose later chunks leave negative ids out (spec §4.1).
    InvalidMessageId(i32),
    /// The body is too large for SequenceStart (an int below 0x7FFF_FFFF).
    BodyTooLarge {
        /// The body's length.
        len: usize,
    },
    /// The header holds [`MAX_HEADER_INTS`](crate::header::MAX_HEADER_INTS) custom ints
    /// already, so [`Node::request`](crate::node::Node::request) has no room for its RequestId.
    HeaderFull,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::Capacity(e) => e.fmt(f),
            EncodeError::InvalidServiceId(id) => {
                write!(
                    f,
                    "service id {id} is outside 0..=2147483646 or is the system service 126"
                )
            }
            EncodeError::InvalidMessageId(id) => write!(f, "message id {id} is not an int"),
            EncodeError::BodyTooLarge { len } => {
                write!(f, "body of {len} bytes is too large for a sequence")
            }
            EncodeError::HeaderFull => write!(
                f,
                "the header holds {} custom ints: no room for a request id",
                crate::header::MAX_HEADER_INTS
            ),
        }
    }
}

impl core::error::Error for EncodeError {}

impl From<CapacityError> for EncodeError {
    fn from(e: CapacityError) -> Self {
        EncodeError::Capacity(e)
    }
}

/// Longest header [`write_chunk`] produces: ServiceId, MessageId, 16 custom ints of 11 bytes,
/// SequenceStart, LastInSequence, HeaderEnd.
const MAX_HEADER_LEN: usize = 6 + 6 + crate::header::MAX_HEADER_INTS * 11 + 6 + 1 + 1;

#[inline]
fn put_tag(out: &mut [u8], n: usize, tag: u32, ty: u8) -> usize {
    if tag <= 30 {
        out[n] = (tag as u8) << 3 | ty;
        n + 1
    } else {
        out[n] = 0xF8 | ty;
        n + 1 + varint::encode(u64::from(tag), &mut out[n + 1..])
    }
}

/// An int the way the C++ `int32` writer puts it: the sign picks the type.
#[inline(always)]
fn put_int(out: &mut [u8], n: usize, tag: u32, v: i32) -> usize {
    let (ty, magnitude) = if v < 0 {
        (1, u64::from(v.unsigned_abs()))
    } else {
        (0, v as u64)
    };
    let n = put_tag(out, n, tag, ty);
    n + varint::encode(magnitude, &mut out[n..])
}

/// Writes the header of `chunk` into `out`; returns its length. Always inlined: on the
/// per-message path `chunk` is a constant, and most of this folds away.
#[inline(always)]
fn encode_header(header: &Header, chunk: Chunk, out: &mut [u8]) -> usize {
    let mut n = put_int(out, 0, tags::SERVICE_ID, header.service_id);
    match chunk {
        Chunk::Single | Chunk::First { .. } => {
            if let Some(id) = header.message_id {
                n = put_int(out, n, tags::MESSAGE_ID, id);
            }
            for &(tag, value) in header.ints.as_slice() {
                n = put_int(out, n, tag, value);
            }
        }
        Chunk::Middle | Chunk::Last => {
            if let Some(id @ 0..) = header.message_id {
                n = put_int(out, n, tags::MESSAGE_ID, id);
            }
        }
    }
    const FALSE: u8 = (tags::LAST_IN_SEQUENCE as u8) << 3 | 5;
    const TRUE: u8 = (tags::LAST_IN_SEQUENCE as u8) << 3 | 4;
    match chunk {
        Chunk::Single => {}
        Chunk::First { total } => {
            n = put_tag(out, n, tags::SEQUENCE_START, 0);
            n += varint::encode(u64::from(total), &mut out[n..]);
            out[n] = FALSE;
            n += 1;
        }
        Chunk::Middle => {
            out[n] = FALSE;
            n += 1;
        }
        Chunk::Last => {
            out[n] = TRUE;
            n += 1;
        }
    }
    out[n] = (tags::HEADER_END as u8) << 3 | 4;
    n + 1
}

/// Bytes an int takes the way [`put_int`] writes it.
#[inline]
fn int_len(tag: u32, v: i32) -> usize {
    let tag_len = if tag <= 30 {
        1
    } else {
        1 + varint::encoded_len(u64::from(tag))
    };
    tag_len + varint::encoded_len(u64::from(v.unsigned_abs()))
}

/// Length of the header of `chunk`, without writing it. Always inlined, as
/// [`encode_header`].
#[inline(always)]
fn header_len(header: &Header, chunk: Chunk) -> usize {
    let int = int_len;
    let mut n = int(tags::SERVICE_ID, header.service_id) + 1;
    match chunk {
        Chunk::Single | Chunk::First { .. } => {
            n += header.message_id.map_or(0, |id| int(tags::MESSAGE_ID, id));
            n += header.ints.iter().map(|(t, v)| int(t, v)).sum::<usize>();
        }
        Chunk::Middle | Chunk::Last => {
            if let Some(id @ 0..) = header.message_id {
                n += int(tags::MESSAGE_ID, id);
            }
        }
    }
    n + match chunk {
        Chunk::Single => 0,
        Chunk::First { total } => 1 + varint::encoded_len(u64::from(total)) + 1,
        Chunk::Middle | Chunk::Last => 1,
    }
}

/// Writes one frame: length, the header for `chunk`, and `body` (at most [`CHUNK_SIZE`] bytes,
/// which keeps every frame within [`MAX_FRAME_LEN`]). Returns the frame's length. The header
/// must have passed [`FrameEncoder::check`].
#[inline]
pub fn write_chunk<S: Sink>(
    header: &Header,
    chunk: Chunk,
    body: &[u8],
    out: &mut S,
) -> Result<usize, CapacityError> {
    // Most headers carry a few custom ints at most: encode those in a smaller scratch buffer.
    if header.ints.len() <= SMALL_HEADER_INTS {
        write_chunk_with::<{ 2 + SMALL_HEADER_LEN }, S>(header, chunk, body, out)
    } else {
        write_chunk_with::<{ 2 + MAX_HEADER_LEN }, S>(header, chunk, body, out)
    }
}

/// Custom ints that fit [`SMALL_HEADER_LEN`].
const SMALL_HEADER_INTS: usize = 4;
/// Longest header with at most [`SMALL_HEADER_INTS`] custom ints.
const SMALL_HEADER_LEN: usize = 6 + 6 + SMALL_HEADER_INTS * 11 + 6 + 1 + 1;

#[inline(always)]
fn write_chunk_with<const N: usize, S: Sink>(
    header: &Header,
    chunk: Chunk,
    body: &[u8],
    out: &mut S,
) -> Result<usize, CapacityError> {
    let mut head = [0u8; N];
    let hlen = encode_header(header, chunk, &mut head[2..]);
    let len = 2 + hlen + body.len();
    debug_assert!(body.len() <= CHUNK_SIZE && len <= MAX_FRAME_LEN);
    if out.remaining() < len {
        return Err(CapacityError {
            needed: len,
            available: out.remaining(),
        });
    }
    head[..2].copy_from_slice(&(len as u16).to_le_bytes());
    out.put(&head[..2 + hlen]);
    out.put(body);
    Ok(len)
}

/// Splits messages into frames and writes them (sequences for bodies over the chunk size).
///
/// ```
/// use flowee_proto::frame::FrameEncoder;
/// use flowee_proto::header::Header;
///
/// let enc = FrameEncoder::new();
/// let header = Header::new(3, 2).with_int(11, 7).unwrap();
/// let mut buf = Vec::new();
/// let n = enc.encode(&header, &[0x0C], &mut buf).unwrap();
/// assert_eq!(buf, [0x0A, 0x00, 0x08, 0x03, 0x10, 0x02, 0x58, 0x07, 0x04, 0x0C]);
/// assert_eq!(n, enc.encoded_len(&header, 1));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameEncoder {
    chunk_size: usize,
}

impl Default for FrameEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameEncoder {
    /// An encoder with the C++ chunk size of 8000.
    pub const fn new() -> Self {
        FrameEncoder {
            chunk_size: CHUNK_SIZE,
        }
    }

    /// An encoder with a smaller chunk size (clamped to 1..=8000).
    pub const fn with_chunk_size(chunk_size: usize) -> Self {
        let chunk_size = if chunk_size == 0 {
            1
        } else if chunk_size > CHUNK_SIZE {
            CHUNK_SIZE
        } else {
            chunk_size
        };
        FrameEncoder { chunk_size }
    }

    /// The chunk size in use.
    pub const fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// Checks that receivers will accept this header and body size.
    pub fn check(&self, header: &Header, body_len: usize) -> Result<(), EncodeError> {
        if !(0..i32::MAX).contains(&header.service_id) || header.service_id == SYSTEM_SERVICE {
            return Err(EncodeError::InvalidServiceId(header.service_id));
        }
        if body_len >= i32::MAX as usize {
            return Err(EncodeError::BodyTooLarge { len: body_len });
        }
        match header.message_id {
            Some(id @ i32::MAX) => return Err(EncodeError::InvalidMessageId(id)),
            Some(id @ ..-1) if body_len > self.chunk_size => {
                return Err(EncodeError::InvalidMessageId(id));
            }
            _ => {}
        }
        Ok(())
    }

    /// The frames a message becomes: `(chunk, body slice)` in order.
    pub fn frames<'b>(&self, body: &'b [u8]) -> Frames<'b> {
        Frames {
            body,
            offset: 0,
            chunk_size: self.chunk_size,
            done: false,
        }
    }

    /// Total bytes of all frames of a message.
    #[inline]
    pub fn encoded_len(&self, header: &Header, body_len: usize) -> usize {
        if body_len <= self.chunk_size {
            return 2 + header_len(header, Chunk::Single) + body_len;
        }
        let chunks = body_len.div_ceil(self.chunk_size);
        let total = u32::try_from(body_len).unwrap_or(u32::MAX);
        let first = header_len(header, Chunk::First { total });
        let middle = header_len(header, Chunk::Middle);
        let last = header_len(header, Chunk::Last);
        2 * chunks + first + middle * (chunks - 2) + last + body_len
    }

    /// Writes a ping frame (service 126, Ping = true), as a connecting side sends it every
    /// ping interval; returns the bytes written. [`encode`](Self::encode) refuses service 126,
    /// so system frames are written only through this and [`write_pong`](Self::write_pong).
    pub fn write_ping<S: Sink>(&self, out: &mut S) -> Result<usize, EncodeError> {
        write_system(&PING_FRAME, out)
    }

    /// Writes a pong frame (service 126, Pong = true), the accepting side's answer to a ping.
    pub fn write_pong<S: Sink>(&self, out: &mut S) -> Result<usize, EncodeError> {
        write_system(&PONG_FRAME, out)
    }

    /// Writes a message whose body fits one chunk straight into `out`, which is exactly
    /// [`encoded_len`](Self::encoded_len) long (no scratch header, no second check): the
    /// queues' path. The header must have passed [`check`](Self::check).
    #[inline]
    pub(crate) fn write_single_into(&self, header: &Header, body: &[u8], out: &mut [u8]) {
        debug_assert!(body.len() <= self.chunk_size);
        debug_assert_eq!(out.len(), self.encoded_len(header, body.len()));
        let (prefix, rest) = out.split_at_mut(2);
        let hlen = encode_header(header, Chunk::Single, rest);
        prefix.copy_from_slice(&((2 + hlen + body.len()) as u16).to_le_bytes());
        rest[hlen..].copy_from_slice(body);
    }

    /// Writes every frame of a message; returns the bytes written. Writes nothing on error.
    pub fn encode<S: Sink>(
        &self,
        header: &Header,
        body: &[u8],
        out: &mut S,
    ) -> Result<usize, EncodeError> {
        self.check(header, body.len())?;
        if body.len() <= self.chunk_size {
            return Ok(write_chunk(header, Chunk::Single, body, out)?);
        }
        let needed = self.encoded_len(header, body.len());
        if out.remaining() < needed {
            return Err(EncodeError::Capacity(CapacityError {
                needed,
                available: out.remaining(),
            }));
        }
        let mut written = 0;
        for (chunk, slice) in self.frames(body) {
            written += write_chunk(header, chunk, slice, out)?;
        }
        Ok(written)
    }
}

fn write_system<S: Sink>(frame: &[u8], out: &mut S) -> Result<usize, EncodeError> {
    if out.remaining() < frame.len() {
        return Err(EncodeError::Capacity(CapacityError {
            needed: frame.len(),
            available: out.remaining(),
        }));
    }
    out.put(frame);
    Ok(frame.len())
}

/// The frames of one message, from [`FrameEncoder::frames`].
#[derive(Clone, Debug)]
pub struct Frames<'b> {
    body: &'b [u8],
    offset: usize,
    chunk_size: usize,
    done: bool,
}

impl<'b> Iterator for Frames<'b> {
    type Item = (Chunk, &'b [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let len = self.body.len();
        if len <= self.chunk_size {
            self.done = true;
            return Some((Chunk::Single, self.body));
        }
        let start = self.offset;
        let end = (start + self.chunk_size).min(len);
        self.offset = end;
        let chunk = if start == 0 {
            Chunk::First {
                total: u32::try_from(len).unwrap_or(u32::MAX),
            }
        } else if end == len {
            self.done = true;
            Chunk::Last
        } else {
            Chunk::Middle
        };
        Some((chunk, &self.body[start..end]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameDecoder;
    use crate::header::FrameKind;

    fn enc(h: &Header, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        let n = FrameEncoder::new().encode(h, body, &mut v).unwrap();
        assert_eq!(n, v.len());
        assert_eq!(n, FrameEncoder::new().encoded_len(h, body.len()));
        v
    }

    #[test]
    fn spec_frames() {
        assert_eq!(
            enc(&Header::new(0, 0), &[]),
            [0x07, 0x00, 0x08, 0x00, 0x10, 0x00, 0x04]
        );
        assert_eq!(
            enc(
                &Header::new(3, 2).with_int(11, 7).unwrap(),
                &[0x12, 0x02, 0x71, 0x7A]
            ),
            [
                0x0D, 0x00, 0x08, 0x03, 0x10, 0x02, 0x58, 0x07, 0x04, 0x12, 0x02, 0x71, 0x7A
            ]
        );
        let f12 = Header::service(1)
            .with_int(11, 312)
            .and_then(|h| h.with_int(233, 12521))
            .and_then(|h| h.with_int(1111, 1112))
            .unwrap();
        assert_eq!(
            enc(&f12, &[]),
            [
                0x14, 0x00, 0x08, 0x01, 0x11, 0x01, 0x58, 0x81, 0x38, 0xF8, 0x80, 0x69, 0xE0, 0x69,
                0xF8, 0x87, 0x57, 0x87, 0x58, 0x04
            ]
        );
    }

    #[test]
    fn sequence_layout() {
        let body: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
        let h = Header::new(1, 4).with_int(11, 9).unwrap();
        let wire = enc(&h, &body);
        assert_eq!(
            wire[..14],
            [
                0x4E, 0x1F, 0x08, 0x01, 0x10, 0x04, 0x58, 0x09, 0x18, 0x80, 0x9B, 0x20, 0x25, 0x04
            ]
        );
        assert_eq!(
            wire[8014..8022],
            [0x48, 0x1F, 0x08, 0x01, 0x10, 0x04, 0x25, 0x04]
        );
        assert_eq!(
            wire[16022..16030],
            [0xA8, 0x0F, 0x08, 0x01, 0x10, 0x04, 0x24, 0x04]
        );
        assert_eq!(wire.len(), 8014 + 8008 + 4008);

        // Message id −1: written in the first chunk, left out of the others.
        assert_eq!(Header::service(1).message_id, Some(-1));
        let wire = enc(&Header::service(1), &body[..8001]);
        assert_eq!(
            wire[..11],
            [
                0x4B, 0x1F, 0x08, 0x01, 0x11, 0x01, 0x18, 0xBD, 0x41, 0x25, 0x04
            ]
        );
        assert_eq!(wire[8011..], [0x07, 0x00, 0x08, 0x01, 0x24, 0x04, 0x40]);
    }

    #[test]
    fn absent_message_id_stays_absent() {
        let h = Header {
            message_id: None,
            ..Header::service(1)
        };
        assert_eq!(enc(&h, &[]), [0x05, 0x00, 0x08, 0x01, 0x04]);
    }

    #[test]
    fn exactly_chunk_size_is_one_frame() {
        let body = vec![7u8; CHUNK_SIZE];
        let wire = enc(&Header::new(2, 3), &body);
        assert_eq!(wire.len(), 8007);
        assert_eq!(wire[..7], [0x47, 0x1F, 0x08, 0x02, 0x10, 0x03, 0x04]);
    }

    #[test]
    fn refusals_write_nothing() {
        let mut out = [0u8; 8];
        let mut sink = crate::cmf::SliceSink::new(&mut out);
        let e = FrameEncoder::new().encode(&Header::new(1, 1), &[0; 4], &mut sink);
        assert!(matches!(e, Err(EncodeError::Capacity(_))));
        assert!(sink.is_empty());
        let mut v = Vec::new();
        assert_eq!(
            FrameEncoder::new().encode(&Header::new(-1, 1), &[], &mut v),
            Err(EncodeError::InvalidServiceId(-1))
        );
        assert_eq!(
            FrameEncoder::new().encode(&Header::new(1, i32::MAX), &[], &mut v),
            Err(EncodeError::InvalidMessageId(i32::MAX))
        );
        assert_eq!(
            FrameEncoder::with_chunk_size(2).encode(&Header::new(1, -2), &[0; 3], &mut v),
            Err(EncodeError::InvalidMessageId(-2))
        );
        assert!(
            FrameEncoder::with_chunk_size(2)
                .encode(&Header::new(1, -2), &[0; 2], &mut v)
                .is_ok()
        );
        v.clear();
        assert!(v.is_empty());
    }

    #[test]
    fn small_chunks_roundtrip() {
        let enc = FrameEncoder::with_chunk_size(3);
        let h = Header::new(5, 6).with_int(12, -1).unwrap();
        let mut wire = Vec::new();
        enc.encode(&h, b"abcdefgh", &mut wire).unwrap();
        let mut d = FrameDecoder::new();
        let mut input = &wire[..];
        let mut kinds = Vec::new();
        let mut body = Vec::new();
        while let Some(f) = d.decode(&mut input).unwrap() {
            kinds.push(f.header.kind());
            body.extend_from_slice(f.body);
        }
        assert_eq!(
            kinds,
            [
                FrameKind::SequenceStart {
                    total: 8,
                    last: false
                },
                FrameKind::SequenceNext { last: false },
                FrameKind::SequenceNext { last: true }
            ]
        );
        assert_eq!(body, b"abcdefgh");
        assert_eq!(wire.len(), enc.encoded_len(&h, 8));
    }

    #[test]
    fn system_frames() {
        let enc = FrameEncoder::new();
        let mut out = Vec::new();
        assert_eq!(enc.write_ping(&mut out), Ok(6));
        assert_eq!(enc.write_pong(&mut out), Ok(6));
        assert_eq!(out, [PING_FRAME, PONG_FRAME].concat());
        let mut room = [0u8; 5];
        let mut short = crate::cmf::SliceSink::new(&mut room);
        assert!(matches!(
            enc.write_ping(&mut short),
            Err(EncodeError::Capacity(CapacityError {
                needed: 6,
                available: 5
            }))
        ));
    }
}

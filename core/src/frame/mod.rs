//! Framing on the TCP stream (spec §2): a 2-byte little-endian length that counts itself,
//! a CMF header ending in HeaderEnd, then the body.
//!
//! ```text
//! | len (u16 LE) | header tokens … HeaderEnd | body |
//! ```
//!
//! [`FrameDecoder`] turns any chunking of a byte stream into [`Frame`]s; [`FrameEncoder`] writes
//! messages (split into sequences when large) in the C++ byte order.

mod decoder;
mod encoder;

pub use decoder::FrameDecoder;
pub use encoder::{Chunk, EncodeError, FrameEncoder, Frames, write_chunk};

use crate::header::{self, FrameHeader, Header, HeaderError, HeaderInts};
use core::fmt;

/// Largest frame a receiver accepts, length bytes included (9000 itself is accepted).
pub const MAX_FRAME_LEN: usize = 9000;
/// Smallest valid frame: `05 00 08 <svc> 04`.
pub const MIN_FRAME_LEN: usize = 5;
/// Bodies larger than this are sent as a sequence of chunks of this size.
pub const CHUNK_SIZE: usize = 8000;
/// The ping a connecting side sends: service 126, Ping = true.
pub const PING_FRAME: [u8; 6] = [0x06, 0x00, 0x08, 0x7E, 0x2C, 0x04];
/// The pong an accepting side answers with: service 126, Pong = true.
pub const PONG_FRAME: [u8; 6] = [0x06, 0x00, 0x08, 0x7E, 0x34, 0x04];
/// The byte every stream must start its third byte with: ServiceId (tag 1), PositiveNumber.
pub const FIRST_HEADER_BYTE: u8 = 0x08;

/// One frame, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The parsed header (custom ints: [`Frame::ints`]).
    pub header: FrameHeader,
    /// The header's tokens, HeaderEnd included.
    pub header_bytes: &'a [u8],
    /// The body (may be empty).
    pub body: &'a [u8],
    /// The whole frame as it was on the wire, length bytes included.
    pub bytes: &'a [u8],
}

impl Frame<'_> {
    /// The custom header ints (tags ≥ 10).
    pub fn ints(&self) -> HeaderInts {
        if self.header.int_count() == 0 {
            HeaderInts::new()
        } else {
            header::ints(self.header_bytes)
        }
    }

    /// Service id, message id and custom ints: the header an application sees.
    pub fn message_header(&self) -> Header {
        Header {
            service_id: self.header.service_id,
            message_id: self.header.message_id,
            ints: self.ints(),
        }
    }
}

/// Why a byte stream is not a valid frame stream. Each one ends the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The length field is below 5.
    TooShort {
        /// The length field.
        len: usize,
    },
    /// The length field is above 9000.
    TooLarge {
        /// The length field.
        len: usize,
    },
    /// The stream's third byte is not `0x08`: the peer does not speak this protocol.
    NotFlowee {
        /// The byte found.
        byte: u8,
    },
    /// The header broke a rule of spec §3.4.
    Header(HeaderError),
}

impl FrameError {
    /// A short, stable, snake_case name (used in the CLI's JSON).
    pub fn name(&self) -> &'static str {
        match self {
            FrameError::TooShort { .. } => "frame_too_short",
            FrameError::TooLarge { .. } => "frame_too_large",
            FrameError::NotFlowee { .. } => "not_flowee",
            FrameError::Header(h) => h.name(),
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooShort { len } => {
                write!(f, "frame length {len} is below {MIN_FRAME_LEN}")
            }
            FrameError::TooLarge { len } => {
                write!(f, "frame length {len} is above {MAX_FRAME_LEN}")
            }
            FrameError::NotFlowee { byte } => write!(
                f,
                "stream does not start with a ServiceId (byte 2 is {byte:#04x}, not 0x08)"
            ),
            FrameError::Header(e) => e.fmt(f),
        }
    }
}

impl core::error::Error for FrameError {}

impl From<HeaderError> for FrameError {
    fn from(e: HeaderError) -> Self {
        FrameError::Header(e)
    }
}

/// Looks at the front of a frame stream: the length of the first frame once its length bytes
/// are there (and, on a stream's first frame, its third byte), or `None` while too few bytes
/// are there to tell. Rejects a bad length before anything of the body is buffered.
#[inline]
pub fn peek_len(buf: &[u8], first_frame: bool) -> Result<Option<usize>, FrameError> {
    if first_frame {
        match buf.get(2) {
            None => return Ok(None),
            Some(&FIRST_HEADER_BYTE) => {}
            Some(&byte) => return Err(FrameError::NotFlowee { byte }),
        }
    }
    let (Some(&lo), Some(&hi)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_le_bytes([lo, hi]));
    if len < MIN_FRAME_LEN {
        Err(FrameError::TooShort { len })
    } else if len > MAX_FRAME_LEN {
        Err(FrameError::TooLarge { len })
    } else {
        Ok(Some(len))
    }
}

/// Parses one whole frame: `bytes` holds exactly the frame, length bytes included, and its
/// length field has been checked by [`peek_len`]. Always inlined: returned through memory, the
/// frame's small fields are read back wider than they were written, which stalls store
/// forwarding on the per-frame path.
#[inline(always)]
pub fn parse(bytes: &[u8]) -> Result<Frame<'_>, FrameError> {
    let content = bytes.get(2..).unwrap_or(&[]);
    let (header, header_len) = header::parse(content)?;
    let (header_bytes, body) = content.split_at(header_len);
    Ok(Frame {
        header,
        header_bytes,
        body,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peek() {
        assert_eq!(peek_len(&[0x05], false), Ok(None));
        assert_eq!(peek_len(&[0x05, 0x00], false), Ok(Some(5)));
        assert_eq!(peek_len(&[0x05, 0x00], true), Ok(None));
        assert_eq!(peek_len(&[0x05, 0x00, 0x08], true), Ok(Some(5)));
        assert_eq!(
            peek_len(&[0x04, 0x00], false),
            Err(FrameError::TooShort { len: 4 })
        );
        assert_eq!(
            peek_len(&[0x29, 0x23], false),
            Err(FrameError::TooLarge { len: 9001 })
        );
        assert_eq!(peek_len(&[0x28, 0x23], false), Ok(Some(9000)));
        assert_eq!(
            peek_len(b"GET / HTTP/1.1", true),
            Err(FrameError::NotFlowee { byte: b'T' })
        );
    }

    #[test]
    fn parse_stays_inside_the_frame() {
        // Header without HeaderEnd: the C++ reads on into the next frame's bytes (§2.2).
        assert_eq!(
            parse(&[0x06, 0x00, 0x08, 0x01, 0x10, 0x01]),
            Err(FrameError::Header(HeaderError::MissingEnd))
        );
        let f = parse(&[0x05, 0x00, 0x08, 0x01, 0x04]).unwrap();
        assert_eq!(f.header.service_id, 1);
        assert!(f.body.is_empty());
    }
}

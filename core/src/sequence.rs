//! Receiving sequences: bodies larger than one frame, sent as chunks (spec §4.2).
//!
//! [`SequenceTracker`] checks the chunk rules and remembers the open sequence; it holds no body
//! bytes, so it serves both whole-message reassembly and chunk-by-chunk delivery. With `alloc`,
//! [`Reassembler`] adds a capped buffer on top.
//!
//! Where the C++ stalls (more data than announced) or allocates whatever the peer asks
//! (SequenceStart up to 2 GiB), this refuses with a typed [`SequenceError`].

use crate::frame::Frame;
use crate::header::{FrameKind, Header};
use core::fmt;

/// A broken sequence. Each one ends the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SequenceError {
    /// A first chunk arrived while another sequence was open.
    SecondStart,
    /// A continuation arrived with no sequence open.
    NoStart,
    /// A continuation's service or message id differs from the first chunk's.
    Mismatch {
        /// `(service id, message id)` of the open sequence (−1 for no message id).
        expected: (i32, i32),
        /// `(service id, message id)` of the continuation.
        found: (i32, i32),
    },
    /// More body bytes than SequenceStart announced (the C++ stalls here).
    Overflow {
        /// SequenceStart.
        announced: u32,
        /// Bytes received including this chunk.
        received: u64,
    },
    /// SequenceStart is above the configured limit.
    TooLarge {
        /// SequenceStart.
        announced: u32,
        /// The limit.
        limit: u32,
    },
    /// SequenceStart is negative (the C++ fails to allocate and closes).
    NegativeSize(i32),
}

impl SequenceError {
    /// A short, stable, snake_case name.
    pub fn name(&self) -> &'static str {
        match self {
            SequenceError::SecondStart => "sequence_second_start",
            SequenceError::NoStart => "sequence_no_start",
            SequenceError::Mismatch { .. } => "sequence_mismatch",
            SequenceError::Overflow { .. } => "sequence_overflow",
            SequenceError::TooLarge { .. } => "sequence_too_large",
            SequenceError::NegativeSize(_) => "sequence_negative_size",
        }
    }
}

impl fmt::Display for SequenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SequenceError::SecondStart => write!(f, "sequence started while another was open"),
            SequenceError::NoStart => write!(f, "sequence continuation without a start"),
            SequenceError::Mismatch { expected, found } => write!(
                f,
                "sequence continuation for service/message {}/{} inside {}/{}",
                found.0, found.1, expected.0, expected.1
            ),
            SequenceError::Overflow {
                announced,
                received,
            } => write!(
                f,
                "sequence announced {announced} bytes but sent {received}"
            ),
            SequenceError::TooLarge { announced, limit } => {
                write!(
                    f,
                    "sequence of {announced} bytes is above the limit of {limit}"
                )
            }
            SequenceError::NegativeSize(n) => write!(f, "sequence size {n} is negative"),
        }
    }
}

impl core::error::Error for SequenceError {}

/// What a sequence frame was, once checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// Header of the whole message: service, message id and the custom ints of the first chunk.
    pub header: Header,
    /// SequenceStart, as announced by the first chunk.
    pub total: u32,
    /// This frame opened the sequence.
    pub first: bool,
    /// This frame closed the sequence, which is now complete (possibly short of `total`,
    /// which the C++ accepts too).
    pub last: bool,
}

#[derive(Clone, Copy, Debug)]
struct Open {
    header: Header,
    total: u32,
    received: u64,
}

/// The receiver's sequence rules, without the bytes.
#[derive(Clone, Debug)]
pub struct SequenceTracker {
    open: Option<Open>,
    limit: u32,
}

impl SequenceTracker {
    /// A tracker that refuses sequences announcing more than `limit` bytes.
    pub const fn new(limit: u32) -> Self {
        SequenceTracker { open: None, limit }
    }

    /// The header of the open sequence.
    pub fn open_header(&self) -> Option<&Header> {
        self.open.as_ref().map(|o| &o.header)
    }

    /// Bytes received so far for the open sequence.
    pub fn received(&self) -> u64 {
        self.open.map_or(0, |o| o.received)
    }

    /// Drops the open sequence (on reconnect or close).
    pub fn reset(&mut self) {
        self.open = None;
    }

    /// Applies one frame of kind [`FrameKind::SequenceStart`] or [`FrameKind::SequenceNext`];
    /// returns `None` for other frames, which do not touch the open sequence (they may be
    /// interleaved with it).
    pub fn on_frame(&mut self, frame: &Frame<'_>) -> Option<Result<Step, SequenceError>> {
        let len = frame.body.len() as u64;
        Some(match frame.header.kind() {
            FrameKind::SequenceStart { total, last } => self.start(frame, total, last, len),
            FrameKind::SequenceNext { last } => self.next(frame, last, len),
            _ => return None,
        })
    }

    fn start(
        &mut self,
        frame: &Frame<'_>,
        total: i32,
        last: bool,
        len: u64,
    ) -> Result<Step, SequenceError> {
        if self.open.is_some() {
            return Err(SequenceError::SecondStart);
        }
        let total = u32::try_from(total).map_err(|_| SequenceError::NegativeSize(total))?;
        if total > self.limit {
            return Err(SequenceError::TooLarge {
                announced: total,
                limit: self.limit,
            });
        }
        if len > u64::from(total) {
            return Err(SequenceError::Overflow {
                announced: total,
                received: len,
            });
        }
        let header = frame.message_header();
        if !last {
            self.open = Some(Open {
                header,
                total,
                received: len,
            });
        }
        Ok(Step {
            header,
            total,
            first: true,
            last,
        })
    }

    fn next(&mut self, frame: &Frame<'_>, last: bool, len: u64) -> Result<Step, SequenceError> {
        let open = self.open.as_mut().ok_or(SequenceError::NoStart)?;
        let h = &frame.header;
        let expected = (
            open.header.service_id,
            open.header.message_id_or_minus_one(),
        );
        let found = (h.service_id, h.message_id.unwrap_or(-1));
        if expected != found {
            return Err(SequenceError::Mismatch { expected, found });
        }
        let received = open.received + len;
        if received > u64::from(open.total) {
            return Err(SequenceError::Overflow {
                announced: open.total,
                received,
            });
        }
        open.received = received;
        let step = Step {
            header: open.header,
            total: open.total,
            first: false,
            last,
        };
        if last {
            self.open = None;
        }
        Ok(step)
    }
}

/// Reassembles sequences into one body, growing its buffer with the data that actually
/// arrives (a lying SequenceStart costs nothing) up to a cap.
#[cfg(feature = "alloc")]
#[derive(Clone, Debug)]
pub struct Reassembler {
    tracker: SequenceTracker,
    body: alloc::vec::Vec<u8>,
}

/// A complete message out of a [`Reassembler`].
#[cfg(feature = "alloc")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reassembled<'a> {
    /// Header of the first chunk (with its custom ints).
    pub header: Header,
    /// The joined body.
    pub body: &'a [u8],
}

#[cfg(feature = "alloc")]
impl Reassembler {
    /// A reassembler refusing sequences above `limit` bytes.
    pub fn new(limit: u32) -> Self {
        Reassembler {
            tracker: SequenceTracker::new(limit),
            body: alloc::vec::Vec::new(),
        }
    }

    /// Whether a sequence is open.
    pub fn is_open(&self) -> bool {
        self.tracker.open.is_some()
    }

    /// Feeds a frame. `Ok(None)`: not a sequence frame, or more chunks to come;
    /// `Ok(Some(..))`: the sequence is complete.
    pub fn push(&mut self, frame: &Frame<'_>) -> Result<Option<Reassembled<'_>>, SequenceError> {
        let step = match self.tracker.on_frame(frame) {
            None => return Ok(None),
            Some(step) => step?,
        };
        if step.first {
            self.body.clear();
        }
        self.body.extend_from_slice(frame.body);
        Ok(step.last.then_some(Reassembled {
            header: step.header,
            body: &self.body,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{self, FrameEncoder};

    fn frames(wire: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut d = frame::FrameDecoder::new();
        let mut input = wire;
        while let Some(f) = d.decode(&mut input).unwrap() {
            out.push(f.bytes.to_vec());
        }
        out
    }

    fn feed(r: &mut Reassembler, raw: &[u8]) -> Result<Option<(Header, Vec<u8>)>, SequenceError> {
        let f = frame::parse(raw).unwrap();
        Ok(r.push(&f)?.map(|m| (m.header, m.body.to_vec())))
    }

    #[test]
    fn reassembles_with_interleaved_frames() {
        let body: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
        let h = Header::new(1, 4).with_int(11, 9).unwrap();
        let mut wire = Vec::new();
        FrameEncoder::new().encode(&h, &body, &mut wire).unwrap();
        let chunks = frames(&wire);
        let mut other = Vec::new();
        FrameEncoder::new()
            .encode(&Header::new(2, 2), b"x", &mut other)
            .unwrap();
        let mut r = Reassembler::new(1 << 20);
        assert_eq!(feed(&mut r, &chunks[0]), Ok(None));
        assert_eq!(feed(&mut r, &other), Ok(None));
        assert!(r.is_open());
        assert_eq!(feed(&mut r, &chunks[1]), Ok(None));
        assert_eq!(feed(&mut r, &chunks[2]), Ok(Some((h, body))));
        assert!(!r.is_open());
    }

    #[test]
    fn rules() {
        let start = |svc: u8, total: u8| vec![0x09, 0x00, 0x08, svc, 0x18, total, 0x25, 0x04, 0xAA];
        let next = |svc: u8, last: bool| {
            vec![
                0x07,
                0x00,
                0x08,
                svc,
                if last { 0x24 } else { 0x25 },
                0x04,
                0xBB,
            ]
        };
        let mut r = Reassembler::new(100);
        assert_eq!(feed(&mut r, &next(1, true)), Err(SequenceError::NoStart));
        feed(&mut r, &start(1, 10)).unwrap();
        assert_eq!(feed(&mut r, &start(1, 10)), Err(SequenceError::SecondStart));
        assert_eq!(
            feed(&mut r, &next(2, false)),
            Err(SequenceError::Mismatch {
                expected: (1, -1),
                found: (2, -1)
            })
        );
        // Short sequence: delivered as it is.
        assert_eq!(
            feed(&mut r, &next(1, true)).unwrap().unwrap().1,
            [0xAA, 0xBB]
        );

        let mut r = Reassembler::new(100);
        feed(&mut r, &start(1, 2)).unwrap();
        feed(&mut r, &next(1, false)).unwrap();
        assert_eq!(
            feed(&mut r, &next(1, false)),
            Err(SequenceError::Overflow {
                announced: 2,
                received: 3
            })
        );
        let mut r = Reassembler::new(100);
        assert_eq!(
            feed(&mut r, &start(1, 101)),
            Err(SequenceError::TooLarge {
                announced: 101,
                limit: 100
            })
        );
        // SequenceStart = −5.
        let neg = [0x09, 0x00, 0x08, 0x01, 0x19, 0x05, 0x25, 0x04, 0xAA];
        assert_eq!(feed(&mut r, &neg), Err(SequenceError::NegativeSize(-5)));
        // One-chunk sequence.
        let one = [0x09, 0x00, 0x08, 0x01, 0x18, 0x01, 0x24, 0x04, 0xAA];
        assert_eq!(feed(&mut r, &one).unwrap().unwrap().1, [0xAA]);
        // MessageId −1 in the first chunk and absent later match.
        let first = [
            0x0B, 0x00, 0x08, 0x01, 0x11, 0x01, 0x18, 0x02, 0x25, 0x04, 0x01,
        ];
        feed(&mut r, &first).unwrap();
        assert_eq!(
            feed(&mut r, &next(1, true)).unwrap().unwrap().1,
            [0x01, 0xBB]
        );
    }
}

//! Stream decoder: any chunking in, validated frames out, one frame of memory at most.

use super::{Frame, FrameError, MAX_FRAME_LEN, parse, peek_len};
use core::cell::Cell;

/// Decodes a frame stream fed in chunks of any size.
///
/// Frames that arrive whole in the caller's slice are parsed in place (no copy); a frame split
/// across calls is gathered in an internal buffer of [`MAX_FRAME_LEN`] bytes. The length, and on
/// the first frame the `0x08` byte, are checked before any body byte is buffered. Errors are
/// sticky: once the stream is known to be bad, every later call returns the same error.
///
/// ```
/// use flowee_proto::frame::FrameDecoder;
///
/// let stream = [0x07, 0x00, 0x08, 0x00, 0x10, 0x00, 0x04, 0x06, 0x00, 0x08, 0x7E, 0x2C, 0x04];
/// let mut decoder = FrameDecoder::new();
/// let mut seen = Vec::new();
/// for chunk in stream.chunks(4) {
///     let mut input = chunk;
///     while let Some(frame) = decoder.decode(&mut input).unwrap() {
///         seen.push(frame.bytes.len());
///     }
/// }
/// assert_eq!(seen, [7, 6]);
/// ```
#[derive(Clone)]
pub struct FrameDecoder {
    buf: [u8; MAX_FRAME_LEN],
    buffered: usize,
    first_frame: bool,
    // A Cell so a failed parse of the buffered frame can be recorded while the buffer is
    // borrowed for the successful case.
    error: Cell<Option<FrameError>>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for FrameDecoder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FrameDecoder")
            .field("buffered", &self.buffered)
            .field("first_frame", &self.first_frame)
            .field("error", &self.error.get())
            .finish()
    }
}

impl FrameDecoder {
    /// A decoder at the start of a stream (the first-frame check is armed).
    pub const fn new() -> Self {
        FrameDecoder {
            buf: [0; MAX_FRAME_LEN],
            buffered: 0,
            first_frame: true,
            error: Cell::new(None),
        }
    }

    /// Bytes of an incomplete frame held from earlier calls.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// The error the stream failed with, if it did.
    pub fn error(&self) -> Option<FrameError> {
        self.error.get()
    }

    /// Decodes the next frame. Takes what it uses from the front of `input`; returns `Ok(None)`
    /// once `input` is used up without completing a frame (its bytes are kept for next time).
    pub fn decode<'s, 'a: 's>(
        &'s mut self,
        input: &mut &'a [u8],
    ) -> Result<Option<Frame<'s>>, FrameError> {
        if let Some(e) = self.error.get() {
            return Err(e);
        }
        let bytes: &'s [u8] = match self.next_len(input) {
            Err(e) => {
                self.error.set(Some(e));
                return Err(e);
            }
            Ok(None) => return Ok(None),
            Ok(Some(Source::Input(len))) => {
                let (frame, rest) = input.split_at(len);
                *input = rest;
                self.first_frame = false;
                frame
            }
            Ok(Some(Source::Buffer(len))) => {
                self.buffered = 0;
                self.first_frame = false;
                &self.buf[..len]
            }
        };
        parse(bytes)
            .map(Some)
            .inspect_err(|&e| self.error.set(Some(e)))
    }

    /// Finds where the next whole frame is, moving bytes from `input` into the buffer as needed.
    fn next_len(&mut self, input: &mut &[u8]) -> Result<Option<Source>, FrameError> {
        if self.buffered == 0 {
            return match peek_len(input, self.first_frame)? {
                Some(len) if input.len() >= len => Ok(Some(Source::Input(len))),
                _ => {
                    // Fewer bytes than one frame (a valid length is at most 9000).
                    let n = input.len();
                    self.buf[..n].copy_from_slice(input);
                    self.buffered = n;
                    *input = &[];
                    Ok(None)
                }
            };
        }
        // Gather the length bytes (and the third byte of the stream) one at a time, so a bad
        // length is refused before any body byte is buffered.
        let len = loop {
            if let Some(len) = peek_len(&self.buf[..self.buffered], self.first_frame)? {
                break len;
            }
            let Some((&b, rest)) = input.split_first() else {
                return Ok(None);
            };
            self.buf[self.buffered] = b;
            self.buffered += 1;
            *input = rest;
        };
        let take = len.saturating_sub(self.buffered).min(input.len());
        self.buf[self.buffered..self.buffered + take].copy_from_slice(&input[..take]);
        self.buffered += take;
        *input = &input[take..];
        Ok((self.buffered == len).then_some(Source::Buffer(len)))
    }
}

enum Source {
    Input(usize),
    Buffer(usize),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::HeaderError;

    fn all(dec: &mut FrameDecoder, chunks: &[&[u8]]) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut out = Vec::new();
        for chunk in chunks {
            let mut input = *chunk;
            while let Some(f) = dec.decode(&mut input)? {
                out.push(f.bytes.to_vec());
            }
            assert!(input.is_empty());
        }
        Ok(out)
    }

    #[test]
    fn bad_length_refused_before_body() {
        let mut d = FrameDecoder::new();
        // Second frame announces 9001 bytes: refused as soon as its length is seen.
        let r = all(&mut d, &[&[0x05, 0x00, 0x08, 0x01, 0x04, 0x29], &[0x23]]);
        assert_eq!(r, Err(FrameError::TooLarge { len: 9001 }));
        assert_eq!(d.buffered(), 2);
        // Sticky.
        let mut empty: &[u8] = &[];
        assert_eq!(
            d.decode(&mut empty).unwrap_err(),
            FrameError::TooLarge { len: 9001 }
        );
    }

    #[test]
    fn first_frame_check_is_once_per_stream() {
        let mut d = FrameDecoder::new();
        assert_eq!(
            all(&mut d, &[&[0x05, 0x00], &[0x09]]),
            Err(FrameError::NotFlowee { byte: 0x09 })
        );
        // Later frames may start with anything that parses (here: long-form ServiceId).
        let mut d = FrameDecoder::new();
        let frames = all(
            &mut d,
            &[&[
                0x05, 0x00, 0x08, 0x01, 0x04, 0x06, 0x00, 0xF8, 0x01, 0x01, 0x04,
            ]],
        )
        .unwrap();
        assert_eq!(frames.len(), 2);
    }

    #[test]
    fn header_errors_are_typed() {
        let mut d = FrameDecoder::new();
        assert_eq!(
            all(&mut d, &[&[0x06, 0x00, 0x08, 0x01, 0x10, 0x01]]),
            Err(FrameError::Header(HeaderError::MissingEnd))
        );
        let mut d = FrameDecoder::new();
        assert_eq!(
            all(&mut d, &[&[0x04, 0x00, 0x08, 0x01]]),
            Err(FrameError::TooShort { len: 4 })
        );
    }

    #[test]
    fn max_frame_buffered_across_calls() {
        let mut frame = vec![0x28, 0x23, 0x08, 0x01, 0x04];
        frame.resize(9000, 0xAB);
        let mut d = FrameDecoder::new();
        let chunks: Vec<&[u8]> = frame.chunks(1000).collect();
        let got = all(&mut d, &chunks).unwrap();
        assert_eq!(got, vec![frame.clone()]);
        assert_eq!(d.buffered(), 0);
    }
}

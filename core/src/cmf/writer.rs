//! Token writer into caller-provided storage.

use super::varint;
use super::{Token, Value};
use core::fmt;

/// The output had no room for a token. Nothing of that token was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapacityError {
    /// Bytes the token needed.
    pub needed: usize,
    /// Bytes that were left.
    pub available: usize,
}

impl fmt::Display for CapacityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "output full: {} bytes needed, {} available",
            self.needed, self.available
        )
    }
}

impl core::error::Error for CapacityError {}

/// Somewhere to put encoded bytes.
pub trait Sink {
    /// What [`Writer::finish`] gives back.
    type Output;
    /// Bytes that can still be written.
    fn remaining(&self) -> usize;
    /// Appends `bytes`; the writer checks [`Sink::remaining`] first, so this never runs short.
    fn put(&mut self, bytes: &[u8]);
    /// Turns the sink into its output.
    fn finish(self) -> Self::Output;
}

/// Things a [`Writer`] can be made from: any [`Sink`], or a plain `&mut [u8]`.
pub trait IntoSink {
    /// The sink it becomes.
    type Sink: Sink;
    /// Converts.
    fn into_sink(self) -> Self::Sink;
}

impl<S: Sink> IntoSink for S {
    type Sink = S;
    fn into_sink(self) -> S {
        self
    }
}

impl<'a> IntoSink for &'a mut [u8] {
    type Sink = SliceSink<'a>;
    fn into_sink(self) -> SliceSink<'a> {
        SliceSink::new(self)
    }
}

impl<'a, const N: usize> IntoSink for &'a mut [u8; N] {
    type Sink = SliceSink<'a>;
    fn into_sink(self) -> SliceSink<'a> {
        SliceSink::new(self)
    }
}

/// Writes into the front of a caller's slice; [`Writer::finish`] gives the written part.
#[derive(Debug)]
pub struct SliceSink<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> SliceSink<'a> {
    /// A sink over `buf`, starting at its front.
    pub fn new(buf: &'a mut [u8]) -> Self {
        SliceSink { buf, len: 0 }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<'a> Sink for SliceSink<'a> {
    type Output = &'a mut [u8];
    fn remaining(&self) -> usize {
        self.buf.len() - self.len
    }
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        self.buf[self.len..end].copy_from_slice(bytes);
        self.len = end;
    }
    fn finish(self) -> &'a mut [u8] {
        &mut self.buf[..self.len]
    }
}

impl<S: Sink + ?Sized> Sink for &mut S {
    type Output = ();
    fn remaining(&self) -> usize {
        (**self).remaining()
    }
    fn put(&mut self, bytes: &[u8]) {
        (**self).put(bytes);
    }
    fn finish(self) {}
}

impl<const N: usize> Sink for heapless::Vec<u8, N> {
    type Output = Self;
    fn remaining(&self) -> usize {
        N - self.len()
    }
    fn put(&mut self, bytes: &[u8]) {
        // Cannot fail: the writer checked `remaining` first.
        let _ = self.extend_from_slice(bytes);
    }
    fn finish(self) -> Self {
        self
    }
}

#[cfg(feature = "alloc")]
impl Sink for alloc::vec::Vec<u8> {
    type Output = Self;
    fn remaining(&self) -> usize {
        isize::MAX as usize - self.len()
    }
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    fn finish(self) -> Self {
        self
    }
}

#[cfg(feature = "alloc")]
impl Sink for bytes::BytesMut {
    type Output = Self;
    fn remaining(&self) -> usize {
        isize::MAX as usize - self.len()
    }
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    fn finish(self) -> Self {
        self
    }
}

/// Bytes the token takes on the wire.
pub fn encoded_len(token: &Token<'_>) -> usize {
    let tag = if token.tag <= 30 {
        1
    } else {
        1 + varint::encoded_len(u64::from(token.tag))
    };
    tag + match token.value {
        Value::Unsigned(v) | Value::Negative(v) => varint::encoded_len(v),
        Value::String(b) | Value::Bytes(b) => varint::encoded_len(b.len() as u64) + b.len(),
        Value::Bool(_) => 0,
        Value::Double(_) => 8,
    }
}

/// Writes the token's tag and the fixed part of its value (numbers, lengths) into `out`;
/// returns the length used. The payload of strings and byte arrays follows separately.
#[inline]
fn encode_head(token: &Token<'_>, out: &mut [u8; 21]) -> usize {
    let ty = token.value.value_type() as u8;
    let mut n = if token.tag <= 30 {
        out[0] = (token.tag as u8) << 3 | ty;
        1
    } else {
        out[0] = 0xF8 | ty;
        1 + varint::encode(u64::from(token.tag), &mut out[1..])
    };
    match token.value {
        Value::Unsigned(v) | Value::Negative(v) => n += varint::encode(v, &mut out[n..]),
        Value::String(b) | Value::Bytes(b) => n += varint::encode(b.len() as u64, &mut out[n..]),
        Value::Bool(_) => {}
        Value::Double(d) => {
            out[n..n + 8].copy_from_slice(&d.to_le_bytes());
            n += 8;
        }
    }
    n
}

/// Appends CMF tokens to a [`Sink`].
///
/// Adding is chainable; the first token that does not fit is remembered, later ones are
/// skipped, and [`Writer::finish`] reports it. A token is written whole or not at all.
///
/// ```
/// use flowee_proto::cmf::Writer;
///
/// // Into a fixed buffer (no allocation)...
/// let mut buf = [0u8; 16];
/// let mut w = Writer::new(&mut buf);
/// w.add(1, 1).add(2, -1).add(3, 0);
/// assert_eq!(w.finish().unwrap(), [0x08, 0x01, 0x11, 0x01, 0x18, 0x00]);
///
/// // ...or a heapless::Vec, and with `alloc` a Vec<u8> or BytesMut.
/// let mut w = Writer::new(heapless::Vec::<u8, 4>::new());
/// w.add(1000, "too long for four bytes");
/// assert!(w.finish().is_err());
/// ```
#[derive(Debug)]
pub struct Writer<S: Sink> {
    sink: S,
    error: Option<CapacityError>,
}

impl<S: Sink> Writer<S> {
    /// A writer appending to `sink` (or to a `&mut [u8]`, from its front).
    pub fn new<T: IntoSink<Sink = S>>(sink: T) -> Self {
        Writer {
            sink: sink.into_sink(),
            error: None,
        }
    }

    /// Appends `(tag, value)`. Integers follow the C++ writers: `i32` picks type 0 or 1 by
    /// sign, unsigned types are always type 0, `&str` is a String, `&[u8]` a ByteArray.
    pub fn add<'v>(&mut self, tag: u32, value: impl Into<Value<'v>>) -> &mut Self {
        if self.error.is_none() {
            if let Err(e) = self.try_add(Token::new(tag, value)) {
                self.error = Some(e);
            }
        }
        self
    }

    /// Appends one token now, or says why not (and writes nothing).
    pub fn try_add(&mut self, token: Token<'_>) -> Result<(), CapacityError> {
        let needed = encoded_len(&token);
        let available = self.sink.remaining();
        if needed > available {
            return Err(CapacityError { needed, available });
        }
        let mut head = [0u8; 21];
        let n = encode_head(&token, &mut head);
        self.sink.put(&head[..n]);
        if let Value::String(b) | Value::Bytes(b) = token.value {
            self.sink.put(b);
        }
        Ok(())
    }

    /// The sink, for callers that mix in raw bytes.
    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    /// The output, or the first token that did not fit.
    pub fn finish(self) -> Result<S::Output, CapacityError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.sink.finish()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmf::Reader;

    fn bytes(tag: u32, v: Value<'_>) -> Vec<u8> {
        let mut w = Writer::new(Vec::new());
        w.add(tag, v);
        w.finish().unwrap()
    }

    #[test]
    fn spec_vectors() {
        assert_eq!(
            bytes(4, Value::Unsigned(u64::MAX >> 1)),
            [0x20, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0x7F]
        );
        assert_eq!(
            bytes(5, i32::MIN.into()),
            [0x29, 0x86, 0xFE, 0xFE, 0xFF, 0x00]
        );
        assert_eq!(bytes(15, 6512.into()), [0x78, 0xB1, 0x70]);
        assert_eq!(bytes(129, 6512.into()), [0xF8, 0x80, 0x01, 0xB1, 0x70]);
        assert_eq!(bytes(1, "Föo".into()), [0x0A, 0x04, 0x46, 0xC3, 0xB6, 0x6F]);
        assert_eq!(
            bytes(200, b"hihi".into()),
            [0xFB, 0x80, 0x48, 0x04, b'h', b'i', b'h', b'i']
        );
        assert_eq!(bytes(3, true.into()), [0x1C]);
        assert_eq!(bytes(40, false.into()), [0xFD, 0x28]);
        assert_eq!(bytes(9, 15.5.into()), [0x4E, 0, 0, 0, 0, 0, 0, 0x2F, 0x40]);
        assert_eq!(
            bytes(64, 1.0.into()),
            [0xFE, 0x40, 0, 0, 0, 0, 0, 0, 0xF0, 0x3F]
        );
        assert_eq!(
            bytes(1, (-0.5).into()),
            [0x0E, 0, 0, 0, 0, 0, 0, 0xE0, 0xBF]
        );
        assert_eq!(
            bytes(7, (1u64 << 32).into()),
            [0x38, 0x8E, 0xFE, 0xFE, 0xFF, 0x00]
        );
        assert_eq!(bytes(31, 5.into()), [0xF8, 0x1F, 0x05]);
        assert_eq!(bytes(30, 5.into()), [0xF0, 0x05]);
        assert_eq!(bytes(1, (-128).into()), [0x09, 0x80, 0x00]);
        assert_eq!(bytes(1, (-129).into()), [0x09, 0x80, 0x01]);
        assert_eq!(bytes(1, "".into()), [0x0A, 0x00]);
    }

    #[test]
    fn js_readme_document() {
        let mut w = Writer::new(Vec::new());
        w.add(1, 0)
            .add(2, 0)
            .add(0, true)
            .add(1000, "This is an example string");
        let doc = w.finish().unwrap();
        assert_eq!(
            doc[..9],
            [0x08, 0x00, 0x10, 0x00, 0x04, 0xFA, 0x86, 0x68, 0x19]
        );
        assert_eq!(&doc[9..], b"This is an example string");
    }

    #[test]
    fn full_slice_writes_nothing_partial() {
        let mut buf = [0u8; 4];
        let mut w = Writer::new(&mut buf);
        w.add(1, 1).add(2, "abc").add(3, 3);
        assert_eq!(
            w.finish(),
            Err(CapacityError {
                needed: 5,
                available: 2
            })
        );
        assert_eq!(buf[..2], [0x08, 0x01]);
        assert_eq!(buf[2..], [0, 0]);
    }

    #[test]
    fn sinks() {
        let mut v = heapless::Vec::<u8, 8>::new();
        {
            let mut w = Writer::new(&mut v);
            w.add(1, 1);
            w.finish().unwrap();
        }
        assert_eq!(v[..], [0x08, 0x01]);
        let mut w = Writer::new(bytes::BytesMut::new());
        w.add(2, 2);
        assert_eq!(&w.finish().unwrap()[..], [0x10, 0x02]);
    }

    #[test]
    fn encoded_len_matches() {
        for t in [
            Token::new(u32::MAX, Value::Bytes(&[1; 200])),
            Token::new(31, Value::Negative(u64::MAX)),
            Token::new(0, true),
            Token::new(77, 1.0),
        ] {
            let b = bytes(t.tag, t.value);
            assert_eq!(b.len(), encoded_len(&t));
            assert_eq!(Reader::new(&b).next(), Some(Ok(t)));
        }
    }
}

//! Zero-allocation token reader.

use super::varint::{self, VarintError};
use super::{CmfError, CmfErrorKind, Token, Value};

/// Reads CMF tokens from a byte slice, borrowing strings and byte arrays from it.
///
/// An iterator of `Result<Token, CmfError>`: after the first error it yields nothing more
/// (the C++ parser keeps returning Error at the same position; ending is the Rust equivalent).
/// [`Reader::position`] tells how far it got, which the header parser uses to find the body.
///
/// The long tag form is accepted for small tags (`F8 05 00` reads as tag 5), as in the C++.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> Reader<'a> {
    /// A reader over a whole document.
    pub fn new(data: &'a [u8]) -> Self {
        Reader {
            data,
            pos: 0,
            failed: false,
        }
    }

    /// Offset of the next token (after an error: of the token that failed).
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The bytes not read yet.
    pub fn remaining(&self) -> &'a [u8] {
        &self.data[self.pos.min(self.data.len())..]
    }

    /// Reads the next token, or `Ok(None)` at the end of the document.
    #[inline]
    pub fn next_token(&mut self) -> Result<Option<Token<'a>>, CmfError> {
        if self.failed {
            return Ok(None);
        }
        let start = self.pos;
        match read_token(self.data, start) {
            Ok(Some((token, next))) => {
                self.pos = next;
                Ok(Some(token))
            }
            Ok(None) => Ok(None),
            Err(kind) => {
                self.failed = true;
                Err(CmfError {
                    kind,
                    offset: start,
                })
            }
        }
    }
}

impl<'a> Iterator for Reader<'a> {
    type Item = Result<Token<'a>, CmfError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        self.next_token().transpose()
    }
}

impl core::iter::FusedIterator for Reader<'_> {}

#[inline]
fn varint_at(data: &[u8], pos: usize) -> Result<(u64, usize), CmfErrorKind> {
    varint::decode(data.get(pos..).unwrap_or(&[])).map_err(|e| match e {
        VarintError::Truncated => CmfErrorKind::TruncatedVarint,
        VarintError::Overflow => CmfErrorKind::VarintOverflow,
    })
}

/// Reads one token at `pos`; returns it and the offset after it, or `None` at the end.
#[inline(always)]
fn read_token(data: &[u8], pos: usize) -> Result<Option<(Token<'_>, usize)>, CmfErrorKind> {
    let Some(&first) = data.get(pos) else {
        return Ok(None);
    };
    let mut at = pos + 1;
    let mut tag = u32::from(first >> 3);
    if tag == 31 {
        let (t, n) = varint_at(data, at)?;
        tag = u32::try_from(t).map_err(|_| CmfErrorKind::TagTooLarge)?;
        at += n;
    }
    let value = match first & 7 {
        0 => {
            let (v, n) = varint_at(data, at)?;
            at += n;
            Value::Unsigned(v)
        }
        1 => {
            let (v, n) = varint_at(data, at)?;
            at += n;
            Value::Negative(v)
        }
        t @ (2 | 3) => {
            let (len, n) = varint_at(data, at)?;
            at += n;
            let end = usize::try_from(len)
                .ok()
                .and_then(|len| at.checked_add(len))
                .filter(|&end| end <= data.len())
                .ok_or(CmfErrorKind::TruncatedData)?;
            let bytes = &data[at..end];
            at = end;
            if t == 2 {
                Value::String(bytes)
            } else {
                Value::Bytes(bytes)
            }
        }
        4 => Value::Bool(true),
        5 => Value::Bool(false),
        6 => {
            let raw: [u8; 8] = data
                .get(at..at + 8)
                .and_then(|s| s.try_into().ok())
                .ok_or(CmfErrorKind::TruncatedDouble)?;
            at += 8;
            Value::Double(f64::from_le_bytes(raw))
        }
        _ => return Err(CmfErrorKind::InvalidType),
    };
    Ok(Some((Token { tag, value }, at)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(bytes: &[u8]) -> Result<Token<'_>, CmfError> {
        let mut r = Reader::new(bytes);
        let t = r.next().expect("a token")?;
        assert_eq!(r.next(), None, "exactly one token in {bytes:02x?}");
        Ok(t)
    }

    fn err(bytes: &[u8]) -> CmfErrorKind {
        one(bytes).expect_err("an error").kind
    }

    #[test]
    fn spec_vectors() {
        assert_eq!(one(&[0x08, 0x01]).unwrap(), Token::new(1, 1u64));
        assert_eq!(
            one(&[0x11, 0x01]).unwrap(),
            Token::new(2, Value::Negative(1))
        );
        assert_eq!(
            one(&[0x29, 0x86, 0xFE, 0xFE, 0xFF, 0x00]).unwrap(),
            Token::new(5, i32::MIN)
        );
        assert_eq!(
            one(&[0xF8, 0x80, 0x01, 0xB1, 0x70]).unwrap(),
            Token::new(129, 6512u64)
        );
        assert_eq!(
            one(&[0x0A, 0x03, b'b', b'l', b'a']).unwrap(),
            Token::new(1, "bla")
        );
        assert_eq!(
            one(&[0xFB, 0x80, 0x48, 0x04, b'h', b'i', b'h', b'i']).unwrap(),
            Token::new(200, b"hihi")
        );
        assert_eq!(one(&[0x1C]).unwrap(), Token::new(3, true));
        assert_eq!(one(&[0xFD, 0x28]).unwrap(), Token::new(40, false));
        assert_eq!(
            one(&[0x4E, 0, 0, 0, 0, 0, 0, 0x2F, 0x40]).unwrap(),
            Token::new(9, 15.5)
        );
        assert_eq!(one(&[0xF8, 0x1F, 0x05]).unwrap(), Token::new(31, 5u64));
        assert_eq!(one(&[0x0A, 0x00]).unwrap(), Token::new(1, ""));
        // Long form for a small tag is accepted.
        assert_eq!(one(&[0xF8, 0x05, 0x00]).unwrap(), Token::new(5, 0u64));
        // Largest tag.
        assert_eq!(
            one(&[0xFC, 0x8E, 0xFE, 0xFE, 0xFE, 0x7F]).unwrap(),
            Token::new(u32::MAX, true)
        );
    }

    #[test]
    fn error_vectors() {
        assert_eq!(err(&[0x0F]), CmfErrorKind::InvalidType);
        assert_eq!(err(&[0x0A, 0x05, 0x61]), CmfErrorKind::TruncatedData);
        assert_eq!(err(&[0x08, 0x80]), CmfErrorKind::TruncatedVarint);
        assert_eq!(err(&[0xF8, 0x80]), CmfErrorKind::TruncatedVarint);
        assert_eq!(
            err(&[0xFC, 0x8E, 0xFE, 0xFE, 0xFF, 0x00]),
            CmfErrorKind::TagTooLarge
        );
        assert_eq!(
            err(&[0x4E, 0, 0, 0, 0, 0, 0, 0x2F]),
            CmfErrorKind::TruncatedDouble
        );
        assert_eq!(err(&[0x08]), CmfErrorKind::TruncatedVarint);
        assert_eq!(err(&[0x0B]), CmfErrorKind::TruncatedVarint);
        assert_eq!(
            err(&[
                0x0B, 0x80, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0x7F
            ]),
            CmfErrorKind::TruncatedData
        );
        assert_eq!(
            err(&[
                0x08, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80
            ]),
            CmfErrorKind::VarintOverflow
        );
    }

    #[test]
    fn error_is_sticky_and_positioned() {
        let data = [0x08, 0x01, 0x0F, 0x08, 0x02];
        let mut r = Reader::new(&data);
        assert_eq!(r.next(), Some(Ok(Token::new(1, 1u64))));
        let e = r.next().unwrap().unwrap_err();
        assert_eq!(e.offset, 2);
        assert_eq!(r.position(), 2);
        assert_eq!(r.next(), None);
        assert_eq!(r.next(), None);
    }

    #[test]
    fn is_int_boundary_from_wire() {
        let t = one(&[0x08, 0x86, 0xFE, 0xFE, 0xFE, 0x7F]).unwrap();
        assert_eq!(t.value, Value::Unsigned(0x7FFF_FFFF));
        assert!(!t.value.is_int());
        let t = one(&[0x08, 0x86, 0xFE, 0xFE, 0xFE, 0x7E]).unwrap();
        assert!(t.value.is_int());
        assert_eq!(t.value.int_data(), 2_147_483_646);
    }
}

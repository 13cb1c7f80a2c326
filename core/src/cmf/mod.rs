//! CMF, the Compact Message Format: a flat list of `(tag, value)` tokens (spec §1).
//!
//! Headers and bodies of every frame are CMF. [`Reader`] walks a document without allocating and
//! borrows strings and byte arrays from it; [`Writer`] appends tokens to any [`Sink`] (a
//! `&mut [u8]`, a `heapless::Vec`, and with `alloc` a `Vec<u8>` or `BytesMut`).
//!
//! ```
//! use flowee_proto::cmf::{Reader, Value, Writer};
//!
//! let mut buf = [0u8; 32];
//! let mut w = Writer::new(&mut buf[..]);
//! w.add(1, "hello").add(2, 300u64).add(3, -5);
//! let body = w.finish().unwrap();
//! assert_eq!(body, [0x0A, 5, b'h', b'e', b'l', b'l', b'o', 0x10, 0x81, 0x2C, 0x19, 0x05]);
//!
//! for token in Reader::new(body) {
//!     let token = token.unwrap();
//!     match (token.tag, token.value) {
//!         (1, Value::String(s)) => assert_eq!(s, b"hello"),
//!         (2, v) => assert_eq!(v.as_u64(), Some(300)),
//!         (3, v) => assert_eq!(v.header_int(), Some(-5)),
//!         _ => unreachable!(),
//!     }
//! }
//! ```

mod reader;
pub mod varint;
mod writer;

pub use reader::Reader;
pub use writer::{CapacityError, IntoSink, Sink, SliceSink, Writer, encoded_len};

use core::fmt;

/// The low three bits of a token's first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum ValueType {
    /// Type 0: an unsigned number.
    PositiveNumber = 0,
    /// Type 1: the magnitude of a negative number.
    NegativeNumber = 1,
    /// Type 2: length-prefixed bytes, meant as UTF-8 (not checked on either side).
    String = 2,
    /// Type 3: length-prefixed bytes.
    ByteArray = 3,
    /// Type 4: `true`, no payload.
    BoolTrue = 4,
    /// Type 5: `false`, no payload.
    BoolFalse = 5,
    /// Type 6: eight bytes of IEEE-754 binary64, little-endian.
    Double = 6,
}

/// A token's value. Strings and byte arrays borrow from the document.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum Value<'a> {
    /// A non-negative number (type 0), the full u64 range.
    Unsigned(u64),
    /// A negative number (type 1), stored as its magnitude: `Negative(5)` is −5.
    /// A magnitude of 0 ("negative zero") is accepted and reads as 0.
    Negative(u64),
    /// A string (type 2). The bytes are not checked for UTF-8, as in the C++.
    String(&'a [u8]),
    /// A byte array (type 3).
    Bytes(&'a [u8]),
    /// A boolean (types 4 and 5).
    Bool(bool),
    /// A double (type 6).
    Double(f64),
}

/// One `(tag, value)` pair.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Token<'a> {
    /// The tag, 0..=u32::MAX.
    pub tag: u32,
    /// The value.
    pub value: Value<'a>,
}

impl<'a> Token<'a> {
    /// A token.
    pub fn new(tag: u32, value: impl Into<Value<'a>>) -> Self {
        Token {
            tag,
            value: value.into(),
        }
    }
}

/// The largest positive number the C++ treats as an "int" is one below this (spec §1.4).
const INT_LIMIT: u64 = 0x7FFF_FFFF;

impl<'a> Value<'a> {
    /// The wire type of this value.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::Unsigned(_) => ValueType::PositiveNumber,
            Value::Negative(_) => ValueType::NegativeNumber,
            Value::String(_) => ValueType::String,
            Value::Bytes(_) => ValueType::ByteArray,
            Value::Bool(true) => ValueType::BoolTrue,
            Value::Bool(false) => ValueType::BoolFalse,
            Value::Double(_) => ValueType::Double,
        }
    }

    /// The C++ `isInt()`: a positive number below 0x7FFF_FFFF (2 147 483 647 itself is a
    /// "long"), or any negative number.
    pub fn is_int(&self) -> bool {
        match *self {
            Value::Unsigned(v) => v < INT_LIMIT,
            Value::Negative(_) => true,
            _ => false,
        }
    }

    /// The C++ `isLong()`: a positive number of 0x7FFF_FFFF or more.
    pub fn is_long(&self) -> bool {
        matches!(*self, Value::Unsigned(v) if v >= INT_LIMIT)
    }

    /// The C++ `intData()`: numbers truncated to i32 (negatives wrap: a magnitude of 2^32−1
    /// reads as +1); 0 for every other type.
    pub fn int_data(&self) -> i32 {
        match *self {
            Value::Unsigned(v) => v as i32,
            Value::Negative(m) => (m as u32).wrapping_neg() as i32,
            _ => 0,
        }
    }

    /// The C++ `longData()`: positive numbers as they are, negatives sign-extended
    /// (−1 → 0xFFFF_FFFF_FFFF_FFFF); 0 for every other type.
    pub fn long_data(&self) -> u64 {
        match *self {
            Value::Unsigned(v) => v,
            Value::Negative(_) => i64::from(self.int_data()) as u64,
            _ => 0,
        }
    }

    /// The value as a header int, with no wrapping: a positive number below 0x7FFF_FFFF, or a
    /// negative one down to −2^31. `None` for anything else (spec §1.4, "Rust advice").
    pub fn header_int(&self) -> Option<i32> {
        match *self {
            Value::Unsigned(v) if v < INT_LIMIT => Some(v as i32),
            Value::Negative(m) if m <= 1 << 31 => Some((m as i64).wrapping_neg() as i32),
            _ => None,
        }
    }

    /// A positive number.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::Unsigned(v) => Some(v),
            _ => None,
        }
    }

    /// A number that fits an i64 exactly (positive up to i64::MAX, negative down to i64::MIN).
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::Unsigned(v) => i64::try_from(v).ok(),
            Value::Negative(m) if m <= 1 << 63 => Some((m as i64).wrapping_neg()),
            _ => None,
        }
    }

    /// A string's bytes (type 2 only, like the C++ `stringData()`).
    pub fn as_str_bytes(&self) -> Option<&'a [u8]> {
        match *self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// A string that is valid UTF-8.
    pub fn as_str(&self) -> Option<&'a str> {
        self.as_str_bytes()
            .and_then(|s| core::str::from_utf8(s).ok())
    }

    /// A byte array's bytes (type 3 only, like the C++ `bytesData()`).
    pub fn as_bytes(&self) -> Option<&'a [u8]> {
        match *self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The bytes of a string or a byte array (like the C++ `bytesDataBuffer()`).
    pub fn as_any_bytes(&self) -> Option<&'a [u8]> {
        match *self {
            Value::String(b) | Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// A boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// A double.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Double(d) => Some(d),
            _ => None,
        }
    }
}

impl From<u64> for Value<'_> {
    fn from(v: u64) -> Self {
        Value::Unsigned(v)
    }
}

impl From<u32> for Value<'_> {
    fn from(v: u32) -> Self {
        Value::Unsigned(u64::from(v))
    }
}

impl From<u16> for Value<'_> {
    fn from(v: u16) -> Self {
        Value::Unsigned(u64::from(v))
    }
}

impl From<u8> for Value<'_> {
    fn from(v: u8) -> Self {
        Value::Unsigned(u64::from(v))
    }
}

/// Like the C++ `int32` writer: the sign picks the type.
impl From<i32> for Value<'_> {
    fn from(v: i32) -> Self {
        if v < 0 {
            Value::Negative(u64::from(v.unsigned_abs()))
        } else {
            Value::Unsigned(v as u64)
        }
    }
}

impl From<bool> for Value<'_> {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

impl From<f64> for Value<'_> {
    fn from(v: f64) -> Self {
        Value::Double(v)
    }
}

/// Widened to a double, like the C++ `float` overload.
impl From<f32> for Value<'_> {
    fn from(v: f32) -> Self {
        Value::Double(f64::from(v))
    }
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(v: &'a str) -> Self {
        Value::String(v.as_bytes())
    }
}

impl<'a> From<&'a [u8]> for Value<'a> {
    fn from(v: &'a [u8]) -> Self {
        Value::Bytes(v)
    }
}

impl<'a, const N: usize> From<&'a [u8; N]> for Value<'a> {
    fn from(v: &'a [u8; N]) -> Self {
        Value::Bytes(v)
    }
}

/// What was wrong with a CMF document, and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CmfError {
    /// What went wrong.
    pub kind: CmfErrorKind,
    /// Offset of the token that could not be read.
    pub offset: usize,
}

/// The parser errors of spec §1.5, plus the checks the C++ leaves out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CmfErrorKind {
    /// A varint (extended tag, number or length) ended before its last byte.
    TruncatedVarint,
    /// A varint longer than 10 bytes or above u64::MAX (the C++ wraps silently).
    VarintOverflow,
    /// An extended tag above u32::MAX.
    TagTooLarge,
    /// A string or byte array runs past the end of the document.
    TruncatedData,
    /// A double with fewer than 8 bytes left (the C++ reads past the buffer).
    TruncatedDouble,
    /// Value type 7, which is unused.
    InvalidType,
}

impl CmfErrorKind {
    /// A short, stable, snake_case name (used in the CLI's JSON).
    pub fn name(&self) -> &'static str {
        match self {
            CmfErrorKind::TruncatedVarint => "truncated_varint",
            CmfErrorKind::VarintOverflow => "varint_overflow",
            CmfErrorKind::TagTooLarge => "tag_too_large",
            CmfErrorKind::TruncatedData => "truncated_data",
            CmfErrorKind::TruncatedDouble => "truncated_double",
            CmfErrorKind::InvalidType => "invalid_type",
        }
    }
}

impl fmt::Display for CmfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            CmfErrorKind::TruncatedVarint => "varint cut short",
            CmfErrorKind::VarintOverflow => "varint longer than 10 bytes or above u64::MAX",
            CmfErrorKind::TagTooLarge => "extended tag above u32::MAX",
            CmfErrorKind::TruncatedData => "string or byte array runs past the end",
            CmfErrorKind::TruncatedDouble => "double with fewer than 8 bytes left",
            CmfErrorKind::InvalidType => "value type 7",
        };
        write!(f, "CMF error at offset {}: {what}", self.offset)
    }
}

impl core::error::Error for CmfError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpp_int_semantics() {
        assert!(Value::Unsigned(0x7FFF_FFFE).is_int());
        assert!(!Value::Unsigned(0x7FFF_FFFF).is_int());
        assert!(Value::Unsigned(0x7FFF_FFFF).is_long());
        assert!(Value::Negative(u64::MAX).is_int());
        assert_eq!(Value::Negative(0xFFFF_FFFF).int_data(), 1);
        assert_eq!(Value::Negative(1 << 31).int_data(), i32::MIN);
        assert_eq!(Value::Negative(0).int_data(), 0);
        assert_eq!(Value::Negative(1).long_data(), u64::MAX);
        assert_eq!(Value::Unsigned(1 << 40).int_data(), 0);
        assert_eq!(Value::Bool(true).int_data(), 0);
        assert_eq!(Value::Unsigned(7).long_data(), 7);
    }

    #[test]
    fn header_int_is_strict() {
        assert_eq!(Value::Unsigned(0x7FFF_FFFE).header_int(), Some(0x7FFF_FFFE));
        assert_eq!(Value::Unsigned(0x7FFF_FFFF).header_int(), None);
        assert_eq!(Value::Negative(1 << 31).header_int(), Some(i32::MIN));
        assert_eq!(Value::Negative((1 << 31) + 1).header_int(), None);
        assert_eq!(Value::Negative(0).header_int(), Some(0));
        assert_eq!(Value::Bool(true).header_int(), None);
    }

    #[test]
    fn accessors() {
        assert_eq!(Value::Negative(1 << 63).as_i64(), Some(i64::MIN));
        assert_eq!(Value::Negative((1 << 63) + 1).as_i64(), None);
        assert_eq!(Value::Unsigned(u64::MAX).as_i64(), None);
        assert_eq!(Value::String(b"x").as_bytes(), None);
        assert_eq!(Value::String(b"x").as_any_bytes(), Some(&b"x"[..]));
        assert_eq!(Value::String(&[0xFF]).as_str(), None);
        assert_eq!(Value::from(-5).value_type(), ValueType::NegativeNumber);
        assert_eq!(Value::from(i32::MIN), Value::Negative(1 << 31));
        assert_eq!(Value::from(1.5f32), Value::Double(1.5));
    }
}

//! The CMF varint: big-endian 7-bit groups, 0x80 on every byte but the last, each continued
//! group biased by one (Bitcoin Core's `VARINT`). Every value has exactly one encoding.
//!
//! Spec §1.3. Unlike the C++, decoding checks for 64-bit overflow.

/// Longest encoding: u64::MAX takes 10 bytes.
pub const MAX_LEN: usize = 10;

/// Why a varint could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VarintError {
    /// The input ended before the final byte (the one without 0x80).
    Truncated,
    /// More than 10 bytes, or a value above u64::MAX.
    Overflow,
}

/// Number of bytes `value` takes.
#[inline]
pub const fn encoded_len(mut value: u64) -> usize {
    let mut n = 1;
    while value > 0x7F {
        value = (value >> 7) - 1;
        n += 1;
    }
    n
}

/// Writes `value` into the front of `out` and returns the number of bytes written.
///
/// `out` must hold at least [`encoded_len`]`(value)` bytes; callers size it first.
#[inline]
pub(crate) fn encode(mut value: u64, out: &mut [u8]) -> usize {
    if value < 0x80 {
        out[0] = value as u8;
        return 1;
    }
    let mut tmp = [0u8; MAX_LEN];
    let mut i = MAX_LEN - 1;
    tmp[i] = (value & 0x7F) as u8;
    while value > 0x7F {
        value = (value >> 7) - 1;
        i -= 1;
        tmp[i] = (value & 0x7F) as u8 | 0x80;
    }
    let n = MAX_LEN - i;
    out[..n].copy_from_slice(&tmp[i..]);
    n
}

/// Reads a varint from the front of `input`; returns the value and the bytes used.
#[inline]
pub(crate) fn decode(input: &[u8]) -> Result<(u64, usize), VarintError> {
    // Fast path: one byte, the common case for tags' values and short lengths.
    match input.first() {
        None => return Err(VarintError::Truncated),
        Some(&b) if b & 0x80 == 0 => return Ok((u64::from(b), 1)),
        Some(_) => {}
    }
    let mut value: u64 = 0;
    for (i, &b) in input.iter().enumerate().take(MAX_LEN) {
        if value > (u64::MAX >> 7) {
            return Err(VarintError::Overflow);
        }
        value = (value << 7) | u64::from(b & 0x7F);
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
        value = value.checked_add(1).ok_or(VarintError::Overflow)?;
    }
    if input.len() >= MAX_LEN {
        Err(VarintError::Overflow)
    } else {
        Err(VarintError::Truncated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;

    fn enc(v: u64) -> Vec<u8> {
        let mut buf = [0u8; MAX_LEN];
        let n = encode(v, &mut buf);
        buf[..n].to_vec()
    }

    #[test]
    fn spec_table() {
        let cases: &[(u64, &[u8])] = &[
            (0, &[0x00]),
            (127, &[0x7F]),
            (128, &[0x80, 0x00]),
            (255, &[0x80, 0x7F]),
            (256, &[0x81, 0x00]),
            (1000, &[0x86, 0x68]),
            (6512, &[0xB1, 0x70]),
            (16_511, &[0xFF, 0x7F]),
            (16_512, &[0x80, 0x80, 0x00]),
            (20_000, &[0x80, 0x9B, 0x20]),
            (0x7FFF_FFFF, &[0x86, 0xFE, 0xFE, 0xFE, 0x7F]),
            (1 << 31, &[0x86, 0xFE, 0xFE, 0xFF, 0x00]),
            (
                992_230_948_217_398,
                &[0x80, 0xE0, 0xCC, 0xDB, 0xA8, 0xCF, 0xC3, 0x36],
            ),
            (
                u64::MAX >> 1,
                &[0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0x7F],
            ),
            (
                u64::MAX,
                &[0x80, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0x7F],
            ),
        ];
        for &(v, bytes) in cases {
            assert_eq!(enc(v), bytes, "encode {v}");
            assert_eq!(encoded_len(v), bytes.len());
            assert_eq!(decode(bytes), Ok((v, bytes.len())), "decode {v}");
        }
    }

    #[test]
    fn size_class_boundaries() {
        // The smallest value of each length is sum_{k=1}^{n-1} 128^k.
        let mut first: u64 = 0;
        for n in 1..=MAX_LEN {
            assert_eq!(encoded_len(first), n);
            if first > 0 {
                assert_eq!(encoded_len(first - 1), n - 1);
            }
            first = first.saturating_add(128u64.saturating_pow(n as u32));
        }
    }

    #[test]
    fn errors() {
        assert_eq!(decode(&[]), Err(VarintError::Truncated));
        assert_eq!(decode(&[0x80]), Err(VarintError::Truncated));
        assert_eq!(decode(&[0xFF; 9]), Err(VarintError::Truncated));
        assert_eq!(decode(&[0x80; 11]), Err(VarintError::Overflow));
        // One above u64::MAX in ten bytes.
        let over = [0x80, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFF, 0x00];
        assert_eq!(decode(&over), Err(VarintError::Overflow));
        // Ten bytes whose leading group already overflows.
        assert_eq!(
            decode(&[0x81, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00]),
            Err(VarintError::Overflow)
        );
    }

    quickcheck! {
        fn roundtrip(v: u64) -> bool {
            let b = enc(v);
            b.len() == encoded_len(v) && decode(&b) == Ok((v, b.len()))
        }

        fn trailing_bytes_are_ignored(v: u64, tail: Vec<u8>) -> bool {
            let mut b = enc(v);
            let n = b.len();
            b.extend_from_slice(&tail);
            decode(&b) == Ok((v, n))
        }

        fn prefixes_are_truncated(v: u64) -> bool {
            let b = enc(v);
            (0..b.len()).all(|k| decode(&b[..k]) == Err(VarintError::Truncated))
        }

        fn any_bytes_never_panic(b: Vec<u8>) -> bool {
            match decode(&b) {
                Ok((v, n)) => n <= MAX_LEN && enc(v) == b[..n],
                Err(_) => true,
            }
        }
    }
}

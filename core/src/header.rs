//! Frame headers: the tag rules of spec §3.
//!
//! A header is a CMF token list that ends at the first tag-0 token. [`parse`] applies the
//! receiver checks of §3.4 in the C++ order; [`Header`] is what an application sends and sees.

use crate::cmf::{CmfError, Reader, Value};
use core::fmt;

/// Header tags (spec §3.1).
pub mod tags {
    /// Ends the header (writers use bool true, `04`).
    pub const HEADER_END: u32 = 0;
    /// The service a message belongs to; required.
    pub const SERVICE_ID: u32 = 1;
    /// The message within the service; −1 or absent means "none".
    pub const MESSAGE_ID: u32 = 2;
    /// Total body size of a sequence, in its first chunk.
    pub const SEQUENCE_START: u32 = 3;
    /// Present on every chunk of a sequence; true on the last one.
    pub const LAST_IN_SEQUENCE: u32 = 4;
    /// Marks a ping (on the system service).
    pub const PING: u32 = 5;
    /// Marks a pong (on the system service).
    pub const PONG: u32 = 6;
    /// API header int: asynchronous request.
    pub const ASYNC_REQUEST: u32 = 10;
    /// API header int: request id, copied into replies.
    pub const REQUEST_ID: u32 = 11;
    /// API header int: free for applications.
    pub const USER_TAG1: u32 = 12;
    /// API header int: free for applications.
    pub const USER_TAG2: u32 = 13;
    /// API header int: free for applications.
    pub const USER_TAG3: u32 = 14;
}

/// The system service: pings and pongs, never delivered to applications.
pub const SYSTEM_SERVICE: i32 = 126;
/// Lowest tag of a custom header int.
pub const CUSTOM_TAG_MIN: u32 = 10;
/// Highest tag of a custom header int (tags from 0xFF_FFFF on are dropped by receivers).
pub const CUSTOM_TAG_MAX: u32 = 0xFF_FFFE;
/// How many custom header ints one header holds. The C++ keeps any number (it meant to cap
/// headers at 95 items; the check never fired); real traffic uses one to three. A received
/// header with more keeps the lowest tags and says so ([`HeaderInts::truncated`]).
pub const MAX_HEADER_INTS: usize = 16;

/// Custom header ints (tags 10..=0xFF_FFFE), kept sorted by tag with one value per tag, as the
/// C++ `std::map` does. Fixed capacity: [`MAX_HEADER_INTS`]. Equality and hashing look at the
/// set tags and [`HeaderInts::truncated`] only.
#[derive(Clone, Copy, Default)]
pub struct HeaderInts {
    len: u8,
    truncated: bool,
    items: [(u32, i32); MAX_HEADER_INTS],
}

/// Why a custom header int was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderIntError {
    /// The tag is outside 10..=0xFF_FFFE; tags below 10 belong to the protocol.
    TagOutOfRange(u32),
    /// 0x7FFF_FFFF is not an "int" to the C++, so receivers would drop it.
    ValueOutOfRange(u32),
    /// [`MAX_HEADER_INTS`] tags are already set.
    Full,
}

impl fmt::Display for HeaderIntError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderIntError::TagOutOfRange(t) => {
                write!(f, "header tag {t} is outside 10..=16777214")
            }
            HeaderIntError::ValueOutOfRange(t) => {
                write!(f, "header tag {t}: 2147483647 is not an int to receivers")
            }
            HeaderIntError::Full => write!(f, "more than {MAX_HEADER_INTS} header ints"),
        }
    }
}

impl core::error::Error for HeaderIntError {}

impl HeaderInts {
    /// No header ints.
    pub const fn new() -> Self {
        HeaderInts {
            len: 0,
            truncated: false,
            items: [(0, 0); MAX_HEADER_INTS],
        }
    }

    /// The received header carried more distinct custom ints than [`MAX_HEADER_INTS`]: the
    /// lowest tags are kept (RequestId and the user tags among them), the others were dropped.
    /// The C++ would have kept them all; this says that something is missing.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Number of tags set.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether no tag is set.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `(tag, value)` pairs in ascending tag order.
    pub fn as_slice(&self) -> &[(u32, i32)] {
        &self.items[..self.len()]
    }

    /// `(tag, value)` pairs in ascending tag order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (u32, i32)> + '_ {
        self.as_slice().iter().copied()
    }

    /// The value of `tag`, if set.
    pub fn get(&self, tag: u32) -> Option<i32> {
        self.find(tag).ok().map(|i| self.items[i].1)
    }

    fn find(&self, tag: u32) -> Result<usize, usize> {
        self.as_slice().binary_search_by_key(&tag, |&(t, _)| t)
    }

    /// Sets `tag` to `value`, replacing an earlier value.
    pub fn set(&mut self, tag: u32, value: i32) -> Result<(), HeaderIntError> {
        if !(CUSTOM_TAG_MIN..=CUSTOM_TAG_MAX).contains(&tag) {
            return Err(HeaderIntError::TagOutOfRange(tag));
        }
        if value == i32::MAX {
            return Err(HeaderIntError::ValueOutOfRange(tag));
        }
        match self.find(tag) {
            Ok(i) => self.items[i].1 = value,
            Err(i) => self.insert_at(i, tag, value)?,
        }
        Ok(())
    }

    /// Builder form of [`HeaderInts::set`].
    pub fn with(mut self, tag: u32, value: i32) -> Result<Self, HeaderIntError> {
        self.set(tag, value)?;
        Ok(self)
    }

    /// Removes every tag (and the [`HeaderInts::truncated`] mark).
    pub fn clear(&mut self) {
        self.len = 0;
        self.truncated = false;
    }

    /// Removes `tag`; returns its value if it was set.
    pub fn remove(&mut self, tag: u32) -> Option<i32> {
        let i = self.find(tag).ok()?;
        let value = self.items[i].1;
        let len = self.len();
        self.items.copy_within(i + 1..len, i);
        self.len -= 1;
        Some(value)
    }

    /// Receiver rule: the first value of a tag wins (a map insert does not overwrite). When
    /// full, the highest tag goes (this one, or the highest kept), so the lowest tags stay
    /// whatever their order on the wire; an evicted tag seen again is above every kept one,
    /// so it stays out.
    fn insert_first(&mut self, tag: u32, value: i32) {
        let Err(i) = self.find(tag) else {
            return;
        };
        if self.len() == MAX_HEADER_INTS {
            self.truncated = true;
            if i == MAX_HEADER_INTS {
                return;
            }
            self.len -= 1;
        }
        let _ = self.insert_at(i, tag, value);
    }

    fn insert_at(&mut self, i: usize, tag: u32, value: i32) -> Result<(), HeaderIntError> {
        let len = self.len();
        if len == MAX_HEADER_INTS {
            return Err(HeaderIntError::Full);
        }
        self.items.copy_within(i..len, i + 1);
        self.items[i] = (tag, value);
        self.len += 1;
        Ok(())
    }
}

// By hand: slots past `len` keep whatever `remove` or `clear` left there.
impl PartialEq for HeaderInts {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice() && self.truncated == other.truncated
    }
}

impl Eq for HeaderInts {}

impl core::hash::Hash for HeaderInts {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
        self.truncated.hash(state);
    }
}

impl fmt::Debug for HeaderInts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()?;
        if self.truncated {
            f.write_str(" (truncated)")?;
        }
        Ok(())
    }
}

#[cfg(feature = "arbitrary")]
impl<'a> arbitrary::Arbitrary<'a> for HeaderInts {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        let mut ints = HeaderInts::new();
        for _ in 0..u.int_in_range(0..=4)? {
            let tag = u.int_in_range(CUSTOM_TAG_MIN..=CUSTOM_TAG_MAX)?;
            let value = u.int_in_range(i32::MIN..=i32::MAX - 1)?;
            let _ = ints.set(tag, value);
        }
        Ok(ints)
    }
}

/// A message's header as the application sees it: service id, message id and custom ints.
///
/// `message_id` is what the wire says: `None` when the tag is absent, `Some(-1)` when it holds
/// −1. The protocol treats both as "no message id" (see [`Header::message_id_or_minus_one`]);
/// the C++ always writes the tag, so [`Header::service`] sets −1 and frames come out the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Header {
    /// Service id (tag 1).
    pub service_id: i32,
    /// Message id (tag 2) as on the wire: `None` if the tag is absent.
    pub message_id: Option<i32>,
    /// Custom header ints (tags ≥ 10), such as [`tags::REQUEST_ID`].
    pub ints: HeaderInts,
}

impl Header {
    /// A header for `service_id` / `message_id` with no custom ints.
    pub const fn new(service_id: i32, message_id: i32) -> Self {
        Header {
            service_id,
            message_id: Some(message_id),
            ints: HeaderInts::new(),
        }
    }

    /// A header with a service id and no message id: −1, written as `11 01` like the C++.
    pub const fn service(service_id: i32) -> Self {
        Header {
            service_id,
            message_id: Some(-1),
            ints: HeaderInts::new(),
        }
    }

    /// The message id as the C++ stores it: −1 when the tag is absent.
    pub fn message_id_or_minus_one(&self) -> i32 {
        self.message_id.unwrap_or(-1)
    }

    /// The value of custom header int `tag`.
    pub fn int(&self, tag: u32) -> Option<i32> {
        self.ints.get(tag)
    }

    /// The request id (tag 11), if any.
    pub fn request_id(&self) -> Option<i32> {
        self.ints.get(tags::REQUEST_ID)
    }

    /// Builder: sets a custom header int.
    pub fn with_int(mut self, tag: u32, value: i32) -> Result<Self, HeaderIntError> {
        self.ints.set(tag, value)?;
        Ok(self)
    }
}

/// What kind of frame a header describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameKind {
    /// An ordinary message (it may still carry a stray SequenceStart, which is ignored).
    Message,
    /// The first chunk of a sequence: LastInSequence and SequenceStart both present.
    SequenceStart {
        /// SequenceStart: the announced total body size (may be negative or lie).
        total: i32,
        /// LastInSequence: a one-chunk sequence when true.
        last: bool,
    },
    /// A later chunk: LastInSequence without SequenceStart.
    SequenceNext {
        /// LastInSequence.
        last: bool,
    },
    /// A system-service (126) frame with the Ping flag.
    Ping,
    /// A system-service (126) frame with a Pong flag and no Ping flag.
    Pong,
    /// Any other system-service frame; receivers ignore it.
    OtherSystem,
}

/// Everything a received header says, except the custom ints (see [`ints`]), which stay in
/// the frame's bytes so that decoding does not copy them around.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// ServiceId (tag 1).
    pub service_id: i32,
    /// MessageId (tag 2), `None` if absent.
    pub message_id: Option<i32>,
    /// SequenceStart (tag 3), if present.
    pub sequence_start: Option<i32>,
    /// The small fields in one word, written at once: separate byte stores followed by a
    /// whole-struct copy stall the CPU's store forwarding on the hot path.
    bits: u32,
}

const INT_COUNT: u32 = 0xFF;
const PING: u32 = 1 << 8;
const PONG: u32 = 1 << 9;
const LAST_PRESENT: u32 = 1 << 10;
const LAST_TRUE: u32 = 1 << 11;

impl fmt::Debug for FrameHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameHeader")
            .field("service_id", &self.service_id)
            .field("message_id", &self.message_id)
            .field("sequence_start", &self.sequence_start)
            .field("last_in_sequence", &self.last_in_sequence())
            .field("ping", &self.ping())
            .field("pong", &self.pong())
            .field("int_count", &self.int_count())
            .finish()
    }
}

impl FrameHeader {
    /// A header with only a ServiceId.
    pub(crate) const fn new(service_id: i32) -> Self {
        FrameHeader {
            service_id,
            message_id: None,
            sequence_start: None,
            bits: 0,
        }
    }

    /// LastInSequence (tag 4), if present.
    pub fn last_in_sequence(&self) -> Option<bool> {
        (self.bits & LAST_PRESENT != 0).then_some(self.bits & LAST_TRUE != 0)
    }

    /// Tag 5 was present (any value).
    pub fn ping(&self) -> bool {
        self.bits & PING != 0
    }

    /// Tag 6 was present as a bool.
    pub fn pong(&self) -> bool {
        self.bits & PONG != 0
    }

    /// How many distinct custom header ints the header carries (at most [`MAX_HEADER_INTS`]).
    pub fn int_count(&self) -> u8 {
        (self.bits & INT_COUNT) as u8
    }

    /// How a receiver treats this frame (spec §4.2 and §5).
    pub fn kind(&self) -> FrameKind {
        if self.service_id == SYSTEM_SERVICE {
            return if self.ping() {
                FrameKind::Ping
            } else if self.pong() {
                FrameKind::Pong
            } else {
                FrameKind::OtherSystem
            };
        }
        match (self.last_in_sequence(), self.sequence_start) {
            (None, _) => FrameKind::Message,
            (Some(last), Some(total)) => FrameKind::SequenceStart { total, last },
            (Some(last), None) => FrameKind::SequenceNext { last },
        }
    }
}

/// Why a header was refused. Every case closes the connection (spec §3.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderError {
    /// A token could not be read.
    Cmf(CmfError),
    /// The frame ended before a HeaderEnd (tag 0) token.
    MissingEnd,
    /// No ServiceId (tag 1).
    MissingServiceId,
    /// ServiceId, MessageId or SequenceStart (tags 1–3) is not an int.
    NotInt {
        /// The tag.
        tag: u32,
    },
    /// LastInSequence (tag 4) is not a bool.
    NotBool,
    /// An int value in a reserved tag (6–9).
    IllegalTag {
        /// The tag.
        tag: u32,
    },
}

impl HeaderError {
    /// A short, stable, snake_case name.
    pub fn name(&self) -> &'static str {
        match self {
            HeaderError::Cmf(_) => "malformed_header",
            HeaderError::MissingEnd => "missing_header_end",
            HeaderError::MissingServiceId => "missing_service_id",
            HeaderError::NotInt { .. } => "header_not_int",
            HeaderError::NotBool => "header_not_bool",
            HeaderError::IllegalTag { .. } => "illegal_header_tag",
        }
    }
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::Cmf(e) => write!(f, "malformed header: {e}"),
            HeaderError::MissingEnd => write!(f, "header has no HeaderEnd inside the frame"),
            HeaderError::MissingServiceId => write!(f, "header has no ServiceId"),
            HeaderError::NotInt { tag } => write!(f, "header tag {tag} is not an int"),
            HeaderError::NotBool => write!(f, "LastInSequence is not a bool"),
            HeaderError::IllegalTag { tag } => write!(f, "int value in reserved header tag {tag}"),
        }
    }
}

impl core::error::Error for HeaderError {}

/// Parses a header from the front of `data` (a frame without its length bytes) and returns it
/// with its size, HeaderEnd included. Never reads outside `data` (unlike the C++, §2.2).
///
/// Rules (§3.4): tags 1–3 must be ints (last one wins), tag 4 a bool (last one wins), tag 5 is
/// a ping whatever its value, int values in tags 6–9 are refused, int values in tags
/// 10..=0xFF_FFFE are kept (first one wins; read them with [`ints`]), the rest is ignored.
#[inline]
pub fn parse(data: &[u8]) -> Result<(FrameHeader, usize), HeaderError> {
    // Fast path, for what ordinary messages carry: ServiceId, MessageId and custom ints with
    // short tags and one-byte values, then HeaderEnd as `04`. At anything else, errors
    // included, the general parser starts over and decides.
    'ordinary: {
        let mut service_id = None;
        let mut message_id = None;
        // Custom tags seen (10..=30 fit in the mask): the first value wins, so only count.
        let mut custom = 0u32;
        let mut count = 0u8;
        let mut at = 0;
        loop {
            let Some(&first) = data.get(at) else {
                break 'ordinary;
            };
            if first == 0x04 {
                break;
            }
            let Some(&magnitude) = data.get(at + 1) else {
                break 'ordinary;
            };
            // A tag below 31 with a positive (type 0) or negative (type 1) one-byte number.
            if first >= 0xF8 || first & 6 != 0 || magnitude >= 0x80 {
                break 'ordinary;
            }
            let value = if first & 1 == 0 {
                i32::from(magnitude)
            } else {
                -i32::from(magnitude)
            };
            match first >> 3 {
                1 => service_id = Some(value),
                2 => message_id = Some(value),
                tag @ 10..=30 => {
                    let bit = 1 << tag;
                    if custom & bit == 0 {
                        custom |= bit;
                        count += 1;
                    }
                }
                _ => break 'ordinary,
            }
            at += 2;
        }
        // Past the bound, the general parser counts the ints kept.
        let (Some(service_id), true) = (service_id, usize::from(count) <= MAX_HEADER_INTS) else {
            break 'ordinary;
        };
        return Ok((
            FrameHeader {
                service_id,
                message_id,
                sequence_start: None,
                bits: u32::from(count),
            },
            at + 1,
        ));
    }
    // Rebuilt field by field, so that both paths meet in registers: met in memory, the fast
    // path's narrow stores are read back wide, which stalls store forwarding.
    let (header, len) = parse_general(data)?;
    let FrameHeader {
        service_id,
        message_id,
        sequence_start,
        bits,
    } = header;
    Ok((
        FrameHeader {
            service_id,
            message_id,
            sequence_start,
            bits,
        },
        len,
    ))
}

/// [`parse`] on the general token reader.
#[inline(never)]
fn parse_general(data: &[u8]) -> Result<(FrameHeader, usize), HeaderError> {
    let mut state = Parsing::new();
    let mut reader = Reader::new(data);
    loop {
        let token = match reader.next_token() {
            Ok(Some(t)) => t,
            Ok(None) => return Err(HeaderError::MissingEnd),
            Err(e) => return Err(HeaderError::Cmf(e)),
        };
        if state.token(token.tag, token.value)? {
            return state.finish(reader.position());
        }
    }
}

/// A header being read, token by token.
struct Parsing {
    out: FrameHeader,
    service_id: Option<i32>,
    /// The first distinct custom int tags, as many as are kept (their values are read later,
    /// by [`ints`]); a tag not among them when it is full is one more than is kept.
    custom: heapless::Vec<u32, MAX_HEADER_INTS>,
}

impl Parsing {
    #[inline(always)]
    fn new() -> Self {
        Parsing {
            out: FrameHeader::new(0),
            service_id: None,
            custom: heapless::Vec::new(),
        }
    }

    /// Applies one token's rule; true at HeaderEnd.
    #[inline(always)]
    fn token(&mut self, tag: u32, value: Value<'_>) -> Result<bool, HeaderError> {
        let int = value.header_int();
        match tag {
            tags::HEADER_END => return Ok(true),
            tags::SERVICE_ID => {
                self.service_id = Some(int.ok_or(HeaderError::NotInt { tag: 1 })?);
            }
            tags::MESSAGE_ID => {
                self.out.message_id = Some(int.ok_or(HeaderError::NotInt { tag: 2 })?);
            }
            tags::SEQUENCE_START => {
                self.out.sequence_start = Some(int.ok_or(HeaderError::NotInt { tag: 3 })?);
            }
            tags::LAST_IN_SEQUENCE => {
                let last = value.as_bool().ok_or(HeaderError::NotBool)?;
                self.out.bits &= !LAST_TRUE;
                self.out.bits |= LAST_PRESENT | if last { LAST_TRUE } else { 0 };
            }
            tags::PING => self.out.bits |= PING,
            tag @ 6..=9 => {
                // The C++ `isInt()`: any negative counts, even one too large for `header_int`.
                if value.is_int() {
                    return Err(HeaderError::IllegalTag { tag });
                }
                if tag == tags::PONG && matches!(value, Value::Bool(_)) {
                    self.out.bits |= PONG;
                }
            }
            tag @ CUSTOM_TAG_MIN..=CUSTOM_TAG_MAX
                if int.is_some() && !self.custom.contains(&tag) =>
            {
                // Full: [`ints`] keeps the lowest tags and marks the rest as dropped.
                let _ = self.custom.push(tag);
            }
            _ => {}
        }
        Ok(false)
    }

    /// The header, once HeaderEnd came at `len`.
    #[inline(always)]
    fn finish(&mut self, len: usize) -> Result<(FrameHeader, usize), HeaderError> {
        self.out.service_id = self.service_id.ok_or(HeaderError::MissingServiceId)?;
        self.out.bits |= self.custom.len() as u32;
        Ok((self.out, len))
    }
}

/// The custom header ints of a header that [`parse`] accepted (first value of a tag wins).
pub fn ints(header: &[u8]) -> HeaderInts {
    let mut ints = HeaderInts::new();
    read_ints(header, &mut ints);
    ints
}

/// [`ints`] into `ints` (cleared first), in place.
pub(crate) fn read_ints(header: &[u8], ints: &mut HeaderInts) {
    ints.clear();
    for token in Reader::new(header).map_while(Result::ok) {
        match token.tag {
            tags::HEADER_END => break,
            tag @ CUSTOM_TAG_MIN..=CUSTOM_TAG_MAX => {
                if let Some(v) = token.value.header_int() {
                    ints.insert_first(tag, v);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{Gen, QuickCheck};
    use std::vec::Vec;

    fn hdr(bytes: &[u8]) -> Result<(FrameHeader, usize), HeaderError> {
        parse(bytes)
    }

    /// Bytes that look like headers: tokens from a small alphabet of tags, types and values,
    /// so that the fast path and each of its ways out are taken often.
    #[derive(Clone, Debug)]
    struct HeaderLike(Vec<u8>);

    impl Arbitrary for HeaderLike {
        fn arbitrary(g: &mut Gen) -> Self {
            HeaderLike(header_like(g))
        }
    }

    fn header_like(g: &mut Gen) -> Vec<u8> {
        let mut out = Vec::new();
        // Often a header the fast path takes whole: short tags, types 0 and 1, small values.
        let ordinary = bool::arbitrary(g);
        if ordinary {
            out.extend_from_slice(&[0x08, 0x03]);
        }
        // Up to 24 tokens, so more than MAX_HEADER_INTS distinct short custom tags happen.
        for _ in 0..usize::arbitrary(g) % 25 {
            let tag = if ordinary || bool::arbitrary(g) {
                10 + u8::arbitrary(g) % 21
            } else {
                *g.choose(&[0u8, 1, 2, 3, 4, 5, 6, 9, 31]).unwrap()
            };
            let ty = if ordinary {
                u8::arbitrary(g) % 2
            } else {
                *g.choose(&[0u8, 0, 1, 4, 5, 2, 6, 7]).unwrap()
            };
            out.push(tag.min(31) << 3 | ty);
            if tag == 31 {
                out.push(*g.choose(&[0x05u8, 0x0B, 0x80]).unwrap());
            }
            if ordinary {
                out.push(u8::arbitrary(g) % 0x80);
            } else if ty < 4 {
                out.push(*g.choose(&[0u8, 1, 7, 0x7F, 0x80, 0x81]).unwrap());
            }
        }
        if bool::arbitrary(g) {
            out.push(0x04);
        }
        out
    }

    use quickcheck::Arbitrary;

    #[test]
    fn fast_path_agrees_with_the_general_parser() {
        fn prop(h: HeaderLike) -> bool {
            parse(&h.0) == parse_general(&h.0)
        }
        QuickCheck::new()
            .tests(10_000)
            .quickcheck(prop as fn(HeaderLike) -> bool);
        fn any_bytes(bytes: Vec<u8>) -> bool {
            parse(&bytes) == parse_general(&bytes)
        }
        QuickCheck::new().quickcheck(any_bytes as fn(Vec<u8>) -> bool);
    }

    #[test]
    fn minimal_and_full() {
        let (h, n) = hdr(&[0x08, 0x01, 0x04]).unwrap();
        assert_eq!(n, 3);
        assert_eq!(h.service_id, 1);
        assert_eq!(h.message_id, None);
        assert_eq!(h.int_count(), 0);
        assert_eq!(h.kind(), FrameKind::Message);

        // F12: svc 1, msg −1, {11:312, 233:12521, 1111:1112}
        let f12 = [
            0x08, 0x01, 0x11, 0x01, 0x58, 0x81, 0x38, 0xF8, 0x80, 0x69, 0xE0, 0x69, 0xF8, 0x87,
            0x57, 0x87, 0x58, 0x04,
        ];
        let (h, n) = hdr(&f12).unwrap();
        assert_eq!(n, f12.len());
        assert_eq!(
            (h.service_id, h.message_id, h.int_count()),
            (1, Some(-1), 3)
        );
        assert_eq!(
            ints(&f12).as_slice(),
            &[(11, 312), (233, 12521), (1111, 1112)]
        );
    }

    #[test]
    fn sequence_and_system_kinds() {
        let first = [
            0x08, 0x01, 0x10, 0x04, 0x58, 0x09, 0x18, 0x80, 0x9B, 0x20, 0x25, 0x04,
        ];
        let (h, _) = hdr(&first).unwrap();
        assert_eq!(
            h.kind(),
            FrameKind::SequenceStart {
                total: 20_000,
                last: false
            }
        );
        assert_eq!(ints(&first).get(tags::REQUEST_ID), Some(9));
        let (h, _) = hdr(&[0x08, 0x01, 0x24, 0x04]).unwrap();
        assert_eq!(h.kind(), FrameKind::SequenceNext { last: true });
        let (h, _) = hdr(&[0x08, 0x7E, 0x2C, 0x04]).unwrap();
        assert_eq!(h.kind(), FrameKind::Ping);
        let (h, _) = hdr(&[0x08, 0x7E, 0x34, 0x04]).unwrap();
        assert_eq!(h.kind(), FrameKind::Pong);
        let (h, _) = hdr(&[0x08, 0x7E, 0x04]).unwrap();
        assert_eq!(h.kind(), FrameKind::OtherSystem);
        // Ping flag on another service: an ordinary message.
        let (h, _) = hdr(&[0x08, 0x05, 0x2C, 0x04]).unwrap();
        assert_eq!(h.kind(), FrameKind::Message);
        // SequenceStart alone is ignored.
        let (h, _) = hdr(&[0x08, 0x05, 0x18, 0x05, 0x04]).unwrap();
        assert_eq!(h.kind(), FrameKind::Message);
        // Ping flag with any value.
        let (h, _) = hdr(&[0x08, 0x7E, 0x28, 0x07, 0x04]).unwrap();
        assert!(h.ping());
    }

    #[test]
    fn duplicates() {
        // ServiceId twice: last wins. Custom twice: first wins.
        let bytes = [0x08, 0x01, 0x08, 0x02, 0x58, 0x01, 0x58, 0x02, 0x04];
        let (h, _) = hdr(&bytes).unwrap();
        assert_eq!(h.service_id, 2);
        assert_eq!(h.int_count(), 1);
        assert_eq!(ints(&bytes).get(tags::REQUEST_ID), Some(1));
    }

    #[test]
    fn refusals() {
        assert_eq!(hdr(&[0x08, 0x01]), Err(HeaderError::MissingEnd));
        assert_eq!(hdr(&[0x10, 0x01, 0x04]), Err(HeaderError::MissingServiceId));
        assert_eq!(hdr(&[0x0C, 0x04]), Err(HeaderError::NotInt { tag: 1 }));
        assert_eq!(
            hdr(&[0x0A, 0x00, 0x04]),
            Err(HeaderError::NotInt { tag: 1 })
        );
        // ServiceId 0x7FFF_FFFF is a "long".
        assert_eq!(
            hdr(&[0x08, 0x86, 0xFE, 0xFE, 0xFE, 0x7F, 0x04]),
            Err(HeaderError::NotInt { tag: 1 })
        );
        assert_eq!(
            hdr(&[0x08, 0x01, 0x18, 0x8E, 0xFE, 0xFE, 0xFF, 0x00, 0x04]),
            Err(HeaderError::NotInt { tag: 3 })
        );
        assert_eq!(
            hdr(&[0x08, 0x01, 0x20, 0x01, 0x04]),
            Err(HeaderError::NotBool)
        );
        assert_eq!(
            hdr(&[0x08, 0x01, 0x38, 0x01, 0x04]),
            Err(HeaderError::IllegalTag { tag: 7 })
        );
        assert_eq!(
            hdr(&[0x08, 0x01, 0x30, 0x01, 0x04]),
            Err(HeaderError::IllegalTag { tag: 6 })
        );
        // A huge negative is still a C++ int.
        assert_eq!(
            hdr(&[0x08, 0x01, 0x49, 0x8E, 0xFE, 0xFE, 0xFE, 0x7F, 0x04]),
            Err(HeaderError::IllegalTag { tag: 9 })
        );
        assert!(matches!(hdr(&[0x08, 0x01, 0x0F]), Err(HeaderError::Cmf(_))));
        // Our decision (spec §1.4's advice): a negative beyond i32 is not an int here, where
        // the C++ wraps it (magnitude 2^32 − 1 reads as +1 there).
        assert_eq!(
            hdr(&[0x09, 0x8E, 0xFE, 0xFE, 0xFE, 0x7F, 0x04]),
            Err(HeaderError::NotInt { tag: 1 })
        );
        assert_eq!(
            hdr(&[0x08, 0x01, 0x19, 0x8E, 0xFE, 0xFE, 0xFF, 0x01, 0x04]),
            Err(HeaderError::NotInt { tag: 3 })
        );
        // −2^31 itself is an int.
        let (h, _) = hdr(&[0x09, 0x86, 0xFE, 0xFE, 0xFF, 0x00, 0x04]).unwrap();
        assert_eq!(h.service_id, i32::MIN);
    }

    #[test]
    fn ignored_items() {
        // Non-int in 7..9, strings in custom tags, tags ≥ 0xFF_FFFF, ints in tags ≥ 0xFF_FFFF.
        let bytes = [
            0x08, 0x01, 0x3C, 0x42, 0x00, 0x5A, 0x01, b'x', 0xF8, 0x86, 0xFE, 0xFE, 0x7F, 0x05,
            0x04,
        ];
        let (h, _) = hdr(&bytes).unwrap();
        assert_eq!(h.int_count(), 0);
        assert!(ints(&bytes).is_empty());
        assert_eq!(h.service_id, 1);
        // A custom int beyond i32 (the C++ would keep it wrapped) is ignored, like a string.
        let bytes = [0x08, 0x01, 0x59, 0x8E, 0xFE, 0xFE, 0xFE, 0x7F, 0x04];
        let (h, _) = hdr(&bytes).unwrap();
        assert_eq!(h.int_count(), 0);
        assert!(ints(&bytes).is_empty());
        // 0xFF_FFFE is kept.
        let bytes = [0x08, 0x01, 0xF8, 0x86, 0xFE, 0xFE, 0x7E, 0x05, 0x04];
        hdr(&bytes).unwrap();
        assert_eq!(ints(&bytes).get(0xFF_FFFE), Some(5));
    }

    /// A header of ServiceId 1, then `(tag, value)` custom ints in long tag form, HeaderEnd.
    fn with_ints(ints: impl IntoIterator<Item = (u32, u8)>) -> Vec<u8> {
        let mut v = vec![0x08, 0x01];
        for (tag, value) in ints {
            v.push(0xF8);
            write_varint(&mut v, u64::from(tag));
            v.push(value & 0x7F);
        }
        v.push(0x04);
        v
    }

    fn write_varint(out: &mut Vec<u8>, mut n: u64) {
        let mut bytes = vec![(n & 0x7F) as u8];
        while n > 0x7F {
            n = (n >> 7) - 1;
            bytes.push((n & 0x7F) as u8 | 0x80);
        }
        out.extend(bytes.iter().rev());
    }

    #[test]
    fn more_ints_than_are_kept_keep_the_lowest_tags_and_say_so() {
        let kept: Vec<(u32, i32)> = (0..MAX_HEADER_INTS as u32).map(|i| (20 + i, 1)).collect();
        // 40 tags, highest first: the lowest 16 stay, whatever the order on the wire, with the
        // first value of each (the repeats at the end change nothing).
        let mut wire: Vec<(u32, u8)> = (0..40).rev().map(|i| (20 + i, 1)).collect();
        wire.extend([(20, 9), (59, 9), (35, 9)]);
        let v = with_ints(wire.iter().copied());
        let (h, len) = hdr(&v).unwrap();
        assert_eq!(len, v.len());
        assert_eq!(usize::from(h.int_count()), MAX_HEADER_INTS);
        let got = ints(&v);
        assert_eq!(got.as_slice(), &kept[..]);
        assert!(got.truncated());
        // The same with short tags and one-byte values (the fast path's form): 17 tags 10..=26.
        let mut v = vec![0x08, 0x01];
        for tag in 10..10 + MAX_HEADER_INTS as u8 + 1 {
            v.extend_from_slice(&[tag << 3, 0x01]);
        }
        v.push(0x04);
        assert_eq!(
            hdr(&v).map(|(h, _)| usize::from(h.int_count())),
            Ok(MAX_HEADER_INTS)
        );
        assert!(ints(&v).truncated());
        assert_eq!(ints(&v).get(26), None);
        // Exactly as many as are kept: nothing is dropped.
        v.truncate(v.len() - 3);
        v.push(0x04);
        assert_eq!(ints(&v).len(), MAX_HEADER_INTS);
        assert!(!ints(&v).truncated());
        // Duplicates do not count.
        let mut v = vec![0x08, 0x01];
        for _ in 0..100 {
            v.extend_from_slice(&[0x58, 0x01]);
        }
        v.push(0x04);
        assert!(hdr(&v).is_ok());
        assert!(!ints(&v).truncated());
        // Cleared, the mark goes too; it counts in equality.
        let mut t = ints(&with_ints(wire.iter().copied()));
        let mut same = HeaderInts::new();
        for &(tag, value) in &kept {
            same.set(tag, value).unwrap();
        }
        assert_ne!(t, same);
        t.clear();
        assert!(!t.truncated() && t.is_empty());
    }

    #[test]
    fn header_ints_api() {
        let mut ints = HeaderInts::new();
        ints.set(200, 70000).unwrap();
        ints.set(11, 42).unwrap();
        ints.set(30, -5).unwrap();
        ints.set(11, 43).unwrap();
        assert_eq!(ints.as_slice(), &[(11, 43), (30, -5), (200, 70000)]);
        assert_eq!(ints.set(9, 1), Err(HeaderIntError::TagOutOfRange(9)));
        assert_eq!(
            ints.set(0xFF_FFFF, 1),
            Err(HeaderIntError::TagOutOfRange(0xFF_FFFF))
        );
        assert_eq!(
            ints.set(12, i32::MAX),
            Err(HeaderIntError::ValueOutOfRange(12))
        );
        assert_eq!(ints.remove(30), Some(-5));
        assert_eq!(ints.remove(30), None);
        assert_eq!(ints.len(), 2);
        for t in 0..MAX_HEADER_INTS as u32 - 2 {
            ints.set(1000 + t, 0).unwrap();
        }
        assert_eq!(ints.set(99, 0), Err(HeaderIntError::Full));
        assert_eq!(
            format!("{:?}", HeaderInts::new().with(11, 1).unwrap()),
            "{11: 1}"
        );
    }

    #[test]
    fn removed_ints_leave_no_trace_in_equality_or_hash() {
        use core::hash::{Hash, Hasher};
        let mut removed = HeaderInts::new().with(11, 1).unwrap().with(12, 2).unwrap();
        removed.remove(12);
        let built = HeaderInts::new().with(11, 1).unwrap();
        assert_eq!(removed, built);
        struct Sum(u64);
        impl Hasher for Sum {
            fn finish(&self) -> u64 {
                self.0
            }
            fn write(&mut self, bytes: &[u8]) {
                for &b in bytes {
                    self.0 = self.0.wrapping_mul(31).wrapping_add(u64::from(b));
                }
            }
        }
        let hash = |ints: &HeaderInts| {
            let mut h = Sum(0);
            ints.hash(&mut h);
            h.finish()
        };
        assert_eq!(hash(&removed), hash(&built));
        removed.clear();
        assert!(removed.is_empty());
        assert_eq!(removed, HeaderInts::new());
        assert_eq!(hash(&removed), hash(&HeaderInts::new()));
    }
}

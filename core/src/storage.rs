//! Where a connection keeps its bytes: growable heap buffers (`alloc`), or fixed arrays sized
//! by const generics for builds without an allocator.
//!
//! Every store has a hard upper bound. Heap stores start empty, grow as traffic needs (doubling,
//! up to their bound), and can give their memory back when idle, so an idle connection costs
//! little. Fixed stores are always their full size and never allocate.

use crate::frame::MAX_FRAME_LEN;

#[cfg(feature = "alloc")]
use core::fmt;

/// Contiguous bytes with a bound.
pub trait ByteStore {
    /// Bytes usable now.
    fn capacity(&self) -> usize;
    /// The most this store can ever hold.
    fn max_capacity(&self) -> usize;
    /// Makes at least `min` bytes usable, keeping the current contents; false if `min` is
    /// above the bound.
    fn reserve(&mut self, min: usize) -> bool;
    /// Gives memory back when the contents are no longer needed (no-op for fixed stores).
    fn release(&mut self);
    /// Bytes [`ByteStore::release`] would give back (0 for fixed stores).
    fn releasable(&self) -> usize;
    /// The usable bytes.
    fn bytes(&self) -> &[u8];
    /// The usable bytes.
    fn bytes_mut(&mut self) -> &mut [u8];
    /// Trades this store's memory for `other`'s, so full contents can be handed out without a
    /// copy: afterwards `other` holds them (its whole length), and this store keeps `other`'s
    /// old allocation, its length counting as usable bytes. False, changing nothing, where the
    /// store cannot (fixed arrays).
    #[cfg(feature = "alloc")]
    fn swap_vec(&mut self, other: &mut alloc::vec::Vec<u8>) -> bool {
        let _ = other;
        false
    }
}

impl<const N: usize> ByteStore for [u8; N] {
    fn capacity(&self) -> usize {
        N
    }
    fn max_capacity(&self) -> usize {
        N
    }
    fn reserve(&mut self, min: usize) -> bool {
        min <= N
    }
    fn release(&mut self) {}
    fn releasable(&self) -> usize {
        0
    }
    fn bytes(&self) -> &[u8] {
        self
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
}

/// A heap buffer that grows by doubling up to a bound.
#[cfg(feature = "alloc")]
#[derive(Clone, Default)]
pub struct HeapBytes {
    buf: alloc::vec::Vec<u8>,
    max: usize,
}

#[cfg(feature = "alloc")]
impl HeapBytes {
    /// Smallest allocation, so a few small frames do not cost a reallocation each.
    const MIN_ALLOC: usize = 512;

    /// An empty buffer that may grow to `max` bytes.
    pub const fn new(max: usize) -> Self {
        HeapBytes {
            buf: alloc::vec::Vec::new(),
            max,
        }
    }
}

#[cfg(feature = "alloc")]
impl fmt::Debug for HeapBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HeapBytes({} of {})", self.buf.len(), self.max)
    }
}

#[cfg(feature = "alloc")]
impl ByteStore for HeapBytes {
    fn capacity(&self) -> usize {
        self.buf.len()
    }
    fn max_capacity(&self) -> usize {
        self.max
    }
    fn reserve(&mut self, min: usize) -> bool {
        if min <= self.buf.len() {
            return true;
        }
        if min > self.max {
            return false;
        }
        let target = min
            .max(self.buf.len().saturating_mul(2))
            .max(Self::MIN_ALLOC)
            .min(self.max);
        self.buf.resize(target, 0);
        true
    }
    fn release(&mut self) {
        self.buf = alloc::vec::Vec::new();
    }
    fn releasable(&self) -> usize {
        self.buf.len()
    }
    fn bytes(&self) -> &[u8] {
        &self.buf
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }
    fn swap_vec(&mut self, other: &mut alloc::vec::Vec<u8>) -> bool {
        // What comes in must respect this store's bound; anything bigger is dropped.
        let incoming = if other.len() <= self.max {
            core::mem::take(other)
        } else {
            alloc::vec::Vec::new()
        };
        *other = core::mem::replace(&mut self.buf, incoming);
        true
    }
}

/// A FIFO of items with a bound.
pub trait Fifo<T> {
    /// Items held.
    fn len(&self) -> usize;
    /// Whether empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The most items it can ever hold.
    fn max_len(&self) -> usize;
    /// Appends, or gives the item back when full.
    fn push_back(&mut self, item: T) -> Result<(), T>;
    /// Prepends, or gives the item back when full.
    fn push_front(&mut self, item: T) -> Result<(), T>;
    /// Removes the oldest item.
    fn pop_front(&mut self) -> Option<T>;
    /// The oldest item.
    fn front(&self) -> Option<&T>;
    /// The `i`-th oldest item.
    fn get(&self, i: usize) -> Option<&T>;
    /// Gives memory back when empty (no-op for fixed FIFOs).
    fn release(&mut self);
}

impl<T, const N: usize> Fifo<T> for heapless::Deque<T, N> {
    fn len(&self) -> usize {
        heapless::Deque::len(self)
    }
    fn max_len(&self) -> usize {
        N
    }
    fn push_back(&mut self, item: T) -> Result<(), T> {
        heapless::Deque::push_back(self, item)
    }
    fn push_front(&mut self, item: T) -> Result<(), T> {
        heapless::Deque::push_front(self, item)
    }
    fn pop_front(&mut self) -> Option<T> {
        heapless::Deque::pop_front(self)
    }
    fn front(&self) -> Option<&T> {
        heapless::Deque::front(self)
    }
    fn get(&self, i: usize) -> Option<&T> {
        self.iter().nth(i)
    }
    fn release(&mut self) {}
}

/// A heap FIFO with a bound on its length.
#[cfg(feature = "alloc")]
#[derive(Clone, Debug, Default)]
pub struct HeapFifo<T> {
    items: alloc::collections::VecDeque<T>,
    max: usize,
}

#[cfg(feature = "alloc")]
impl<T> HeapFifo<T> {
    /// An empty FIFO that may hold `max` items.
    pub const fn new(max: usize) -> Self {
        HeapFifo {
            items: alloc::collections::VecDeque::new(),
            max,
        }
    }
}

#[cfg(feature = "alloc")]
impl<T> Fifo<T> for HeapFifo<T> {
    fn len(&self) -> usize {
        self.items.len()
    }
    fn max_len(&self) -> usize {
        self.max
    }
    fn push_back(&mut self, item: T) -> Result<(), T> {
        if self.items.len() >= self.max {
            return Err(item);
        }
        self.items.push_back(item);
        Ok(())
    }
    fn push_front(&mut self, item: T) -> Result<(), T> {
        if self.items.len() >= self.max {
            return Err(item);
        }
        self.items.push_front(item);
        Ok(())
    }
    fn pop_front(&mut self) -> Option<T> {
        self.items.pop_front()
    }
    fn front(&self) -> Option<&T> {
        self.items.front()
    }
    fn get(&self, i: usize) -> Option<&T> {
        self.items.get(i)
    }
    fn release(&mut self) {
        if self.items.is_empty() {
            self.items = alloc::collections::VecDeque::new();
        }
    }
}

/// The buffers of one [`Connection`](crate::connection::Connection): where its receive buffer,
/// its two send queues and its sequence reassembly live.
///
/// Use [`Heap`] (with `alloc`, sized by [`Config`](crate::connection::Config)) or [`Fixed`]
/// (arrays sized by const generics, no allocator).
pub trait Storage {
    /// Receive buffer: frames waiting to be parsed or delivered.
    type Rx: ByteStore;
    /// Normal-priority send queue: encoded frames.
    type Tx: ByteStore;
    /// High-priority send queue: encoded frames.
    type TxHigh: ByteStore;
    /// Reassembly of sequences into one body.
    type Reassembly: ByteStore;
    /// The messages in a send queue.
    type Queue: Fifo<QueueEntry>;
    /// A receive buffer of at most `max` bytes.
    fn rx(max: usize) -> Self::Rx;
    /// A normal send queue of at most `max` bytes.
    fn tx(max: usize) -> Self::Tx;
    /// A high-priority send queue of at most `max` bytes.
    fn tx_high(max: usize) -> Self::TxHigh;
    /// A reassembly buffer of at most `max` bytes.
    fn reassembly(max: usize) -> Self::Reassembly;
    /// A message FIFO of at most `max` messages.
    fn queue(max: usize) -> Self::Queue;
}

pub use crate::connection::QueueEntry;

/// Heap storage: every buffer starts empty and grows to the bounds in
/// [`Config`](crate::connection::Config).
#[cfg(feature = "alloc")]
#[derive(Clone, Copy, Debug, Default)]
pub struct Heap;

#[cfg(feature = "alloc")]
impl Storage for Heap {
    type Rx = HeapBytes;
    type Tx = HeapBytes;
    type TxHigh = HeapBytes;
    type Reassembly = HeapBytes;
    type Queue = HeapFifo<QueueEntry>;
    fn rx(max: usize) -> HeapBytes {
        HeapBytes::new(max)
    }
    fn tx(max: usize) -> HeapBytes {
        HeapBytes::new(max)
    }
    fn tx_high(max: usize) -> HeapBytes {
        HeapBytes::new(max)
    }
    fn reassembly(max: usize) -> HeapBytes {
        HeapBytes::new(max)
    }
    fn queue(max: usize) -> HeapFifo<QueueEntry> {
        HeapFifo::new(max)
    }
}

/// Fixed storage for builds without an allocator: a receive buffer of `RX` bytes, send queues of
/// `TX` and `HIGH` bytes holding up to `MSGS` messages each, and a reassembly buffer of `REASM`
/// bytes (0: receive sequences chunk by chunk, see
/// [`SequenceDelivery::Chunks`](crate::connection::SequenceDelivery::Chunks)).
///
/// The defaults make the smallest useful connection: one maximum frame in each direction, for
/// about 20 KB in all. `RX` must be at least 9000 to take every valid frame (checked at compile
/// time), `TX` at least 9000 to queue every message up to the chunk size, and `MSGS` at least 1.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fixed<
    const RX: usize = 9000,
    const TX: usize = 9000,
    const HIGH: usize = 256,
    const REASM: usize = 0,
    const MSGS: usize = 16,
>;

impl<const RX: usize, const TX: usize, const HIGH: usize, const REASM: usize, const MSGS: usize>
    Fixed<RX, TX, HIGH, REASM, MSGS>
{
    /// Evaluated when the storage is used: a receive buffer below one maximum frame could
    /// stall on a valid frame, and a queue must hold at least one message.
    const VALID: () = {
        assert!(
            RX >= MAX_FRAME_LEN,
            "Fixed: RX must be at least 9000 (one maximum frame)"
        );
        assert!(MSGS > 0, "Fixed: MSGS must be at least 1");
    };
}

impl<const RX: usize, const TX: usize, const HIGH: usize, const REASM: usize, const MSGS: usize>
    Storage for Fixed<RX, TX, HIGH, REASM, MSGS>
{
    type Rx = [u8; RX];
    type Tx = [u8; TX];
    type TxHigh = [u8; HIGH];
    type Reassembly = [u8; REASM];
    type Queue = heapless::Deque<QueueEntry, MSGS>;
    fn rx(_: usize) -> [u8; RX] {
        let () = Self::VALID;
        [0; RX]
    }
    fn tx(_: usize) -> [u8; TX] {
        [0; TX]
    }
    fn tx_high(_: usize) -> [u8; HIGH] {
        [0; HIGH]
    }
    fn reassembly(_: usize) -> [u8; REASM] {
        [0; REASM]
    }
    fn queue(_: usize) -> heapless::Deque<QueueEntry, MSGS> {
        heapless::Deque::new()
    }
}

/// The storage [`Connection`](crate::connection::Connection) uses unless told otherwise:
/// [`Heap`] with `alloc`, the default [`Fixed`] without.
#[cfg(feature = "alloc")]
pub type DefaultStorage = Heap;
/// The storage [`Connection`](crate::connection::Connection) uses unless told otherwise:
/// [`Heap`] with `alloc`, the default [`Fixed`] without.
#[cfg(not(feature = "alloc"))]
pub type DefaultStorage = Fixed;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_bytes_grow_to_their_bound() {
        let mut b = HeapBytes::new(10_000);
        assert_eq!(b.capacity(), 0);
        assert!(b.reserve(10));
        assert_eq!(b.capacity(), 512);
        b.bytes_mut()[..3].copy_from_slice(b"abc");
        assert!(b.reserve(600));
        assert_eq!(b.capacity(), 1024);
        assert_eq!(&b.bytes()[..3], b"abc");
        assert!(b.reserve(9_000));
        assert_eq!(b.capacity(), 9_000);
        assert!(b.reserve(10_000));
        assert!(!b.reserve(10_001));
        b.release();
        assert_eq!(b.capacity(), 0);
    }

    #[test]
    fn fixed_bytes() {
        let mut b = [0u8; 16];
        assert!(b.reserve(16));
        assert!(!b.reserve(17));
        assert_eq!(ByteStore::capacity(&b), 16);
    }

    #[test]
    fn fifos_are_bounded() {
        let mut f = HeapFifo::new(2);
        assert_eq!(f.push_back(1), Ok(()));
        assert_eq!(f.push_back(2), Ok(()));
        assert_eq!(f.push_back(3), Err(3));
        assert_eq!(f.get(1), Some(&2));
        assert_eq!(f.pop_front(), Some(1));
        let mut d: heapless::Deque<u8, 1> = heapless::Deque::new();
        assert_eq!(Fifo::push_back(&mut d, 1), Ok(()));
        assert_eq!(Fifo::push_back(&mut d, 2), Err(2));
        assert_eq!(Fifo::max_len(&d), 1);
    }
}

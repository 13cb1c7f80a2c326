//! Containers with a runtime bound: heap-backed with `alloc`, fixed arrays of `N` otherwise.
//! The node keeps all its tables in these, so every table has a limit in both builds.

use core::cmp::Reverse;

/// A vector of at most `max` items (and at most `N` without `alloc`).
#[derive(Clone, Debug)]
pub(crate) struct List<T, const N: usize> {
    #[cfg(feature = "alloc")]
    items: alloc::vec::Vec<T>,
    #[cfg(not(feature = "alloc"))]
    items: heapless::Vec<T, N>,
    max: usize,
}

impl<T, const N: usize> List<T, N> {
    pub(crate) fn new(max: usize) -> Self {
        List {
            items: Default::default(),
            #[cfg(feature = "alloc")]
            max,
            #[cfg(not(feature = "alloc"))]
            max: max.min(N),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn is_full(&self) -> bool {
        self.items.len() >= self.max
    }

    /// Appends, or gives the item back when full.
    pub(crate) fn push(&mut self, item: T) -> Result<(), T> {
        if self.is_full() {
            return Err(item);
        }
        #[cfg(feature = "alloc")]
        {
            self.items.push(item);
            Ok(())
        }
        #[cfg(not(feature = "alloc"))]
        self.items.push(item)
    }

    pub(crate) fn pop(&mut self) -> Option<T> {
        self.items.pop()
    }

    pub(crate) fn get(&self, i: usize) -> Option<&T> {
        self.items.get(i)
    }

    pub(crate) fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.items.get_mut(i)
    }

    pub(crate) fn iter(&self) -> core::slice::Iter<'_, T> {
        self.items.iter()
    }

    pub(crate) fn iter_mut(&mut self) -> core::slice::IterMut<'_, T> {
        self.items.iter_mut()
    }

    pub(crate) fn swap_remove(&mut self, i: usize) -> T {
        self.items.swap_remove(i)
    }

    pub(crate) fn retain(&mut self, f: impl FnMut(&T) -> bool) {
        self.items.retain(f);
    }
}

/// A sorted map of at most `max` entries (and at most `N` without `alloc`).
#[derive(Clone, Debug)]
pub(crate) struct Map<K, V, const N: usize> {
    #[cfg(feature = "alloc")]
    items: alloc::collections::BTreeMap<K, V>,
    #[cfg(not(feature = "alloc"))]
    items: heapless::Vec<(K, V), N>,
    max: usize,
}

impl<K: Ord + Copy, V, const N: usize> Map<K, V, N> {
    pub(crate) fn new(max: usize) -> Self {
        Map {
            items: Default::default(),
            #[cfg(feature = "alloc")]
            max,
            #[cfg(not(feature = "alloc"))]
            max: max.min(N),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn is_full(&self) -> bool {
        self.items.len() >= self.max
    }

    /// Entries it can hold.
    pub(crate) fn capacity(&self) -> usize {
        self.max
    }

    #[cfg(feature = "alloc")]
    pub(crate) fn get(&self, k: &K) -> Option<&V> {
        self.items.get(k)
    }

    #[cfg(not(feature = "alloc"))]
    pub(crate) fn get(&self, k: &K) -> Option<&V> {
        self.items.iter().find(|(key, _)| key == k).map(|(_, v)| v)
    }

    #[cfg(feature = "alloc")]
    pub(crate) fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        self.items.get_mut(k)
    }

    #[cfg(not(feature = "alloc"))]
    pub(crate) fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        self.items
            .iter_mut()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v)
    }

    /// Inserts or replaces; gives the entry back when the map is full and `k` is new.
    pub(crate) fn insert(&mut self, k: K, v: V) -> Result<(), (K, V)> {
        if let Some(slot) = self.get_mut(&k) {
            *slot = v;
            return Ok(());
        }
        if self.is_full() {
            return Err((k, v));
        }
        #[cfg(feature = "alloc")]
        {
            self.items.insert(k, v);
            Ok(())
        }
        #[cfg(not(feature = "alloc"))]
        self.items.push((k, v))
    }

    #[cfg(feature = "alloc")]
    pub(crate) fn remove(&mut self, k: &K) -> Option<V> {
        self.items.remove(k)
    }

    #[cfg(not(feature = "alloc"))]
    pub(crate) fn remove(&mut self, k: &K) -> Option<V> {
        let i = self.items.iter().position(|(key, _)| key == k)?;
        Some(self.items.swap_remove(i).1)
    }

    /// Entries in key order (without `alloc`: in no particular order).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        #[cfg(feature = "alloc")]
        return self.items.iter();
        #[cfg(not(feature = "alloc"))]
        return self.items.iter().map(|(k, v)| (k, v));
    }

    pub(crate) fn retain(&mut self, mut f: impl FnMut(&K, &mut V) -> bool) {
        #[cfg(feature = "alloc")]
        self.items.retain(|k, v| f(k, v));
        #[cfg(not(feature = "alloc"))]
        self.items.retain_mut(|(k, v)| f(k, v));
    }

    /// The key whose value is smallest by `key_fn` (to evict when full).
    pub(crate) fn min_by_key<O: Ord>(&self, mut key_fn: impl FnMut(&V) -> O) -> Option<K> {
        self.iter().min_by_key(|(_, v)| key_fn(v)).map(|(k, _)| *k)
    }
}

/// A FIFO of at most `max` items (and at most `N` without `alloc`).
#[derive(Clone, Debug)]
pub(crate) struct Queue<T, const N: usize> {
    #[cfg(feature = "alloc")]
    items: alloc::collections::VecDeque<T>,
    #[cfg(not(feature = "alloc"))]
    items: heapless::Deque<T, N>,
    max: usize,
}

impl<T, const N: usize> Queue<T, N> {
    pub(crate) fn new(max: usize) -> Self {
        Queue {
            items: Default::default(),
            #[cfg(feature = "alloc")]
            max,
            #[cfg(not(feature = "alloc"))]
            max: max.min(N),
        }
    }

    /// Appends, or gives the item back when full.
    pub(crate) fn push(&mut self, item: T) -> Result<(), T> {
        if self.items.len() >= self.max {
            return Err(item);
        }
        #[cfg(feature = "alloc")]
        {
            self.items.push_back(item);
            Ok(())
        }
        #[cfg(not(feature = "alloc"))]
        self.items.push_back(item)
    }

    pub(crate) fn pop(&mut self) -> Option<T> {
        self.items.pop_front()
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// Removes the first item for which `f` is true; returns whether one was.
    pub(crate) fn remove_first(&mut self, mut f: impl FnMut(&T) -> bool) -> bool {
        let Some(i) = self.items.iter().position(&mut f) else {
            return false;
        };
        // Rotate the items before it to the back and back again, dropping the one found.
        let n = self.items.len();
        for k in 0..n {
            if let Some(item) = self.items.pop_front() {
                if k != i {
                    #[cfg(feature = "alloc")]
                    self.items.push_back(item);
                    #[cfg(not(feature = "alloc"))]
                    let _ = self.items.push_back(item);
                }
            }
        }
        true
    }

    /// Keeps only the items for which `f` is true.
    pub(crate) fn retain(&mut self, mut f: impl FnMut(&T) -> bool) {
        let n = self.items.len();
        for _ in 0..n {
            if let Some(item) = self.items.pop_front() {
                if f(&item) {
                    #[cfg(feature = "alloc")]
                    self.items.push_back(item);
                    #[cfg(not(feature = "alloc"))]
                    let _ = self.items.push_back(item);
                }
            }
        }
    }
}

/// A min-heap of at most `max` items (and at most `N` without `alloc`).
#[derive(Clone, Debug)]
pub(crate) struct MinHeap<T: Ord, const N: usize> {
    #[cfg(feature = "alloc")]
    items: alloc::collections::BinaryHeap<Reverse<T>>,
    #[cfg(not(feature = "alloc"))]
    items: heapless::BinaryHeap<Reverse<T>, heapless::binary_heap::Max, N>,
    max: usize,
}

impl<T: Ord + Copy, const N: usize> MinHeap<T, N> {
    pub(crate) fn new(max: usize) -> Self {
        MinHeap {
            items: Default::default(),
            #[cfg(feature = "alloc")]
            max,
            #[cfg(not(feature = "alloc"))]
            max: max.min(N),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn is_full(&self) -> bool {
        self.items.len() >= self.max
    }

    /// Adds an item; false when full.
    pub(crate) fn push(&mut self, item: T) -> bool {
        if self.items.len() >= self.max {
            return false;
        }
        #[cfg(feature = "alloc")]
        {
            self.items.push(Reverse(item));
            true
        }
        #[cfg(not(feature = "alloc"))]
        self.items.push(Reverse(item)).is_ok()
    }

    pub(crate) fn peek(&self) -> Option<T> {
        self.items.peek().map(|r| r.0)
    }

    pub(crate) fn pop(&mut self) -> Option<T> {
        self.items.pop().map(|r| r.0)
    }

    pub(crate) fn clear(&mut self) {
        self.items.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_hold() {
        let mut l: List<u8, 4> = List::new(2);
        assert_eq!(l.push(1), Ok(()));
        assert_eq!(l.push(2), Ok(()));
        assert_eq!(l.push(3), Err(3));
        assert_eq!(l.len(), 2);
        let mut m: Map<u8, u8, 4> = Map::new(2);
        m.insert(1, 1).unwrap();
        m.insert(2, 2).unwrap();
        m.insert(2, 3).unwrap();
        assert_eq!(m.insert(3, 3), Err((3, 3)));
        assert_eq!(m.get(&2), Some(&3));
        assert_eq!(m.min_by_key(|v| *v), Some(1));
        let mut h: MinHeap<u8, 4> = MinHeap::new(3);
        assert!(h.push(5) && h.push(1) && h.push(3));
        assert!(!h.push(0));
        assert_eq!(h.pop(), Some(1));
        assert_eq!(h.peek(), Some(3));
    }
}

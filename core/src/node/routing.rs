//! Service routing and subscriptions: which parts of the application get which messages.
//!
//! A handle is one part of the application. Handles scoped to the whole node are services
//! (messages of a service id, from any connection); handles scoped to one connection also see
//! that connection's events (spec §8.5). Closing a handle removes only its subscriptions.

use super::ConnId;
use crate::header::Header;
use core::fmt;

/// How many handles a node can have open.
pub const MAX_HANDLES: usize = 64;
/// How many subscriptions all handles together can hold.
pub const MAX_SUBSCRIPTIONS: usize = 128;

/// One part of the application, as the node routes to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HandleId {
    index: u8,
    generation: u32,
}

/// What a handle listens to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scope {
    /// Messages from every connection (a service).
    Node,
    /// Messages and events of one connection.
    Connection(ConnId),
}

/// The handles an output is for, by [`HandleId::index`]. Empty for a message no handle
/// subscribed to.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct HandleSet {
    bits: u64,
}

impl HandleId {
    /// The handle's slot, 0..[`MAX_HANDLES`]: stable while the handle is open, so applications
    /// can keep per-handle state in an array.
    pub fn index(&self) -> usize {
        usize::from(self.index)
    }
}

impl HandleSet {
    /// Whether no handle is in the set.
    pub fn is_empty(&self) -> bool {
        self.bits == 0
    }

    /// How many handles are in the set.
    pub fn len(&self) -> usize {
        self.bits.count_ones() as usize
    }

    /// Whether `handle` is in the set.
    pub fn contains(&self, handle: HandleId) -> bool {
        self.bits & (1 << handle.index) != 0
    }

    /// The [`HandleId::index`] of each handle in the set.
    pub fn indices(&self) -> impl Iterator<Item = usize> + '_ {
        // Only the set bits: this runs for every message delivered.
        let mut bits = self.bits;
        core::iter::from_fn(move || {
            let i = bits.trailing_zeros();
            bits &= bits.wrapping_sub(1);
            (i < 64).then_some(i as usize)
        })
    }

    fn insert(&mut self, index: u8) {
        self.bits |= 1 << index;
    }

    /// The handles in either set.
    pub(crate) fn union(self, other: HandleSet) -> HandleSet {
        HandleSet {
            bits: self.bits | other.bits,
        }
    }
}

impl fmt::Debug for HandleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.indices()).finish()
    }
}

/// Why a routing change was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RouteError {
    /// [`MAX_HANDLES`] handles are open.
    TooManyHandles,
    /// [`MAX_SUBSCRIPTIONS`] subscriptions exist.
    TooManySubscriptions,
    /// The handle was closed (or never existed).
    UnknownHandle,
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RouteError::TooManyHandles => "too many handles",
            RouteError::TooManySubscriptions => "too many subscriptions",
            RouteError::UnknownHandle => "unknown handle",
        })
    }
}

impl core::error::Error for RouteError {}

#[derive(Clone, Copy, Debug)]
struct Slot {
    generation: u32,
    scope: Option<Scope>,
}

#[derive(Clone, Copy, Debug)]
struct Subscription {
    handle: u8,
    service: i32,
    message: Option<i32>,
}

pub(crate) struct Router {
    handles: [Slot; MAX_HANDLES],
    subs: heapless::Vec<Subscription, MAX_SUBSCRIPTIONS>,
}

impl Router {
    pub(crate) fn new() -> Self {
        Router {
            handles: [Slot {
                generation: 0,
                scope: None,
            }; MAX_HANDLES],
            subs: heapless::Vec::new(),
        }
    }

    fn live(&self, handle: HandleId) -> Result<usize, RouteError> {
        let i = usize::from(handle.index);
        match self.handles.get(i) {
            Some(s) if s.scope.is_some() && s.generation == handle.generation => Ok(i),
            _ => Err(RouteError::UnknownHandle),
        }
    }

    pub(crate) fn open(&mut self, scope: Scope) -> Result<HandleId, RouteError> {
        let (i, slot) = self
            .handles
            .iter_mut()
            .enumerate()
            .find(|(_, s)| s.scope.is_none())
            .ok_or(RouteError::TooManyHandles)?;
        slot.generation = slot.generation.wrapping_add(1);
        slot.scope = Some(scope);
        Ok(HandleId {
            index: i as u8,
            generation: slot.generation,
        })
    }

    pub(crate) fn close(&mut self, handle: HandleId) -> Result<(), RouteError> {
        let i = self.live(handle)?;
        self.handles[i].scope = None;
        self.subs.retain(|s| usize::from(s.handle) != i);
        Ok(())
    }

    pub(crate) fn subscribe(
        &mut self,
        handle: HandleId,
        service: i32,
        message: Option<i32>,
    ) -> Result<(), RouteError> {
        let i = self.live(handle)? as u8;
        if self
            .subs
            .iter()
            .any(|s| (s.handle, s.service, s.message) == (i, service, message))
        {
            return Ok(());
        }
        self.subs
            .push(Subscription {
                handle: i,
                service,
                message,
            })
            .map_err(|_| RouteError::TooManySubscriptions)
    }

    pub(crate) fn unsubscribe(
        &mut self,
        handle: HandleId,
        service: i32,
        message: Option<i32>,
    ) -> Result<(), RouteError> {
        let i = self.live(handle)? as u8;
        self.subs
            .retain(|s| (s.handle, s.service, s.message) != (i, service, message));
        Ok(())
    }

    fn scope_matches(&self, i: usize, conn: ConnId) -> bool {
        match self.handles[i].scope {
            Some(Scope::Node) => true,
            Some(Scope::Connection(c)) => c == conn,
            None => false,
        }
    }

    /// Handles subscribed to this message from `conn`.
    pub(crate) fn matching(&self, conn: ConnId, header: &Header) -> HandleSet {
        let mut set = HandleSet::default();
        for s in &self.subs {
            let i = usize::from(s.handle);
            if s.service == header.service_id
                // An absent MessageId reads as -1 (spec §3.2).
                && s.message.is_none_or(|m| m == header.message_id.unwrap_or(-1))
                && self.scope_matches(i, conn)
            {
                set.insert(s.handle);
            }
        }
        set
    }

    /// Handles that see the events of `conn`.
    pub(crate) fn watching(&self, conn: ConnId) -> HandleSet {
        let mut set = HandleSet::default();
        for (i, h) in self.handles.iter().enumerate() {
            if h.scope == Some(Scope::Connection(conn)) {
                set.insert(i as u8);
            }
        }
        set
    }

    /// Closes the handles scoped to a connection that is gone.
    pub(crate) fn forget_connection(&mut self, conn: ConnId) {
        for i in 0..MAX_HANDLES {
            if self.handles[i].scope == Some(Scope::Connection(conn)) {
                self.handles[i].scope = None;
                self.subs.retain(|s| usize::from(s.handle) != i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_set_lists_its_members() {
        let mut set = HandleSet::default();
        assert_eq!(set.indices().count(), 0);
        for i in [63u8, 0, 5] {
            set.insert(i);
        }
        assert!(set.indices().eq([0, 5, 63]));
    }

    #[test]
    fn routes_by_service_message_and_scope() {
        let mut r = Router::new();
        let a = ConnId::new(0, 1);
        let b = ConnId::new(1, 1);
        let service = r.open(Scope::Node).unwrap();
        let only_a = r.open(Scope::Connection(a)).unwrap();
        r.subscribe(service, 3, None).unwrap();
        r.subscribe(only_a, 18, Some(4)).unwrap();
        r.subscribe(only_a, 3, Some(2)).unwrap();
        let set = r.matching(a, &Header::new(3, 2));
        assert_eq!(set.len(), 2);
        assert!(set.contains(service) && set.contains(only_a));
        assert_eq!(
            r.matching(b, &Header::new(3, 2))
                .indices()
                .collect::<Vec<_>>(),
            vec![service.index()]
        );
        assert!(r.matching(a, &Header::new(18, 5)).is_empty());
        assert_eq!(
            r.watching(a).indices().collect::<Vec<_>>(),
            vec![only_a.index()]
        );
        // Closing a handle removes only its subscriptions; its id goes stale.
        r.close(only_a).unwrap();
        assert_eq!(r.matching(a, &Header::new(3, 2)).len(), 1);
        assert_eq!(r.subscribe(only_a, 1, None), Err(RouteError::UnknownHandle));
        let again = r.open(Scope::Node).unwrap();
        assert_ne!(again, only_a);
        assert_eq!(again.index(), only_a.index());
    }

    #[test]
    fn bounded() {
        let mut r = Router::new();
        for _ in 0..MAX_HANDLES {
            r.open(Scope::Node).unwrap();
        }
        assert_eq!(r.open(Scope::Node), Err(RouteError::TooManyHandles));
    }
}

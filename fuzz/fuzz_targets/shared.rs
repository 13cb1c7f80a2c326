//! What every fuzz target shares with the corpus replay test (`tests/tests/fuzz_corpus.rs`):
//! a counting global allocator and the heap bound of each target.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The targets, by the name of their binary and corpus directory (the replay test walks them).
#[allow(dead_code)]
pub(crate) const TARGETS: [&str; 6] = ["cmf", "frames", "sequences", "connection", "node", "json"];

/// Runs one input through a target: panics if the target's invariants break, or if the heap
/// grew beyond the target's bound at any moment.
pub(crate) fn run(target: &str, data: &[u8]) {
    use flowee_proto::fuzzing;
    match target {
        "cmf" => within(4 << 20, || fuzzing::cmf(data)),
        "frames" => within(4 << 20, || fuzzing::frames(data)),
        "sequences" => within(4 << 20, || fuzzing::sequences(data)),
        // Bounded by the fuzz-chosen config (at most ~1.2 MB per connection) plus scratch.
        "connection" => within(16 << 20, || fuzzing::connection(data)),
        "node" => within(64 << 20, || fuzzing::node(data)),
        // A one-byte token becomes a JSON object of a few hundred bytes.
        "json" => within(1024 * data.len() + (1 << 20), || {
            flowee_cli::json::fuzz(data)
        }),
        other => panic!("no fuzz target {other}"),
    }
}

struct Counting;

#[global_allocator]
static ALLOC: Counting = Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator, which upholds the
// GlobalAlloc contract; the counters are plain atomics and never affect the pointers returned.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same layout, forwarded to the system allocator.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged; `ptr` and `layout` come from this allocator.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            let live = LIVE.fetch_add(new_size, Ordering::Relaxed) + new_size;
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
}

/// Runs `f` and panics if the heap grew by more than `limit` bytes at any moment, or if `f`
/// left more than `limit` bytes behind (a leak).
fn within(limit: usize, f: impl FnOnce()) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    f();
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    assert!(peak <= limit, "heap grew by {peak} bytes (bound {limit})");
    let left = LIVE.load(Ordering::Relaxed).saturating_sub(base);
    assert!(left == 0, "{left} bytes still allocated after the run");
}

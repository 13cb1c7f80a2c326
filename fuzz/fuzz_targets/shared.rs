//! What every fuzz target shares with the corpus replay test (`tests/tests/fuzz_corpus.rs`):
//! a counting global allocator and the heap bound of each target.

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

#[global_allocator]
static ALLOC: flowee_sim::counting::Counting = flowee_sim::counting::Counting;

/// Runs `f` and panics if the heap grew by more than `limit` bytes at any moment, or if `f`
/// left anything allocated (a leak).
fn within(limit: usize, f: impl FnOnce()) {
    let (peak, left) = flowee_sim::counting::growth(f);
    assert!(peak <= limit, "heap grew by {peak} bytes (bound {limit})");
    assert!(left == 0, "{left} bytes still allocated after the run");
}

//! Replays the checked-in fuzz corpus (`fuzz/corpus/<target>/`) on stable, through the same
//! bodies, heap bounds and counting allocator as the cargo-fuzz targets.
//!
//! One test only: the allocator's counters are global, so inputs must not run side by side.

#[path = "../../fuzz/fuzz_targets/shared.rs"]
mod shared;

use std::path::Path;

#[test]
fn every_corpus_input_passes_every_invariant() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for target in shared::TARGETS {
        let dir = root.join(target);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("readable corpus entry").path())
            .collect();
        inputs.sort();
        assert!(inputs.len() >= 3, "the {target} corpus is nearly empty");
        let count = inputs.len();
        for path in inputs {
            let data = std::fs::read(&path).expect("readable corpus file");
            let outcome = std::panic::catch_unwind(|| shared::run(target, &data));
            assert!(outcome.is_ok(), "{target}: {} fails", path.display());
        }
        println!("{target}: {count} inputs pass");
    }
}

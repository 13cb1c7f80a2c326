//! std-threads adapter (being written).

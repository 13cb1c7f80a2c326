#![no_main]
//! Fuzz target `frames`: see `shared::run` and `flowee_proto::fuzzing`.

#[path = "shared.rs"]
mod shared;

libfuzzer_sys::fuzz_target!(|data: &[u8]| shared::run("frames", data));

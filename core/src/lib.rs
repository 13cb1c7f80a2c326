//! A sans-IO engine for Flowee's message protocol (the "Network Manager" protocol of Flowee
//! the Hub, its Indexer and every Flowee API client).
//!
//! No sockets, threads or clocks live here: bytes and clock ticks go in, events and outbound
//! bytes come out. The crate is `no_std` and needs no allocator; the `alloc` feature (on by
//! default) adds growable buffers and `bytes`-backed shared frames.
//!
//! Layers, bottom up:
//! - [`cmf`]: the Compact Message Format token codec.
//! - [`header`] and [`frame`]: headers and length-prefixed frames, byte-exact with the C++.
//! - [`sequence`]: reassembly of bodies larger than one frame.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod cmf;
pub mod frame;
pub mod header;
pub mod sequence;
pub mod time;

pub use time::Instant;

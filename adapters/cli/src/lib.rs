//! The library behind the `flowee-cli` binary: the JSON mapping of tokens and messages, the
//! network commands and the demo, so tests and other tools can use them.

pub mod bench;
pub mod demo;
pub mod json;
pub mod net;

//! The library behind the `flowee-cli` binary: the JSON mapping of tokens and messages, so
//! other tools and the fuzz targets can use it.

pub mod json;

//! embedded adapter (being written).
#![no_std]

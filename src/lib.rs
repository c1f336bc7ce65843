//! chordkv system tests, benchmarks and examples live beside this crate.

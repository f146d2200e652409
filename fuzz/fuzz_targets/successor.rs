//! A script of supervisor bytes, lock and start-up completions and clock moves against one successor.
//! The body is `handoff_core::fuzzing::successor`, which the corpus replay test
//! in `core/tests/fuzz_corpus.rs` also runs on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| handoff_core::fuzzing::successor(data));

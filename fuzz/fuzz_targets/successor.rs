//! A script of supervisor bytes, lock and start-up completions and clock moves against one successor.
//! The body is `handoff_fuzz_harness::successor`, which the corpus replay test
//! in `fuzz-harness/tests/fuzz_corpus.rs` also runs on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| handoff_fuzz_harness::successor(data));

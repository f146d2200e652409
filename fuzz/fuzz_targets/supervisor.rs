//! A script of peer bytes, adapter completions and clock moves against one supervisor handoff.
//! The body is `handoff_fuzz_harness::supervisor`, which the corpus replay test
//! in `fuzz-harness/tests/fuzz_corpus.rs` also runs on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| handoff_fuzz_harness::supervisor(data));

//! A script of peer bytes, adapter completions and clock moves against one supervisor handoff.
//! The body is `handoff_core::fuzzing::supervisor`, which the corpus replay test
//! in `core/tests/fuzz_corpus.rs` also runs on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| handoff_core::fuzzing::supervisor(data));

//! Arbitrary bytes in arbitrary splits: progress, the frame limit, and the same frames from every split.
//! The body is `handoff_fuzz_harness::frame_decoder`, which the corpus replay test
//! in `fuzz-harness/tests/fuzz_corpus.rs` also runs on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| handoff_fuzz_harness::frame_decoder(data));

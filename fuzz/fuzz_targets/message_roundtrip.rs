//! Decode, encode, decode: whatever decodes comes back equal and re-encodes to the same bytes.
//! The body is `handoff_fuzz_harness::message_roundtrip`, which the corpus replay test
//! in `fuzz-harness/tests/fuzz_corpus.rs` also runs on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| handoff_fuzz_harness::message_roundtrip(data));

//! Fuzz target: HBONE request headers (`baggage`, `forwarded`, `traceparent`, `x-forwarded-network`) read
//! from a header map as the server does: round trips, and `from_map` agrees with `FromStr`.
//! The body is shared with the stable replay (`tests/offline/fuzz_corpus.rs`); seeds in
//! `fuzz/corpus/hbone_headers/`.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../tests/offline/fuzz_corpus/targets.rs"]
mod targets;

fuzz_target!(|data: &[u8]| {
    targets::hbone_headers(data);
});

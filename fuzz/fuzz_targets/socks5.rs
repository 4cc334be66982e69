//! Fuzz target: the SOCKS5 negotiation over an in-memory client: reads exactly the greeting and
//! request, answers at most once, reaches the address asked for.
//! The body is shared with the stable replay (`tests/offline/fuzz_corpus.rs`); seeds in
//! `fuzz/corpus/socks5/`.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../tests/offline/fuzz_corpus/targets.rs"]
mod targets;

fuzz_target!(|data: &[u8]| {
    targets::socks5(data);
});

//! Fuzz target: the PROXY v2 header builder's inputs (addresses, identity): the header parses
//! back with `ppp` to the same addresses and identity TLV.
//! The body is shared with the stable replay (`tests/offline/fuzz_corpus.rs`); seeds in
//! `fuzz/corpus/proxy_protocol/`.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../tests/offline/fuzz_corpus/targets.rs"]
mod targets;

fuzz_target!(|data: &[u8]| {
    targets::proxy_protocol(data);
});

//! Fuzz target: ZDS frames from the node agent: decoded, converted and run through the state
//! machine as the workload manager does; checks the protocol's promises (wire.md §2.2).
//! The body is shared with the stable replay (`tests/offline/fuzz_corpus.rs`); seeds in
//! `fuzz/corpus/zds/`.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../tests/offline/fuzz_corpus/targets.rs"]
mod targets;

fuzz_target!(|data: &[u8]| {
    targets::zds(data);
});

//! Fuzz target: arbitrary bytes decoded as an `istio.workload.Address` and as an
//! `istio.security.Authorization`, then converted to domain types. Must never panic; errors are
//! fine. The seed corpus is `fuzz/corpus/xds_convert/`, replayed on stable by
//! `tests/offline/xds_fuzz_corpus.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ambit::xds::decode_resource(ambit::xds::convert::ADDRESS_TYPE_URL, "fuzz", data);
    let _ = ambit::xds::decode_resource(ambit::xds::convert::AUTHORIZATION_TYPE_URL, "fuzz", data);
});

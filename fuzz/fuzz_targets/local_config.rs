//! Fuzzes the local config parser, which includes the policy conversion (string matches,
//! CIDRs, ports, rule nesting): any input must give a config or a one-line error, never a
//! panic. (The xDS proto→policy conversion is not on `main` yet; when it lands it gets its own
//! target here.)
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match ambit::xds::local::parse(text, "fuzz") {
            Ok(config) => {
                let _ = config.into_update();
            }
            Err(e) => assert!(!e.to_string().contains('\n')),
        }
    }
});

//! The `ambit` binary: configuration from the environment, then the app until shutdown.

#![deny(unsafe_code)]

use std::process::ExitCode;

use ambit::config::Config;
use ambit::telemetry;

/// jemalloc instead of glibc malloc. HTTP/2 gives every received DATA frame its own buffer
/// (up to the peer's chunk size, 256 KiB here); glibc returned those to the kernel on free
/// (heap trimming, `madvise`) and page-faulted them back on the next frame, about 12% of the
/// proxies' CPU on a bulk HBONE flow. jemalloc keeps freed pages for reuse and purges them
/// lazily. See bench/profiles/.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ambit: {e}");
            return ExitCode::from(2);
        }
    };
    let log = match telemetry::init(config.log_format, &config.log_filter) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ambit: {e}");
            return ExitCode::from(2);
        }
    };
    match ambit::app::run(config, log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes, for people and for log scrapers alike.
            eprintln!("ambit: {e:#}");
            ExitCode::from(1)
        }
    }
}

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

/// jemalloc's start-up options (read once, before the first allocation): heap profiling built in
/// but inactive until `/debug/pprof/heap/profiling?activate=true`, then one sample per 512 KiB
/// allocated (`lg_prof_sample:19`), as ztunnel. The symbol carries the `_rjem_` prefix of the
/// prefixed jemalloc that tikv-jemallocator builds.
#[allow(unsafe_code)]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: MallocConf =
    MallocConf(c"prof:true,prof_active:false,lg_prof_sample:19".as_ptr());

/// A C string pointer jemalloc reads as `const char *malloc_conf`.
#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);

// SAFETY: the pointer is to a static, immutable C string literal.
#[allow(unsafe_code)]
unsafe impl Sync for MallocConf {}

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

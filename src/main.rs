//! The `ambit` binary: configuration from the environment, then the app until shutdown.
//!
//! Arguments as ztunnel takes them: none, or `proxy` (Istio's chart runs `proxy ztunnel`);
//! `version` and `help` print and exit; `ctl ...` is the operator's client ([`ambit::ctl`]).

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

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Proxy,
    /// `ctl ...`: the arguments after `ctl`.
    Ctl(Vec<String>),
    Version,
    Help,
}

/// `[]`, `[proxy]` and `[proxy, ztunnel]` run the proxy (ztunnel names the proxy kind after
/// `proxy`; `ztunnel` is the only kind); anything else is a usage error.
fn command(args: &[String]) -> Result<Command, String> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        [] | ["proxy"] | ["proxy", "ztunnel"] => Ok(Command::Proxy),
        ["version"] => Ok(Command::Version),
        ["ctl", rest @ ..] => Ok(Command::Ctl(rest.iter().map(|s| s.to_string()).collect())),
        ["help"] | ["--help"] | ["-h"] => Ok(Command::Help),
        ["proxy", "ztunnel", extra, ..] => Err(format!(
            "unexpected argument {extra:?} after `proxy ztunnel`"
        )),
        ["proxy", kind, ..] => Err(format!(
            "unknown proxy kind {kind:?}: expected `proxy` or `proxy ztunnel`"
        )),
        [first, ..] => Err(format!(
            "unknown command {first:?}: expected `proxy` (default), `ctl`, `version` or `help`"
        )),
    }
}

const USAGE: &str = "usage: ambit [proxy [ztunnel] | ctl ... | version | help]
  proxy (default)  run the node proxy, configured from the environment (ztunnel's variables)
  ctl              inspect a running node proxy through its admin API (`ambit ctl --help`)
  version          print the version
  help             print this help";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match command(&args) {
        Ok(Command::Proxy) => {}
        Ok(Command::Ctl(args)) => return ambit::ctl::main(&args),
        Ok(Command::Version) => {
            println!("ambit {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Ok(Command::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("ambit: {e}");
            return ExitCode::from(2);
        }
    }
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
    telemetry::set_authz_policy_info_logging(config.authz_policy_info_logging);
    match ambit::app::run(config, log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes, for people and for log scrapers alike.
            eprintln!("ambit: {e:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, String> {
        command(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn ztunnel_arguments_run_the_proxy_and_others_are_refused() {
        for ok in [&[][..], &["proxy"], &["proxy", "ztunnel"]] {
            assert_eq!(parse(ok), Ok(Command::Proxy), "{ok:?}");
        }
        assert_eq!(parse(&["version"]), Ok(Command::Version));
        assert_eq!(parse(&["help"]), Ok(Command::Help));
        assert_eq!(
            parse(&["proxy", "sidecar"]),
            Err("unknown proxy kind \"sidecar\": expected `proxy` or `proxy ztunnel`".into())
        );
        assert_eq!(
            parse(&["proxy", "ztunnel", "-v"]),
            Err("unexpected argument \"-v\" after `proxy ztunnel`".into())
        );
        assert_eq!(
            parse(&["--proxy"]),
            Err(
                "unknown command \"--proxy\": expected `proxy` (default), `ctl`, `version` or `help`"
                    .into()
            )
        );
    }
}

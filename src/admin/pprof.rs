//! Profiling endpoints of the admin server, with ztunnel's parameters, status codes and error
//! lines (`go tool pprof` and Istio's debug tooling read them):
//!
//! - `/debug/pprof/profile?seconds=1..300&frequency=1..1000`: a CPU profile (SIGPROF sampling,
//!   defaults 10 s at 100 Hz) as pprof protobuf.
//! - `/debug/pprof/heap`: the live heap sampled by jemalloc since profiling was activated, as
//!   gzipped pprof protobuf (500 while profiling is not active).
//! - `/debug/pprof/heap/profiling?activate=true|false`: turn heap sampling on or off; without
//!   the parameter, say whether it is on.
//!
//! Heap profiling needs jemalloc to have started with `prof:true` (the `ambit` binary's
//! `malloc_conf`); a process without it answers 500 "... not enabled".

use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;

use super::text;

/// The CPU profile for `query` (`seconds`, `frequency`), after sampling for that long.
pub(super) async fn cpu_profile(query: Option<&str>) -> Response<Full<Bytes>> {
    let params = super::ops::query_params(query);
    let seconds = match params.get("seconds").map(|s| s.parse::<u64>()) {
        None => 10,
        Some(Ok(s)) if (1..=300).contains(&s) => s,
        Some(_) => {
            return text(
                StatusCode::BAD_REQUEST,
                "invalid seconds value; expected 1-300\n".into(),
            );
        }
    };
    // 100 Hz, as Go's profiler: SIGPROF does not queue, so higher rates lose samples on a busy
    // multi-core process rather than gain precision.
    let frequency = match params.get("frequency").map(|s| s.parse::<i32>()) {
        None => 100,
        Some(Ok(f)) if (1..=1000).contains(&f) => f,
        Some(_) => {
            return text(
                StatusCode::BAD_REQUEST,
                "invalid frequency value; expected 1-1000\n".into(),
            );
        }
    };
    // Unwinding through these libraries' frames can fault; their samples end at the caller.
    let guard = match pprof::ProfilerGuardBuilder::default()
        .frequency(frequency)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
    {
        Ok(g) => g,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let encoded = guard
        .report()
        .build()
        .and_then(|report| report.pprof())
        .map_err(|e| e.to_string())
        .and_then(|profile| {
            use pprof::protos::Message;
            profile.write_to_bytes().map_err(|e| e.to_string())
        });
    match encoded {
        Ok(body) => bytes(body),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// The heap profile, if heap profiling is active.
pub(super) async fn heap_profile() -> Response<Full<Bytes>> {
    let Some(ctl) = jemalloc_pprof::PROF_CTL.as_ref() else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "heap profiling is not enabled".into(),
        );
    };
    let mut ctl = ctl.lock().await;
    if !ctl.activated() {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "heap profiling not active; activate with /debug/pprof/heap/profiling?activate=true"
                .into(),
        );
    }
    // Writes jemalloc's dump to a temporary file and converts it: brief blocking I/O on the
    // control runtime, which serves nothing latency-critical.
    match ctl.dump_pprof() {
        Ok(body) => bytes(body),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Turns heap sampling on (`activate=true`) or off (`activate=false`); answers whether it is on.
/// Only allocations made while it is on appear in `/debug/pprof/heap`.
pub(super) async fn heap_toggle(query: Option<&str>) -> Response<Full<Bytes>> {
    let Some(ctl) = jemalloc_pprof::PROF_CTL.as_ref() else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "jemalloc profiling is not enabled".into(),
        );
    };
    let params = super::ops::query_params(query);
    let mut ctl = ctl.lock().await;
    let changed = match params.get("activate").map(String::as_str) {
        Some("true") => ctl.activate(),
        Some("false") => ctl.deactivate(),
        Some(v) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("invalid activate value {v:?}; expected true or false\n"),
            );
        }
        None => Ok(()),
    };
    if let Err(e) = changed {
        return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    text(
        StatusCode::OK,
        format!("heap profiling active: {}\n", ctl.activated()),
    )
}

fn bytes(body: Vec<u8>) -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::from(body)))
}

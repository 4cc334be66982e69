//! The admin server's operating endpoints answer as real ztunnel's do: `/logging` (listing,
//! adding levels, reset, bad levels, wrong method) and the profiling endpoints (bad
//! parameters, heap profiling off and on, the profiles themselves). The expected answers were
//! recorded from ztunnel (`tests/data/compat/ztunnel-admin-responses.jsonl`) and are replayed
//! here in the same order against ambit, started with ztunnel's initial log filter.

use crate::compat_support;

use compat_support::*;
use serde_json::Value;

// The test process allocates through jemalloc with heap profiling built in and inactive, as
// the `ambit` binary does (src/main.rs), so `/debug/pprof/heap` has something to show.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[allow(unsafe_code)]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: MallocConf =
    MallocConf(c"prof:true,prof_active:false,lg_prof_sample:19".as_ptr());

#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);

// SAFETY: a pointer to a static, immutable C string literal.
#[allow(unsafe_code)]
unsafe impl Sync for MallocConf {}

/// ztunnel's log filter when `RUST_LOG` is unset.
const ZTUNNEL_INITIAL_FILTER: &str = "hickory_server::server=off,info";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_answers_as_ztunnel_does() {
    let (addr, _log) = start_admin_with_filter(empty_sources(), ZTUNNEL_INITIAL_FILTER).await;
    let recorded = read_data("ztunnel-admin-responses.jsonl");
    let mut checked = 0;
    for line in recorded
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let want: Value = serde_json::from_str(line).unwrap();
        let (method, path) = (
            want["method"].as_str().unwrap(),
            want["path"].as_str().unwrap(),
        );
        let got = request(addr, method, path).await;
        let what = format!("{method} {path}");
        assert_eq!(
            u64::from(got.status),
            want["status"].as_u64().unwrap(),
            "{what}: {}",
            got.text()
        );
        match want["body"].as_str().unwrap() {
            "text" => {
                let text = got.text();
                let first = text.split('\n').next().unwrap_or_default();
                assert_eq!(first, want["first_line"].as_str().unwrap(), "{what}");
            }
            "pprof" => assert_pprof(&got.body, &what),
            "json" => {
                let v: Value = serde_json::from_slice(&got.body).unwrap();
                assert!(v.is_object(), "{what}");
            }
            "gzip-pprof" => {
                assert_eq!(&got.body[..2], b"\x1f\x8b", "{what}: gzip magic");
                let mut raw = Vec::new();
                std::io::Read::read_to_end(
                    &mut flate2::read::GzDecoder::new(&got.body[..]),
                    &mut raw,
                )
                .unwrap();
                assert_pprof(&raw, &what);
            }
            other => panic!("unknown body kind {other}"),
        }
        checked += 1;
    }
    assert!(checked > 30, "only {checked} recorded answers");
}

/// A pprof `Profile` message with sample types and a string table.
fn assert_pprof(body: &[u8], what: &str) {
    use pprof::protos::Message;
    let profile = pprof::protos::Profile::parse_from_bytes(body)
        .unwrap_or_else(|e| panic!("{what}: not a pprof profile: {e}"));
    assert!(!profile.sample_type.is_empty(), "{what}: no sample types");
    assert_eq!(
        profile.string_table.first().map(String::as_str),
        Some(""),
        "{what}"
    );
}

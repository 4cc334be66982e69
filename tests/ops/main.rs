//! Operating ambit, one test binary: metrics and the access log after known transfers, the
//! admin port, `ambit ctl` on a lab, draining, in-pod operation, metric labels, and the
//! dashboards' queries on a real Prometheus; the admin server's operating endpoints against
//! ztunnel's recorded answers (`compat_admin`).
//!
//! `compat_admin` makes jemalloc (heap profiling built in, inactive until that test turns it on)
//! this process's allocator, as the `ambit` binary does, so `/debug/pprof/heap` has something
//! to show. The other tests here do little allocating in-process (their proxies are child
//! processes); the fuzz replays of `offline` ran ~1.5 s slower under it, hence this binary.

#[path = "../common/mod.rs"]
mod common;
#[path = "../compat_support/mod.rs"]
mod compat_support;

mod admin_inpod;
mod compat_admin;
mod ctl;
mod drain;
mod inpod;
mod labels;
mod prom;
mod reporting;

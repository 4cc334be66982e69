//! The data path end to end, one test binary: HBONE over h2 and QUIC between pod namespaces
//! (dedicated and in-pod mode), authorization, services and waypoints, multi-network, DNS,
//! trust domains, and the metric families against ztunnel's recording. Each module was once a
//! binary of its own (`tests/e2e_<module>.rs`).
//!
//! Every test builds its own namespaces with run-unique names and its own ambit processes; the
//! harness runs as many at once as there are cores (`RUST_TEST_THREADS` overrides).

#[path = "../common/mod.rs"]
mod common;

mod compat_metrics;
mod dns;
mod hbone;
mod hbone_api;
mod inpod;
mod multinet;
mod quic;
mod quic_badinput;
mod quic_inpod;
mod rbac;
mod svc;
mod trust_domain;
mod waypoint;

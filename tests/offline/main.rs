//! The checks that need no root and no namespaces, one test binary: the module ladder
//! (`layering`), the fuzz corpora replayed on stable, ambit's admin answers and `/config_dump`
//! against ztunnel's recordings, and the deploy manifests' environment.
//!
//! `compat_admin` makes jemalloc (with heap profiling built in, inactive) this process's
//! allocator, as the `ambit` binary does, so `/debug/pprof/heap` has something to show; no other
//! test here depends on the allocator or on the profiler's state.

#[path = "../compat_support/mod.rs"]
mod compat_support;

mod compat_admin;
mod compat_config_dump;
mod deploy_env;
mod fuzz_corpus;
mod layering;
mod xds_fuzz_corpus;

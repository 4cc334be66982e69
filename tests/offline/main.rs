//! The checks that need no root and no namespaces, one test binary: the module ladder
//! (`layering`), the fuzz corpora replayed on stable, `/config_dump` against ztunnel's
//! recording, and the deploy manifests' environment.

#[path = "../compat_support/mod.rs"]
mod compat_support;

mod compat_config_dump;
mod deploy_env;
mod fuzz_corpus;
mod layering;
mod xds_fuzz_corpus;

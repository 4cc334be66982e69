//! The lab, one test binary: its plumbing without ambit (`harness`, `plumbing`), the whole
//! mesh on it (`scenarios`, with `AMBIT_LAB_PROXY=<binary>` for another proxy), the Helm
//! chart's environment on it (`chart`), and the differential comparison with ztunnel's
//! recorded observation (`compat`).

#[path = "../common/mod.rs"]
mod common;

mod chart;
mod compat;
mod harness;
mod plumbing;
mod scenarios;

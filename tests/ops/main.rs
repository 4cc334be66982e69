//! Operating ambit, one test binary: metrics and the access log after known transfers, the
//! admin port, `ambit ctl` on a lab, draining, in-pod operation, metric labels, and the
//! dashboards' queries on a real Prometheus.

#[path = "../common/mod.rs"]
mod common;
#[path = "../compat_support/mod.rs"]
mod compat_support;

mod admin_inpod;
mod ctl;
mod drain;
mod inpod;
mod labels;
mod prom;
mod reporting;

//! `process_open_fds` and `process_max_fds` (ztunnel's), and `ambit_process_cpu_seconds_total`
//! and `ambit_process_resident_memory_bytes` (the standard process collector's two, in ambit's
//! own namespace since ztunnel has neither; for the proxies' dashboards), sampled when a scrape
//! encodes the registry.
//!
//! Sampling reads `/proc/self/fd`, the `RLIMIT_NOFILE` soft limit, `getrusage` (user + system
//! time of every thread) and `VmRSS` of `/proc/self/status`; a failure leaves the last value in
//! place rather than failing the scrape.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Default)]
pub(super) struct ProcessMetrics {
    open_fds: Gauge,
    max_fds: Gauge,
    cpu_seconds: Counter<f64, AtomicU64>,
    /// The CPU time already counted (f64 bits): the counter moves by the difference.
    cpu_counted: Arc<AtomicU64>,
    resident_memory: Gauge,
}

impl ProcessMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let m = ProcessMetrics::default();
        let process = registry.sub_registry_with_prefix("process");
        process.register(
            "open_fds",
            "Number of open file descriptors",
            m.open_fds.clone(),
        );
        process.register(
            "max_fds",
            "Maximum number of open file descriptors",
            m.max_fds.clone(),
        );
        let own = registry
            .sub_registry_with_prefix("ambit")
            .sub_registry_with_prefix("process");
        own.register(
            "cpu_seconds",
            "Total user and system CPU time spent in seconds",
            m.cpu_seconds.clone(),
        );
        own.register(
            "resident_memory_bytes",
            "Resident memory size in bytes",
            m.resident_memory.clone(),
        );
        m.sample();
        m
    }

    pub(super) fn sample(&self) {
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            // The directory handle itself is one of the entries; it is not the process's.
            let n = dir.count().saturating_sub(1);
            self.open_fds.set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        if let Ok((soft, _hard)) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        {
            self.max_fds.set(i64::try_from(soft).unwrap_or(i64::MAX));
        }
        use nix::sys::resource::{UsageWho, getrusage};
        if let Ok(u) = getrusage(UsageWho::RUSAGE_SELF) {
            let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            let total = secs(u.user_time()) + secs(u.system_time());
            // Concurrent scrapes: only the one that moves the mark adds the difference.
            let prev = self.cpu_counted.load(Ordering::Relaxed);
            if total > f64::from_bits(prev)
                && self
                    .cpu_counted
                    .compare_exchange(prev, total.to_bits(), Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                self.cpu_seconds.inc_by(total - f64::from_bits(prev));
            }
        }
        if let Some(kib) = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| vm_rss_kib(&s))
        {
            self.resident_memory
                .set(i64::try_from(kib.saturating_mul(1024)).unwrap_or(i64::MAX));
        }
    }
}

/// `VmRSS:    1234 kB` of `/proc/<pid>/status`, in KiB.
fn vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

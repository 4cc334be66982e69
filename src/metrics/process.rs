//! `process_open_fds` and `process_max_fds`, sampled when a scrape encodes the registry.
//!
//! Sampling reads `/proc/self/fd` and the `RLIMIT_NOFILE` soft limit; a failure leaves the last
//! value in place rather than failing the scrape.

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Default)]
pub(super) struct ProcessMetrics {
    open_fds: Gauge,
    max_fds: Gauge,
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
    }
}

//! The data runtime's scheduler families, read from `tokio::runtime::Handle::metrics()` when a
//! scrape encodes the registry (a prometheus-client [`Collector`]), so nothing is polled between
//! scrapes.
//!
//! Only tokio's stable metrics are used (no `tokio_unstable`): `tokio_num_workers`,
//! `tokio_global_queue_depth`, `tokio_num_alive_tasks` (gauges) and, per worker,
//! `tokio_worker_total_busy_duration_seconds_total`, `tokio_worker_park_count_total`,
//! `tokio_worker_park_unpark_count_total` (counters). Tokio offers the per-worker counters only
//! on targets with 64-bit atomics; elsewhere those three families are absent.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::runtime::Handle;

/// Reads one runtime's metrics at scrape time.
#[derive(Debug)]
pub(super) struct RuntimeCollector {
    handle: Handle,
}

impl RuntimeCollector {
    pub(super) fn new(handle: Handle) -> Self {
        RuntimeCollector { handle }
    }
}

/// A count as a gauge value; counts beyond `i64::MAX` cannot happen on real hardware.
fn gauge(n: usize) -> ConstGauge {
    ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX))
}

impl Collector for RuntimeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = self.handle.metrics();
        let workers = m.num_workers();
        for (name, help, value) in [
            (
                "tokio_num_workers",
                "The number of worker threads used by the runtime",
                workers,
            ),
            (
                "tokio_global_queue_depth",
                "The number of tasks currently scheduled in the runtime's global queue",
                m.global_queue_depth(),
            ),
            (
                "tokio_num_alive_tasks",
                "The current number of alive tasks in the runtime",
                m.num_alive_tasks(),
            ),
        ] {
            let g = gauge(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        #[cfg(target_has_atomic = "64")]
        per_worker::encode(&m, workers, &mut encoder)?;
        Ok(())
    }
}

#[cfg(target_has_atomic = "64")]
mod per_worker {
    use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
    use prometheus_client::metrics::MetricType;
    use prometheus_client::metrics::counter::ConstCounter;
    use prometheus_client::registry::Unit;
    use tokio::runtime::RuntimeMetrics;

    /// One counter family labelled by `worker` (the worker's index, 0-based).
    fn family<V: prometheus_client::encoding::EncodeCounterValue>(
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        unit: Option<&Unit>,
        workers: usize,
        value: impl Fn(usize) -> V,
    ) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(name, help, unit, MetricType::Counter)?;
        for worker in 0..workers {
            let labels = [("worker", worker)];
            ConstCounter::new(value(worker)).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }

    pub(super) fn encode(
        m: &RuntimeMetrics,
        workers: usize,
        encoder: &mut DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        family(
            encoder,
            "tokio_worker_total_busy_duration",
            "The amount of time the given worker thread has been busy",
            Some(&Unit::Seconds),
            workers,
            |w| m.worker_total_busy_duration(w).as_secs_f64(),
        )?;
        family(
            encoder,
            "tokio_worker_park_count",
            "The total number of times the given worker thread has parked",
            None,
            workers,
            |w| m.worker_park_count(w),
        )?;
        family(
            encoder,
            "tokio_worker_park_unpark_count",
            "The total number of times the given worker thread has parked and unparked",
            None,
            workers,
            |w| m.worker_park_unpark_count(w),
        )
    }
}

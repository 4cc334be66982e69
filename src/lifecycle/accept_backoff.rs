//! Pacing of an accept loop whose `accept` keeps failing (out of file descriptors: `EMFILE`,
//! `ENFILE`; out of memory): retrying at once spins a core and writes a log line per attempt,
//! hundreds of thousands a second. Instead the loop pauses, doubling from [`FIRST_PAUSE`] up to
//! [`MAX_PAUSE`], and reports at most once per [`REPORT_EVERY`] with the number of failures since
//! the last report.
//!
//! Invariant: a successful accept resets the pause, so a transient failure costs one short pause.

use std::time::Duration;

use tokio::time::Instant;

pub const FIRST_PAUSE: Duration = Duration::from_millis(5);
pub const MAX_PAUSE: Duration = Duration::from_secs(1);
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

/// What to do after a failed accept.
#[derive(Debug, PartialEq, Eq)]
pub struct Failed {
    /// How long to wait before accepting again.
    pub pause: Duration,
    /// `Some(n)` when a report is due: `n` failures since the last one (this one included).
    pub report: Option<u64>,
}

#[derive(Debug, Default)]
pub struct AcceptBackoff {
    next_pause: Option<Duration>,
    unreported: u64,
    last_report: Option<Instant>,
}

impl AcceptBackoff {
    pub fn failed(&mut self, now: Instant) -> Failed {
        let pause = self.next_pause.unwrap_or(FIRST_PAUSE);
        self.next_pause = Some((pause * 2).min(MAX_PAUSE));
        self.unreported += 1;
        let due = self
            .last_report
            .is_none_or(|at| now.saturating_duration_since(at) >= REPORT_EVERY);
        let report = due.then(|| {
            self.last_report = Some(now);
            std::mem::take(&mut self.unreported)
        });
        Failed { pause, report }
    }

    pub fn succeeded(&mut self) {
        self.next_pause = None;
    }

    /// Records a failed accept on `listener` now: logs a WARN when a report is due and returns
    /// how long to pause before the next accept.
    pub fn on_error(&mut self, listener: &str, error: &std::io::Error) -> Duration {
        let failed = self.failed(Instant::now());
        if let Some(failures) = failed.report {
            tracing::warn!(
                listener,
                error = %error,
                failures,
                pause_ms = failed.pause.as_millis() as u64,
                "accept failed"
            );
        }
        failed.pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap_and_reset_on_success() {
        let now = Instant::now();
        let mut b = AcceptBackoff::default();
        let pauses: Vec<u64> = (0..10)
            .map(|_| b.failed(now).pause.as_millis() as u64)
            .collect();
        assert_eq!(pauses, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.succeeded();
        assert_eq!(b.failed(now).pause, FIRST_PAUSE);
    }

    #[test]
    fn reports_once_per_interval_with_the_count() {
        let start = Instant::now();
        let mut b = AcceptBackoff::default();
        assert_eq!(
            b.failed(start).report,
            Some(1),
            "the first failure is reported"
        );
        for i in 1..=99 {
            let at = start + Duration::from_millis(i * 50);
            assert_eq!(b.failed(at).report, None, "failure {i} is only counted");
        }
        // Success does not reset the report interval: a flapping loop stays quiet too.
        b.succeeded();
        assert_eq!(b.failed(start + REPORT_EVERY).report, Some(100));
        assert_eq!(b.failed(start + REPORT_EVERY).report, None);
    }
}

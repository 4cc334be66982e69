//! Logging: a `tracing` subscriber writing Istio's log lines (text or JSON, see [`format`]) to
//! stdout, as ztunnel does, filtered by a `RUST_LOG`-style directive string that can be
//! replaced at run time (for `/logging`).
//!
//! Owns the global subscriber. Invariants: the filter in force and the string reported by
//! [`LogHandle::current`] always agree (a rejected filter changes neither), and this module
//! reads no environment variables itself: `config` passes the filter in.

pub mod format;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::time::SystemTime;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

/// The line format of log output (`LOG_FORMAT`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Plain,
    Json,
}

/// Changes the log filter of a running process.
#[derive(Clone)]
pub struct LogHandle {
    reload: reload::Handle<EnvFilter, Registry>,
    current: Arc<Mutex<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter {filter:?}: {reason}")]
    BadFilter { filter: String, reason: String },
    #[error("cannot install the log subscriber: {0}")]
    Install(String),
    #[error("cannot apply log filter {filter:?}: {reason}")]
    Reload { filter: String, reason: String },
}

/// Installs the global subscriber writing to stdout. `filter` is a `RUST_LOG`-style directive
/// string (`info`, `ambit::proxy=debug,warn`). Fails on a bad filter or if a global subscriber
/// is already installed.
pub fn init(format: LogFormat, filter: &str) -> Result<LogHandle, TelemetryError> {
    use tracing_subscriber::util::SubscriberInitExt;
    let (subscriber, handle) = subscriber(format, filter, std::io::stdout)?;
    // Also bridges the `log` crate (rustls logs through it), so those lines are in the same
    // layout, as in ztunnel's log.
    subscriber
        .try_init()
        .map_err(|e| TelemetryError::Install(e.to_string()))?;
    Ok(handle)
}

/// The subscriber `init` installs, with the output sink as a parameter (tests capture it).
pub fn subscriber<W>(
    format: LogFormat,
    filter: &str,
    writer: W,
) -> Result<(impl tracing::Subscriber + Send + Sync + 'static, LogHandle), TelemetryError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let (filter_layer, reload) = reload::Layer::new(parse_filter(filter)?);
    let fmt_layer = match format {
        LogFormat::Plain => tracing_subscriber::fmt::layer()
            .event_format(format::IstioText { timer: SystemTime })
            .fmt_fields(format::TextFields)
            .with_writer(writer)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .event_format(format::IstioJson { timer: SystemTime })
            .fmt_fields(format::JsonFields)
            .with_writer(writer)
            .boxed(),
    };
    let subscriber = Registry::default().with(filter_layer).with(fmt_layer);
    let handle = LogHandle {
        reload,
        current: Arc::new(Mutex::new(filter.to_string())),
    };
    Ok((subscriber, handle))
}

fn parse_filter(filter: &str) -> Result<EnvFilter, TelemetryError> {
    EnvFilter::builder()
        .parse(filter)
        .map_err(|e| TelemetryError::BadFilter {
            filter: filter.to_string(),
            reason: e.to_string(),
        })
}

/// Whether authorization-policy decisions are logged at `info` rather than `debug`
/// (`AUTHZ_POLICY_INFO_LOGGING`); `config` sets it at startup.
static AUTHZ_POLICY_INFO: AtomicBool = AtomicBool::new(false);

/// Sets the level of authorization-policy decision logs: `info` when `on`, else `debug`.
pub fn set_authz_policy_info_logging(on: bool) {
    AUTHZ_POLICY_INFO.store(on, Ordering::Relaxed);
}

/// The level authorization-policy decisions are logged at.
pub fn authz_policy_level() -> tracing::Level {
    if AUTHZ_POLICY_INFO.load(Ordering::Relaxed) {
        tracing::Level::INFO
    } else {
        tracing::Level::DEBUG
    }
}

// === impl LogHandle ===

impl LogHandle {
    /// Replaces the filter; on error the old one stays in force.
    pub fn set_filter(&self, filter: &str) -> Result<(), TelemetryError> {
        let parsed = parse_filter(filter)?;
        // Held across the reload so concurrent callers cannot leave `current` disagreeing
        // with the filter in force; no await happens here.
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.reload
            .reload(parsed)
            .map_err(|e| TelemetryError::Reload {
                filter: filter.to_string(),
                reason: e.to_string(),
            })?;
        *current = filter.to_string();
        Ok(())
    }

    /// The filter string in force.
    pub fn current(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test can read back.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    impl Buf {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn filters_and_reloads() {
        let buf = Buf::default();
        let (sub, handle) = subscriber(LogFormat::Plain, "info", buf.clone()).unwrap();
        tracing::subscriber::with_default(sub, || {
            tracing::debug!("hidden-1");
            tracing::info!("shown-1");
            handle.set_filter("debug").unwrap();
            tracing::debug!("shown-2");
            let err = handle.set_filter("=[").unwrap_err();
            assert!(matches!(err, TelemetryError::BadFilter { .. }), "{err}");
            assert_eq!(handle.current(), "debug");
            handle.set_filter("warn").unwrap();
            tracing::info!("hidden-2");
        });
        let out = buf.text();
        assert!(out.contains("shown-1") && out.contains("shown-2"), "{out}");
        assert!(!out.contains("hidden"), "{out}");
        assert_eq!(handle.current(), "warn");
    }

    #[test]
    fn json_lines() {
        let buf = Buf::default();
        let (sub, _h) = subscriber(LogFormat::Json, "info", buf.clone()).unwrap();
        tracing::subscriber::with_default(sub, || tracing::info!(peer = "a", "hello"));
        let out = buf.text();
        let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(line["message"], "hello");
        assert_eq!(line["peer"], "a");
        assert_eq!(line["level"], "info");
    }

    #[test]
    fn authz_policy_decisions_log_at_info_only_when_asked() {
        assert_eq!(authz_policy_level(), tracing::Level::DEBUG);
        set_authz_policy_info_logging(true);
        assert_eq!(authz_policy_level(), tracing::Level::INFO);
        set_authz_policy_info_logging(false);
        assert_eq!(authz_policy_level(), tracing::Level::DEBUG);
    }

    #[test]
    fn bad_initial_filter_is_an_error() {
        assert!(matches!(
            subscriber(LogFormat::Plain, "=[", std::io::sink),
            Err(TelemetryError::BadFilter { .. })
        ));
    }
}

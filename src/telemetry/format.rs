//! Istio's log line layout, as ztunnel writes it, for every event (access lines included).
//!
//! Text: `<time>\t<level>\t<scope>[:<span>{<fields>}]...\t<message>\t<key>=<value> ...`, where
//! time is RFC 3339 UTC with microseconds, the level is lowercase, the scope is the event's
//! target without the crate prefix, and each value is written with `Debug`: strings quoted
//! and escaped, numbers and `%`-recorded (Display) values bare. An event without fields ends
//! after the scope; the message is followed by a tab even when no field comes after it.
//!
//! JSON: one object per line, `level`, `time`, `scope` (the full target) first, then the
//! event's fields in order with their recorded types (numbers and booleans as JSON numbers and
//! booleans, everything else as strings), then one object per enclosing span, keyed by its name.
//!
//! Events bridged from the `log` crate are written under the record's own target and level;
//! their `log.*` metadata fields are left out.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The crate prefix left out of text scopes (ztunnel leaves out its own, `ztunnel::`).
const CRATE_PREFIX: &str = "ambit::";

fn level_str(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warn",
        Level::ERROR => "error",
    }
}

fn is_log_metadata(field: &Field) -> bool {
    field.name().starts_with("log.")
}

/// The text event format; `T` writes the time.
#[derive(Clone, Debug, Default)]
pub struct IstioText<T> {
    pub timer: T,
}

/// The text field format (events and spans).
#[derive(Clone, Copy, Debug, Default)]
pub struct TextFields;

struct TextVisitor<'w> {
    writer: Writer<'w>,
    first: bool,
    res: fmt::Result,
}

impl Visit for TextVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.res.is_err() || is_log_metadata(field) {
            return;
        }
        self.res = if field.name() == "message" {
            write!(self.writer, "{value:?}\t")
        } else {
            let sep = if std::mem::take(&mut self.first) {
                ""
            } else {
                " "
            };
            write!(self.writer, "{sep}{}={value:?}", field.name())
        };
    }
}

impl<'w> FormatFields<'w> for TextFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut v = TextVisitor {
            writer,
            first: true,
            res: Ok(()),
        };
        fields.record(&mut v);
        v.res
    }
}

impl<S, N, T> FormatEvent<S, N> for IstioText<T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    T: FormatTime,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Events bridged from `log` carry the record's target in their fields.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        self.timer.format_time(&mut writer)?;
        let target = meta.target();
        let scope = target.strip_prefix(CRATE_PREFIX).unwrap_or(target);
        write!(writer, "\t{}\t{scope}", level_str(meta.level()))?;
        if let Some(spans) = ctx.event_scope() {
            for span in spans.from_root() {
                write!(writer, ":{}", span.name())?;
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    write!(writer, "{{{fields}}}")?;
                }
            }
        }
        if !meta.fields().is_empty() {
            writer.write_char('\t')?;
        }
        ctx.format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// The JSON event format; `T` writes the time.
#[derive(Clone, Debug, Default)]
pub struct IstioJson<T> {
    pub timer: T,
}

/// The JSON field format: a span's fields as one JSON object.
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonFields;

/// Appends `"key":value` members to a JSON object being written.
struct JsonMembers {
    out: String,
    empty: bool,
}

impl JsonMembers {
    fn new() -> Self {
        JsonMembers {
            out: String::from("{"),
            empty: true,
        }
    }

    fn raw(&mut self, key: &str, json_value: &str) {
        if !std::mem::take(&mut self.empty) {
            self.out.push(',');
        }
        push_json_str(&mut self.out, key);
        self.out.push(':');
        self.out.push_str(json_value);
    }

    fn string(&mut self, key: &str, value: &str) {
        let mut v = String::with_capacity(value.len() + 2);
        push_json_str(&mut v, value);
        self.raw(key, &v);
    }

    fn finish(mut self) -> String {
        self.out.push('}');
        self.out
    }
}

fn push_json_str(out: &mut String, s: &str) {
    // Serializing a `str` cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\"")));
}

impl Visit for JsonMembers {
    fn record_f64(&mut self, field: &Field, value: f64) {
        if !is_log_metadata(field) {
            self.raw(field.name(), &serde_json::Value::from(value).to_string());
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if !is_log_metadata(field) {
            self.raw(field.name(), &value.to_string());
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if !is_log_metadata(field) {
            self.raw(field.name(), &value.to_string());
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if !is_log_metadata(field) {
            self.raw(field.name(), if value { "true" } else { "false" });
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if !is_log_metadata(field) {
            self.string(field.name(), value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if !is_log_metadata(field) {
            self.string(field.name(), &format!("{value:?}"));
        }
    }
}

impl<'w> FormatFields<'w> for JsonFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut v = JsonMembers::new();
        fields.record(&mut v);
        writer.write_str(&v.finish())
    }
}

impl<S, N, T> FormatEvent<S, N> for IstioJson<T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    T: FormatTime,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let mut time = String::with_capacity(28);
        self.timer.format_time(&mut Writer::new(&mut time))?;
        let mut obj = JsonMembers::new();
        obj.string("level", level_str(meta.level()));
        obj.string("time", &time);
        obj.string("scope", meta.target());
        event.record(&mut obj);
        if let Some(spans) = ctx.event_scope() {
            for span in spans.from_root() {
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<N>>()
                    && fields.starts_with('{')
                {
                    obj.raw(span.name(), fields);
                }
            }
        }
        writeln!(writer, "{}", obj.finish())
    }
}

#[cfg(test)]
pub(crate) mod tests;

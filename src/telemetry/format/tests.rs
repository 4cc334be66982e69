use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::layer::SubscriberExt;

use super::*;

/// The time every test line carries.
pub(crate) const T: &str = "2026-12-04T04:05:06.123456Z";

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FixedTime;

impl FormatTime for FixedTime {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        w.write_str(T)
    }
}

/// A sink the test can read back.
#[derive(Clone, Default)]
pub(crate) struct Buf(Arc<Mutex<Vec<u8>>>);

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
    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// Runs `f` with every event (any level) written as Istio text and as Istio JSON; returns both
/// outputs.
pub(crate) fn capture(f: impl Fn()) -> (String, String) {
    let text = Buf::default();
    let sub = tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .event_format(IstioText { timer: FixedTime })
            .fmt_fields(TextFields)
            .with_writer(text.clone()),
    );
    tracing::subscriber::with_default(sub, &f);
    let json = Buf::default();
    let sub = tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .event_format(IstioJson { timer: FixedTime })
            .fmt_fields(JsonFields)
            .with_writer(json.clone()),
    );
    tracing::subscriber::with_default(sub, &f);
    (text.text(), json.text())
}

#[test]
fn text_layout_types_and_escapes() {
    let addr: std::net::SocketAddr = "10.0.0.1:80".parse().unwrap();
    let (text, json) = capture(|| {
        tracing::warn!(
            target: "ambit::proxy::inbound",
            src = %addr,
            name = "a \"b\"\tc",
            n = 7u64,
            neg = -3i64,
            ok = true,
            dbg = ?Some(1),
            "something {} happened",
            "odd"
        )
    });
    assert_eq!(
        text,
        format!(
            "{T}\twarn\tproxy::inbound\tsomething odd happened\tsrc=10.0.0.1:80 \
             name=\"a \\\"b\\\"\\tc\" n=7 neg=-3 ok=true dbg=Some(1)\n"
        )
    );
    assert_eq!(
        json,
        format!(
            "{{\"level\":\"warn\",\"time\":\"{T}\",\"scope\":\"ambit::proxy::inbound\",\
             \"message\":\"something odd happened\",\"src\":\"10.0.0.1:80\",\
             \"name\":\"a \\\"b\\\"\\tc\",\"n\":7,\"neg\":-3,\"ok\":true,\"dbg\":\"Some(1)\"}}\n"
        )
    );
}

#[test]
fn message_only_and_fields_only() {
    let (text, json) = capture(|| {
        tracing::info!(target: "xds", "connected");
        tracing::error!(target: "xds", attempt = 2u64);
    });
    assert_eq!(
        text,
        format!("{T}\tinfo\txds\tconnected\t\n{T}\terror\txds\tattempt=2\n")
    );
    assert_eq!(
        json,
        format!(
            "{{\"level\":\"info\",\"time\":\"{T}\",\"scope\":\"xds\",\"message\":\"connected\"}}\n\
             {{\"level\":\"error\",\"time\":\"{T}\",\"scope\":\"xds\",\"attempt\":2}}\n"
        )
    );
}

#[test]
fn spans_join_the_scope() {
    let (text, json) = capture(|| {
        let outer = tracing::info_span!("outbound", id = "x1");
        let _o = outer.enter();
        let inner = tracing::info_span!("pool");
        let _i = inner.enter();
        tracing::debug!(target: "ambit::hbone", "dialing");
    });
    assert_eq!(
        text,
        format!("{T}\tdebug\thbone:outbound{{id=\"x1\"}}:pool\tdialing\t\n")
    );
    assert_eq!(
        json,
        format!(
            "{{\"level\":\"debug\",\"time\":\"{T}\",\"scope\":\"ambit::hbone\",\
             \"message\":\"dialing\",\"outbound\":{{\"id\":\"x1\"}},\"pool\":{{}}}}\n"
        )
    );
}

#[test]
fn time_is_rfc3339_utc_with_microseconds() {
    let mut s = String::new();
    tracing_subscriber::fmt::time::SystemTime
        .format_time(&mut Writer::new(&mut s))
        .unwrap();
    // 2026-12-04T04:05:06.123456Z
    let b = s.as_bytes();
    assert_eq!(s.len(), 27, "{s}");
    assert_eq!(
        (b[4], b[7], b[10], b[13], b[16], b[19], b[26]),
        (b'-', b'-', b'T', b':', b':', b'.', b'Z'),
        "{s}"
    );
    assert!(s[20..26].bytes().all(|c| c.is_ascii_digit()), "{s}");
}

#[test]
fn log_crate_records_take_their_own_target_and_drop_log_fields() {
    use tracing_log::log;
    let (text, json) = capture(|| {
        let record = log::Record::builder()
            .target("rustls::client::hs")
            .level(log::Level::Warn)
            .module_path(Some("rustls::client::hs"))
            .file(Some("hs.rs"))
            .line(Some(7))
            .args(format_args!("Not resuming"))
            .build();
        tracing_log::format_trace(&record).unwrap();
    });
    assert_eq!(
        text,
        format!("{T}\twarn\trustls::client::hs\tNot resuming\t\n")
    );
    assert_eq!(
        json,
        format!(
            "{{\"level\":\"warn\",\"time\":\"{T}\",\"scope\":\"rustls::client::hs\",\
             \"message\":\"Not resuming\"}}\n"
        )
    );
}

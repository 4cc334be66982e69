//! Unit tests of the registry: names, label sets and both exposition formats.

use super::*;

#[test]
fn counters_are_exposed_with_their_names() {
    let m = Metrics::new();
    m.proxy.hbone_connections_opened.inc();
    m.proxy.inbound_handshakes.inc_by(3);
    let text = m.encode().unwrap();
    assert!(
        text.contains("ambit_hbone_connections_opened_total 1\n"),
        "{text}"
    );
    assert!(
        text.contains("ambit_hbone_inbound_handshakes_total 3\n"),
        "{text}"
    );
    assert!(
        text.contains("ambit_hbone_inbound_handshake_failures_total 0\n"),
        "{text}"
    );
    m.proxy.connections_closed_by_policy.inc();
    let text = m.encode().unwrap();
    assert!(
        text.contains("ambit_connections_closed_by_policy_total 1\n"),
        "{text}"
    );
    assert!(
        text.contains("ambit_connections_denied_total 0\n"),
        "{text}"
    );
    m.workload_manager.active_proxies.set(2);
    m.workload_manager.proxies_started.inc();
    let text = m.encode().unwrap();
    for line in [
        "workload_manager_active_proxy_count 2\n",
        "workload_manager_pending_proxy_count 0\n",
        "workload_manager_proxies_started_total 1\n",
        "workload_manager_proxies_stopped_total 0\n",
    ] {
        assert!(text.contains(line), "{line}: {text}");
    }
}

fn labels(reporter: Reporter) -> TrafficLabels {
    let mut l = TrafficLabels::unknown(reporter);
    l.source_workload = "client".into();
    l.destination_workload = "server".into();
    l
}

#[test]
fn connection_metrics_balance_and_count_bytes_live() {
    let m = Metrics::with_build_tag("1.2.3");
    {
        let mut c = ConnectionMetrics::open(&m.proxy.traffic, labels(Reporter::Source));
        let (req, resp) = c.byte_counters();
        req.inc_by(100);
        resp.inc_by(7);
        // Visible before the connection closes.
        let text = m.encode().unwrap();
        assert!(
            text.contains(
                "istio_tcp_connections_opened_total{reporter=\"source\",source_workload=\"client\""
            ),
            "{text}"
        );
        let line = text
            .lines()
            .find(|l| l.starts_with("istio_tcp_received_bytes_total{"))
            .unwrap();
        assert!(line.ends_with(" 100"), "{line}");
        assert!(
            !text.contains("istio_tcp_connections_closed_total{"),
            "{text}"
        );
        c.close(None);
        c.close(Some(ResponseFlag::Deny)); // a second close is ignored
    }
    {
        // Dropped without an explicit close (a cancelled task): still closed once.
        let _c = ConnectionMetrics::open(&m.proxy.traffic, labels(Reporter::Destination));
    }
    {
        let mut c = ConnectionMetrics::open(&m.proxy.traffic, labels(Reporter::Destination));
        c.close(Some(ResponseFlag::Deny));
    }
    let text = m.encode().unwrap();
    let sum = |prefix: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(sum("istio_tcp_connections_opened_total{"), 3);
    assert_eq!(sum("istio_tcp_connections_closed_total{"), 3);
    assert_eq!(sum("istio_tcp_connections_failed_total{"), 1);
    let failed = text
        .lines()
        .find(|l| l.starts_with("istio_tcp_connections_failed_total{"))
        .unwrap();
    assert!(failed.contains("reporter=\"destination\""), "{failed}");
    assert!(failed.contains("response_flags=\"DENY\""), "{failed}");
    assert!(
        failed.contains("connection_security_policy=\"unknown\""),
        "{failed}"
    );
    assert!(
        text.contains("istio_build{component=\"ztunnel\",tag=\"1.2.3\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("process_open_fds "), "{text}");
    assert!(text.contains("process_max_fds "), "{text}");
    assert!(
        text.contains("\nambit_process_cpu_seconds_total "),
        "{text}"
    );
    let rss: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("ambit_process_resident_memory_bytes "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        rss > 1e6,
        "a running test process has more than 1 MB resident: {rss}"
    );
}

#[test]
fn text_format_renames_counter_families() {
    let m = Metrics::new();
    m.proxy.inbound_handshakes.inc();
    let open = m.encode_as(exposition::Format::OpenMetrics).unwrap();
    assert!(open.ends_with("# EOF\n"), "{open}");
    assert!(open.contains("# TYPE ambit_hbone_inbound_handshakes counter\n"));
    let text = m.encode_as(exposition::Format::Text).unwrap();
    assert!(!text.contains("# EOF"), "{text}");
    assert!(!text.contains("# UNIT"), "{text}");
    assert!(
        text.contains("# TYPE ambit_hbone_inbound_handshakes_total counter\n"),
        "{text}"
    );
    assert!(
        text.contains("ambit_hbone_inbound_handshakes_total 1\n"),
        "{text}"
    );
    assert!(text.contains("# TYPE istio_build gauge\n"), "{text}");
}

#[test]
fn negotiation() {
    use exposition::{Format, accepts_gzip};
    assert_eq!(Format::negotiate(None), Format::Text);
    assert_eq!(
        Format::negotiate(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
        )),
        Format::OpenMetrics
    );
    assert_eq!(
        Format::negotiate(Some("application/openmetrics-text;q=0, text/plain")),
        Format::Text
    );
    assert_eq!(Format::negotiate(Some("text/plain")), Format::Text);
    assert!(accepts_gzip(Some("gzip, deflate")));
    assert!(accepts_gzip(Some("br;q=1, GZIP;q=0.5")));
    assert!(!accepts_gzip(Some("gzip;q=0")));
    assert!(!accepts_gzip(Some("identity")));
    assert!(!accepts_gzip(None));
}

/// The sample value of the line that starts with `prefix` (name and labels, up to the space).
fn sample(text: &str, prefix: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(prefix) && l[prefix.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no sample {prefix}: {text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn xds_families_count_by_reason_and_type_url() {
    let m = Metrics::new();
    let x = m.xds.clone();
    x.record_message("type.googleapis.com/istio.workload.Address", 120);
    x.record_message("type.googleapis.com/istio.workload.Address", 30);
    x.record_message("type.googleapis.com/istio.security.Authorization", 5);
    x.record_termination(TerminationReason::ConnectionError);
    x.record_termination(TerminationReason::ConnectionError);
    x.record_termination(TerminationReason::Complete);
    let text = m.encode().unwrap();
    let addr = "{url=\"type.googleapis.com/istio.workload.Address\"}";
    let authz = "{url=\"type.googleapis.com/istio.security.Authorization\"}";
    assert_eq!(
        sample(&text, &format!("istio_xds_message_total{addr}")),
        2.0
    );
    assert_eq!(
        sample(&text, &format!("istio_xds_message_bytes_total{addr}")),
        150.0
    );
    assert_eq!(
        sample(&text, &format!("istio_xds_message_total{authz}")),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "istio_xds_connection_terminations_total{reason=\"ConnectionError\"}"
        ),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            "istio_xds_connection_terminations_total{reason=\"Complete\"}"
        ),
        1.0
    );
    assert!(
        text.contains("# TYPE istio_xds_connection_terminations counter\n"),
        "{text}"
    );
    assert_eq!(x.terminations(TerminationReason::Complete), 1);
    assert_eq!(
        x.messages("type.googleapis.com/istio.workload.Address"),
        (2, 150)
    );
}

#[test]
fn tokio_runtime_families_are_read_at_scrape_time() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut m = Metrics::new();
    m.register_tokio_runtime(rt.handle().clone());
    let text = m.encode().unwrap();
    assert_eq!(sample(&text, "tokio_num_workers"), 2.0);
    assert_eq!(sample(&text, "tokio_num_alive_tasks"), 0.0);
    assert_eq!(sample(&text, "tokio_global_queue_depth"), 0.0);

    // A task that stays alive until told to finish, after it ran on a worker.
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = rt.spawn(async move {
        started_tx.send(()).unwrap();
        let _ = stop_rx.await;
    });
    started_rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    let text = m.encode().unwrap();
    assert_eq!(sample(&text, "tokio_num_alive_tasks"), 1.0, "{text}");
    for worker in 0..2 {
        for family in [
            "tokio_worker_total_busy_duration_seconds_total",
            "tokio_worker_park_count_total",
            "tokio_worker_park_unpark_count_total",
        ] {
            let v = sample(&text, &format!("{family}{{worker=\"{worker}\"}}"));
            assert!(v >= 0.0, "{family} {worker}: {v}");
        }
    }
    assert!(!text.contains("worker=\"2\""), "{text}");
    assert!(
        text.contains("# TYPE tokio_worker_park_count counter\n"),
        "{text}"
    );
    assert!(
        text.contains("# UNIT tokio_worker_total_busy_duration_seconds seconds\n"),
        "{text}"
    );
    // The task ran on a worker, so the busy time across workers turns non-zero (a worker
    // publishes its counters when it parks, which nothing signals).
    eventually(&rt, &m, "busy time", |text| {
        (0..2)
            .map(|w| {
                sample(
                    text,
                    &format!("tokio_worker_total_busy_duration_seconds_total{{worker=\"{w}\"}}"),
                )
            })
            .sum::<f64>()
            > 0.0
    });

    let plain = m.encode_as(exposition::Format::Text).unwrap();
    assert!(
        plain.contains("# TYPE tokio_worker_park_count_total counter\n"),
        "{plain}"
    );
    assert!(
        plain.contains("# TYPE tokio_num_workers gauge\n"),
        "{plain}"
    );

    stop_tx.send(()).unwrap();
    rt.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
    });
    // The runtime forgets a task just after its output is handed over.
    eventually(&rt, &m, "no alive task", |text| {
        sample(text, "tokio_num_alive_tasks") == 0.0
    });
}

/// Scrapes until `done` holds, for at most five seconds, waiting on `rt`'s timer in between.
fn eventually(rt: &tokio::runtime::Runtime, m: &Metrics, what: &str, done: impl Fn(&str) -> bool) {
    let reached = rt.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while !done(&m.encode().unwrap()) {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await
    });
    assert!(
        reached.is_ok(),
        "never reached: {what}: {}",
        m.encode().unwrap()
    );
}

#[test]
fn istio_build_names_ztunnel_and_the_istio_version_ambit_build_its_own() {
    let text = Metrics::with_build_tag("1.28.0").encode().unwrap();
    assert!(
        text.contains("istio_build{component=\"ztunnel\",tag=\"1.28.0\"} 1\n"),
        "{text}"
    );
    let ambit = format!(
        "ambit_build{{version=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.contains(&ambit), "{text}");
    let text = Metrics::new().encode().unwrap();
    assert!(
        text.contains("istio_build{component=\"ztunnel\",tag=\"unknown\"} 1\n"),
        "{text}"
    );
}

#[test]
fn sockets_open_counts_live_guards_per_reporter() {
    let m = Metrics::new();
    let open = |text: &str, reporter: &str| -> Option<String> {
        let prefix = format!("istio_tcp_sockets_open{{reporter=\"{reporter}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()).map(str::to_string))
    };
    let s = &m.proxy.traffic.sockets_open;
    let a = s.open(Reporter::Source);
    let b = s.open(Reporter::Source);
    let c = s.open(Reporter::Destination);
    let text = m.encode().unwrap();
    assert!(
        text.contains("# TYPE istio_tcp_sockets_open gauge\n"),
        "{text}"
    );
    assert_eq!(open(&text, "source").as_deref(), Some("2"), "{text}");
    assert_eq!(open(&text, "destination").as_deref(), Some("1"), "{text}");
    drop(a);
    drop(c);
    let text = m.encode().unwrap();
    assert_eq!(open(&text, "source").as_deref(), Some("1"), "{text}");
    assert_eq!(open(&text, "destination").as_deref(), Some("0"), "{text}");
    drop(b);
    let text = m.encode().unwrap();
    assert_eq!(open(&text, "source").as_deref(), Some("0"), "{text}");
}

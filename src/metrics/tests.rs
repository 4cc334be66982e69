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

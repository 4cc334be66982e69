mod ztunnel;

use std::collections::HashMap;

use super::*;
use crate::grpc::AuthToken;

/// Builds a config from `vars` on top of the smallest supported set (a local config and the
/// built-in CA), with 8 CPUs.
fn with(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let mut env: HashMap<String, String> = [
        ("LOCAL_XDS_PATH", "/etc/ambit/local.yaml"),
        ("FAKE_CA", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in vars {
        env.insert(k.to_string(), v.to_string());
    }
    Config::from_source_on(&|k| env.get(k).cloned(), &host())
}

/// 8 CPUs, no mesh config file.
pub(super) fn host() -> Host {
    Host {
        cpus: 8,
        mesh_config: None,
    }
}

/// Only `vars`, nothing added.
fn bare(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_source_on(&|k| env.get(k).cloned(), &host())
}

#[test]
fn defaults() {
    let c = with(&[]).unwrap();
    assert_eq!(c.proxy_mode, ProxyMode::Shared);
    assert_eq!(c.packet_mark, Some(1337));
    assert_eq!(
        c.local_config,
        Some(LocalConfigSource::File("/etc/ambit/local.yaml".into()))
    );
    assert_eq!(c.xds_address.as_deref(), Some("https://localhost:15012"));
    assert_eq!(c.ca_dir, PathBuf::from("/var/run/ambit/ca"));
    assert_eq!(c.secret_ttl, Duration::from_secs(86_400));
    assert_eq!(c.trust_domain, "cluster.local");
    assert_eq!(c.cluster_id, "Kubernetes");
    assert_eq!((c.network.as_str(), c.node_name.as_str()), ("", ""));
    assert_eq!(c.inpod_uds, PathBuf::from("/var/run/ztunnel/ztunnel.sock"));
    assert_eq!(c.worker_threads, 2);
    assert_eq!(c.pool_max_streams_per_connection, 100);
    assert_eq!(c.pool_unused_release_timeout, Duration::from_secs(300));
    assert_eq!(
        (
            c.http2_stream_window_size,
            c.http2_connection_window_size,
            c.http2_frame_size
        ),
        (4 << 20, 16 << 20, 1 << 20)
    );
    assert_eq!(
        c.keepalive,
        Keepalive {
            enabled: true,
            time: Duration::from_secs(180),
            interval: Duration::from_secs(180),
            retries: 9,
            user_timeout: false,
        }
    );
    assert_eq!(c.connection_termination_deadline, Duration::from_secs(5));
    assert_eq!(c.enable_orig_src, None);
    assert!(c.ipv6_enabled);
    assert_eq!(c.log_format, LogFormat::Plain);
    assert_eq!(c.log_filter, "hickory_server::server=off,info");
    assert_eq!(c.listeners.outbound, "[::]:15001".parse().unwrap());
    assert_eq!(c.listeners.inbound_plaintext, "[::]:15006".parse().unwrap());
    assert_eq!(c.listeners.inbound_hbone, "[::]:15008".parse().unwrap());
    assert_eq!(c.listeners.readiness, "[::]:15021".parse().unwrap());
    assert_eq!(c.listeners.stats, "[::]:15020".parse().unwrap());
    assert_eq!(c.listeners.admin, "127.0.0.1:15000".parse().unwrap());
    let j = serde_json::to_value(&c).unwrap();
    assert_eq!(j["secretTtl"], "1d");
    assert_eq!(j["proxyMode"], "shared");
    assert_eq!(j["keepalive"]["time"], "3m");
}

#[test]
fn values_are_read() {
    let c = with(&[
        ("PROXY_MODE", "dedicated"),
        ("PROXY_WORKLOAD_INFO", "default/local/sa"),
        ("SECRET_TTL", "90s"),
        ("TRUST_DOMAIN", "example.org"),
        ("CLUSTER_ID", "c1"),
        ("NETWORK", "net1"),
        ("NODE_NAME", "node-a"),
        ("AMBIT_CA_DIR", "/tmp/ca"),
        ("IPV6_ENABLED", "false"),
        ("ENABLE_ORIG_SRC", "false"),
        ("LOG_FORMAT", "json"),
        ("RUST_LOG", "debug"),
        ("KEEPALIVE_ENABLED", "false"),
        ("KEEPALIVE_RETRIES", "3"),
        ("POOL_UNUSED_RELEASE_TIMEOUT", "1500ms"),
        ("HTTP2_FRAME_SIZE", "16384"),
        ("CONNECTION_TERMINATION_DEADLINE", "1h30m"),
        ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
    ])
    .unwrap();
    assert_eq!(c.proxy_mode, ProxyMode::Dedicated);
    assert_eq!(
        c.proxy_workload_info,
        Some(WorkloadInfo {
            namespace: "default".into(),
            name: "local".into(),
            service_account: "sa".into()
        })
    );
    // Dedicated mode marks nothing unless told to.
    assert_eq!(c.packet_mark, None);
    assert_eq!(c.secret_ttl, Duration::from_secs(90));
    assert_eq!(
        (c.trust_domain.as_str(), c.cluster_id.as_str()),
        ("example.org", "c1")
    );
    assert_eq!(
        (c.network.as_str(), c.node_name.as_str()),
        ("net1", "node-a")
    );
    assert_eq!(c.ca_dir, PathBuf::from("/tmp/ca"));
    assert_eq!(c.enable_orig_src, Some(false));
    assert_eq!(
        (c.log_format, c.log_filter.as_str()),
        (LogFormat::Json, "hickory_server::server=off,debug")
    );
    assert!(!c.keepalive.enabled);
    assert_eq!(c.keepalive.retries, 3);
    assert_eq!(c.pool_unused_release_timeout, Duration::from_millis(1500));
    assert_eq!(c.http2_frame_size, 16384);
    assert_eq!(c.connection_termination_deadline, Duration::from_secs(5400));
    assert_eq!(
        c.xds_address.as_deref(),
        Some("https://istiod.istio-system.svc:15012")
    );
    assert_eq!(c.listeners.outbound, "0.0.0.0:15001".parse().unwrap());
    assert_eq!(c.listeners.admin, "127.0.0.1:15000".parse().unwrap());
    assert_eq!(
        with(&[
            ("PROXY_MODE", "dedicated"),
            ("PROXY_WORKLOAD_INFO", "a/b/c"),
            ("PACKET_MARK", "7")
        ])
        .unwrap()
        .packet_mark,
        Some(7)
    );
    assert_eq!(
        with(&[("LOCAL_XDS", "workloads: []")]).unwrap_err(),
        ConfigError::TwoLocalConfigs
    );
    assert_eq!(
        with(&[("LOCAL_XDS_PATH", ""), ("LOCAL_XDS", "workloads: []")])
            .unwrap()
            .local_config,
        Some(LocalConfigSource::Inline("workloads: []".into()))
    );
}

#[test]
fn every_bad_value_names_variable_and_value() {
    for (var, value, reason) in [
        ("PROXY_MODE", "both", "expected \"shared\" or \"dedicated\""),
        (
            "PROXY_WORKLOAD_INFO",
            "default/local",
            "expected namespace/name/service-account",
        ),
        (
            "PROXY_WORKLOAD_INFO",
            "a//c",
            "expected namespace/name/service-account",
        ),
        ("PACKET_MARK", "abc", "not a number"),
        ("PACKET_MARK", "-1", "not a number"),
        ("PACKET_MARK", "4294967296", "number too large"),
        ("FAKE_CA", "yes", "not a boolean (true or false)"),
        ("SECRET_TTL", "0", "must be greater than zero"),
        (
            "SECRET_TTL",
            "5x",
            "not a duration (e.g. 500ms, 90s, 3min, 1h 30m, 1d, 1w)",
        ),
        ("SECRET_TTL", "0s", "must be greater than zero"),
        ("INPOD_PORT_REUSE", "1", "not a boolean (true or false)"),
        (
            "ZTUNNEL_WORKER_THREADS",
            "many",
            "not a number or percentage (N or N%)",
        ),
        (
            "ZTUNNEL_WORKER_THREADS",
            "150%",
            "percentage must be greater than 0% and at most 100%",
        ),
        (
            "ZTUNNEL_WORKER_THREADS",
            "0%",
            "percentage must be greater than 0% and at most 100%",
        ),
        (
            "POOL_MAX_STREAMS_PER_CONNECTION",
            "0",
            "must be greater than zero",
        ),
        ("POOL_MAX_STREAMS_PER_CONNECTION", "x", "not a number"),
        (
            "POOL_UNUSED_RELEASE_TIMEOUT",
            "soon",
            "not a duration (e.g. 500ms, 90s, 3min, 1h 30m, 1d, 1w)",
        ),
        (
            "HTTP2_STREAM_WINDOW_SIZE",
            "1024",
            "window size must be between 65535 and 2147483647",
        ),
        ("HTTP2_CONNECTION_WINDOW_SIZE", "4Mi", "not a number"),
        (
            "HTTP2_FRAME_SIZE",
            "16777216",
            "frame size must be between 16384 and 16777215",
        ),
        ("KEEPALIVE_TIME", "0", "must be greater than zero"),
        (
            "KEEPALIVE_INTERVAL",
            "x",
            "not a duration (e.g. 500ms, 90s, 3min, 1h 30m, 1d, 1w)",
        ),
        ("KEEPALIVE_RETRIES", "nine", "not a number"),
        ("KEEPALIVE_ENABLED", "on", "not a boolean (true or false)"),
        (
            "CONNECTION_TERMINATION_DEADLINE",
            "soon",
            "not a duration (e.g. 500ms, 90s, 3min, 1h 30m, 1d, 1w)",
        ),
        ("TERMINATION_GRACE_PERIOD_SECONDS", "30s", "not a number"),
        ("ENABLE_ORIG_SRC", "auto", "not a boolean (true or false)"),
        ("IPV6_ENABLED", "no", "not a boolean (true or false)"),
        ("LOG_FORMAT", "xml", "expected \"plain\" or \"json\""),
    ] {
        let e = with(&[(var, value)]).unwrap_err();
        assert_eq!(
            e,
            ConfigError::Invalid {
                var,
                value: value.into(),
                reason: reason.into()
            }
        );
        assert_eq!(e.to_string(), format!("{var}={value:?}: {reason}"));
    }
    assert_eq!(
        with(&[("PACKET_MARK", "abc")]).unwrap_err().to_string(),
        r#"PACKET_MARK="abc": not a number"#
    );
}

#[test]
fn cross_field_rules() {
    assert_eq!(
        with(&[("PROXY_MODE", "dedicated")]).unwrap_err(),
        ConfigError::DedicatedWithoutWorkload
    );
    // Nothing set: the default control plane and CA, with the default root file.
    let c = bare(&[]).unwrap();
    assert_eq!(c.xds_address.as_deref(), Some("https://localhost:15012"));
    assert_eq!(c.ca_address.as_deref(), Some("https://localhost:15012"));
    assert_eq!(
        c.xds_root_ca,
        RootCert::File("./var/run/secrets/istio/root-cert.pem".into())
    );
    // XDS_ADDRESS="" without a local config is fine (an empty mesh).
    assert!(bare(&[("XDS_ADDRESS", ""), ("FAKE_CA", "true")]).is_ok());
    let c = bare(&[("LOCAL_XDS", "{}"), ("CA_ADDRESS", "")]).unwrap();
    assert_eq!((c.ca_address, c.fake_ca), (None, false));
    // The control-plane connection settings.
    let pem = "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n";
    let c = bare(&[
        ("XDS_ADDRESS", "https://istiod:15012"),
        ("CA_ADDRESS", "https://ca:15012"),
        ("XDS_ROOT_CA", "/etc/roots.pem"),
        ("CA_ROOT_CA", pem),
        ("ALT_XDS_HOSTNAME", "istiod.istio-system.svc"),
        ("ALT_CA_HOSTNAME", "ca.istio-system.svc"),
        ("AUTH_TOKEN", "abc.def"),
        ("POD_NAME", "ztunnel-1"),
        ("POD_NAMESPACE", "istio-system"),
        ("INSTANCE_IP", "10.0.0.7"),
    ])
    .unwrap();
    assert_eq!(c.xds_address.as_deref(), Some("https://istiod:15012"));
    assert_eq!(c.ca_address.as_deref(), Some("https://ca:15012"));
    assert_eq!(c.xds_root_ca, RootCert::File("/etc/roots.pem".into()));
    assert_eq!(c.ca_root_ca, RootCert::Pem(pem.into()));
    assert_eq!(
        c.alt_xds_hostname.as_deref(),
        Some("istiod.istio-system.svc")
    );
    assert_eq!(c.alt_ca_hostname.as_deref(), Some("ca.istio-system.svc"));
    assert_eq!(c.auth_token, Some(AuthToken::Static("abc.def".into())));
    assert_eq!(
        (
            c.pod_name.as_str(),
            c.pod_namespace.as_str(),
            c.instance_ip.as_str()
        ),
        ("ztunnel-1", "istio-system", "10.0.0.7")
    );
}

#[test]
fn durations() {
    for (s, want) in [
        ("24h", Duration::from_secs(86_400)),
        ("90s", Duration::from_secs(90)),
        ("5s", Duration::from_secs(5)),
        ("1500ms", Duration::from_millis(1500)),
        ("5m", Duration::from_secs(300)),
        ("1h30m", Duration::from_secs(5400)),
        ("2d", Duration::from_secs(172_800)),
        ("10", Duration::from_secs(10)),
        ("1 day", Duration::from_secs(86_400)),
        ("5 s", Duration::from_secs(5)),
    ] {
        assert_eq!(parse::duration(s), Ok(want), "{s}");
    }
    for bad in ["", "h", "-5s", "s5", "99999999999999999999h"] {
        assert!(parse::duration(bad).is_err(), "{bad}");
    }
    assert_eq!(
        parse::format_duration(Duration::from_millis(1500)),
        "1500ms"
    );
    assert_eq!(parse::format_duration(Duration::from_secs(90)), "90s");
    assert_eq!(parse::format_duration(Duration::ZERO), "0ms");
}

#[test]
fn worker_threads_n_and_percent() {
    assert_eq!(
        with(&[("ZTUNNEL_WORKER_THREADS", "3")])
            .unwrap()
            .worker_threads,
        3
    );
    assert_eq!(
        with(&[("ZTUNNEL_WORKER_THREADS", "0")])
            .unwrap()
            .worker_threads,
        8
    );
    assert_eq!(
        with(&[("ZTUNNEL_WORKER_THREADS", "50%")])
            .unwrap()
            .worker_threads,
        4
    );
    assert_eq!(
        with(&[("ZTUNNEL_WORKER_THREADS", "10%")])
            .unwrap()
            .worker_threads,
        1
    );
    assert_eq!(
        with(&[("ZTUNNEL_WORKER_THREADS", "100%")])
            .unwrap()
            .worker_threads,
        8
    );
    assert_eq!(parse::worker_threads("30%", 10), Ok(3));
    assert_eq!(parse::worker_threads("33%", 10), Ok(4));
}

#[test]
fn termination_deadline_from_grace_period() {
    let d = |g: &str| {
        with(&[("TERMINATION_GRACE_PERIOD_SECONDS", g)])
            .unwrap()
            .connection_termination_deadline
    };
    assert_eq!(d("30"), Duration::from_secs(25));
    assert_eq!(d("10"), Duration::from_secs(9));
    assert_eq!(d("1"), Duration::from_secs(1));
    assert_eq!(d("0"), Duration::from_secs(1));
    // An explicit deadline wins.
    let c = with(&[
        ("TERMINATION_GRACE_PERIOD_SECONDS", "30"),
        ("CONNECTION_TERMINATION_DEADLINE", "2s"),
    ])
    .unwrap();
    assert_eq!(c.connection_termination_deadline, Duration::from_secs(2));
}

#[test]
fn dns_proxy_and_socks5() {
    let c = with(&[]).unwrap();
    assert!(c.dns.enabled);
    assert_eq!(c.dns.addr, "127.0.0.1:15053".parse().unwrap());
    assert_eq!(c.dns.resolv_conf, PathBuf::from("/etc/resolv.conf"));
    assert_eq!(c.dns.cluster_domain, "cluster.local");
    assert!(!c.enable_socks5);

    let c = with(&[
        ("ISTIO_META_DNS_CAPTURE", "false"),
        ("ISTIO_META_DNS_PROXY_ADDR", "localhost:5353"),
        ("UNSTABLE_ENABLE_SOCKS5", "true"),
        ("CLUSTER_DOMAIN", "corp.local"),
    ])
    .unwrap();
    assert!(!c.dns.enabled);
    assert_eq!(c.dns.addr, "127.0.0.1:5353".parse().unwrap());
    assert_eq!(c.dns.cluster_domain, "corp.local");
    assert!(c.enable_socks5);
    assert!(
        with(&[("ISTIO_META_DNS_CAPTURE", "true")])
            .unwrap()
            .dns
            .enabled
    );
    assert_eq!(
        with(&[("ISTIO_META_DNS_PROXY_ADDR", "[::1]:15053")])
            .unwrap()
            .dns
            .addr,
        "[::1]:15053".parse().unwrap()
    );
    let err = with(&[("ISTIO_META_DNS_PROXY_ADDR", "nowhere")]).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("ISTIO_META_DNS_PROXY_ADDR=\"nowhere\""),
        "{err}"
    );
    let err = with(&[("UNSTABLE_ENABLE_SOCKS5", "yes")]).unwrap_err();
    assert!(
        err.to_string().starts_with("UNSTABLE_ENABLE_SOCKS5="),
        "{err}"
    );
}

#[test]
fn prefixed_variables_reach_the_config_and_the_dump_hides_header_values() {
    let vars: std::collections::BTreeMap<String, String> = [
        ("LOCAL_XDS_PATH", "/etc/ambit/local.yaml"),
        ("FAKE_CA", "true"),
        ("XDS_HEADER_X-Tenant", "blue"),
        ("CA_HEADER_X-Ca-Key", "secret-value"),
        ("ISTIO_META_DNS_CAPTURE", "true"),
        ("ISTIO_METAJSON_LABELS", r#"{"app":"ztunnel"}"#),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let c = Config::from_vars(&vars).unwrap();
    assert_eq!(c.xds_headers, vec![("x-tenant".into(), "blue".into())]);
    assert_eq!(
        c.ca_headers,
        vec![("x-ca-key".into(), "secret-value".into())]
    );
    assert_eq!(c.proxy_metadata.len(), 2);
    assert!(c.dns.enabled);
    let dump = serde_json::to_string(&c).unwrap();
    assert!(dump.contains("x-ca-key"), "{dump}");
    assert!(!dump.contains("secret-value"), "{dump}");

    let mut bad = vars.clone();
    bad.insert("XDS_HEADER_bad name".into(), "v".into());
    assert_eq!(
        Config::from_vars(&bad).unwrap_err().to_string(),
        "XDS_HEADER_bad name=\"v\": the name after the prefix is not a header name"
    );
}

#[test]
fn quic_head_start_defaults_and_may_be_zero() {
    assert_eq!(
        with(&[]).unwrap().hbone_quic_head_start,
        Duration::from_millis(75)
    );
    let c = with(&[("AMBIT_HBONE_QUIC_HEAD_START", "0")]).unwrap();
    assert_eq!(c.hbone_quic_head_start, Duration::ZERO);
    assert!(with(&[("AMBIT_HBONE_QUIC_HEAD_START", "soon")]).is_err());
}

#[test]
fn handshake_limits_default_and_reject_zero() {
    let c = with(&[]).unwrap();
    assert_eq!(c.handshake_timeout, Duration::from_secs(10));
    assert_eq!(c.max_pending_handshakes_per_source, 128);
    let c = with(&[
        ("AMBIT_HANDSHAKE_TIMEOUT", "3s"),
        ("AMBIT_MAX_PENDING_HANDSHAKES_PER_SOURCE", "16"),
    ])
    .unwrap();
    assert_eq!(c.handshake_timeout, Duration::from_secs(3));
    assert_eq!(c.max_pending_handshakes_per_source, 16);
    assert!(with(&[("AMBIT_HANDSHAKE_TIMEOUT", "0s")]).is_err());
    assert!(with(&[("AMBIT_MAX_PENDING_HANDSHAKES_PER_SOURCE", "0")]).is_err());
}

//! The variables and syntax ztunnel reads, one test per setting: the default, a good value, and
//! a bad value with its exact one-line error.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::host;
use crate::config::*;
use crate::grpc::AuthToken;

/// A config from `vars` (plus a local config and the built-in CA) on `host`.
fn on(host: &Host, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
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
    Config::from_source_on(&|k| env.get(k).cloned(), host)
}

fn with(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    on(&host(), vars)
}

fn cpus(n: usize) -> Host {
    Host {
        cpus: n,
        mesh_config: None,
    }
}

/// The error for `var=value`, as text.
fn error(var: &str, value: &str) -> String {
    match with(&[(var, value)]) {
        Ok(_) => panic!("{var}={value:?} was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn control_plane_addresses_without_a_scheme_get_https() {
    let c = with(&[
        ("XDS_ADDRESS", "istiod.istio-system.svc:15012"),
        ("CA_ADDRESS", "istiod-1-27.istio-system.svc:15012"),
    ])
    .unwrap();
    assert_eq!(
        c.xds_address.as_deref(),
        Some("https://istiod.istio-system.svc:15012")
    );
    assert_eq!(
        c.ca_address.as_deref(),
        Some("https://istiod-1-27.istio-system.svc:15012")
    );
    // A scheme is kept as given (http:// is plaintext, for tests).
    let c = with(&[("XDS_ADDRESS", "http://127.0.0.1:15010")]).unwrap();
    assert_eq!(c.xds_address.as_deref(), Some("http://127.0.0.1:15010"));
    assert_eq!(
        error("XDS_ADDRESS", "istiod svc:15012"),
        "XDS_ADDRESS=\"istiod svc:15012\": not an address (host:port or https://host:port): \
         invalid uri character"
    );
    assert_eq!(
        error("CA_ADDRESS", "/just/a/path"),
        "CA_ADDRESS=\"/just/a/path\": not an address (host:port or https://host:port)"
    );
}

#[test]
fn durations_in_ztunnel_syntax() {
    for (s, want) in [
        ("3min", 180),
        ("1w", 7 * 86_400),
        ("1h 30m", 5400),
        ("1h30m", 5400),
        ("2d", 172_800),
        ("90", 90),
        ("1hour", 3600),
    ] {
        assert_eq!(parse::duration(s), Ok(Duration::from_secs(want)), "{s}");
    }
    assert_eq!(parse::duration("500ms"), Ok(Duration::from_millis(500)));
    let c = with(&[("KEEPALIVE_TIME", "3min"), ("SECRET_TTL", "1w")]).unwrap();
    assert_eq!(c.keepalive.time, Duration::from_secs(180));
    assert_eq!(c.secret_ttl, Duration::from_secs(7 * 86_400));
    for bad in ["", "h", "soon", "5x", "-5s"] {
        assert!(parse::duration(bad).is_err(), "{bad}");
    }
    assert_eq!(
        error("POOL_UNUSED_RELEASE_TIMEOUT", "5 parsecs"),
        "POOL_UNUSED_RELEASE_TIMEOUT=\"5 parsecs\": not a duration (e.g. 500ms, 90s, 3min, \
         1h 30m, 1d, 1w)"
    );
    // What the config dump writes reads back.
    for d in [
        Duration::from_millis(1500),
        Duration::from_secs(180),
        Duration::from_secs(86_400),
    ] {
        assert_eq!(parse::duration(&parse::format_duration(d)), Ok(d));
    }
}

#[test]
fn worker_threads_follow_ztunnels_cpu_rules() {
    let threads = |host: &Host, vars: &[(&str, &str)]| on(host, vars).unwrap().worker_threads;
    // Nothing set: a quarter of the CPUs, rounded up, at least 2.
    assert_eq!(threads(&cpus(1), &[]), 2);
    assert_eq!(threads(&cpus(16), &[]), 4);
    assert_eq!(threads(&cpus(18), &[]), 5);
    // ZTUNNEL_CPU_LIMIT (the downward API's limits.cpu) replaces the machine's count.
    assert_eq!(threads(&cpus(64), &[("ZTUNNEL_CPU_LIMIT", "12")]), 3);
    // An explicit resource limit is the thread count, even below 2; the request raises it.
    assert_eq!(
        threads(&cpus(64), &[("ZTUNNEL_RESOURCE_CPU_LIMIT", "500m")]),
        1
    );
    assert_eq!(
        threads(&cpus(64), &[("ZTUNNEL_RESOURCE_CPU_LIMIT", "2.5")]),
        3
    );
    assert_eq!(
        threads(
            &cpus(64),
            &[
                ("ZTUNNEL_RESOURCE_CPU_LIMIT", "2"),
                ("ZTUNNEL_RESOURCE_CPU_REQUEST", "3")
            ]
        ),
        3
    );
    // Without a limit the request is a floor.
    assert_eq!(
        threads(&cpus(8), &[("ZTUNNEL_RESOURCE_CPU_REQUEST", "6")]),
        6
    );
    assert_eq!(
        threads(&cpus(8), &[("ZTUNNEL_RESOURCE_CPU_REQUEST", "200m")]),
        2
    );
    // ZTUNNEL_WORKER_THREADS wins; percentages and 0 count the limited CPUs.
    let limited = [("ZTUNNEL_RESOURCE_CPU_LIMIT", "10")];
    let mut vars = limited.to_vec();
    vars.push(("ZTUNNEL_WORKER_THREADS", "25%"));
    assert_eq!(threads(&cpus(64), &vars), 3);
    vars.push(("ZTUNNEL_WORKER_THREADS", "0"));
    assert_eq!(
        threads(&cpus(64), &[limited[0], ("ZTUNNEL_WORKER_THREADS", "0")]),
        10
    );
    assert_eq!(threads(&cpus(8), &[("ZTUNNEL_WORKER_THREADS", "12.5%")]), 1);
    assert_eq!(threads(&cpus(8), &[("ZTUNNEL_WORKER_THREADS", "7")]), 7);

    assert_eq!(
        error("ZTUNNEL_RESOURCE_CPU_LIMIT", "2 cores"),
        "ZTUNNEL_RESOURCE_CPU_LIMIT=\"2 cores\": not a CPU quantity (e.g. 2, 1.5, 500m)"
    );
    assert_eq!(
        error("ZTUNNEL_RESOURCE_CPU_REQUEST", "0"),
        "ZTUNNEL_RESOURCE_CPU_REQUEST=\"0\": must be a positive CPU quantity"
    );
    assert_eq!(
        error("ZTUNNEL_CPU_LIMIT", "1.5"),
        "ZTUNNEL_CPU_LIMIT=\"1.5\": not a number"
    );
    assert_eq!(
        error("ZTUNNEL_WORKER_THREADS", "-1"),
        "ZTUNNEL_WORKER_THREADS=\"-1\": not a number or percentage (N or N%)"
    );
}

#[test]
fn auth_token_is_a_file_when_it_exists_else_the_token() {
    let dir = std::env::temp_dir().join(format!("ambit-config-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("istio-token");
    std::fs::write(&file, "jwt").unwrap();
    let path = file.to_str().unwrap();
    let c = with(&[("AUTH_TOKEN", path)]).unwrap();
    assert_eq!(c.auth_token, Some(AuthToken::File(file.clone())));
    let c = with(&[("AUTH_TOKEN", "eyJhbGciOi.static.token")]).unwrap();
    assert_eq!(
        c.auth_token,
        Some(AuthToken::Static("eyJhbGciOi.static.token".into()))
    );
    // The dump never shows a static token.
    let dump = serde_json::to_string(&c).unwrap();
    assert!(!dump.contains("static.token"), "{dump}");
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        error("AUTH_TOKEN", path),
        format!("AUTH_TOKEN={path:?}: no such file")
    );
    assert_eq!(
        error("AUTH_TOKEN", "two words"),
        "AUTH_TOKEN (value not shown): neither an existing file nor a token (visible ASCII \
         without spaces)"
    );
}

#[test]
fn system_roots() {
    let c = with(&[("XDS_ROOT_CA", "SYSTEM"), ("CA_ROOT_CA", "SYSTEM")]).unwrap();
    assert_eq!(
        (c.xds_root_ca, c.ca_root_ca),
        (RootCert::System, RootCert::System)
    );
}

#[test]
fn proxy_config_and_mesh_config_file() {
    let mesh = Host {
        cpus: 8,
        mesh_config: Some(
            "defaultConfig:\n  discoveryAddress: istiod.mesh:15012\n  statsPort: 25020\n  \
             concurrency: 3\n  proxyMetadata:\n    ISTIO_META_DNS_CAPTURE: \"false\"\n    \
             DNS_PROXY_ADDR: \"127.0.0.1:5300\"\n    FOO: bar\n"
                .into(),
        ),
    };
    let c = on(&mesh, &[]).unwrap();
    assert_eq!(c.xds_address.as_deref(), Some("https://istiod.mesh:15012"));
    assert_eq!(c.listeners.stats.port(), 25020);
    assert_eq!(c.listeners.admin.port(), 15000);
    assert_eq!(c.worker_threads, 3);
    assert!(!c.dns.enabled);
    assert_eq!(c.dns.addr, "127.0.0.1:5300".parse().unwrap());
    // PROXY_CONFIG over the file; the environment over both.
    let c = on(
        &mesh,
        &[
            ("PROXY_CONFIG", "{concurrency: 0, proxyAdminPort: 25000}"),
            ("ISTIO_META_DNS_CAPTURE", "TRUE"),
            ("XDS_ADDRESS", "istiod.env:15012"),
        ],
    )
    .unwrap();
    assert_eq!(c.worker_threads, 8);
    assert_eq!(c.listeners.admin.port(), 25000);
    assert!(c.dns.enabled);
    assert_eq!(c.xds_address.as_deref(), Some("https://istiod.env:15012"));
    // The metadata goes to the control plane too, under the environment's.
    let vars: BTreeMap<String, String> = [
        ("LOCAL_XDS", "{}"),
        ("FAKE_CA", "true"),
        ("ISTIO_META_FOO", "env"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let c = Config::from_vars_on(&vars, &mesh).unwrap();
    let meta: BTreeMap<&str, &serde_json::Value> = c
        .proxy_metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    assert_eq!(meta["FOO"], "env");
    assert_eq!(meta["DNS_CAPTURE"], "false");

    let e = with(&[("PROXY_CONFIG", "concurrency: [1]")]).unwrap_err();
    assert!(e.to_string().starts_with("PROXY_CONFIG: "), "{e}");
    assert!(!e.to_string().contains('\n'), "{e}");
    let bad_file = Host {
        cpus: 8,
        mesh_config: Some("defaultConfig: {statsPort: http}\n".into()),
    };
    let e = on(&bad_file, &[]).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("mesh config ./etc/istio/config/mesh: defaultConfig.statsPort: "),
        "{e}"
    );
}

#[test]
fn user_timeout() {
    let c = with(&[]).unwrap();
    assert_eq!(c.keepalive.user_timeout(), None);
    let c = with(&[
        ("USER_TIMEOUT_ENABLED", "true"),
        ("KEEPALIVE_TIME", "60s"),
        ("KEEPALIVE_INTERVAL", "10s"),
        ("KEEPALIVE_RETRIES", "3"),
    ])
    .unwrap();
    assert_eq!(c.keepalive.user_timeout(), Some(Duration::from_secs(90)));
    assert_eq!(
        error("USER_TIMEOUT_ENABLED", "yes"),
        "USER_TIMEOUT_ENABLED=\"yes\": not a boolean (true or false)"
    );
}

#[test]
fn small_switches() {
    let c = with(&[]).unwrap();
    assert_eq!(c.prefered_service_namespace, None);
    assert!(!c.authz_policy_info_logging);
    assert!(c.localhost_app_tunnel);
    assert!(c.response_baggage);
    let c = with(&[
        ("PREFERED_SERVICE_NAMESPACE", "istio-system"),
        ("AUTHZ_POLICY_INFO_LOGGING", "true"),
        ("LOCALHOST_APP_TUNNEL", "false"),
        ("ENABLE_RESPONSE_BAGGAGE", "false"),
    ])
    .unwrap();
    assert_eq!(
        c.prefered_service_namespace.as_deref(),
        Some("istio-system")
    );
    assert!(c.authz_policy_info_logging);
    assert!(!c.localhost_app_tunnel);
    assert!(!c.response_baggage);
    assert_eq!(
        error("AUTHZ_POLICY_INFO_LOGGING", "1"),
        "AUTHZ_POLICY_INFO_LOGGING=\"1\": not a boolean (true or false)"
    );
    assert_eq!(
        error("LOCALHOST_APP_TUNNEL", "no"),
        "LOCALHOST_APP_TUNNEL=\"no\": not a boolean (true or false)"
    );
}

#[test]
fn cluster_id_from_istio_meta_first() {
    assert_eq!(with(&[]).unwrap().cluster_id, "Kubernetes");
    assert_eq!(with(&[("CLUSTER_ID", "c1")]).unwrap().cluster_id, "c1");
    let c = with(&[("CLUSTER_ID", "c1"), ("ISTIO_META_CLUSTER_ID", "c2")]).unwrap();
    assert_eq!(c.cluster_id, "c2");
}

#[test]
fn istio_chart_environment_is_accepted() {
    // What Istio's ztunnel chart sets (a node with 4 CPUs, no limit).
    let c = on(
        &cpus(4),
        &[
            ("LOCAL_XDS_PATH", ""),
            ("FAKE_CA", ""),
            ("CA_ADDRESS", "istiod.istio-system.svc:15012"),
            ("XDS_ADDRESS", "istiod.istio-system.svc:15012"),
            ("RUST_LOG", "info"),
            ("RUST_BACKTRACE", "1"),
            ("ISTIO_META_CLUSTER_ID", "Kubernetes"),
            ("INPOD_ENABLED", "true"),
            ("TERMINATION_GRACE_PERIOD_SECONDS", "30"),
            ("POD_NAME", "ztunnel-abcde"),
            ("POD_NAMESPACE", "istio-system"),
            ("NODE_NAME", "node-1"),
            ("INSTANCE_IP", "10.244.0.5"),
            ("SERVICE_ACCOUNT", "ztunnel"),
            ("ZTUNNEL_CPU_LIMIT", "4"),
            ("ZTUNNEL_RESOURCE_CPU_REQUEST", "200m"),
        ],
    )
    .unwrap();
    assert_eq!(
        (c.xds_address.as_deref(), c.ca_address.as_deref()),
        (
            Some("https://istiod.istio-system.svc:15012"),
            Some("https://istiod.istio-system.svc:15012")
        )
    );
    assert_eq!(c.proxy_mode, ProxyMode::Shared);
    assert_eq!(c.worker_threads, 2);
    assert_eq!(c.connection_termination_deadline, Duration::from_secs(25));
    assert_eq!(c.cluster_id, "Kubernetes");
}

#[test]
fn tls_policy_and_crl_path() {
    let c = with(&[]).unwrap();
    assert_eq!(
        (c.crl_path.as_deref(), c.tls12_enabled, c.pqc),
        (None, false, false)
    );
    let c = with(&[
        ("CRL_PATH", "/var/run/secrets/istio/crl/ca-crl.pem"),
        ("TLS12_ENABLED", "true"),
        ("COMPLIANCE_POLICY", "pqc"),
    ])
    .unwrap();
    assert_eq!(
        c.crl_path.as_deref(),
        Some(std::path::Path::new(
            "/var/run/secrets/istio/crl/ca-crl.pem"
        ))
    );
    assert!(c.tls12_enabled && c.pqc);
    // Istio's other compliance policy is not ztunnel's business: accepted, no change.
    let c = with(&[("COMPLIANCE_POLICY", "fips-140-2"), ("CRL_PATH", "")]).unwrap();
    assert!(!c.pqc && c.crl_path.is_none());
    assert_eq!(
        error("TLS12_ENABLED", "yes"),
        "TLS12_ENABLED=\"yes\": not a boolean (true or false)"
    );
}

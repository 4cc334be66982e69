//! Process configuration from the environment, under ztunnel's variable names.
//!
//! Owns reading and validating every variable the node proxy honours. [`Config`] is plain,
//! serializable data, built once through a seam ([`Config::from_source`]) so tests never touch
//! the process environment. Invariants: every bad value is a [`ConfigError`] naming the
//! variable and the value; a returned `Config` also satisfies the cross-field rules (dedicated
//! mode has a workload).
//! Empty values count as unset, except `XDS_ADDRESS` and `CA_ADDRESS`, where `""` disables.
//! Besides the environment, ztunnel's `ProxyConfig` sources are read ([`mesh`]): the mesh
//! config file and `PROXY_CONFIG`.

mod env;
pub mod mesh;
mod parse;
mod prefixed;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::grpc::{AuthToken, RootCert};
use crate::proxy::HboneTransport;
use crate::telemetry::LogFormat;

pub use env::Host;
use env::{
    Env, auth_token, cpu_count, default_worker_threads, root_cert, termination_deadline,
    workload_info,
};
pub use mesh::{MESH_CONFIG_PATH, MeshError, ProxyConfig};

pub const DEFAULT_CA_DIR: &str = "/var/run/ambit/ca";
const DEFAULT_INPOD_UDS: &str = "/var/run/ztunnel/ztunnel.sock";
const DEFAULT_PACKET_MARK: u32 = 1337;
const DEFAULT_DNS_PORT: u16 = 15053;
const ISTIOD_IN_CLUSTER: &str = "https://istiod.istio-system.svc:15012";
const ISTIOD_LOCAL: &str = "https://localhost:15012";

/// Everything the node proxy is configured with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    pub proxy_mode: ProxyMode,
    /// The one workload a dedicated proxy serves.
    pub proxy_workload_info: Option<WorkloadInfo>,
    /// SO_MARK on every proxy socket (so redirection rules skip the proxy's own traffic).
    pub packet_mark: Option<u32>,
    pub fake_ca: bool,
    /// `None` when `CA_ADDRESS=""`.
    pub ca_address: Option<String>,
    /// `None` when `XDS_ADDRESS=""`.
    pub xds_address: Option<String>,
    /// Control-plane trust (`XDS_ROOT_CA`, `CA_ROOT_CA`): a PEM file, inline PEM, or `SYSTEM`.
    pub xds_root_ca: RootCert,
    pub ca_root_ca: RootCert,
    /// Names to verify in the control plane's certificates instead of the address's host.
    pub alt_xds_hostname: Option<String>,
    pub alt_ca_hostname: Option<String>,
    /// The bearer token (`AUTH_TOKEN`): a file path when that file exists (re-read per
    /// request), else the token itself, as ztunnel decides; unset, the istio-token file when
    /// it exists.
    pub auth_token: Option<AuthToken>,
    /// This proxy's own pod, for the xDS node id (`POD_NAME`, `POD_NAMESPACE`, `INSTANCE_IP`).
    pub pod_name: String,
    pub pod_namespace: String,
    pub instance_ip: String,
    pub local_config: Option<LocalConfigSource>,
    /// Root directory of the built-in CA (`AMBIT_CA_DIR`).
    pub ca_dir: PathBuf,
    #[serde(serialize_with = "ser_duration")]
    pub secret_ttl: Duration,
    /// Trust domain of a workload's identity until the control plane describes the workload
    /// (then its record's trust domain is used, as in ztunnel).
    pub trust_domain: String,
    pub cluster_id: String,
    pub network: String,
    pub node_name: String,
    pub inpod_uds: PathBuf,
    pub inpod_port_reuse: bool,
    /// Data-path threads: `ZTUNNEL_WORKER_THREADS`, else the proxy config's `concurrency`, else
    /// derived from the CPUs (`ZTUNNEL_RESOURCE_CPU_LIMIT` / `_REQUEST`, `ZTUNNEL_CPU_LIMIT`).
    pub worker_threads: usize,
    pub pool_max_streams_per_connection: u32,
    #[serde(serialize_with = "ser_duration")]
    pub pool_unused_release_timeout: Duration,
    pub http2_stream_window_size: u32,
    pub http2_connection_window_size: u32,
    pub http2_frame_size: u32,
    /// `AMBIT_HBONE_TRANSPORT`: `h2` (default, ztunnel's wire protocol), `h3` (HBONE over QUIC
    /// only) or `auto` (QUIC, falling back to h2 per peer when no QUIC handshake completes).
    pub hbone_transport: HboneTransport,
    /// `AMBIT_HBONE_QUIC_FALLBACK`: how long `auto` keeps a peer on h2 after a failed QUIC
    /// handshake before trying QUIC again.
    #[serde(serialize_with = "ser_duration")]
    pub hbone_quic_fallback: Duration,
    /// `AMBIT_HBONE_QUIC_HEAD_START`: in `auto`, how long a first QUIC handshake to a peer runs
    /// alone before an h2 connection races it.
    #[serde(serialize_with = "ser_duration")]
    pub hbone_quic_head_start: Duration,
    pub keepalive: Keepalive,
    #[serde(serialize_with = "ser_duration")]
    pub connection_termination_deadline: Duration,
    /// `None` = decide at start-up from what the system allows.
    pub enable_orig_src: Option<bool>,
    pub ipv6_enabled: bool,
    pub log_format: LogFormat,
    /// `RUST_LOG`-style filter (`RUST_LOG`, default `info`).
    pub log_filter: String,
    pub listeners: Listeners,
    pub dns: Dns,
    /// A SOCKS5 listener on 127.0.0.1:15080 in each pod (`UNSTABLE_ENABLE_SOCKS5`).
    pub enable_socks5: bool,
    /// DNS answers for a host name defined in several namespaces prefer this namespace after
    /// the client's own (`PREFERED_SERVICE_NAMESPACE`, ztunnel's spelling).
    pub prefered_service_namespace: Option<String>,
    /// Authorization decisions at INFO instead of DEBUG (`AUTHZ_POLICY_INFO_LOGGING`).
    pub authz_policy_info_logging: bool,
    /// Application tunnels deliver over loopback (`LOCALHOST_APP_TUNNEL`, default true).
    pub localhost_app_tunnel: bool,
    /// `ENABLE_RESPONSE_BAGGAGE` (default true): `baggage` on the HBONE `200`, and peers'
    /// baggage read for labels (ztunnel's spelling and default).
    pub response_baggage: bool,
    /// `CRL_PATH`: a PEM (or DER) file of CRLs every mTLS handshake checks the peer against,
    /// reloaded when it changes; unset: no revocation checks.
    pub crl_path: Option<PathBuf>,
    /// `TLS12_ENABLED`: TLS 1.2 peers are accepted besides TLS 1.3 (ztunnel's FIPS set-ups).
    pub tls12_enabled: bool,
    /// `COMPLIANCE_POLICY=pqc`: only the X25519MLKEM768 key exchange is negotiated. Other
    /// values (Istio also knows `fips-140-2`) change nothing here, as in ztunnel.
    pub pqc: bool,
    pub outlier: Outlier,
    /// `AMBIT_HANDSHAKE_TIMEOUT` (default 10s): inbound HBONE connections must finish their
    /// TLS handshake within it.
    #[serde(serialize_with = "ser_duration")]
    pub handshake_timeout: Duration,
    /// `AMBIT_MAX_PENDING_HANDSHAKES_PER_SOURCE` (default 128): inbound HBONE connections one
    /// source address may have before their handshake finishes; more are closed on arrival.
    pub max_pending_handshakes_per_source: u32,
    /// Extra headers on every xDS request (`XDS_HEADER_<name>`), names lowercased. Values
    /// may be credentials, so the config dump shows names only.
    #[serde(serialize_with = "ser_header_names")]
    pub xds_headers: Vec<(String, String)>,
    /// Extra headers on every CA request (`CA_HEADER_<name>`), names lowercased.
    #[serde(serialize_with = "ser_header_names")]
    pub ca_headers: Vec<(String, String)>,
    /// Node metadata sent to the control plane besides ztunnel's own four keys
    /// (`ISTIO_META_<key>` as strings, `ISTIO_METAJSON_<key>` as JSON).
    pub proxy_metadata: Vec<(String, serde_json::Value)>,
}

/// Passive outlier ejection of service endpoints (ambit's own; ztunnel has none).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outlier {
    /// `AMBIT_OUTLIER_DETECTION` (default on).
    pub enabled: bool,
    /// `AMBIT_OUTLIER_CONSECUTIVE_FAILURES` (default 3).
    pub consecutive_failures: u32,
    /// `AMBIT_OUTLIER_BASE_EJECTION_TIME` (default 10s), doubled per repeated ejection.
    #[serde(serialize_with = "ser_duration")]
    pub base_ejection: Duration,
    /// `AMBIT_OUTLIER_MAX_EJECTION_TIME` (default 300s).
    #[serde(serialize_with = "ser_duration")]
    pub max_ejection: Duration,
    /// `AMBIT_CONNECT_ATTEMPTS`: endpoints one connection may try (default 3).
    pub connect_attempts: u32,
}

/// The pod DNS proxy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Dns {
    /// On unless `ISTIO_META_DNS_CAPTURE` is set to something other than `true`.
    pub enabled: bool,
    /// `ISTIO_META_DNS_PROXY_ADDR`, default `127.0.0.1:15053` (then also `[::1]` with IPv6).
    pub addr: SocketAddr,
    /// The upstream resolvers (`AMBIT_DNS_RESOLV_CONF`, default `/etc/resolv.conf` of ambit's
    /// own namespace).
    pub resolv_conf: PathBuf,
    /// `CLUSTER_DOMAIN`, default `cluster.local`: the pods' search domains end with it.
    pub cluster_domain: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    /// One ambit per node, proxies created per pod from ZDS.
    #[default]
    Shared,
    /// One ambit for one workload (`PROXY_WORKLOAD_INFO`), in its own network namespace.
    Dedicated,
}

/// `namespace/name/service-account`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadInfo {
    pub namespace: String,
    pub name: String,
    pub service_account: String,
}

/// Where the local config comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum LocalConfigSource {
    /// `LOCAL_XDS_PATH`.
    File(PathBuf),
    /// `LOCAL_XDS`: the YAML itself.
    Inline(String),
}

/// TCP keepalive on proxy sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Keepalive {
    pub enabled: bool,
    #[serde(serialize_with = "ser_duration")]
    pub time: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub interval: Duration,
    pub retries: u32,
    /// `USER_TIMEOUT_ENABLED` (default false): `TCP_USER_TIMEOUT` of
    /// `time + retries × interval`, so a peer that stops acknowledging is dropped as soon as
    /// keepalive would have given up.
    pub user_timeout: bool,
}

impl Keepalive {
    /// The `TCP_USER_TIMEOUT` to set, if enabled.
    pub fn user_timeout(&self) -> Option<Duration> {
        self.user_timeout.then(|| {
            self.time
                .saturating_add(self.interval.saturating_mul(self.retries))
        })
    }
}

/// Listener addresses (ztunnel's fixed ports).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Listeners {
    pub outbound: SocketAddr,
    pub inbound_plaintext: SocketAddr,
    pub inbound_hbone: SocketAddr,
    pub readiness: SocketAddr,
    pub stats: SocketAddr,
    pub admin: SocketAddr,
}

/// Why the configuration is unusable. One line, naming the variable(s) involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}={value:?}: {reason}")]
    Invalid {
        var: &'static str,
        value: String,
        reason: String,
    },
    #[error("{var}={value:?}: {reason}")]
    InvalidPrefixed {
        var: String,
        value: String,
        reason: String,
    },
    /// A value too sensitive to print (a token).
    #[error("{var} (value not shown): {reason}")]
    InvalidSecret { var: &'static str, reason: String },
    #[error("PROXY_MODE=dedicated requires PROXY_WORKLOAD_INFO (namespace/name/service-account)")]
    DedicatedWithoutWorkload,
    #[error("only one of LOCAL_XDS_PATH and LOCAL_XDS may be set")]
    TwoLocalConfigs,
    #[error(transparent)]
    ProxyConfig(#[from] MeshError),
}

// === impl Config ===

impl Config {
    /// Reads the process environment. Variables whose name or value is not UTF-8 are ignored
    /// (none of ours can be).
    pub fn from_env() -> Result<Config, ConfigError> {
        let vars: std::collections::BTreeMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        Config::from_vars(&vars)
    }

    /// Reads every setting, prefixed ones included, from a full set of variables.
    pub fn from_vars(
        vars: &std::collections::BTreeMap<String, String>,
    ) -> Result<Config, ConfigError> {
        Config::from_vars_on(vars, &Host::current()?)
    }

    /// [`Config::from_vars`] on a given host.
    pub fn from_vars_on(
        vars: &std::collections::BTreeMap<String, String>,
        host: &Host,
    ) -> Result<Config, ConfigError> {
        let mut config = Config::from_source_on(&|name| vars.get(name).cloned(), host)?;
        let prefixed = prefixed::parse(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
        config.xds_headers = prefixed.xds_headers;
        config.ca_headers = prefixed.ca_headers;
        // The proxy config's metadata (already in `config`) under the environment's, as in
        // ztunnel.
        let from_proxy_config =
            std::mem::replace(&mut config.proxy_metadata, prefixed.proxy_metadata);
        for (key, value) in from_proxy_config {
            if !config.proxy_metadata.iter().any(|(k, _)| *k == key) {
                config.proxy_metadata.push((key, value));
            }
        }
        Ok(config)
    }

    /// Reads variables looked up by name through `source` (a map in tests); prefixed
    /// variables need the whole set, see [`Config::from_vars`].
    pub fn from_source(source: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        Config::from_source_on(source, &Host::current()?)
    }

    /// [`Config::from_source`] on a given host.
    pub fn from_source_on(
        source: &dyn Fn(&str) -> Option<String>,
        host: &Host,
    ) -> Result<Config, ConfigError> {
        let env = Env(source);
        let pc = ProxyConfig::read(
            host.mesh_config.as_deref(),
            env.get("PROXY_CONFIG").as_deref(),
        )?;
        let proxy_mode = env.parse("PROXY_MODE", |s| match s {
            "shared" => Ok(ProxyMode::Shared),
            "dedicated" => Ok(ProxyMode::Dedicated),
            _ => Err("expected \"shared\" or \"dedicated\"".to_string()),
        })?;
        let proxy_mode = proxy_mode.unwrap_or_default();
        let proxy_workload_info = env.parse("PROXY_WORKLOAD_INFO", workload_info)?;
        let packet_mark = match env.parse("PACKET_MARK", parse::number::<u32>)? {
            Some(mark) => Some(mark),
            None if proxy_mode == ProxyMode::Shared => Some(DEFAULT_PACKET_MARK),
            None => None,
        };
        let fake_ca = env.parse("FAKE_CA", parse::boolean)?.unwrap_or(false);
        let default_istiod = if env.get("KUBERNETES_SERVICE_HOST").is_some() {
            ISTIOD_IN_CLUSTER
        } else {
            ISTIOD_LOCAL
        };
        let ca_address = env.address("CA_ADDRESS", None, default_istiod)?;
        let xds_address = env.address(
            "XDS_ADDRESS",
            pc.discovery_address.as_deref(),
            default_istiod,
        )?;
        let local_config = match (env.get("LOCAL_XDS_PATH"), env.get("LOCAL_XDS")) {
            (Some(_), Some(_)) => return Err(ConfigError::TwoLocalConfigs),
            (Some(path), None) => Some(LocalConfigSource::File(PathBuf::from(path))),
            (None, Some(yaml)) => Some(LocalConfigSource::Inline(yaml)),
            (None, None) => None,
        };
        let ipv6_enabled = env.parse("IPV6_ENABLED", parse::boolean)?.unwrap_or(true);
        // `DNS_CAPTURE` and `DNS_PROXY_ADDR` are proxy metadata: the environment's
        // `ISTIO_META_*` over the proxy config's `proxyMetadata`.
        let metadata = |key: &str| {
            env.get(&format!("ISTIO_META_{key}"))
                .or_else(|| pc.proxy_metadata.get(key).cloned())
        };
        let dns_capture = metadata("DNS_CAPTURE");
        let dns_proxy_addr = metadata("DNS_PROXY_ADDR")
            .map(|v| {
                parse::dns_addr(&v).map_err(|reason| ConfigError::Invalid {
                    var: "ISTIO_META_DNS_PROXY_ADDR",
                    value: v,
                    reason,
                })
            })
            .transpose()?;
        let cpus = cpu_count(&env, host.cpus)?;
        let default_threads = match pc.concurrency {
            Some(0) => cpus,
            Some(n) => usize::from(n),
            None => default_worker_threads(&env, cpus)?,
        };

        let config = Config {
            proxy_mode,
            proxy_workload_info,
            packet_mark,
            fake_ca,
            ca_address,
            xds_address,
            xds_root_ca: root_cert(&env, "XDS_ROOT_CA"),
            ca_root_ca: root_cert(&env, "CA_ROOT_CA"),
            alt_xds_hostname: env.get("ALT_XDS_HOSTNAME"),
            alt_ca_hostname: env.get("ALT_CA_HOSTNAME"),
            auth_token: auth_token(&env)?,
            pod_name: env.get("POD_NAME").unwrap_or_default(),
            pod_namespace: env.get("POD_NAMESPACE").unwrap_or_default(),
            instance_ip: env.get("INSTANCE_IP").unwrap_or_default(),
            local_config,
            ca_dir: env
                .get("AMBIT_CA_DIR")
                .map_or_else(|| PathBuf::from(DEFAULT_CA_DIR), PathBuf::from),
            secret_ttl: env
                .parse("SECRET_TTL", parse::positive_duration)?
                .unwrap_or(Duration::from_secs(24 * 3600)),
            trust_domain: env
                .get("TRUST_DOMAIN")
                .unwrap_or_else(|| "cluster.local".into()),
            // As in ztunnel, the chart's `ISTIO_META_CLUSTER_ID` wins over `CLUSTER_ID`.
            cluster_id: env
                .get("ISTIO_META_CLUSTER_ID")
                .or_else(|| env.get("CLUSTER_ID"))
                .unwrap_or_else(|| "Kubernetes".into()),
            network: env.get("NETWORK").unwrap_or_default(),
            node_name: env.get("NODE_NAME").unwrap_or_default(),
            inpod_uds: env
                .get("INPOD_UDS")
                .map_or_else(|| PathBuf::from(DEFAULT_INPOD_UDS), PathBuf::from),
            inpod_port_reuse: env
                .parse("INPOD_PORT_REUSE", parse::boolean)?
                .unwrap_or(true),
            worker_threads: env
                .parse("ZTUNNEL_WORKER_THREADS", |s| parse::worker_threads(s, cpus))?
                .unwrap_or(default_threads)
                .max(1),
            pool_max_streams_per_connection: env
                .parse("POOL_MAX_STREAMS_PER_CONNECTION", parse::positive_u32)?
                .unwrap_or(100),
            pool_unused_release_timeout: env
                .parse("POOL_UNUSED_RELEASE_TIMEOUT", parse::duration)?
                .unwrap_or(Duration::from_secs(300)),
            http2_stream_window_size: env
                .parse("HTTP2_STREAM_WINDOW_SIZE", parse::window_size)?
                .unwrap_or(4 << 20),
            http2_connection_window_size: env
                .parse("HTTP2_CONNECTION_WINDOW_SIZE", parse::window_size)?
                .unwrap_or(16 << 20),
            http2_frame_size: env
                .parse("HTTP2_FRAME_SIZE", parse::frame_size)?
                .unwrap_or(1 << 20),
            hbone_transport: env
                .parse("AMBIT_HBONE_TRANSPORT", |s| {
                    s.parse::<HboneTransport>().map_err(|e| e.to_string())
                })?
                .unwrap_or_default(),
            hbone_quic_fallback: env
                .parse("AMBIT_HBONE_QUIC_FALLBACK", parse::positive_duration)?
                .unwrap_or(Duration::from_secs(60)),
            hbone_quic_head_start: env
                .parse("AMBIT_HBONE_QUIC_HEAD_START", parse::duration)?
                .unwrap_or(Duration::from_millis(75)),
            keepalive: Keepalive {
                enabled: env
                    .parse("KEEPALIVE_ENABLED", parse::boolean)?
                    .unwrap_or(true),
                time: env
                    .parse("KEEPALIVE_TIME", parse::positive_duration)?
                    .unwrap_or(Duration::from_secs(180)),
                interval: env
                    .parse("KEEPALIVE_INTERVAL", parse::positive_duration)?
                    .unwrap_or(Duration::from_secs(180)),
                retries: env
                    .parse("KEEPALIVE_RETRIES", parse::number::<u32>)?
                    .unwrap_or(9),
                user_timeout: env
                    .parse("USER_TIMEOUT_ENABLED", parse::boolean)?
                    .unwrap_or(false),
            },
            connection_termination_deadline: termination_deadline(&env)?,
            enable_orig_src: env.parse("ENABLE_ORIG_SRC", parse::boolean)?,
            ipv6_enabled,
            log_format: env
                .parse("LOG_FORMAT", |s| match s {
                    "plain" => Ok(LogFormat::Plain),
                    "json" => Ok(LogFormat::Json),
                    _ => Err("expected \"plain\" or \"json\"".to_string()),
                })?
                .unwrap_or_default(),
            // ztunnel silences its DNS server library in front of any RUST_LOG; ambit has no such
            // target, but keeps the directive so the filter reads the same in `/logging`.
            log_filter: format!(
                "hickory_server::server=off,{}",
                env.get("RUST_LOG").unwrap_or_else(|| "info".into())
            ),
            listeners: Listeners::new(ipv6_enabled).with_ports(&pc),
            dns: Dns {
                // As in ztunnel: on unless the metadata says something other than `true`.
                enabled: dns_capture.is_none_or(|v| v.eq_ignore_ascii_case("true")),
                addr: dns_proxy_addr
                    .unwrap_or(SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_DNS_PORT))),
                resolv_conf: env
                    .get("AMBIT_DNS_RESOLV_CONF")
                    .map_or_else(|| PathBuf::from("/etc/resolv.conf"), PathBuf::from),
                cluster_domain: env
                    .get("CLUSTER_DOMAIN")
                    .unwrap_or_else(|| "cluster.local".into()),
            },
            enable_socks5: env
                .parse("UNSTABLE_ENABLE_SOCKS5", parse::boolean)?
                .unwrap_or(false),
            prefered_service_namespace: env.get("PREFERED_SERVICE_NAMESPACE"),
            authz_policy_info_logging: env
                .parse("AUTHZ_POLICY_INFO_LOGGING", parse::boolean)?
                .unwrap_or(false),
            localhost_app_tunnel: env
                .parse("LOCALHOST_APP_TUNNEL", parse::boolean)?
                .unwrap_or(true),
            response_baggage: env
                .parse("ENABLE_RESPONSE_BAGGAGE", parse::boolean)?
                .unwrap_or(true),
            crl_path: env.get("CRL_PATH").map(PathBuf::from),
            tls12_enabled: env.parse("TLS12_ENABLED", parse::boolean)?.unwrap_or(false),
            pqc: env.get("COMPLIANCE_POLICY").as_deref() == Some("pqc"),
            outlier: Outlier {
                enabled: env
                    .parse("AMBIT_OUTLIER_DETECTION", parse::boolean)?
                    .unwrap_or(true),
                consecutive_failures: env
                    .parse("AMBIT_OUTLIER_CONSECUTIVE_FAILURES", parse::positive_u32)?
                    .unwrap_or(3),
                base_ejection: env
                    .parse("AMBIT_OUTLIER_BASE_EJECTION_TIME", parse::positive_duration)?
                    .unwrap_or(Duration::from_secs(10)),
                max_ejection: env
                    .parse("AMBIT_OUTLIER_MAX_EJECTION_TIME", parse::positive_duration)?
                    .unwrap_or(Duration::from_secs(300)),
                connect_attempts: env
                    .parse("AMBIT_CONNECT_ATTEMPTS", parse::positive_u32)?
                    .unwrap_or(3),
            },
            handshake_timeout: env
                .parse("AMBIT_HANDSHAKE_TIMEOUT", parse::positive_duration)?
                .unwrap_or(Duration::from_secs(10)),
            max_pending_handshakes_per_source: env
                .parse(
                    "AMBIT_MAX_PENDING_HANDSHAKES_PER_SOURCE",
                    parse::positive_u32,
                )?
                .unwrap_or(128),
            xds_headers: Vec::new(),
            ca_headers: Vec::new(),
            proxy_metadata: pc
                .proxy_metadata
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect(),
        };
        config.validate()?;
        Ok(config)
    }

    /// Cross-field rules.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.proxy_mode == ProxyMode::Dedicated && self.proxy_workload_info.is_none() {
            return Err(ConfigError::DedicatedWithoutWorkload);
        }
        Ok(())
    }
}

// === impl Listeners ===

impl Listeners {
    /// ztunnel's ports; wildcard binds are `[::]`, or `0.0.0.0` when IPv6 is disabled.
    pub fn new(ipv6_enabled: bool) -> Self {
        let any: IpAddr = if ipv6_enabled {
            Ipv6Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        };
        Listeners {
            outbound: SocketAddr::new(any, 15001),
            inbound_plaintext: SocketAddr::new(any, 15006),
            inbound_hbone: SocketAddr::new(any, 15008),
            readiness: SocketAddr::new(any, 15021),
            stats: SocketAddr::new(any, 15020),
            admin: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 15000),
        }
    }

    /// The proxy config's `proxyAdminPort` and `statsPort`, where set.
    fn with_ports(mut self, pc: &ProxyConfig) -> Self {
        if let Some(port) = pc.proxy_admin_port {
            self.admin.set_port(port);
        }
        if let Some(port) = pc.stats_port {
            self.stats.set_port(port);
        }
        self
    }
}

fn ser_header_names<S: Serializer>(h: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(h.iter().map(|(name, _)| name))
}

fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&parse::format_duration(*d))
}

#[cfg(test)]
mod tests;

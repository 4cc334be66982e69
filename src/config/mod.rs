//! Process configuration from the environment, under ztunnel's variable names.
//!
//! Owns reading and validating every variable the node proxy honours. [`Config`] is plain,
//! serializable data, built once through a seam ([`Config::from_source`]) so tests never touch
//! the process environment. Invariants: every bad value is a [`ConfigError`] naming the
//! variable and the value; a returned `Config` also satisfies the cross-field rules (dedicated
//! mode has a workload).
//! Empty values count as unset, except `XDS_ADDRESS` and `CA_ADDRESS`, where `""` disables.

mod parse;
mod prefixed;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::grpc::RootCert;
use crate::proxy::HboneTransport;
use crate::telemetry::LogFormat;

pub const DEFAULT_CA_DIR: &str = "/var/run/ambit/ca";
const DEFAULT_INPOD_UDS: &str = "/var/run/ztunnel/ztunnel.sock";
const DEFAULT_PACKET_MARK: u32 = 1337;
const DEFAULT_DNS_PORT: u16 = 15053;
const ISTIOD_IN_CLUSTER: &str = "https://istiod.istio-system.svc:15012";
const ISTIOD_LOCAL: &str = "https://localhost:15012";
const DEFAULT_ROOT_CERT: &str = "./var/run/secrets/istio/root-cert.pem";
const DEFAULT_AUTH_TOKEN: &str = "./var/run/secrets/tokens/istio-token";

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
    /// Bearer token file (`AUTH_TOKEN`; default istio-token path when it exists), re-read per
    /// connection.
    pub auth_token: Option<PathBuf>,
    /// This proxy's own pod, for the xDS node id (`POD_NAME`, `POD_NAMESPACE`, `INSTANCE_IP`).
    pub pod_name: String,
    pub pod_namespace: String,
    pub instance_ip: String,
    pub local_config: Option<LocalConfigSource>,
    /// Root directory of the built-in CA (`AMBIT_CA_DIR`).
    pub ca_dir: PathBuf,
    #[serde(serialize_with = "ser_duration")]
    pub secret_ttl: Duration,
    pub trust_domain: String,
    pub cluster_id: String,
    pub network: String,
    pub node_name: String,
    pub inpod_uds: PathBuf,
    pub inpod_port_reuse: bool,
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
    pub outlier: Outlier,
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
    #[error("PROXY_MODE=dedicated requires PROXY_WORKLOAD_INFO (namespace/name/service-account)")]
    DedicatedWithoutWorkload,
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
        let mut config = Config::from_source(&|name| vars.get(name).cloned())?;
        let prefixed = prefixed::parse(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
        config.xds_headers = prefixed.xds_headers;
        config.ca_headers = prefixed.ca_headers;
        config.proxy_metadata = prefixed.proxy_metadata;
        Ok(config)
    }

    /// Reads variables looked up by name through `source` (a map in tests); prefixed
    /// variables need the whole set, see [`Config::from_vars`].
    pub fn from_source(source: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        Config::from_source_with_cpus(source, cpus)
    }

    fn from_source_with_cpus(
        source: &dyn Fn(&str) -> Option<String>,
        cpus: usize,
    ) -> Result<Config, ConfigError> {
        let env = Env(source);
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
        let ca_address = env.address("CA_ADDRESS", default_istiod);
        let xds_address = env.address("XDS_ADDRESS", default_istiod);
        // As in ztunnel, a file wins over inline YAML when both are given.
        let local_config = env
            .get("LOCAL_XDS_PATH")
            .map(|p| LocalConfigSource::File(PathBuf::from(p)))
            .or_else(|| env.get("LOCAL_XDS").map(LocalConfigSource::Inline));
        let ipv6_enabled = env.parse("IPV6_ENABLED", parse::boolean)?.unwrap_or(true);

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
            auth_token: env.get("AUTH_TOKEN").map(PathBuf::from).or_else(|| {
                let default = PathBuf::from(DEFAULT_AUTH_TOKEN);
                default.exists().then_some(default)
            }),
            pod_name: env.get("POD_NAME").unwrap_or_default(),
            pod_namespace: env.get("POD_NAMESPACE").unwrap_or_default(),
            instance_ip: env.get("INSTANCE_IP").unwrap_or_default(),
            local_config,
            ca_dir: env
                .get("AMBIT_CA_DIR")
                .map_or_else(|| PathBuf::from(DEFAULT_CA_DIR), PathBuf::from),
            secret_ttl: env
                .parse("SECRET_TTL", positive_duration)?
                .unwrap_or(Duration::from_secs(24 * 3600)),
            trust_domain: env
                .get("TRUST_DOMAIN")
                .unwrap_or_else(|| "cluster.local".into()),
            cluster_id: env
                .get("CLUSTER_ID")
                .or_else(|| env.get("ISTIO_META_CLUSTER_ID"))
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
                .unwrap_or_else(|| parse::default_worker_threads(cpus)),
            pool_max_streams_per_connection: env
                .parse("POOL_MAX_STREAMS_PER_CONNECTION", positive_u32)?
                .unwrap_or(100),
            pool_unused_release_timeout: env
                .parse("POOL_UNUSED_RELEASE_TIMEOUT", parse::duration)?
                .unwrap_or(Duration::from_secs(300)),
            http2_stream_window_size: env
                .parse("HTTP2_STREAM_WINDOW_SIZE", window_size)?
                .unwrap_or(4 << 20),
            http2_connection_window_size: env
                .parse("HTTP2_CONNECTION_WINDOW_SIZE", window_size)?
                .unwrap_or(16 << 20),
            http2_frame_size: env
                .parse("HTTP2_FRAME_SIZE", frame_size)?
                .unwrap_or(1 << 20),
            hbone_transport: env
                .parse("AMBIT_HBONE_TRANSPORT", |s| {
                    s.parse::<HboneTransport>().map_err(|e| e.to_string())
                })?
                .unwrap_or_default(),
            hbone_quic_fallback: env
                .parse("AMBIT_HBONE_QUIC_FALLBACK", positive_duration)?
                .unwrap_or(Duration::from_secs(60)),
            hbone_quic_head_start: env
                .parse("AMBIT_HBONE_QUIC_HEAD_START", parse::duration)?
                .unwrap_or(Duration::from_millis(75)),
            keepalive: Keepalive {
                enabled: env
                    .parse("KEEPALIVE_ENABLED", parse::boolean)?
                    .unwrap_or(true),
                time: env
                    .parse("KEEPALIVE_TIME", positive_duration)?
                    .unwrap_or(Duration::from_secs(180)),
                interval: env
                    .parse("KEEPALIVE_INTERVAL", positive_duration)?
                    .unwrap_or(Duration::from_secs(180)),
                retries: env
                    .parse("KEEPALIVE_RETRIES", parse::number::<u32>)?
                    .unwrap_or(9),
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
            log_filter: env.get("RUST_LOG").unwrap_or_else(|| "info".into()),
            listeners: Listeners::new(ipv6_enabled),
            dns: Dns {
                enabled: env
                    .get("ISTIO_META_DNS_CAPTURE")
                    .is_none_or(|v| v == "true"),
                addr: env
                    .parse("ISTIO_META_DNS_PROXY_ADDR", dns_addr)?
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
            outlier: Outlier {
                enabled: env
                    .parse("AMBIT_OUTLIER_DETECTION", parse::boolean)?
                    .unwrap_or(true),
                consecutive_failures: env
                    .parse("AMBIT_OUTLIER_CONSECUTIVE_FAILURES", positive_u32)?
                    .unwrap_or(3),
                base_ejection: env
                    .parse("AMBIT_OUTLIER_BASE_EJECTION_TIME", positive_duration)?
                    .unwrap_or(Duration::from_secs(10)),
                max_ejection: env
                    .parse("AMBIT_OUTLIER_MAX_EJECTION_TIME", positive_duration)?
                    .unwrap_or(Duration::from_secs(300)),
                connect_attempts: env
                    .parse("AMBIT_CONNECT_ATTEMPTS", positive_u32)?
                    .unwrap_or(3),
            },
            xds_headers: Vec::new(),
            ca_headers: Vec::new(),
            proxy_metadata: Vec::new(),
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
}

/// Variable lookup with "empty means unset" and errors that name the variable.
struct Env<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    fn get(&self, var: &str) -> Option<String> {
        (self.0)(var).filter(|v| !v.is_empty())
    }

    fn parse<T>(
        &self,
        var: &'static str,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        match self.get(var) {
            None => Ok(None),
            Some(value) => {
                f(&value)
                    .map(Some)
                    .map_err(|reason| ConfigError::Invalid { var, value, reason })
            }
        }
    }

    /// Unset ⇒ `default`; `""` ⇒ disabled (`None`).
    fn address(&self, var: &str, default: &str) -> Option<String> {
        match (self.0)(var) {
            None => Some(default.to_string()),
            Some(v) if v.is_empty() => None,
            Some(v) => Some(v),
        }
    }
}

fn root_cert(env: &Env<'_>, var: &str) -> RootCert {
    RootCert::from_setting(&env.get(var).unwrap_or_else(|| DEFAULT_ROOT_CERT.into()))
}

fn workload_info(s: &str) -> Result<WorkloadInfo, String> {
    match s.split('/').collect::<Vec<_>>().as_slice() {
        [ns, name, sa] if !ns.is_empty() && !name.is_empty() && !sa.is_empty() => {
            Ok(WorkloadInfo {
                namespace: ns.to_string(),
                name: name.to_string(),
                service_account: sa.to_string(),
            })
        }
        _ => Err("expected namespace/name/service-account".into()),
    }
}

/// `ip:port`, or `localhost:port` (loopback IPv4).
fn dns_addr(s: &str) -> Result<SocketAddr, String> {
    if let Some(port) = s.strip_prefix("localhost:") {
        let port = parse::number::<u16>(port)?;
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    s.parse()
        .map_err(|_| "not an address (ip:port or localhost:port)".to_string())
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse::duration(s)?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

fn positive_u32(s: &str) -> Result<u32, String> {
    match parse::number::<u32>(s)? {
        0 => Err("must be greater than zero".into()),
        n => Ok(n),
    }
}

/// HTTP/2 flow-control windows: 65535 ..= 2^31-1 (RFC 9113 §6.9).
fn window_size(s: &str) -> Result<u32, String> {
    let n = parse::number::<u32>(s)?;
    if !(65_535..=(1 << 31) - 1).contains(&n) {
        return Err("window size must be between 65535 and 2147483647".into());
    }
    Ok(n)
}

/// HTTP/2 SETTINGS_MAX_FRAME_SIZE: 16384 ..= 16777215 (RFC 9113 §6.5.2).
fn frame_size(s: &str) -> Result<u32, String> {
    let n = parse::number::<u32>(s)?;
    if !(16_384..=16_777_215).contains(&n) {
        return Err("frame size must be between 16384 and 16777215".into());
    }
    Ok(n)
}

/// `CONNECTION_TERMINATION_DEADLINE`, else derived from Kubernetes'
/// `TERMINATION_GRACE_PERIOD_SECONDS` (leave a margin before the kubelet's SIGKILL: 5 s when
/// the grace period exceeds 10 s, else 1 s, never below 1 s), else 5 s.
fn termination_deadline(env: &Env<'_>) -> Result<Duration, ConfigError> {
    if let Some(d) = env.parse("CONNECTION_TERMINATION_DEADLINE", parse::duration)? {
        return Ok(d);
    }
    if let Some(grace) = env.parse("TERMINATION_GRACE_PERIOD_SECONDS", parse::number::<u64>)? {
        let secs = if grace > 10 {
            grace - 5
        } else {
            grace.saturating_sub(1)
        };
        return Ok(Duration::from_secs(secs.max(1)));
    }
    Ok(Duration::from_secs(5))
}

fn ser_header_names<S: Serializer>(h: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(h.iter().map(|(name, _)| name))
}

fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&parse::format_duration(*d))
}

#[cfg(test)]
mod tests;

//! Driving `ambit` in dedicated mode, one per pod namespace, configured only by environment and a
//! local config YAML (ztunnel's format) that lists both pods' workloads. Also: scraping its
//! metrics and waiting for its access log.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ambit_lab::accesslog::{self, LogLine};
use ambit_lab::{Netns, Process, ProcessSpec, http_get, wait_http_ok};

use super::{PodPair, STEP};

/// The binary under test.
pub const AMBIT: &str = env!("CARGO_BIN_EXE_ambit");

/// The node proxy the lab tests run: `AMBIT_LAB_PROXY` (another ztunnel-compatible binary, e.g.
/// real ztunnel) when set, else the workspace's ambit.
pub fn proxy_under_test() -> PathBuf {
    std::env::var_os("AMBIT_LAB_PROXY")
        .map(Into::into)
        .unwrap_or_else(|| AMBIT.into())
}

/// The CA root the lab's own certificates (gateways, waypoints) come from when the proxy under
/// test issues from a root of its own: `AMBIT_LAB_CA_CERT` and `AMBIT_LAB_CA_KEY` (PEM; PKCS#8
/// key), e.g. real ztunnel's `FAKE_CA` test root. Unset: the lab's built-in CA root.
pub fn ca_root_under_test() -> Option<(PathBuf, PathBuf)> {
    let cert = std::env::var_os("AMBIT_LAB_CA_CERT")?;
    let key = std::env::var_os("AMBIT_LAB_CA_KEY")?;
    Some((cert.into(), key.into()))
}

/// Kubernetes namespace / name / service account of the two pods.
pub const CLIENT_WL: (&str, &str, &str) = ("a", "client", "client");
pub const SERVER_WL: (&str, &str, &str) = ("b", "server", "server");

/// The SPIFFE identity of a workload triple.
pub fn spiffe((ns, _, sa): (&str, &str, &str)) -> String {
    format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")
}

/// One workload entry of the local config, without the `services` map every entry needs.
pub fn workload_yaml((ns, name, sa): (&str, &str, &str), ips: &[IpAddr]) -> String {
    let ips: Vec<String> = ips.iter().map(|ip| format!("\"{ip}\"")).collect();
    format!(
        "- uid: cluster1//v1/Pod/{ns}/{name}\n  name: {name}\n  namespace: {ns}\n  serviceAccount: {sa}\n  workloadIps: [{}]\n  protocol: HBONE\n",
        ips.join(", ")
    )
}

/// The local config listing both pods.
pub fn pair_config() -> String {
    pair_config_with("")
}

/// The local config listing both pods, with `server_extra` lines added to the server's entry.
/// Every entry needs a `services` map (ztunnel's format); an empty one is added unless
/// `server_extra` has it.
pub fn pair_config_with(server_extra: &str) -> String {
    let server_services = if server_extra.contains("  services:") {
        ""
    } else {
        "  services: {}\n"
    };
    format!(
        "workloads:\n{}  services: {{}}\n{}{server_extra}{server_services}",
        workload_yaml(
            CLIENT_WL,
            &[super::client_ip(false), super::client_ip(true)]
        ),
        workload_yaml(
            SERVER_WL,
            &[super::server_ip(false), super::server_ip(true)]
        ),
    )
}

/// The environment of a dedicated-mode ambit.
pub fn spec(
    name: &str,
    info: &str,
    config: &Path,
    ca_dir: &Path,
    secret_ttl: Option<&str>,
) -> ProcessSpec {
    let mut spec = ProcessSpec::new(name, AMBIT)
        .env("PROXY_MODE", "dedicated")
        .env("PROXY_WORKLOAD_INFO", info)
        .env("FAKE_CA", "true")
        .env("CA_ADDRESS", "")
        .env("XDS_ADDRESS", "")
        .env("LOCAL_XDS_PATH", config.display().to_string())
        .env("AMBIT_CA_DIR", ca_dir.display().to_string())
        .env("PACKET_MARK", "1337")
        .env("RUST_LOG", "info");
    if let Some(ttl) = secret_ttl {
        spec = spec.env("SECRET_TTL", ttl);
    }
    spec
}

/// Starts an ambit in `ns` and waits (bounded) for its readiness endpoint.
pub async fn start(ns: &Netns, spec: &ProcessSpec, log_dir: &Path) -> Process {
    let mut p = Process::spawn(Some(ns), spec, log_dir).unwrap();
    let ready = SocketAddr::from(([127, 0, 0, 1], 15021));
    if let Err(e) = wait_http_ok(
        ns,
        ready,
        "/healthz/ready",
        100,
        Duration::from_secs(1),
        Some(&mut p),
    )
    .await
    {
        panic!("{} not ready: {e}\n{}", spec.name, p.tail(40));
    }
    p
}

/// Options of a two-pod mesh.
#[derive(Default)]
pub struct MeshOpts {
    /// Run the server ambit as this service account instead of the configured one.
    pub server_sa: Option<&'static str>,
    pub secret_ttl: Option<&'static str>,
    /// Services (the YAML list items) appended to the local config under `services:`.
    pub services_yaml: Option<String>,
    /// Extra lines appended to each pod's workload entry (e.g. its `services:` map), server
    /// pod only.
    pub server_workload_extra: Option<String>,
    /// Extra environment of the client pod's ambit.
    pub client_env: Vec<(&'static str, String)>,
    /// Extra environment of the server pod's ambit.
    pub server_env: Vec<(&'static str, String)>,
    /// `RLIMIT_NOFILE` (`soft:hard`, as `prlimit --nofile` takes it) the client pod's ambit
    /// starts with.
    pub client_nofile: Option<&'static str>,
    /// The same for the server pod's ambit.
    pub server_nofile: Option<&'static str>,
    /// Another ztunnel-compatible binary for the client pod's proxy (a peer, for comparison).
    pub client_program: Option<PathBuf>,
    /// The same for the server pod's proxy.
    pub server_program: Option<PathBuf>,
    /// `/etc/resolv.conf` as the client pod's proxy sees it (`ip netns exec` mounts
    /// `/etc/netns/<namespace>/resolv.conf` over it); removed with the mesh.
    pub client_resolv_conf: Option<String>,
}

/// `/etc/netns/<namespace>`, removed on drop.
pub struct NetnsEtc(PathBuf);

impl Drop for NetnsEtc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `spec` started through `prlimit` with the given descriptor limits; prlimit execs ambit in
/// place, so the pid is ambit's.
fn with_nofile(spec: ProcessSpec, nofile: Option<&str>) -> ProcessSpec {
    let Some(limits) = nofile else {
        return spec;
    };
    let mut args = vec![
        format!("--nofile={limits}"),
        spec.program.display().to_string(),
    ];
    args.extend(spec.args);
    ProcessSpec {
        program: "prlimit".into(),
        args,
        ..spec
    }
}

/// Two pods with redirection, each with its ambit, sharing one built-in CA directory.
pub struct Mesh {
    // Field order is drop order: processes first, then the namespaces they live in.
    pub client_ambit: Process,
    pub server_ambit: Process,
    pub ca_dir: PathBuf,
    pub netns_etc: Option<NetnsEtc>,
    pub pair: PodPair,
}

impl Mesh {
    pub async fn start(test: &str, opts: MeshOpts) -> Mesh {
        let pair = PodPair::new(test);
        pair.install_redirection();
        let dir = pair.dir.path().to_path_buf();
        let config = dir.join("local.yaml");
        let mut text = pair_config_with(opts.server_workload_extra.as_deref().unwrap_or(""));
        if let Some(services) = &opts.services_yaml {
            text.push_str("services:\n");
            text.push_str(services);
        }
        std::fs::write(&config, text).unwrap();
        let ca_dir = dir.join("ca");
        let (c_ns, c_name, c_sa) = CLIENT_WL;
        let (s_ns, s_name, s_sa) = SERVER_WL;
        let server_info = format!("{s_ns}/{s_name}/{}", opts.server_sa.unwrap_or(s_sa));
        let client_info = format!("{c_ns}/{c_name}/{c_sa}");
        let mut server_spec = spec(
            "server-ambit",
            &server_info,
            &config,
            &ca_dir,
            opts.secret_ttl,
        );
        let mut client_spec = spec(
            "client-ambit",
            &client_info,
            &config,
            &ca_dir,
            opts.secret_ttl,
        );
        for (k, v) in &opts.server_env {
            server_spec = server_spec.env(*k, v.clone());
        }
        for (k, v) in &opts.client_env {
            client_spec = client_spec.env(*k, v.clone());
        }
        // A peer binary replaces ambit itself (prlimit, if asked for, wraps whichever runs).
        if let Some(program) = &opts.server_program {
            server_spec.program = program.clone();
        }
        if let Some(program) = &opts.client_program {
            client_spec.program = program.clone();
        }
        let server_spec = with_nofile(server_spec, opts.server_nofile);
        let client_spec = with_nofile(client_spec, opts.client_nofile);
        let netns_etc = opts.client_resolv_conf.as_ref().map(|text| {
            let etc = Path::new("/etc/netns").join(pair.client.name());
            let guard = NetnsEtc(etc.clone());
            std::fs::create_dir_all(&etc).unwrap();
            std::fs::write(etc.join("resolv.conf"), text).unwrap();
            guard
        });
        let server_ambit = start(&pair.server, &server_spec, &dir).await;
        let client_ambit = start(&pair.client, &client_spec, &dir).await;
        Mesh {
            client_ambit,
            server_ambit,
            ca_dir,
            netns_etc,
            pair,
        }
    }
}

/// The Prometheus text served on 127.0.0.1:15020 inside `ns` (asserts a 200).
pub async fn scrape(ns: &Netns) -> String {
    let addr = SocketAddr::from(([127, 0, 0, 1], 15020));
    let resp = http_get(ns, addr, "/stats/prometheus", STEP).await.unwrap();
    assert_eq!(resp.status, 200, "{}", resp.body);
    resp.body
}

/// The value of the one sample of `family` whose labels contain every one of `labels`.
pub fn sample(text: &str, family: &str, labels: &[&str]) -> Option<u64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Writes `data` on an echo flow and asserts the same bytes come back within [`STEP`].
pub async fn echo_once(s: &mut tokio::net::TcpStream, data: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(data).await.expect("echo flow writable");
    let mut back = vec![0u8; data.len()];
    tokio::time::timeout(STEP, s.read_exact(&mut back))
        .await
        .expect("echo within the step")
        .expect("echo flow alive");
    assert_eq!(back, data);
}

/// Writes `data`, half-closes, and asserts that exactly `data` comes back before the far end
/// closes, within [`STEP`] (`what` names the flow in the failure).
pub async fn echo_all(s: &mut tokio::net::TcpStream, data: &[u8], what: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(data).await.expect("echo flow writable");
    s.shutdown().await.expect("half-close");
    let mut back = Vec::new();
    tokio::time::timeout(STEP, s.read_to_end(&mut back))
        .await
        .expect("echo within the step")
        .expect("echo flow alive");
    assert_eq!(back, data, "{what}");
}

/// The sum of all samples of metric `name` served on 127.0.0.1:15020 inside `ns` (0 if absent).
pub async fn metric(ns: &Netns, name: &str) -> f64 {
    let addr = SocketAddr::from(([127, 0, 0, 1], 15020));
    let resp = http_get(ns, addr, "/metrics", STEP).await.unwrap();
    assert_eq!(resp.status, 200, "metrics: {}", resp.body);
    resp.body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls (bounded, ~5 s) until metric `name` in `ns` sums to `want`, and returns the last value
/// read: a counter may be bumped just after the log line or the client's error that a test
/// waited for.
pub async fn wait_metric(ns: &Netns, name: &str, want: f64) -> f64 {
    let mut value = metric(ns, name).await;
    for _ in 0..50 {
        if value == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        value = metric(ns, name).await;
    }
    value
}

/// Waits (bounded poll of the log file) until an access-log line of `p`'s log satisfies every
/// one of `needles` (`ambit_lab::accesslog::LogLine::has`: `key=value`, `key=`, `key^=prefix`,
/// `key*=part`, `!key`, or a level, scope or message), and returns it.
pub async fn wait_access_line(p: &Process, needles: &[&str]) -> LogLine {
    for _ in 0..100 {
        if let Some(line) = accesslog::access_lines(&p.log(), needles)
            .into_iter()
            .next()
        {
            return line;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "no access line of {} has {needles:?}; tail:\n{}",
        p.name(),
        p.tail(40)
    );
}

/// Waits (bounded poll of the log file) until a line of `p`'s log contains every one of
/// `needles`, and returns that line.
pub async fn wait_log_line(p: &Process, needles: &[&str]) -> String {
    for _ in 0..100 {
        if let Some(line) = p
            .log()
            .lines()
            .find(|l| needles.iter().all(|n| l.contains(n)))
        {
            return line.to_string();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "no line of {} contains {needles:?}; tail:\n{}",
        p.name(),
        p.tail(40)
    );
}

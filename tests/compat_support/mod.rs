//! Shared by the compatibility tests: the admin server on loopback, the recorded peer data,
//! the fixture's records, key paths of a JSON document and istioctl's schema.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ambit::admin::{AdminOps, DumpSources, StaticRecords, bind_admin, serve_admin};
use ambit::core::Identity;
use ambit::rbac::{
    Action, Authorization, Clause, IpNet, Match, Rule, Scope, ServiceAccountMatch, StringMatch,
};
use ambit::state::{
    AppTunnelProtocol, ApplicationTunnel, GatewayAddress, GatewayDestination, HealthPolicy,
    HealthStatus, IpFamilies, LoadBalancer, LoadBalancerMode, Locality, LocalityScope,
    NetworkAddress, Service, TunnelProtocol, Workload,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const WAIT: Duration = Duration::from_secs(10);

pub fn data_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/compat")
        .join(name)
}

pub fn read_data(name: &str) -> String {
    std::fs::read_to_string(data_path(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Answers from an admin server: status code, body.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Starts an admin server for `sources` (log filter `info`) and returns its address and log
/// handle.
pub async fn start_admin(sources: DumpSources) -> (SocketAddr, ambit::telemetry::LogHandle) {
    start_admin_with_filter(sources, "info").await
}

/// As [`start_admin`], with `filter` as the initial log filter.
pub async fn start_admin_with_filter(
    sources: DumpSources,
    filter: &str,
) -> (SocketAddr, ambit::telemetry::LogHandle) {
    let (_sub, log) =
        ambit::telemetry::subscriber(ambit::telemetry::LogFormat::Plain, filter, std::io::sink)
            .unwrap();
    // The filter can only be changed while the subscriber exists; it lives as long as the test.
    std::mem::forget(_sub);
    let (shutdown, _requested) = ambit::lifecycle::shutdown_channel();
    let ops = AdminOps {
        log: log.clone(),
        initial_filter: filter.into(),
        shutdown,
    };
    let (trigger, drain) = ambit::lifecycle::drain_channel();
    // The server lives as long as the test process.
    std::mem::forget(trigger);
    let listener = bind_admin("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_admin(listener, sources, ops, drain));
    (addr, log)
}

/// Sends one request and reads the whole answer.
pub async fn request(addr: SocketAddr, method: &str, path: &str) -> Answer {
    let mut s = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head[9..12].parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if head.to_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Answer { status, body }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let len =
            usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if len == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + len]);
        b = &b[eol + 2 + len + 2..];
    }
}

/// Sources with an empty state and nothing else.
pub fn empty_sources() -> DumpSources {
    let (writer, view) = ambit::state::StateWriter::new();
    std::mem::forget(writer);
    DumpSources {
        state: view,
        certificates: None,
        config: Value::Null,
        static_config: None,
        workload_state: None,
        istio_version: "unknown".into(),
        debug: None,
    }
}

pub async fn serve_and_get(sources: DumpSources, path: &str) -> String {
    let (addr, _log) = start_admin(sources).await;
    let a = request(addr, "GET", path).await;
    assert_eq!(a.status, 200, "{}", a.text());
    a.text()
}

// === key paths ===

/// Objects whose keys are data (uids, service keys, ports), not field names: their values
/// are collapsed to `{}`.
const MAPS: &[&str] = &[
    "services[].endpoints",
    "services[].ports",
    "services[].endpoints{}.port",
    "stagedServices",
    "stagedServices{}",
    "stagedServices{}{}.port",
    "staticConfig.workloads[].services",
    "staticConfig.workloads[].services{}",
    "staticConfig.services[].ports",
    "staticConfig.services[].endpoints",
    "workloadState",
];

/// Every key path of `v` with its JSON type (`path type`), array elements as `[]` and map
/// values as `{}`; sorted, each once.
pub fn paths(v: &Value) -> Vec<String> {
    let mut out = BTreeSet::new();
    walk(v, "", &mut out);
    out.into_iter().collect()
}

fn walk(v: &Value, at: &str, out: &mut BTreeSet<String>) {
    if !at.is_empty() {
        out.insert(format!("{at} {}", ambit_lab::compat::observe::json_type(v)));
    }
    match v {
        Value::Array(items) => {
            for i in items {
                walk(i, &format!("{at}[]"), out);
            }
        }
        Value::Object(m) => {
            let is_map = MAPS.contains(&at);
            for (k, child) in m {
                let next = match (is_map, at.is_empty()) {
                    (true, _) => format!("{at}{{}}"),
                    (false, true) => k.clone(),
                    (false, false) => format!("{at}.{k}"),
                };
                walk(child, &next, out);
            }
        }
        _ => {}
    }
}

// === istioctl's schema ===

pub struct Field {
    pub ty: String,
    pub keys: Option<String>,
    pub format: Option<String>,
}

pub struct Schema {
    pub fields: BTreeMap<String, Field>,
}

impl Schema {
    pub fn load() -> Schema {
        let doc: Value =
            serde_json::from_str(&read_data("istioctl-configdump-schema.json")).unwrap();
        let fields = doc["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                let s = |k: &str| f[k].as_str().map(str::to_string);
                (
                    s("path").unwrap(),
                    Field {
                        ty: s("type").unwrap(),
                        keys: s("keys"),
                        format: s("format"),
                    },
                )
            })
            .collect();
        Schema { fields }
    }

    /// Checks every value of `v` whose path istioctl reads; records the paths seen.
    pub fn check(
        &self,
        v: &Value,
        at: &str,
        seen: &mut BTreeSet<String>,
        errors: &mut Vec<String>,
    ) {
        let field = self.fields.get(at);
        if let Some(f) = field {
            seen.insert(at.to_string());
            if let Err(e) = f.accepts(v) {
                errors.push(format!("{at}: {e} (got {v})"));
            }
        }
        let map_of = |f: Option<&Field>| {
            f.is_some_and(|f| f.ty == "object") && self.fields.contains_key(&format!("{at}{{}}"))
        };
        match v {
            Value::Array(items) => {
                for i in items {
                    self.check(i, &format!("{at}[]"), seen, errors);
                }
            }
            Value::Object(m) if map_of(field) => {
                for (k, child) in m {
                    if let Some(Err(e)) = field
                        .and_then(|f| f.keys.as_deref())
                        .map(|t| number_fits(k, t))
                    {
                        errors.push(format!("{at}: key {k:?}: {e}"));
                    }
                    self.check(child, &format!("{at}{{}}"), seen, errors);
                }
            }
            Value::Object(m) => {
                for (k, child) in m {
                    let next = if at.is_empty() {
                        k.clone()
                    } else {
                        format!("{at}.{k}")
                    };
                    self.check(child, &next, seen, errors);
                }
            }
            _ => {}
        }
    }
}

impl Field {
    fn accepts(&self, v: &Value) -> Result<(), String> {
        if v.is_null() || self.ty == "any" {
            return Ok(());
        }
        let ok = match self.ty.as_str() {
            "string" => v.is_string(),
            "array" => v.is_array(),
            "object" => v.is_object(),
            "int" | "uint16" | "uint32" => match v.as_i64() {
                Some(n) => number_fits(&n.to_string(), &self.ty).is_ok(),
                None => false,
            },
            other => return Err(format!("unknown schema type {other}")),
        };
        if !ok {
            return Err(format!("not a {}", self.ty));
        }
        match (self.format.as_deref(), v.as_str()) {
            (Some("decimal"), Some(s))
                if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) =>
            {
                Err("not a decimal number".into())
            }
            (Some("rfc3339"), Some(s)) if !rfc3339(s) => Err("not an RFC 3339 time".into()),
            (Some("base64-pem"), Some(s)) if !base64_of_pem(s) => Err("not base64 of a PEM".into()),
            _ => Ok(()),
        }
    }
}

fn number_fits(s: &str, ty: &str) -> Result<(), String> {
    let fits = match ty {
        "uint16" => s.parse::<u16>().is_ok(),
        "uint32" => s.parse::<u32>().is_ok(),
        "int" => s.parse::<i64>().is_ok(),
        _ => false,
    };
    if fits {
        Ok(())
    } else {
        Err(format!("{s} is not a {ty}"))
    }
}

/// `YYYY-MM-DDTHH:MM:SS`, optional fraction, then `Z` or `±HH:MM` (what Go's time.RFC3339
/// layout parses).
fn rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    if b.len() < 20
        || !(digits(0..4)
            && digits(5..7)
            && digits(8..10)
            && digits(11..13)
            && digits(14..16)
            && digits(17..19))
    {
        return false;
    }
    if (b[4], b[7], b[10], b[13], b[16]) != (b'-', b'-', b'T', b':', b':') {
        return false;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    rest == "Z"
        || (rest.len() == 6
            && (rest.starts_with('+') || rest.starts_with('-'))
            && rest.as_bytes()[3] == b':')
}

/// Standard base64 whose text starts like a PEM block.
fn base64_of_pem(s: &str) -> bool {
    // base64("-----BEGIN ") with the alphabet and padding checked over the whole string.
    s.len().is_multiple_of(4)
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
        && s.starts_with("LS0tLS1CRUdJTi")
}

// === the fixture ===

/// What `tests/data/compat/ztunnel-local-config.yaml` declares, built in code.
pub fn fixture_records() -> StaticRecords {
    let id = |sa: &str| Identity::new("cluster.local", "default", sa).unwrap();
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
    let echo = "default/echo.default.svc.cluster.local".to_string();

    let mut local = Workload::new("cluster1//v1/Pod/default/local", "local", id("default"));
    local.workload_ips = vec![ip("127.0.0.1")];
    local.protocol = TunnelProtocol::Hbone;
    local.node = "node-a".into();
    local.canonical_name = "local".into();
    local.canonical_revision = "v1".into();
    local.workload_name = "local".into();
    local.workload_type = "deployment".into();
    local.cluster_id = "cluster1".into();
    local.locality = Locality {
        region: "r1".into(),
        zone: "z1".into(),
        subzone: "s1".into(),
    };
    local.authorization_policies = vec!["default/allow-client".into()];
    local
        .services
        .insert(echo.clone(), BTreeMap::from([(80, 8080)]));
    local.services.insert(
        "default/pending.default.svc.cluster.local".into(),
        BTreeMap::from([(90, 9090)]),
    );

    let mut plain = Workload::new("cluster1//v1/Pod/default/plain", "plain", id("plain"));
    plain.workload_ips = vec![ip("127.0.0.2")];
    plain.node = "node-a".into();
    plain.cluster_id = "cluster1".into();
    plain.status = HealthStatus::Unhealthy;
    plain.capacity = 3;
    plain.waypoint = Some(GatewayAddress {
        destination: GatewayDestination::Hostname {
            namespace: "default".into(),
            hostname: "waypoint.default.svc.cluster.local".into(),
        },
        hbone_mtls_port: 15008,
    });
    plain.application_tunnel = Some(ApplicationTunnel {
        protocol: AppTunnelProtocol::Proxy,
        port: Some(15088),
    });
    plain.services.insert(echo, BTreeMap::from([(80, 8080)]));

    let service = Service {
        name: "echo".into(),
        namespace: "default".into(),
        hostname: "echo.default.svc.cluster.local".into(),
        vips: vec![NetworkAddress {
            network: String::new(),
            address: ip("10.96.0.10"),
        }],
        ports: BTreeMap::from([(80, 8080)]),
        subject_alt_names: vec!["spiffe://cluster.local/ns/default/sa/default".into()],
        waypoint: Some(GatewayAddress {
            destination: GatewayDestination::Address(NetworkAddress {
                network: String::new(),
                address: ip("10.96.0.20"),
            }),
            hbone_mtls_port: 15008,
        }),
        load_balancer: Some(LoadBalancer {
            routing_preference: vec![LocalityScope::Region, LocalityScope::Zone],
            mode: LoadBalancerMode::Failover,
            health_policy: HealthPolicy::AllowAll,
        }),
        ip_families: IpFamilies::Ipv4Only,
        ..Default::default()
    };

    let net = |s: &str| {
        let (a, l) = s.split_once('/').unwrap();
        IpNet::new(ip(a), l.parse().unwrap()).unwrap()
    };
    let sa = |ns: &str, sa: &str| ServiceAccountMatch {
        namespace: ns.into(),
        service_account: sa.into(),
    };
    let allow = Authorization {
        name: "allow-client".into(),
        namespace: "default".into(),
        scope: Scope::WorkloadSelector,
        action: Action::Allow,
        dry_run: false,
        rules: vec![Rule {
            clauses: vec![
                Clause {
                    matches: vec![Match {
                        principals: vec![StringMatch::Exact(
                            "cluster.local/ns/default/sa/client".into(),
                        )],
                        namespaces: vec![StringMatch::Prefix("def".into())],
                        not_principals: vec![StringMatch::Suffix("/sa/blocked".into())],
                        source_ips: vec![net("10.0.0.0/8")],
                        destination_ports: vec![8080],
                        ..Default::default()
                    }],
                },
                Clause {
                    matches: vec![Match {
                        destination_ips: vec![net("127.0.0.1/32")],
                        service_accounts: vec![sa("default", "client")],
                        ..Default::default()
                    }],
                },
            ],
        }],
    };
    let deny = Authorization {
        name: "deny-presence".into(),
        namespace: "default".into(),
        scope: Scope::Namespace,
        action: Action::Deny,
        dry_run: true,
        rules: vec![Rule {
            clauses: vec![Clause {
                matches: vec![Match {
                    not_namespaces: vec![StringMatch::Presence],
                    not_source_ips: vec![net("192.168.0.0/16")],
                    not_destination_ports: vec![9999],
                    not_destination_ips: vec![net("10.1.0.0/16")],
                    not_service_accounts: vec![sa("other", "bad")],
                    ..Default::default()
                }],
            }],
        }],
    };
    StaticRecords {
        workloads: vec![local, plain],
        services: vec![service],
        policies: vec![allow, deny],
    }
}

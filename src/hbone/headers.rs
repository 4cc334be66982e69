//! The headers of an HBONE CONNECT request (and the response's `baggage`): building them for the
//! client and parsing them on the server.
//!
//! Invariants: building never fails for well-formed values (a value with a byte that cannot go in
//! a header is reported when the request is built); parsing is lenient where ztunnel is lenient
//! (unknown baggage keys, baggage properties) and strict where a value would otherwise be
//! misread (`forwarded` `for=` must be a socket address, `traceparent` must have exact widths).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::core::Authority;

/// The `baggage` header (W3C baggage with OpenTelemetry / Kubernetes keys).
pub static BAGGAGE: HeaderName = HeaderName::from_static("baggage");
/// The `forwarded` header (RFC 7239).
pub static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
/// The `traceparent` header (W3C trace context).
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The `x-forwarded-network` header: the sender's network, on the inner CONNECT of double
/// HBONE only (an inbound proxy seeing another network than its own knows the source came
/// through a gateway and does not look the source address up).
pub static X_FORWARDED_NETWORK: HeaderName = HeaderName::from_static("x-forwarded-network");

/// A CONNECT request as the pool and client send it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectRequest {
    pub authority: Authority,
    pub headers: ConnectHeaders,
}

/// The metadata headers HBONE carries besides `:authority`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectHeaders {
    pub baggage: Option<Baggage>,
    pub forwarded: Option<Forwarded>,
    pub traceparent: Option<TraceParent>,
    /// `x-forwarded-network` (double HBONE's inner request only).
    pub forwarded_network: Option<String>,
}

/// Facts about a workload, as sent in `baggage`. An empty string means "not known" and is left
/// out of the header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Baggage {
    pub cluster: String,
    pub namespace: String,
    pub workload_type: WorkloadType,
    pub workload_name: String,
    pub service_name: String,
    pub service_version: String,
    pub region: String,
    pub zone: String,
}

/// The kind of Kubernetes workload, as named in the baggage key `k8s.<kind>.name`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum WorkloadType {
    #[default]
    Deployment,
    CronJob,
    Pod,
    Job,
}

/// The `forwarded` header: the downstream client address and, for service-addressed traffic,
/// the service host name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forwarded {
    pub for_addr: SocketAddr,
    pub host: Option<String>,
}

/// The `traceparent` header: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceParent {
    trace_id: u128,
    parent_id: u64,
}

/// Why a header value could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {header} header {value:?}: {reason}")]
pub struct HeaderError {
    pub header: &'static str,
    pub value: String,
    pub reason: &'static str,
}

// === impl ConnectHeaders ===

impl ConnectHeaders {
    /// Writes the present headers into `map`, replacing any earlier values.
    pub fn write_to(&self, map: &mut HeaderMap) -> Result<(), http::Error> {
        if let Some(b) = &self.baggage {
            map.insert(BAGGAGE.clone(), HeaderValue::try_from(b.to_string())?);
        }
        if let Some(f) = &self.forwarded {
            map.insert(FORWARDED.clone(), HeaderValue::try_from(f.to_string())?);
        }
        if let Some(t) = &self.traceparent {
            map.insert(TRACEPARENT.clone(), HeaderValue::try_from(t.to_string())?);
        }
        if let Some(n) = &self.forwarded_network {
            map.insert(
                X_FORWARDED_NETWORK.clone(),
                HeaderValue::try_from(n.as_str())?,
            );
        }
        Ok(())
    }

    /// Reads the headers from a request. A header that is absent or malformed is `None`: a
    /// peer's bad metadata must not fail the tunnel, it only loses telemetry.
    pub fn from_map(map: &HeaderMap) -> ConnectHeaders {
        fn get<T: FromStr<Err = HeaderError>>(map: &HeaderMap, name: &HeaderName) -> Option<T> {
            let value = map.get(name)?.to_str().ok()?;
            match value.parse() {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::debug!(error = %e, "ignoring malformed request header");
                    None
                }
            }
        }
        ConnectHeaders {
            baggage: get(map, &BAGGAGE),
            forwarded: get(map, &FORWARDED),
            traceparent: get(map, &TRACEPARENT),
            // Any visible-ASCII value names a network; an empty one names none.
            forwarded_network: map
                .get(&X_FORWARDED_NETWORK)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string),
        }
    }
}

// === impl Baggage ===

impl Baggage {
    /// Parses the `baggage` header of a response, if there is one.
    pub fn from_map(map: &HeaderMap) -> Option<Baggage> {
        map.get(&BAGGAGE)?.to_str().ok()?.parse().ok()
    }
}

impl fmt::Display for Baggage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let workload_key = match self.workload_type {
            WorkloadType::Deployment => "k8s.deployment.name",
            WorkloadType::CronJob => "k8s.cronjob.name",
            WorkloadType::Pod => "k8s.pod.name",
            WorkloadType::Job => "k8s.job.name",
        };
        let entries = [
            ("k8s.cluster.name", &self.cluster),
            ("k8s.namespace.name", &self.namespace),
            (workload_key, &self.workload_name),
            ("service.name", &self.service_name),
            ("service.version", &self.service_version),
            ("cloud.region", &self.region),
            ("cloud.availability_zone", &self.zone),
        ];
        let mut first = true;
        for (key, value) in entries {
            if value.is_empty() {
                continue;
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{key}={value}")?;
        }
        Ok(())
    }
}

impl FromStr for Baggage {
    type Err = HeaderError;

    /// Lenient: unknown keys, entries without `=` and W3C properties (`;…`) are ignored, so any
    /// peer's baggage yields whatever we understand of it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut b = Baggage::default();
        for entry in s.split(',') {
            // W3C baggage entries may carry `;property` suffixes we have no use for.
            let entry = entry.split(';').next().unwrap_or_default();
            let Some((key, value)) = entry.split_once('=') else {
                continue;
            };
            let value = value.trim().to_string();
            match key.trim() {
                "k8s.cluster.name" => b.cluster = value,
                "k8s.namespace.name" => b.namespace = value,
                "k8s.deployment.name" => {
                    (b.workload_type, b.workload_name) = (WorkloadType::Deployment, value)
                }
                "k8s.cronjob.name" => {
                    (b.workload_type, b.workload_name) = (WorkloadType::CronJob, value)
                }
                "k8s.pod.name" => (b.workload_type, b.workload_name) = (WorkloadType::Pod, value),
                "k8s.job.name" => (b.workload_type, b.workload_name) = (WorkloadType::Job, value),
                "service.name" => b.service_name = value,
                "service.version" => b.service_version = value,
                "cloud.region" => b.region = value,
                "cloud.availability_zone" => b.zone = value,
                _ => {}
            }
        }
        // The kind of a workload without a name is not known either (`k8s.pod.name=` says
        // nothing); keeping it would not survive a round trip, as the writer leaves the key out.
        if b.workload_name.is_empty() {
            b.workload_type = WorkloadType::default();
        }
        Ok(b)
    }
}

// === impl Forwarded ===

impl fmt::Display for Forwarded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The address has a `:` (and brackets for IPv6), which RFC 7239 only allows quoted.
        write!(f, "for=\"{}\"", self.for_addr)?;
        if let Some(host) = &self.host {
            if host.bytes().all(is_token_byte) && !host.is_empty() {
                write!(f, ";host={host}")?;
            } else {
                write!(
                    f,
                    ";host=\"{}\"",
                    host.replace('\\', "\\\\").replace('"', "\\\"")
                )?;
            }
        }
        Ok(())
    }
}

impl FromStr for Forwarded {
    type Err = HeaderError;

    /// Reads the first forwarded element (a proxy chain appends more after commas). `for=` must
    /// be an `ip:port`; other parameters are ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| HeaderError {
            header: "forwarded",
            value: s.to_string(),
            reason,
        };
        // Separators inside a quoted value (`host="a,b"`) are part of the value: split only
        // outside quotes, or a quoted host this type writes would not parse back.
        let first = split_unquoted(s, b',').next().unwrap_or_default();
        let mut for_addr = None;
        let mut host = None;
        for pair in split_unquoted(first, b';') {
            let pair = pair.trim();
            if pair.is_empty() {
                continue;
            }
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| err("parameter without '='"))?;
            let value = unquote(value.trim()).ok_or_else(|| err("bad quoted value"))?;
            match key.trim().to_ascii_lowercase().as_str() {
                "for" => {
                    let addr = value
                        .parse::<SocketAddr>()
                        .map_err(|_| err("for= is not an ip:port"))?;
                    for_addr = Some(addr);
                }
                "host" if !value.is_empty() => host = Some(value),
                _ => {}
            }
        }
        Ok(Forwarded {
            for_addr: for_addr.ok_or_else(|| err("missing for="))?,
            host,
        })
    }
}

/// Splits `s` at each `sep` that is not inside an RFC 7230 quoted string. An unterminated
/// quote runs to the end (the value is then rejected by [`unquote`]).
fn split_unquoted(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let current = rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (i, b) in current.bytes().enumerate() {
            match b {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                _ if b == sep && !quoted => {
                    rest = Some(&current[i + 1..]);
                    return Some(&current[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(current)
    })
}

/// RFC 7230 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Removes RFC 7230 quoting; `None` when a quoted string is not terminated.
fn unquote(v: &str) -> Option<String> {
    let Some(inner) = v.strip_prefix('"') else {
        return Some(v.to_string());
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return chars.as_str().is_empty().then_some(out),
            c => out.push(c),
        }
    }
    None
}

// === impl TraceParent ===

impl TraceParent {
    /// A trace context with the given ids. W3C forbids all-zero ids; [`TraceParent::random`]
    /// never makes them, and parsing rejects them.
    pub fn new(trace_id: u128, parent_id: u64) -> Self {
        TraceParent {
            trace_id,
            parent_id,
        }
    }

    /// A fresh random (non-zero) trace context, one per downstream connection.
    pub fn random() -> Self {
        let trace_id = rand::random::<u128>().max(1);
        let parent_id = rand::random::<u64>().max(1);
        TraceParent {
            trace_id,
            parent_id,
        }
    }

    pub fn trace_id(&self) -> u128 {
        self.trace_id
    }

    pub fn parent_id(&self) -> u64 {
        self.parent_id
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{:032x}-{:016x}-00", self.trace_id, self.parent_id)
    }
}

impl FromStr for TraceParent {
    type Err = HeaderError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| HeaderError {
            header: "traceparent",
            value: s.to_string(),
            reason,
        };
        let mut parts = s.trim().split('-');
        let (Some(version), Some(trace), Some(parent), Some(flags)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(err("expected version-traceid-parentid-flags"));
        };
        let is_hex =
            |p: &str, len: usize| p.len() == len && p.bytes().all(|b| b.is_ascii_hexdigit());
        if !is_hex(version, 2) || version.eq_ignore_ascii_case("ff") {
            return Err(err("bad version"));
        }
        // Version 00 has exactly four fields; later versions may append more.
        if version == "00" && parts.next().is_some() {
            return Err(err("extra fields for version 00"));
        }
        if !is_hex(trace, 32) || !is_hex(parent, 16) || !is_hex(flags, 2) {
            return Err(err("field of wrong width or not hex"));
        }
        let trace_id = u128::from_str_radix(trace, 16).map_err(|_| err("bad trace id"))?;
        let parent_id = u64::from_str_radix(parent, 16).map_err(|_| err("bad parent id"))?;
        if trace_id == 0 || parent_id == 0 {
            return Err(err("all-zero id"));
        }
        Ok(TraceParent {
            trace_id,
            parent_id,
        })
    }
}

#[cfg(test)]
mod tests;

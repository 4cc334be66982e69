//! The DNS proxy (port 15053 in each pod): answers A and AAAA for mesh services from the state
//! (VIPs on the client's network, endpoint IPs for headless services, Istio's search-domain
//! expansion with CNAMEs, TTL 30 s) and forwards everything else to the node's resolvers.
//!
//! Owns the DNS message handling ([`DnsServer`]), the mesh's DNS view ([`Resolver`], also used
//! by SOCKS5 to resolve names) and the upstream forwarder ([`Forwarder`]). It binds nothing
//! itself: callers hand it sockets bound where the pod's DNS is (the pod's namespace in
//! in-pod mode), so this module needs no socket factory and imports no proxy code.

mod forward;
mod metrics;
mod resolve;
mod server;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};

use crate::state::StateView;

pub use forward::{Forwarder, ResolvConfError, parse_resolv_conf};
pub use metrics::{DnsLabels, DnsMetrics};
pub use resolve::{LookupScope, MeshMatch, lookup};
pub use server::{DnsServer, MESH_TTL};

/// The default listener port.
pub const DNS_PORT: u16 = 15053;

/// The transport a query arrived on; forwarded queries use the same one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// Why a lookup or forward failed.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("read {path}: {source}")]
    ResolvConf {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    ResolvConfSyntax {
        path: PathBuf,
        #[source]
        source: forward::ResolvConfError,
    },
    #[error("no upstream resolver configured")]
    NoUpstream,
    #[error("upstream {server}: {source}")]
    Upstream {
        server: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream {server} did not answer within {timeout:?}")]
    UpstreamTimeout {
        server: SocketAddr,
        timeout: Duration,
    },
    #[error("malformed DNS message: {0}")]
    Malformed(&'static str),
    #[error("invalid name {name:?}")]
    InvalidName { name: String },
    #[error("{name}: {code}")]
    Rejected { name: String, code: String },
    #[error("{name} has no address")]
    NoAddress { name: String },
}

/// The mesh's DNS view for one pod, with the upstream behind it. Cheap to clone.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<ResolverInner>,
}

struct ResolverInner {
    state: StateView,
    scope: LookupScope,
    ipv6: bool,
    forwarder: Arc<Forwarder>,
}

impl Resolver {
    /// A resolver for a client in `scope`; AAAA answers only when `ipv6`.
    pub fn new(
        state: StateView,
        scope: LookupScope,
        ipv6: bool,
        forwarder: Arc<Forwarder>,
    ) -> Resolver {
        Resolver {
            inner: Arc::new(ResolverInner {
                state,
                scope,
                ipv6,
                forwarder,
            }),
        }
    }

    pub fn scope(&self) -> &LookupScope {
        &self.inner.scope
    }

    pub fn state(&self) -> &StateView {
        &self.inner.state
    }

    pub fn ipv6(&self) -> bool {
        self.inner.ipv6
    }

    pub fn forwarder(&self) -> &Forwarder {
        &self.inner.forwarder
    }

    /// The mesh service `name` leads to, if any.
    pub fn mesh(&self, name: &str) -> Option<MeshMatch> {
        lookup(&self.inner.state, &self.inner.scope, name)
    }

    /// Every address of `host`: the mesh's answer when it is a mesh name, else the upstream's
    /// (A, then AAAA when IPv6 is on). An IP literal is itself.
    pub async fn lookup_ip(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        if let Some(found) = self.mesh(host) {
            let addrs: Vec<IpAddr> = found
                .addrs
                .into_iter()
                .filter(|ip| ip.is_ipv4() || self.inner.ipv6)
                .collect();
            if addrs.is_empty() {
                return Err(DnsError::NoAddress {
                    name: host.to_string(),
                });
            }
            return Ok(addrs);
        }
        let mut addrs = self.upstream_lookup(host, RecordType::A).await?;
        if self.inner.ipv6 {
            // AAAA is a bonus: a failure there must not hide the A answer.
            match self.upstream_lookup(host, RecordType::AAAA).await {
                Ok(v6) => addrs.extend(v6),
                Err(e) if addrs.is_empty() => return Err(e),
                Err(_) => {}
            }
        }
        if addrs.is_empty() {
            return Err(DnsError::NoAddress {
                name: host.to_string(),
            });
        }
        Ok(addrs)
    }

    async fn upstream_lookup(
        &self,
        host: &str,
        qtype: RecordType,
    ) -> Result<Vec<IpAddr>, DnsError> {
        let mut name = Name::from_ascii(host).map_err(|_| DnsError::InvalidName {
            name: host.to_string(),
        })?;
        name.set_fqdn(true);
        let mut msg = Message::query();
        msg.metadata.recursion_desired = true;
        msg.add_query(Query::query(name, qtype));
        let bytes = msg
            .to_vec()
            .map_err(|_| DnsError::Malformed("cannot encode query"))?;
        let fwd = &self.inner.forwarder;
        let mut answer = parse_answer(&fwd.forward(&bytes, Transport::Udp).await?)?;
        if answer.metadata.truncation {
            answer = parse_answer(&fwd.forward(&bytes, Transport::Tcp).await?)?;
        }
        let code = answer.metadata.response_code;
        if code != hickory_proto::op::ResponseCode::NoError {
            return Err(DnsError::Rejected {
                name: host.to_string(),
                code: code.to_string(),
            });
        }
        Ok(answer
            .answers
            .iter()
            .filter_map(|r| match (&r.data, qtype) {
                (RData::A(a), RecordType::A) => Some(IpAddr::V4(a.0)),
                (RData::AAAA(a), RecordType::AAAA) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect())
    }
}

fn parse_answer(bytes: &[u8]) -> Result<Message, DnsError> {
    Message::from_vec(bytes).map_err(|_| DnsError::Malformed("upstream answer"))
}

/// What a pod's DNS server needs besides its sockets.
pub struct DnsInputs {
    pub resolver: Resolver,
    /// The pod's name, to label metrics with its canonical service.
    pub pod_name: String,
    pub metrics: DnsMetrics,
}

#[cfg(test)]
mod tests;

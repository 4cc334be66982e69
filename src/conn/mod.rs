//! The vocabulary of the data path's flows: what the listeners and flows of [`crate::proxy`]
//! share, and nothing that names a flow.
//!
//! The rule: a piece lives here when more than one flow (outbound, inbound HBONE on h2 or QUIC,
//! inbound plaintext, SOCKS5, the gateway hop) uses it, or when it describes a connection rather
//! than decides where one goes. That is: the proxy's inputs and configuration slice
//! ([`ProxyInputs`], [`ProxyConfig`], [`LocalWorkload`]); the access log and its labels;
//! authorization of a connection and the tracker that re-authorizes live ones; the byte copy and
//! its drain deadline; socket options and helpers; peer revocation watches; the inbound handshake
//! limits; outlier ejection; on-demand DNS; the PROXY protocol codec; and the HBONE transport
//! abstraction ([`transport`]: h2 and QUIC behind one outbound enum and one inbound trait).
//!
//! Routing decisions, listeners and per-connection flows live in [`crate::proxy`], the level
//! above; nothing here imports it (`tests/layering.rs`).

pub(crate) mod accesslog;
pub(crate) mod authz;
pub(crate) mod connections;
pub mod copy;
pub mod handshake;
pub(crate) mod ondemand;
pub mod outlier;
pub mod proxyproto;
pub(crate) mod revocation;
pub mod socket;
pub(crate) mod transport;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::core::Identity;
use crate::hbone::{Baggage, H2Config, WorkloadType};
use crate::metrics::ProxyMetrics;
use crate::state::{StateView, Workload};
use crate::tls::CertProvider;

pub use connections::{
    ConnectionInfo, ConnectionTracker, LiveInbound, LiveOutbound, OutboundProtocol,
};
pub use handshake::{HandshakeLimits, PendingHandshakes};
pub use ondemand::{
    Lookup, LookupError, LookupFuture, OnDemandDns, ResolverConfigError, SystemDns,
};
pub use outlier::{OutlierConfig, Outliers};
pub use socket::{Keepalive, SocketOptions};
pub use transport::{HboneTransport, TransportConfig, TransportError, UnknownTransport};

/// Ports a captured connection must never target: they would loop back into the proxy.
pub const ILLEGAL_PORTS: [u16; 4] = [15001, 15006, 15008, 15080];

/// The proxy's slice of the configuration.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub outbound_addr: SocketAddr,
    pub inbound_addr: SocketAddr,
    pub inbound_plaintext_addr: SocketAddr,
    /// The network this node is on; workload lookups are per network.
    pub network: String,
    pub socket: SocketOptions,
    /// Connect to the app with the client's address as source (needs transparent sockets).
    pub orig_src: bool,
    /// `SO_REUSEPORT` on listeners, so an old and a new proxy can overlap.
    pub reuse_port: bool,
    pub h2: H2Config,
    /// HBONE over h2, QUIC, or QUIC with fallback to h2 (`AMBIT_HBONE_TRANSPORT`).
    pub transport: TransportConfig,
    /// The HBONE port of peers.
    pub hbone_port: u16,
    /// Passive outlier ejection of service endpoints, and connect retries.
    pub outlier: OutlierConfig,
    /// Application tunnels (`PROXY`) deliver to loopback, so the app is reachable only
    /// through the proxy (`LOCALHOST_APP_TUNNEL`, default on); off delivers to the pod's
    /// address.
    pub localhost_app_tunnel: bool,
    /// `ENABLE_RESPONSE_BAGGAGE` (default on, as ztunnel): the `200` of an inbound CONNECT
    /// carries the destination's `baggage`, and peers' baggage fills the labels of workloads
    /// the local state cannot name.
    pub response_baggage: bool,
    /// Deadline and per-source cap of inbound HBONE connections before their TLS handshake.
    pub handshake: HandshakeLimits,
    /// Resolves service endpoints known by host name only (ztunnel's on-demand DNS).
    pub on_demand_dns: OnDemandDns,
}

/// The workload a proxy serves.
#[derive(Clone, Debug)]
pub struct LocalWorkload {
    pub namespace: String,
    pub name: String,
    /// Its identity until the control plane describes the workload: the namespace and service
    /// account it was announced with, and the configured default trust domain.
    pub default_identity: Identity,
}

impl LocalWorkload {
    /// Whether `wl` is this workload.
    pub(crate) fn is(&self, wl: &Workload) -> bool {
        wl.namespace() == self.namespace && wl.name == self.name
    }

    /// The workload's identity: as in ztunnel, the trust domain is the one of its record in
    /// the state (only the control plane knows it); namespace and service account are the
    /// announced ones. Without a record, [`LocalWorkload::default_identity`].
    pub fn identity(&self, state: &StateView) -> Identity {
        self.identity_of(
            state
                .workload_by_name(&self.namespace, &self.name)
                .as_deref(),
        )
    }

    /// [`LocalWorkload::identity`] from the workload's record when the caller has already
    /// looked it up (the connection's labels do), so it is not looked up twice.
    pub fn identity_of(&self, record: Option<&Workload>) -> Identity {
        let default = &self.default_identity;
        match record {
            Some(wl) if wl.trust_domain() != default.trust_domain() => Identity::new(
                wl.trust_domain(),
                default.namespace(),
                default.service_account(),
            )
            // A record's trust domain was validated when it was applied.
            .unwrap_or_else(|_| default.clone()),
            _ => default.clone(),
        }
    }
}

/// What a proxy needs to serve traffic.
pub struct ProxyInputs {
    pub cfg: Arc<ProxyConfig>,
    pub local: LocalWorkload,
    pub state: StateView,
    pub certs: Arc<dyn CertProvider>,
    pub metrics: ProxyMetrics,
}

/// Picks the address of `wl` in the same family as `like`, else its first address.
pub(crate) fn same_family_ip(wl: &Workload, like: IpAddr) -> Option<IpAddr> {
    wl.workload_ips
        .iter()
        .find(|ip| ip.is_ipv4() == like.is_ipv4())
        .or_else(|| wl.workload_ips.first())
        .copied()
}

/// What the `baggage` header says about a workload (wire.md §2.1): its cluster, namespace,
/// controller, canonical service and revision, and locality.
pub(crate) fn baggage(wl: &Workload) -> Baggage {
    let workload_type = match wl.workload_type.to_ascii_lowercase().as_str() {
        "cronjob" => WorkloadType::CronJob,
        "pod" => WorkloadType::Pod,
        "job" => WorkloadType::Job,
        _ => WorkloadType::Deployment,
    };
    let or_name = |s: &str| {
        if s.is_empty() {
            wl.name.clone()
        } else {
            s.to_string()
        }
    };
    Baggage {
        cluster: wl.cluster_id.clone(),
        namespace: wl.namespace().to_string(),
        workload_type,
        workload_name: or_name(&wl.workload_name),
        service_name: or_name(&wl.canonical_name),
        service_version: wl.canonical_revision.clone(),
        region: wl.locality.region.clone(),
        zone: wl.locality.zone.clone(),
    }
}

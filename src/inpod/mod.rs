//! In-pod mode (shared `PROXY_MODE`): the ZDS client that learns from the node agent which pods
//! run on this node, and one proxy per pod whose sockets live inside that pod's network
//! namespace.
//!
//! | file | owns |
//! |---|---|
//! | [`protocol`] | framing over the `SOCK_SEQPACKET` socket, descriptor passing |
//! | [`certs`] | the local pods' certificates: prefetch, readiness, forget |
//! | [`extras`] | the optional per-pod DNS proxy and SOCKS5 listeners beside a proxy |
//! | [`netns`] | validated pod namespace handles; creating sockets inside one |
//! | [`statemanager`] | the pure state machine: which pods should have a proxy |
//! | [`podstates`] | the pods' proxies and live connections, published for `/config_dump` |
//! | [`workloadmanager`] | the I/O loop: connect, answer, start and drain pod proxies |
//!
//! Generated proto types stay inside this module; the rest of ambit sees [`WorkloadManager`].

pub mod certs;
pub mod extras;
pub mod netns;
pub mod podstates;
pub mod protocol;
pub mod statemanager;
pub mod workloadmanager;

pub use certs::CertificateSource;
pub use extras::{BoundExtras, DnsSettings, PodExtras};
pub use netns::{HostNetns, InpodSocketFactory, NetnsError, NetnsId, PodNetns};
pub use podstates::{PodPhase, PodState, PodStates};
pub use statemanager::WorkloadInfo;
pub use workloadmanager::{InpodConfig, WorkloadManager, WorkloadManagerInputs};

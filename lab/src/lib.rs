//! ambit-lab: the network-namespace toolkit under ambit's end-to-end tests, benchmarks and demo.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`sys`] | pre-flight (root, `ip`, `nft`, namespaces), unique names, running configuration commands |
//! | [`netns`] | [`Netns`]: a named namespace removed on drop; commands, sysctls, sockets inside it |
//! | [`link`] | veth pairs between namespaces |
//! | [`nft`] | the outbound-capture and original-source return-path rule sets |
//! | [`process`] | [`Process`]: a program in a namespace, logged to a file, killed on drop |
//! | [`http`] | bounded HTTP probes from inside a namespace (readiness, metrics) |
//! | [`topology`] | the topology YAML: nodes, pods, services, policies; validation, address allocation |
//! | [`control`] | the seam that configures node proxies: [`control::LocalFiles`] (local config file + built-in CA) or the control plane |
//! | [`control_resources`] | the topology as xDS resources (workloads, services, policies) |
//! | [`control_ca`] | the lab's root CA: the control plane's TLS certificate and workload certificates |
//! | [`control_plane`] | [`LabControlPlane`]: the lab's istiod (store, pushes, tokens, records, stop/restart) |
//! | `control_grpc` | its gRPC services over TLS: delta ADS and `CreateCertificate`, answered from the store or scripted |
//! | [`control_scripted`] | the same services scripted by a client test ([`control_scripted::ScriptedAds`], [`control_scripted::ScriptedCa`]), in-process, no root; WDS resource builders |
//! | [`zds`] | ZDS building blocks: SOCK_SEQPACKET socket, fd passing, messages |
//! | [`agent`] | the node agent: in-pod nftables rules, ZDS server, add/delete pods |
//! | [`lab`] | [`Lab`]: a topology built in namespaces, with agents and node proxies |
//! | [`multinet`] | several networks: what is published about them, and their wiring |
//! | [`eastwest`] | the east-west gateway stand-in that joins a network to the others |
//! | [`traffic`] | built-in HTTP, echo, sink (sha256) and request/response servers and clients; the PROXY header echo and the waypoint stand-in |
//! | [`promtext`] | a reader of the Prometheus text format (any proxy's metrics) |
//! | [`witness`] | what judges a flow for any proxy: 15008 byte counters on the nodes, Istio's connection metrics |
//! | [`chaos`] | the reliability suite: faults injected into a running mesh, watched and judged (`RELIABILITY.md`) |
//! | [`demo`] | the demo scenario and its report |
//! | [`compat`] | the differential harness: ambit vs a peer (real ztunnel) on what tools read; recordings for CI |
//! | [`accesslog`] | reading the node proxies' logs in Istio's layout (text or JSON) |
//!
//! Everything the lab creates is named `ambit-lab-<pid>-<random>-...`, so parallel tests never
//! collide and `ambit-lab cleanup` can find what a crashed run left behind.

#![deny(unsafe_code)]

pub mod accesslog;
pub mod agent;
pub mod chaos;
pub mod compat;
pub mod control;
pub mod control_ca;
mod control_grpc;
pub mod control_plane;
pub mod control_resources;
pub mod control_scripted;
pub mod demo;
pub mod eastwest;
mod error;
pub mod http;
pub mod lab;
pub mod link;
pub mod multinet;
pub mod netns;
pub mod nft;
pub mod process;
pub mod prometheus;
pub mod promtext;
pub mod sys;
pub mod topology;
pub mod traffic;
pub mod witness;
pub mod zds;

pub use control_plane::LabControlPlane;
pub use error::LabError;
pub use http::{HttpResponse, http_get, http_request, wait_http_ok};
pub use lab::{ControlMode, Lab, LabOptions, ProxyMode};
pub use link::veth;
pub use netns::Netns;
pub use process::{Process, ProcessSpec};
pub use prometheus::LabPrometheus;
pub use sys::preflight;
pub use topology::Topology;

//! ambit: a per-node L4 data plane for ambient service meshes, wire-compatible with Istio's ztunnel.
//!
//! # Layout
//!
//! Modules are arranged in levels; a module imports only from lower levels, and modules on one
//! level do not import each other (`tests/offline/layering.rs` enforces this).
//!
//! | level | module | owns |
//! |---|---|---|
//! | 1 | [`core`] | identities, authorities: the shared vocabulary |
//! | 1 | [`lifecycle`] | drain with a deadline, readiness guards, signals |
//! | 1 | [`telemetry`] | logging setup and reloadable log levels |
//! | 2 | [`rbac`] | authorization policies: the domain model and their pure evaluation |
//! | 3 | [`state`] | workloads, services and policies, indexed; a read-only view for the data path |
//! | 4 | [`tls`] | rustls configurations, SPIFFE verification, the certificate-provider seam |
//! | 4 | [`metrics`] | the metric registry and the data path's counters |
//! | 4 | [`grpc`] | control-plane gRPC channels: TLS roots, keepalives, auth metadata |
//! | 5 | [`hbone`] | HTTP/2 CONNECT: client, connection pool, server side, headers |
//! | 5 | [`quic`] | HBONE over QUIC (HTTP/3 CONNECT on quinn): endpoints, client pool, server side |
//! | 6 | [`conn`] | what the flows share: the proxy's inputs, access log, authorization and the connection tracker, copy, sockets, revocation watches, outliers, on-demand DNS, PROXY protocol; the HBONE transport abstraction (h2 and QUIC) |
//! | 6 | [`dns`] | the pod DNS proxy: mesh names from the state, the rest forwarded upstream |
//! | 7 | [`proxy`] | listeners, routing and per-connection flows (outbound, inbound HBONE on h2 and QUIC, inbound plaintext, SOCKS5, the gateway hop) |
//! | 8 | [`identity`] | certificate manager with rotation; the Istio CA client; the built-in CA |
//! | 8 | [`xds`] | configuration sources: the delta ADS client (a handler per resource type), the local config file |
//! | 8 | [`inpod`] | in-pod mode: the ZDS client and per-pod proxies inside pod namespaces |
//! | 9 | [`admin`] | readiness, metrics and admin (`/config_dump`) HTTP servers |
//! | 9 | [`config`] | configuration from the environment |
//! | 10 | [`app`] | the composition root |
//! | 10 | [`ctl`] | `ambit ctl`: the operator's client of the admin API (never imported by the proxy) |
//!
//! The data path (`tls`, `hbone`, `quic`, `conn`, `proxy`) never imports control-plane or admin
//! code: it is handed a state view, a certificate provider and its own configuration. Only the
//! control modules (`grpc`, `xds`, `identity`, `inpod`, `admin`, `config`, `app`, `ctl`) name the
//! generated wire types of `ambit_proto`.
//!
//! Unit tests live beside their module: `<module>/tests.rs`, or `<module>/tests/mod.rs` with one
//! `<module>/tests/<topic>.rs` per topic when a module has several.

#![deny(unsafe_code)]

pub mod admin;
pub mod app;
pub mod config;
pub mod conn;
pub mod core;
pub mod ctl;
pub mod dns;
pub mod grpc;
pub mod hbone;
pub mod identity;
pub mod inpod;
pub mod lifecycle;
pub mod metrics;
pub mod proxy;
pub mod quic;
pub mod rbac;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod xds;

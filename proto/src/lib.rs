//! ambit's protobuf and gRPC definitions, wire-compatible with Istio's.
//!
//! The `.proto` sources in `proto/proto/` are ambit's own, written from the published
//! field numbers of Istio's workload, security, CA and ZDS APIs and the Envoy delta xDS
//! API; `build.rs` compiles them with `protox` (no system `protoc`) and prost/tonic.
//! Nothing generated is committed: every module below `include!`s its package's file
//! from `OUT_DIR`.
//!
//! Layout (module = protobuf package; nesting mirrors the package so prost's
//! `super::` cross-references resolve):
//! - [`istio::workload`]: `Address` (`Workload` | `Service`) and its parts: the xDS
//!   resource of type [`ADDRESS_TYPE_URL`].
//! - [`istio::workload::zds`]: node agent ⇄ proxy messages (`WorkloadRequest`,
//!   `WorkloadResponse`, `ZdsHello`).
//! - [`istio::security`]: `Authorization` policies: the xDS resource of type
//!   [`AUTHORIZATION_TYPE_URL`].
//! - [`istio::v1::auth`]: the CA (`IstioCertificateService` client and server).
//! - [`envoy::service::discovery::v3`]: the aggregated discovery service (delta and
//!   state-of-the-world streams, client and server).
//! - [`envoy::config::core::v3`]: `Node`, sent on the first xDS request of each type.
//! - [`google::rpc`]: `Status`, the NACK detail.
//!
//! Well-known types are `prost_types` (`Any`, `Struct`, `Duration`); `UInt32Value` fields
//! are `Option<u32>` and `google.protobuf.Empty` is `()`.
//!
//! These are raw wire types: the proxy converts them into its own domain types at the
//! boundary and never passes them further.

#![deny(unsafe_code)]

/// Type URL of `istio.workload.Address` resources on the xDS stream.
pub const ADDRESS_TYPE_URL: &str = "type.googleapis.com/istio.workload.Address";

/// Type URL of `istio.security.Authorization` resources on the xDS stream.
pub const AUTHORIZATION_TYPE_URL: &str = "type.googleapis.com/istio.security.Authorization";

/// Istio's APIs.
pub mod istio {
    /// Package `istio.workload`: workloads and services.
    // `address::Type` holds a `Workload` or a `Service` inline; an `Address` only lives
    // between decoding and conversion to domain types, so boxing would buy nothing.
    #[allow(clippy::large_enum_variant)]
    pub mod workload {
        include!(concat!(env!("OUT_DIR"), "/istio.workload.rs"));

        /// Package `istio.workload.zds`: the node agent (istio-cni) protocol.
        pub mod zds {
            include!(concat!(env!("OUT_DIR"), "/istio.workload.zds.rs"));
        }
    }

    /// Package `istio.security`: L4 authorization policies.
    pub mod security {
        include!(concat!(env!("OUT_DIR"), "/istio.security.rs"));
    }

    /// Istio's versioned service APIs.
    pub mod v1 {
        /// Package `istio.v1.auth`: the certificate authority service.
        pub mod auth {
            include!(concat!(env!("OUT_DIR"), "/istio.v1.auth.rs"));
        }
    }
}

/// The parts of Envoy's API that xDS needs.
pub mod envoy {
    /// Envoy services.
    pub mod service {
        /// Discovery services.
        pub mod discovery {
            /// Package `envoy.service.discovery.v3`: aggregated discovery (ADS).
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.service.discovery.v3.rs"));
            }
        }
    }

    /// Envoy configuration types.
    pub mod config {
        /// Core configuration types.
        pub mod core {
            /// Package `envoy.config.core.v3`: `Node` and friends.
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.config.core.v3.rs"));
            }
        }
    }
}

/// Google API types.
pub mod google {
    /// Package `google.rpc`: `Status`.
    pub mod rpc {
        include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
    }
}

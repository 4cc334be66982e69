//! PROXY protocol v2 headers for application tunnels (`application_tunnel.protocol=PROXY`).
//!
//! Owns the header inbound writes before the first app byte when the local workload asks for
//! an application tunnel: the client's address as source, the CONNECT target (what the client
//! asked for: a workload address or, on a waypoint, a service VIP) as destination, and the
//! client's SPIFFE identity in TLV 0xD0 (wire.md §1; 0xD1 is described in the proto but, as in
//! ztunnel, not written). Encoding is the `ppp` crate's.
//!
//! Invariant: the header is complete in one buffer and written before any payload, so the app
//! can parse it from the first read.

use std::net::SocketAddr;

use ppp::v2::{Builder, Command, Protocol, Version};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::core::Identity;

/// TLV type of the source SPIFFE identity.
pub const SOURCE_IDENTITY_TLV: u8 = 0xD0;

/// Why a PROXY header could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum ProxyProtoError {
    #[error("build PROXY v2 header for {src} -> {dst}: {source}")]
    Build {
        src: SocketAddr,
        dst: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("write PROXY v2 header to the app: {0}")]
    Write(#[source] std::io::Error),
}

/// The header bytes for a stream from `src` to `dst`, carrying `identity` when known.
pub fn header(
    src: SocketAddr,
    dst: SocketAddr,
    identity: Option<&Identity>,
) -> Result<Vec<u8>, ProxyProtoError> {
    let build = || -> std::io::Result<Vec<u8>> {
        let b =
            Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, (src, dst));
        let b = match identity {
            Some(id) => b.write_tlv(SOURCE_IDENTITY_TLV, id.to_string().as_bytes())?,
            None => b,
        };
        b.build()
    };
    build().map_err(|source| ProxyProtoError::Build { src, dst, source })
}

/// Writes the header to the app's connection.
pub async fn write(
    app: &mut TcpStream,
    src: SocketAddr,
    dst: SocketAddr,
    identity: Option<&Identity>,
) -> Result<(), ProxyProtoError> {
    let bytes = header(src, dst, identity)?;
    app.write_all(&bytes).await.map_err(ProxyProtoError::Write)
}

#[cfg(test)]
mod tests {
    use ppp::v2::{Addresses, Header};

    use super::*;

    #[test]
    fn header_carries_addresses_and_source_identity() {
        let id: Identity = "spiffe://cluster.local/ns/a/sa/client".parse().unwrap();
        let src: SocketAddr = "10.0.0.1:40000".parse().unwrap();
        let dst: SocketAddr = "10.96.0.1:80".parse().unwrap();
        let bytes = header(src, dst, Some(&id)).unwrap();
        let h = Header::try_from(bytes.as_slice()).unwrap();
        assert_eq!(h.command, Command::Proxy);
        assert_eq!(h.protocol, Protocol::Stream);
        match h.addresses {
            Addresses::IPv4(a) => {
                assert_eq!((a.source_address, a.source_port), (*src.ip_v4(), 40000));
                assert_eq!(
                    (a.destination_address, a.destination_port),
                    (*dst.ip_v4(), 80)
                );
            }
            other => panic!("expected IPv4 addresses, got {other:?}"),
        }
        let tlvs: Vec<(u8, Vec<u8>)> = h
            .tlvs()
            .map(|t| {
                let t = t.unwrap();
                (t.kind, t.value.to_vec())
            })
            .collect();
        assert_eq!(
            tlvs,
            vec![(SOURCE_IDENTITY_TLV, id.to_string().into_bytes())]
        );
    }

    #[test]
    fn ipv6_and_no_identity() {
        let src: SocketAddr = "[fd00::1]:1".parse().unwrap();
        let dst: SocketAddr = "[fd00::2]:2".parse().unwrap();
        let h_bytes = header(src, dst, None).unwrap();
        let h = Header::try_from(h_bytes.as_slice()).unwrap();
        assert!(matches!(h.addresses, Addresses::IPv6(_)));
        assert_eq!(h.tlvs().count(), 0);
    }

    trait V4 {
        fn ip_v4(&self) -> &std::net::Ipv4Addr;
    }

    impl V4 for SocketAddr {
        fn ip_v4(&self) -> &std::net::Ipv4Addr {
            match self {
                SocketAddr::V4(a) => a.ip(),
                SocketAddr::V6(_) => panic!("not IPv4"),
            }
        }
    }
}

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
        let b = Builder::with_addresses(
            Version::Two | Command::Proxy,
            Protocol::Stream,
            same_family(src, dst),
        );
        let b = match identity {
            Some(id) => b.write_tlv(SOURCE_IDENTITY_TLV, id.to_string().as_bytes())?,
            None => b,
        };
        b.build()
    };
    build().map_err(|source| ProxyProtoError::Build { src, dst, source })
}

/// One header holds addresses of one family. With mixed families `ppp` (and ztunnel) write
/// `AF_UNSPEC`, which tells the app to ignore the addresses: it would see ours instead of the
/// client's. Mapping the IPv4 side into IPv6 (`::ffff:a.b.c.d`, as HAProxy does) keeps both.
fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        v6 => v6,
    };
    if src.is_ipv4() == dst.is_ipv4() {
        (src, dst)
    } else {
        (v6(src), v6(dst))
    }
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

    // Found by the `proxy_protocol` fuzz target: an IPv4 client reaching an IPv6 target (or
    // the reverse) got an `AF_UNSPEC` header without addresses.
    #[test]
    fn mixed_families_keep_both_addresses_as_ipv6() {
        let src: SocketAddr = "10.0.0.1:40000".parse().unwrap();
        let dst: SocketAddr = "[fd00::2]:80".parse().unwrap();
        for (s, d) in [(src, dst), (dst, src)] {
            let bytes = header(s, d, None).unwrap();
            let h = Header::try_from(bytes.as_slice()).unwrap();
            let Addresses::IPv6(a) = h.addresses else {
                panic!("expected IPv6 addresses, got {:?}", h.addresses);
            };
            let mapped = |x: SocketAddr| match x {
                SocketAddr::V4(v4) => v4.ip().to_ipv6_mapped(),
                SocketAddr::V6(v6) => *v6.ip(),
            };
            assert_eq!((a.source_address, a.source_port), (mapped(s), s.port()));
            assert_eq!(
                (a.destination_address, a.destination_port),
                (mapped(d), d.port())
            );
        }
    }

    #[test]
    fn an_identity_too_long_for_a_tlv_is_an_error() {
        let long = "a".repeat(usize::from(u16::MAX));
        let id = Identity::new("td", "ns", &long).unwrap();
        let addr: SocketAddr = "10.0.0.1:1".parse().unwrap();
        assert!(matches!(
            header(addr, addr, Some(&id)),
            Err(ProxyProtoError::Build { .. })
        ));
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

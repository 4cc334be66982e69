//! rustls configurations for HBONE mutual TLS, SPIFFE verification, and the certificate-provider seam.
//!
//! Invariants (wire.md §2.1):
//! - TLS 1.3 only; cipher suites exactly `TLS13_AES_256_GCM_SHA384` then `TLS13_AES_128_GCM_SHA256`
//!   (aws-lc-rs), unless the [`TlsPolicy`] says otherwise (`TLS12_ENABLED` adds TLS 1.2 with
//!   ECDHE AES-GCM suites on TCP, never on QUIC; `COMPLIANCE_POLICY=pqc` allows only the
//!   X25519MLKEM768 key exchange); ALPN exactly `h2`, offered by clients and advertised by servers (exactly `h3` on the
//!   `*_h3` configurations that HBONE over QUIC uses).
//! - Clients send no SNI, never resume sessions, always present their chain, and accept a server only
//!   if its chain reaches our roots (serverAuth) and one of its SPIFFE URI SANs is an expected identity.
//! - Servers require a client certificate chaining to the same roots (clientAuth) whose first URI SAN
//!   is a SPIFFE identity in the server's own trust domain; that SAN is the peer identity.
//! - With a CRL handle in the policy, both verifiers refuse a chain the CRLs in force revoke
//!   (alert `certificate_revoked`), and live connections can watch their peer
//!   ([`WorkloadCertificate::watch_revocation`]).
//! - Configurations are built once per certificate (client ones once per expected-identity set) and
//!   shared, because building them per connection costs more than the handshake itself.
//!
//! This module is on the data path: it imports only `core`.

mod certificate;
mod revocation;
mod verify;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;

use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::core::{Identity, IdentityError};

pub use certificate::WorkloadCertificate;
pub use revocation::{CrlError, CrlHandle, CrlSet, PeerRole, RevocationWatch, Revoked};
pub use verify::{chain_identity, peer_identity};

/// The ALPN protocol of HBONE over TCP.
pub const ALPN_H2: &[u8] = b"h2";
/// The ALPN protocol of HBONE over QUIC (HTTP/3); only on the configurations built for QUIC.
pub const ALPN_H3: &[u8] = b"h3";

/// What the deployment asks of HBONE's TLS beyond the fixed invariants (ztunnel's
/// `TLS12_ENABLED`, `COMPLIANCE_POLICY` and `CRL_PATH`). The default is TLS 1.3 only, stock key
/// exchange groups, no CRL.
#[derive(Clone, Debug, Default)]
pub struct TlsPolicy {
    /// Accept (and offer) TLS 1.2 besides 1.3, with ECDHE AES-GCM suites.
    pub tls12: bool,
    /// Negotiate the X25519MLKEM768 hybrid key exchange only.
    pub pqc: bool,
    /// The CRLs both sides of every handshake check the peer's chain against.
    pub crl: Option<CrlHandle>,
}

/// Why a TLS configuration could not be built, or a handshake or peer was refused.
///
/// Cloneable so that a verifier's refusal can travel inside a `rustls::Error` and be recovered,
/// typed, by [`connect`] and [`accept`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsError {
    /// The handshake failed inside rustls (bad chain, alert from the peer, protocol mismatch...).
    #[error("TLS handshake failed: {0}")]
    Handshake(rustls::Error),
    /// The server's certificate is valid but names none of the identities we meant to reach.
    #[error("server presented identity {presented}, expected one of [{}]", join(.expected))]
    UnexpectedServerIdentity {
        presented: Identity,
        expected: Vec<Identity>,
    },
    /// The client's identity belongs to another trust domain than the server's own.
    #[error("peer identity {peer} is not in trust domain {expected:?}")]
    TrustDomainMismatch { peer: Identity, expected: String },
    /// A certificate carries no URI SAN that is a SPIFFE identity.
    #[error("certificate carries no SPIFFE URI SAN")]
    NoSpiffeIdentity,
    /// The URI SAN that must name the peer is not a SPIFFE workload identity.
    #[error("URI SAN {uri:?} is not a SPIFFE workload identity: {source}")]
    InvalidSpiffeIdentity {
        uri: String,
        #[source]
        source: IdentityError,
    },
    /// The peer presented no certificate at all.
    #[error("peer presented no certificate")]
    NoPeerCertificate,
    /// Certificate material (chain or roots) could not be parsed or used.
    #[error("bad certificate material: {0}")]
    BadCertificate(String),
    /// The private key could not be loaded or does not match the leaf certificate.
    #[error("bad private key: {0}")]
    BadKey(String),
    /// A client configuration was asked for with no identity to accept.
    #[error("no expected server identities given")]
    NoExpectedIdentities,
    /// The transport failed during the handshake.
    #[error("I/O error during TLS handshake: {0}")]
    Io(Arc<io::Error>),
    /// A certificate provider could not supply a certificate for this identity.
    #[error("no certificate available for {identity}: {reason}")]
    CertificateUnavailable { identity: Identity, reason: String },
}

/// The seam between the data path and the certificate manager: hands out the current certificate
/// of a local workload identity, issuing it first if needed.
pub trait CertProvider: Send + Sync + 'static {
    fn fetch(
        &self,
        id: &Identity,
    ) -> Pin<Box<dyn Future<Output = Result<Arc<WorkloadCertificate>, TlsError>> + Send + '_>>;
}

/// Runs the client side of an HBONE TLS handshake over `io`.
///
/// No SNI is sent: the server name given to rustls is the unspecified address, which rustls never
/// puts in a ClientHello, and the verifier ignores names anyway.
pub async fn connect<IO: AsyncRead + AsyncWrite + Unpin>(
    cfg: Arc<ClientConfig>,
    io: IO,
) -> Result<tokio_rustls::client::TlsStream<IO>, TlsError> {
    let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into());
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, io)
        .await
        .map_err(handshake_error)
}

/// Runs the server side of an HBONE TLS handshake over `io`; returns the stream and the client's
/// identity (the first URI SAN of its leaf, already checked by the server's verifier).
pub async fn accept<IO: AsyncRead + AsyncWrite + Unpin>(
    cfg: Arc<ServerConfig>,
    io: IO,
) -> Result<(tokio_rustls::server::TlsStream<IO>, Identity), TlsError> {
    let stream = tokio_rustls::TlsAcceptor::from(cfg)
        .accept(io)
        .await
        .map_err(handshake_error)?;
    let peer = peer_identity(stream.get_ref().1)?;
    Ok((stream, peer))
}

/// Turns the `io::Error` tokio-rustls reports into a typed error, recovering our own verifier's
/// refusal when that is what stopped the handshake.
fn handshake_error(e: io::Error) -> TlsError {
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return TlsError::Io(Arc::new(e));
    };
    if let rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) = tls
        && let Some(ours) = other.0.downcast_ref::<TlsError>()
    {
        return ours.clone();
    }
    TlsError::Handshake(tls.clone())
}

impl TlsError {
    /// Whether our own verifier refused the peer because a CRL in force revokes its chain.
    pub fn is_revoked(&self) -> bool {
        matches!(
            self,
            TlsError::Handshake(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked
            ))
        )
    }
}

fn join(ids: &[Identity]) -> String {
    let mut out = String::new();
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&id.to_string());
    }
    out
}

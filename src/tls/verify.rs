//! The crypto provider HBONE uses, SPIFFE URI SAN extraction, and the two certificate verifiers:
//! the client's (chain to our roots for serverAuth, then an expected identity) and the server's
//! (chain to our roots for clientAuth, then the same trust domain).
//!
//! Invariant: a verifier refuses with `rustls::Error::InvalidCertificate(CertificateError::Other)`
//! carrying a [`TlsError`] when the refusal is about identity, so `connect`/`accept` can give the
//! caller the typed reason; chain failures map onto rustls' own `CertificateError` variants.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, aws_lc_rs};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, CommonState, DigitallySignedStruct, DistinguishedName, OtherError,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use x509_parser::extensions::GeneralName;

use super::TlsError;
use crate::core::Identity;

/// The process-wide provider: aws-lc-rs with exactly the two TLS 1.3 AES-GCM suites.
pub(super) fn provider() -> &'static Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| {
        Arc::new(CryptoProvider {
            cipher_suites: vec![
                aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
                aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
            ],
            ..aws_lc_rs::default_provider()
        })
    })
}

/// Trust anchors parsed once from the roots of a certificate, shared by its verifiers.
#[derive(Debug)]
pub(super) struct TrustRoots {
    anchors: Vec<TrustAnchor<'static>>,
    subjects: Vec<DistinguishedName>,
}

impl TrustRoots {
    pub(super) fn new(roots: &[CertificateDer<'static>]) -> Result<Self, TlsError> {
        if roots.is_empty() {
            return Err(TlsError::BadCertificate("no root certificates".into()));
        }
        let mut anchors = Vec::with_capacity(roots.len());
        for (i, root) in roots.iter().enumerate() {
            let anchor = webpki::anchor_from_trusted_cert(root)
                .map_err(|e| TlsError::BadCertificate(format!("root certificate #{i}: {e}")))?;
            anchors.push(anchor.to_owned());
        }
        let subjects = anchors
            .iter()
            .map(|a| DistinguishedName::in_sequence(&a.subject))
            .collect();
        Ok(TrustRoots { anchors, subjects })
    }

    /// Verifies `end_entity` (with the peer's `intermediates`) up to one of the anchors for `usage`.
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<(), rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        cert.verify_for_usage(
            provider().signature_verification_algorithms.all,
            &self.anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(pki_error)?;
        Ok(())
    }
}

/// Maps a webpki refusal onto rustls' certificate errors, so alerts and messages stay standard.
fn pki_error(e: webpki::Error) -> rustls::Error {
    use webpki::Error as E;
    let ce = match e {
        E::BadDer | E::BadDerTime => CertificateError::BadEncoding,
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        E::RequiredEkuNotFoundContext(_) => CertificateError::InvalidPurpose,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(ce)
}

/// A refusal of ours, carried through rustls so `connect`/`accept` can recover it.
fn refuse(e: TlsError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// All URI SANs of a DER certificate, in order.
fn uri_sans(der: &[u8]) -> Result<Vec<String>, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TlsError::BadCertificate(format!("parsing certificate: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::BadCertificate(format!("parsing subjectAltName: {e}")))?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some((*u).to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// The URI SANs of `der` that parse as SPIFFE workload identities, in order.
pub(super) fn spiffe_identities(der: &[u8]) -> Result<Vec<Identity>, TlsError> {
    Ok(uri_sans(der)?
        .iter()
        .filter_map(|u| u.parse().ok())
        .collect())
}

/// The identity a peer is known by: its leaf's first URI SAN, which must be a SPIFFE identity.
fn first_uri_identity(der: &[u8]) -> Result<Identity, TlsError> {
    let uri = uri_sans(der)?
        .into_iter()
        .next()
        .ok_or(TlsError::NoSpiffeIdentity)?;
    uri.parse()
        .map_err(|source| TlsError::InvalidSpiffeIdentity { uri, source })
}

/// The identity of the peer of an established connection: the first URI SAN of its leaf.
pub fn peer_identity(conn: &CommonState) -> Result<Identity, TlsError> {
    chain_identity(conn.peer_certificates().unwrap_or_default())
}

/// The identity a verified peer chain names: the first URI SAN of its leaf (QUIC hands the
/// chain out on its own, without a rustls `CommonState`).
pub fn chain_identity(chain: &[CertificateDer<'_>]) -> Result<Identity, TlsError> {
    let leaf = chain.first().ok_or(TlsError::NoPeerCertificate)?;
    first_uri_identity(leaf)
}

// === impl ServerIdentityVerifier ===

/// Client-side verifier: the server must chain to our roots and present an expected identity.
#[derive(Debug)]
pub(super) struct ServerIdentityVerifier {
    roots: Arc<TrustRoots>,
    /// Sorted and deduplicated, never empty.
    expected: Vec<Identity>,
}

impl ServerIdentityVerifier {
    pub(super) fn new(roots: Arc<TrustRoots>, expected: Vec<Identity>) -> Self {
        ServerIdentityVerifier { roots, expected }
    }
}

impl ServerCertVerifier for ServerIdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // DNS names are deliberately not checked: HBONE peers are named by SPIFFE identity only.
        self.roots.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        let presented = spiffe_identities(end_entity).map_err(refuse)?;
        if presented.iter().any(|p| self.expected.contains(p)) {
            return Ok(ServerCertVerified::assertion());
        }
        let first = presented
            .into_iter()
            .next()
            .ok_or_else(|| refuse(TlsError::NoSpiffeIdentity))?;
        Err(refuse(TlsError::UnexpectedServerIdentity {
            presented: first,
            expected: self.expected.clone(),
        }))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

// === impl TrustDomainVerifier ===

/// Server-side verifier: a client certificate is mandatory, must chain to our roots, and must name
/// (first URI SAN) a SPIFFE identity in our trust domain.
#[derive(Debug)]
pub(super) struct TrustDomainVerifier {
    roots: Arc<TrustRoots>,
    trust_domain: String,
}

impl TrustDomainVerifier {
    pub(super) fn new(roots: Arc<TrustRoots>, trust_domain: &str) -> Self {
        TrustDomainVerifier {
            roots,
            trust_domain: trust_domain.to_string(),
        }
    }
}

impl ClientCertVerifier for TrustDomainVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.roots.subjects
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.roots.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        let peer = first_uri_identity(end_entity).map_err(refuse)?;
        if peer.trust_domain() != self.trust_domain {
            return Err(refuse(TlsError::TrustDomainMismatch {
                peer,
                expected: self.trust_domain.clone(),
            }));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

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

use super::revocation::{CrlHandle, PeerRole};
use super::{TlsError, TlsPolicy};
use crate::core::Identity;

/// The provider HBONE uses under `policy`: aws-lc-rs with the two TLS 1.3 AES-GCM suites (plus
/// the four ECDHE AES-GCM TLS 1.2 suites with `TLS12_ENABLED`), and with `COMPLIANCE_POLICY=pqc`
/// the X25519MLKEM768 key exchange only. Built once per combination, shared.
pub(super) fn provider_for(policy: &TlsPolicy) -> &'static Arc<CryptoProvider> {
    static PROVIDERS: [OnceLock<Arc<CryptoProvider>>; 4] = [
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
    ];
    let (tls12, pqc) = (policy.tls12, policy.pqc);
    PROVIDERS[usize::from(tls12) | usize::from(pqc) << 1].get_or_init(|| {
        let mut cipher_suites = vec![
            aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
            aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
        ];
        if tls12 {
            cipher_suites.extend([
                aws_lc_rs::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                aws_lc_rs::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                aws_lc_rs::cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
                aws_lc_rs::cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            ]);
        }
        let mut provider = CryptoProvider {
            cipher_suites,
            ..aws_lc_rs::default_provider()
        };
        if pqc {
            provider.kx_groups = vec![aws_lc_rs::kx_group::X25519MLKEM768];
        }
        Arc::new(provider)
    })
}

/// The default provider (TLS 1.3 only, stock groups): signature checks use it whatever the
/// policy, since the policy changes only suites and groups.
pub(super) fn provider() -> &'static Arc<CryptoProvider> {
    provider_for(&TlsPolicy::default())
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

    /// Verifies `end_entity` (with the peer's `intermediates`) up to one of the anchors for a
    /// peer in `role`, and against the CRLs in force when there are any.
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        role: PeerRole,
        crl: Option<&CrlHandle>,
    ) -> Result<(), rustls::Error> {
        let verdict = match crl {
            Some(crl) => crl.current().with_options(|options| {
                self.verify_with(end_entity, intermediates, now, role, options)
            }),
            None => self.verify_with(end_entity, intermediates, now, role, None),
        };
        verdict.map_err(pki_error)
    }

    /// The chain check itself, with webpki's own error.
    pub(super) fn verify_with(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        role: PeerRole,
        revocation: Option<webpki::RevocationOptions<'_>>,
    ) -> Result<(), webpki::Error> {
        let usage = match role {
            PeerRole::Client => webpki::KeyUsage::client_auth(),
            PeerRole::Server => webpki::KeyUsage::server_auth(),
        };
        let cert = webpki::EndEntityCert::try_from(end_entity)?;
        cert.verify_for_usage(
            provider().signature_verification_algorithms.all,
            &self.anchors,
            intermediates,
            now,
            usage,
            revocation,
            None,
        )?;
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
        // The standard alert (`certificate_revoked`), so the peer's log says why.
        E::CertRevoked => CertificateError::Revoked,
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
    crl: Option<CrlHandle>,
}

impl ServerIdentityVerifier {
    pub(super) fn new(roots: Arc<TrustRoots>, expected: Vec<Identity>) -> Self {
        ServerIdentityVerifier {
            roots,
            expected,
            crl: None,
        }
    }

    pub(super) fn with_crl(mut self, crl: Option<CrlHandle>) -> Self {
        self.crl = crl;
        self
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
            PeerRole::Server,
            self.crl.as_ref(),
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
    crl: Option<CrlHandle>,
}

impl TrustDomainVerifier {
    pub(super) fn new(roots: Arc<TrustRoots>, trust_domain: &str, crl: Option<CrlHandle>) -> Self {
        TrustDomainVerifier {
            roots,
            trust_domain: trust_domain.to_string(),
            crl,
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
            PeerRole::Client,
            self.crl.as_ref(),
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

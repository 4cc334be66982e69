//! The Istio CA client: `istio.v1.auth.IstioCertificateService/CreateCertificate` at `CA_ADDRESS`.
//!
//! Invariants: every request carries a fresh ECDSA P-256 key and a CSR whose only content is the
//! SPIFFE URI SAN (empty subject); the private key never leaves this process. In shared mode the
//! request names the identity in `ImpersonatedIdentity` metadata. A response is accepted only if
//! its leaf carries exactly the requested identity, matches the key, and comes with at least one
//! root; anything else is a typed [`CaClientError`]. Concurrency and refresh are the
//! [`super::SecretManager`]'s business, not this client's.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use ambit_proto::istio::v1::auth::IstioCertificateRequest;
use ambit_proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use prost_types::value::Kind;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use tonic::transport::Channel;

use super::{CaClient, IdentityError};
use crate::core::Identity;
use crate::grpc::{GrpcError, GrpcTarget};
use crate::tls::WorkloadCertificate;

/// The metadata key istiod reads in shared (node proxy) mode.
const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// How to reach the CA and what to ask for.
#[derive(Clone, Debug)]
pub struct CaClientConfig {
    pub target: GrpcTarget,
    /// Requested certificate lifetime (`SECRET_TTL`).
    pub secret_ttl: Duration,
    /// Shared (node proxy) mode: ask for identities other than our own via `ImpersonatedIdentity`.
    pub impersonate: bool,
}

/// Why the CA did not give us a usable certificate.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CaClientError {
    #[error("CA client setup: {0}")]
    Setup(#[from] GrpcError),
    #[error("building a CSR for {identity}: {reason}")]
    Csr { identity: Identity, reason: String },
    #[error("CA at {address} refused a certificate for {identity}: {code:?}: {message}")]
    Rpc {
        identity: Identity,
        address: String,
        code: tonic::Code,
        message: String,
    },
    #[error("CA response for {identity}: {reason}")]
    BadResponse { identity: Identity, reason: String },
    #[error("CA issued a certificate for {got} when {identity} was requested")]
    WrongIdentity { identity: Identity, got: Identity },
    #[error("certificate from the CA for {identity} is unusable: {reason}")]
    Unusable { identity: Identity, reason: String },
}

/// The CA client; implements [`CaClient`] for the [`super::SecretManager`].
pub struct IstioCaClient {
    cfg: CaClientConfig,
    channel: Channel,
}

// === impl IstioCaClient ===

impl IstioCaClient {
    /// Prepares a lazily connected channel (reads the root certificates now). Must be called
    /// inside a tokio runtime: the channel's worker is spawned on it.
    pub fn new(cfg: CaClientConfig) -> Result<Self, CaClientError> {
        let channel = cfg.target.endpoint()?.connect_lazy();
        Ok(IstioCaClient { cfg, channel })
    }

    /// One `CreateCertificate` round trip for `id`.
    pub async fn create_certificate(
        &self,
        id: &Identity,
    ) -> Result<WorkloadCertificate, CaClientError> {
        let (csr_pem, key) = csr(id)?;
        let metadata = self.cfg.impersonate.then(|| prost_types::Struct {
            fields: [(
                IMPERSONATED_IDENTITY.to_string(),
                prost_types::Value {
                    kind: Some(Kind::StringValue(id.to_string())),
                },
            )]
            .into(),
        });
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: csr_pem,
            validity_duration: i64::try_from(self.cfg.secret_ttl.as_secs()).unwrap_or(i64::MAX),
            metadata,
        });
        self.cfg.target.add_metadata(request.metadata_mut())?;
        let response = IstioCertificateServiceClient::new(self.channel.clone())
            .create_certificate(request)
            .await
            .map_err(|s| CaClientError::Rpc {
                identity: id.clone(),
                address: self.cfg.target.address.clone(),
                code: s.code(),
                message: s.message().to_string(),
            })?
            .into_inner();
        certificate(id, &response.cert_chain, key)
    }
}

impl CaClient for IstioCaClient {
    fn issue(
        &self,
        id: &Identity,
    ) -> Pin<Box<dyn Future<Output = Result<WorkloadCertificate, IdentityError>> + Send + '_>> {
        let id = id.clone();
        Box::pin(async move { Ok(self.create_certificate(&id).await?) })
    }
}

/// A fresh P-256 key and a PEM CSR with an empty subject and the SPIFFE id as URI SAN.
fn csr(id: &Identity) -> Result<(String, KeyPair), CaClientError> {
    let fail = |reason: String| CaClientError::Csr {
        identity: id.clone(),
        reason,
    };
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| fail(e.to_string()))?;
    let uri = id
        .to_string()
        .try_into()
        .map_err(|e: rcgen::Error| fail(e.to_string()))?;
    let mut params = CertificateParams::default();
    // rcgen's default subject is a placeholder CN; Istio CSRs carry none.
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(uri)];
    let pem = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|e| fail(e.to_string()))?;
    Ok((pem, key))
}

/// `cert_chain`: [0] the leaf (possibly followed by intermediates in the same PEM), middle
/// entries intermediates, the last entry the root(s).
fn certificate(
    id: &Identity,
    chain: &[String],
    key: KeyPair,
) -> Result<WorkloadCertificate, CaClientError> {
    let bad = |reason: String| CaClientError::BadResponse {
        identity: id.clone(),
        reason,
    };
    let (roots_pem, rest) = match chain {
        [] => return Err(bad("empty certificate chain".into())),
        [_] => return Err(bad("no root certificate after the leaf".into())),
        [rest @ .., last] => (last, rest),
    };
    let mut certs = Vec::new();
    for (i, pem) in rest.iter().enumerate() {
        certs.extend(parse_pems(pem).map_err(|e| bad(format!("certChain[{i}]: {e}")))?);
    }
    let roots =
        parse_pems(roots_pem).map_err(|e| bad(format!("certChain[{}]: {e}", chain.len() - 1)))?;
    if certs.is_empty() {
        return Err(bad("no leaf certificate".into()));
    }
    let cert =
        WorkloadCertificate::new(certs, PrivatePkcs8KeyDer::from(key.serialize_der()), roots)
            .map_err(|e| CaClientError::Unusable {
                identity: id.clone(),
                reason: e.to_string(),
            })?;
    if cert.identity() != id {
        return Err(CaClientError::WrongIdentity {
            identity: id.clone(),
            got: cert.identity().clone(),
        });
    }
    Ok(cert)
}

/// Every certificate in a PEM text; at least one.
fn parse_pems(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate".into());
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_carries_only_the_spiffe_san() {
        use x509_parser::prelude::FromDer;
        let id: Identity = "spiffe://cluster.local/ns/default/sa/app".parse().unwrap();
        let (pem, _key) = csr(&id).unwrap();
        let (_, der) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let (_, req) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&der.contents)
                .unwrap();
        assert_eq!(req.certification_request_info.subject.iter().count(), 0);
        let mut uris = Vec::new();
        for ext in req.requested_extensions().into_iter().flatten() {
            if let x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    if let x509_parser::extensions::GeneralName::URI(u) = name {
                        uris.push(u.to_string());
                    }
                }
            }
        }
        assert_eq!(uris, vec![id.to_string()]);
    }

    #[test]
    fn chains_without_root_or_leaf_are_rejected() {
        let id: Identity = "spiffe://cluster.local/ns/default/sa/app".parse().unwrap();
        let key = || KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        for (chain, want) in [
            (vec![], "empty certificate chain"),
            (vec!["x".to_string()], "no root certificate after the leaf"),
            (
                vec!["x".to_string(), "y".to_string()],
                "certChain[0]: no PEM certificate",
            ),
        ] {
            match certificate(&id, &chain, key()) {
                Err(CaClientError::BadResponse { reason, .. }) => assert_eq!(reason, want),
                other => panic!("{:?}", other.map(|c| c.serial_hex())),
            }
        }
    }
}

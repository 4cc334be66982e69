//! Workload certificates for the local node: the issuer seam ([`CaClient`]), the embedded CA used
//! when no mesh CA is configured ([`BuiltinCa`], `FAKE_CA=true`), the Istio CA client
//! ([`IstioCaClient`], `CA_ADDRESS`), and the certificate manager
//! ([`SecretManager`]) that caches one certificate per identity and rotates it at half-life.
//!
//! This is control-side code (level 7); the data path sees it only through [`crate::tls::CertProvider`].

mod builtin_ca;
mod caclient;
mod crl;
mod manager;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use crate::core::Identity;
use crate::tls::{TlsError, WorkloadCertificate};

pub use builtin_ca::BuiltinCa;
pub use caclient::{CaClientConfig, CaClientError, IstioCaClient};
pub use crl::{CRL_POLL_INTERVAL, CrlReload, CrlReloader};
pub use manager::{CertificateState, CertificateStatus, SecretManager, SecretManagerConfig};

/// The issuer seam: something that can mint a certificate for a workload identity (the mesh CA
/// over gRPC, or the built-in CA).
pub trait CaClient: Send + Sync + 'static {
    fn issue(
        &self,
        id: &Identity,
    ) -> Pin<Box<dyn Future<Output = Result<WorkloadCertificate, IdentityError>> + Send + '_>>;
}

/// Why a certificate could not be issued, loaded or served. Cloneable because one failed issuance
/// is reported to every caller waiting on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing the built-in CA's files failed.
    #[error("CA file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    /// The built-in CA's stored root certificate or key is unusable.
    #[error("root CA material in {path}: {reason}")]
    BadRoot { path: PathBuf, reason: String },
    /// Generating a key or signing a certificate failed.
    #[error("generating a certificate for {identity}: {reason}")]
    Generate { identity: Identity, reason: String },
    /// The issued certificate could not be turned into TLS material.
    #[error("certificate issued for {identity} is unusable: {source}")]
    Unusable {
        identity: Identity,
        // Boxed: a `TlsError` is large, and this error travels through every issuance result.
        #[source]
        source: Box<TlsError>,
    },
    /// The CA refused or could not be reached.
    #[error("CA could not issue a certificate for {identity}: {reason}")]
    Ca { identity: Identity, reason: String },
    /// The Istio CA client failed (setup, transport, refusal, or an unusable response).
    #[error(transparent)]
    CaClient(#[from] CaClientError),
    /// The identity was forgotten while a caller waited for its certificate.
    #[error("certificate for {identity} was forgotten while being fetched")]
    Forgotten { identity: Identity },
}

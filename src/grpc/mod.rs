//! gRPC channels to the control plane (istiod's xDS and CA endpoints): TLS trust, verified host
//! name, keepalives, and the per-request metadata (`authorization: Bearer <token>`, `clusterid`, and the
//! configured extra headers).
//!
//! Shared by the xDS client and the CA client, which sit on one level and may not import each
//! other. Invariants: TLS is server-authenticated only and trusts exactly the configured roots
//! (`http://` addresses are plaintext, for tests); the token file is read on every call to
//! [`GrpcTarget::add_metadata`], so a rotated token is picked up on the next request or
//! reconnect; the token (file contents or static value) is never logged or serialized.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::Serialize;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// How long to wait for a TCP+TLS connection to the control plane.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 PING interval and how long to wait for its answer (ztunnel's 30 s / 10 s).
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP keepalive idle time on the control-plane socket.
const TCP_KEEPALIVE: Duration = Duration::from_secs(300);

/// A control-plane endpoint and how to authenticate to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcTarget {
    /// `https://host:port`, or `http://host:port` for plaintext.
    pub address: String,
    /// Trust anchors for the server certificate (ignored for `http://`).
    pub root_cert: RootCert,
    /// Name to verify in the server certificate instead of the address's host.
    pub alt_hostname: Option<String>,
    /// The bearer token; `None` sends no `authorization` header.
    pub auth_token: Option<AuthToken>,
    /// Sent as the `clusterid` header.
    pub cluster_id: String,
    /// Further headers sent on every request (`XDS_HEADER_*` / `CA_HEADER_*`), lowercase names.
    pub headers: Vec<(String, String)>,
}

/// Where the control plane's root certificates come from (`XDS_ROOT_CA`, `CA_ROOT_CA`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RootCert {
    /// A PEM file.
    File(PathBuf),
    /// PEM text given inline.
    Pem(String),
    /// The system's trust store (`SYSTEM`), for a control plane with a publicly trusted
    /// certificate.
    System,
}

/// Where the bearer token comes from (`AUTH_TOKEN`): a file, re-read on every request (a
/// projected service-account token rotates), or a value given as is.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum AuthToken {
    File(PathBuf),
    /// Serialized without its value.
    Static(#[serde(skip)] String),
}

impl std::fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthToken::File(path) => f.debug_tuple("File").field(path).finish(),
            AuthToken::Static(_) => f.write_str("Static(<hidden>)"),
        }
    }
}

/// Why a control-plane channel or request could not be prepared.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GrpcError {
    #[error("control plane address {address:?}: {reason}")]
    BadAddress { address: String, reason: String },
    #[error("root certificates {path}: {source}")]
    ReadRoot {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("root certificates from {origin}: no PEM certificate found")]
    NoRoots { origin: String },
    #[error("root certificates SYSTEM: {reason}")]
    SystemRoots { reason: String },
    #[error("TLS setup for {address}: {reason}")]
    Tls { address: String, reason: String },
    #[error("auth token file {path}: {source}")]
    ReadToken {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("header {name}: value is not valid ASCII header text")]
    BadHeader { name: &'static str },
    #[error("extra header {name}: not a valid gRPC ASCII header name and value")]
    BadExtraHeader { name: String },
}

// === impl RootCert ===

impl RootCert {
    /// `SYSTEM`, inline PEM (anything containing `-----BEGIN`), or else a file path.
    pub fn from_setting(value: &str) -> Self {
        if value == "SYSTEM" {
            RootCert::System
        } else if value.contains("-----BEGIN") {
            RootCert::Pem(value.to_string())
        } else {
            RootCert::File(PathBuf::from(value))
        }
    }

    /// The PEM bytes, checked to hold at least one certificate; `None` for the system roots.
    pub fn load(&self) -> Result<Option<Vec<u8>>, GrpcError> {
        let (pem, origin) = match self {
            RootCert::File(path) => (read_file(path)?, path.display().to_string()),
            RootCert::Pem(text) => (text.clone().into_bytes(), "inline PEM".to_string()),
            RootCert::System => {
                check_system_roots()?;
                return Ok(None);
            }
        };
        let found = CertificateDer::pem_slice_iter(&pem).any(|c| c.is_ok());
        if !found {
            return Err(GrpcError::NoRoots { origin });
        }
        Ok(Some(pem))
    }
}

/// tonic loads the system roots itself and skips what it cannot read; checked here first so an
/// empty or unreadable store is one clear error instead of failed handshakes.
fn check_system_roots() -> Result<(), GrpcError> {
    let found = rustls_native_certs::load_native_certs();
    if found.certs.is_empty() {
        let reason = match found.errors.first() {
            Some(e) => format!("no system root certificates could be loaded ({e})"),
            None => "the system has no root certificates".to_string(),
        };
        return Err(GrpcError::SystemRoots { reason });
    }
    Ok(())
}

fn read_file(path: &Path) -> Result<Vec<u8>, GrpcError> {
    std::fs::read(path).map_err(|e| GrpcError::ReadRoot {
        path: path.to_path_buf(),
        source: Arc::new(e),
    })
}

// === impl GrpcTarget ===

impl GrpcTarget {
    /// A tonic endpoint with TLS (for `https://`), timeouts and keepalives. Reads the roots now,
    /// so call it on every (re)connect to pick up rotated roots.
    pub fn endpoint(&self) -> Result<Endpoint, GrpcError> {
        let bad = |reason: String| GrpcError::BadAddress {
            address: self.address.clone(),
            reason,
        };
        let endpoint = Endpoint::from_shared(self.address.clone())
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(H2_KEEPALIVE_INTERVAL)
            .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .tcp_keepalive(Some(TCP_KEEPALIVE));
        let scheme = endpoint.uri().scheme_str().unwrap_or_default().to_string();
        match scheme.as_str() {
            "http" => Ok(endpoint),
            "https" => {
                let mut tls = match self.root_cert.load()? {
                    Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
                    None => ClientTlsConfig::new().with_native_roots(),
                };
                if let Some(name) = &self.alt_hostname {
                    tls = tls.domain_name(name.clone());
                }
                endpoint.tls_config(tls).map_err(|e| GrpcError::Tls {
                    address: self.address.clone(),
                    reason: e.to_string(),
                })
            }
            other => Err(bad(format!(
                "scheme {other:?} is not supported: use https:// (or http:// for plaintext)"
            ))),
        }
    }

    /// `authorization: Bearer <token>` (a token file is read now) and `clusterid`.
    pub fn add_metadata(&self, metadata: &mut MetadataMap) -> Result<(), GrpcError> {
        if let Some(source) = &self.auth_token {
            let token = match source {
                AuthToken::File(path) => {
                    std::fs::read_to_string(path).map_err(|e| GrpcError::ReadToken {
                        path: path.clone(),
                        source: Arc::new(e),
                    })?
                }
                AuthToken::Static(token) => token.clone(),
            };
            let value =
                AsciiMetadataValue::try_from(format!("Bearer {}", token.trim())).map_err(|_| {
                    GrpcError::BadHeader {
                        name: "authorization",
                    }
                })?;
            metadata.insert("authorization", value);
        }
        if !self.cluster_id.is_empty() {
            let value = AsciiMetadataValue::try_from(self.cluster_id.as_str())
                .map_err(|_| GrpcError::BadHeader { name: "clusterid" })?;
            metadata.insert("clusterid", value);
        }
        for (name, value) in &self.headers {
            let bad = || GrpcError::BadExtraHeader { name: name.clone() };
            let key = AsciiMetadataKey::from_bytes(name.as_bytes()).map_err(|_| bad())?;
            let value = AsciiMetadataValue::try_from(value.as_str()).map_err(|_| bad())?;
            metadata.insert(key, value);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(address: &str) -> GrpcTarget {
        GrpcTarget {
            address: address.into(),
            root_cert: RootCert::Pem("nope".into()),
            alt_hostname: None,
            auth_token: None,
            cluster_id: "Kubernetes".into(),
            headers: Vec::new(),
        }
    }

    #[test]
    fn extra_headers_are_sent_and_bad_ones_named() {
        let mut t = target("http://127.0.0.1:1");
        t.headers = vec![("x-tenant".into(), "blue".into())];
        let mut md = MetadataMap::new();
        t.add_metadata(&mut md).unwrap();
        assert_eq!(md.get("x-tenant").unwrap(), "blue");
        t.headers = vec![("bad name".into(), "v".into())];
        match t.add_metadata(&mut md) {
            Err(GrpcError::BadExtraHeader { name }) => assert_eq!(name, "bad name"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn root_settings() {
        assert_eq!(RootCert::from_setting("SYSTEM"), RootCert::System);
        assert_eq!(
            RootCert::from_setting("/etc/root.pem"),
            RootCert::File("/etc/root.pem".into())
        );
        let pem = "-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----\n";
        assert!(matches!(RootCert::from_setting(pem), RootCert::Pem(_)));
        assert!(matches!(
            RootCert::Pem("garbage".into()).load(),
            Err(GrpcError::NoRoots { .. })
        ));
        // This machine's store decides between the two; either way no PEM is returned.
        match RootCert::System.load() {
            Ok(pem) => assert_eq!(pem, None),
            Err(e) => assert!(
                e.to_string().starts_with("root certificates SYSTEM: "),
                "{e}"
            ),
        }
    }

    #[test]
    fn endpoints_and_metadata() {
        assert!(target("http://127.0.0.1:1").endpoint().is_ok());
        assert!(matches!(
            target("https://127.0.0.1:1").endpoint(),
            Err(GrpcError::NoRoots { .. })
        ));
        assert!(matches!(
            target("ftp://x:1").endpoint(),
            Err(GrpcError::BadAddress { .. })
        ));
        let dir = std::env::temp_dir().join(format!("ambit-grpc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        std::fs::write(&token, "abc\n").unwrap();
        let mut t = target("http://127.0.0.1:1");
        t.auth_token = Some(AuthToken::Static("static.jwt".into()));
        let mut md = MetadataMap::new();
        t.add_metadata(&mut md).unwrap();
        assert_eq!(md.get("authorization").unwrap(), "Bearer static.jwt");
        assert_eq!(serde_json::to_string(&t.auth_token).unwrap(), r#""static""#);
        assert_eq!(format!("{:?}", t.auth_token), "Some(Static(<hidden>))");
        t.auth_token = Some(AuthToken::File(token.clone()));
        let mut md = MetadataMap::new();
        t.add_metadata(&mut md).unwrap();
        assert_eq!(md.get("authorization").unwrap(), "Bearer abc");
        assert_eq!(md.get("clusterid").unwrap(), "Kubernetes");
        std::fs::remove_file(&token).unwrap();
        assert!(matches!(
            t.add_metadata(&mut md),
            Err(GrpcError::ReadToken { .. })
        ));
    }
}

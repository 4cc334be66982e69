//! The lab's certificate authority: one self-signed root (rcgen, in memory for the lab's life)
//! that signs both the control plane's own TLS certificate and the workload certificates node
//! proxies ask for over `IstioCertificateService/CreateCertificate`.
//!
//! Invariants: a workload certificate carries exactly one SAN, the SPIFFE URI of the CSR, which
//! the caller has already checked against the node's pods; its key is the CSR's (verified by
//! rcgen's CSR parser, signature included); the chain handed back is `[leaf, root]`. The server
//! certificate names [`SERVER_NAME`] and the listening IP, so nodes verify it either way.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    SanType, SerialNumber,
};

/// The name the control plane's certificate carries and nodes verify (`ALT_XDS_HOSTNAME`).
pub const SERVER_NAME: &str = "istiod.istio-system.svc";
/// Allowance for clocks that disagree a little.
const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// The longest workload certificate the lab signs.
const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The lab's root and signing key, plus the control plane's server certificate.
pub struct LabCa {
    issuer: Issuer<'static, KeyPair>,
    root_pem: String,
    root_der: Vec<u8>,
    server_cert_pem: String,
    server_key_pem: String,
}

/// A certificate with its key, all DER: for a lab process holding an identity of its own.
#[derive(Clone)]
pub struct KeyedCert {
    pub leaf: Vec<u8>,
    /// PKCS#8.
    pub key: Vec<u8>,
    pub root: Vec<u8>,
}

impl std::fmt::Debug for KeyedCert {
    // The key is left out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedCert").finish_non_exhaustive()
    }
}

/// A signed workload certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    /// `[leaf, root]`, PEM.
    pub chain: Vec<String>,
    /// The leaf's serial, lowercase hex.
    pub serial: String,
    /// The SPIFFE id in the leaf.
    pub identity: String,
}

impl std::fmt::Debug for LabCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabCa").finish_non_exhaustive()
    }
}

// === impl LabCa ===

impl LabCa {
    /// A fresh root, and a server certificate for [`SERVER_NAME`] and `server_ip`.
    pub fn new(server_ip: IpAddr) -> Result<LabCa, String> {
        let e = |what: &'static str| move |err: rcgen::Error| format!("{what}: {err}");
        let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(e("root key"))?;
        let mut root = CertificateParams::default();
        root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        root.distinguished_name
            .push(DnType::OrganizationName, "ambit-lab");
        root.distinguished_name
            .push(DnType::CommonName, "ambit-lab control plane root");
        let now = time::OffsetDateTime::now_utc();
        root.not_before = now - CLOCK_SKEW;
        root.not_after = now + Duration::from_secs(30 * 24 * 3600);
        let root_cert = root.self_signed(&root_key).map_err(e("root"))?;
        let issuer = Issuer::new(root, root_key);

        let server_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(e("server key"))?;
        let mut server =
            CertificateParams::new(vec![SERVER_NAME.to_string()]).map_err(e("server"))?;
        server.subject_alt_names.push(SanType::IpAddress(server_ip));
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        server.not_before = now - CLOCK_SKEW;
        server.not_after = now + Duration::from_secs(30 * 24 * 3600);
        let server_cert = server
            .signed_by(&server_key, &issuer)
            .map_err(e("server certificate"))?;
        Ok(LabCa {
            root_pem: root_cert.pem(),
            root_der: root_cert.der().to_vec(),
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
            issuer,
        })
    }

    /// The root, PEM: what nodes get as `XDS_ROOT_CA` / `CA_ROOT_CA`, and the mesh's trust anchor.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The control plane's TLS identity (certificate chain and key, PEM).
    pub fn server_identity(&self) -> tonic::transport::Identity {
        let chain = format!("{}{}", self.server_cert_pem, self.root_pem);
        tonic::transport::Identity::from_pem(chain, &self.server_key_pem)
    }

    /// The SPIFFE id a CSR asks for (its one URI SAN), after checking its signature.
    pub fn csr_identity(
        csr_pem: &str,
    ) -> Result<(String, CertificateSigningRequestParams), String> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| format!("CSR does not parse: {e}"))?;
        let uris: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .filter_map(|s| match s {
                SanType::URI(u) => Some(u.as_str().to_string()),
                _ => None,
            })
            .collect();
        match uris.as_slice() {
            [one] if one.starts_with("spiffe://") => Ok((one.clone(), csr)),
            _ => Err(format!(
                "CSR must carry exactly one SPIFFE URI SAN, has {uris:?}"
            )),
        }
    }

    /// A certificate for `identity` over a key made here, for lab processes that hold an
    /// identity of their own (the east-west gateway).
    pub fn issue_with_key(&self, identity: &str, ttl: Duration) -> Result<KeyedCert, String> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| format!("key for {identity}: {e}"))?;
        let leaf = self.sign_key(identity, &key, ttl)?;
        Ok(KeyedCert {
            leaf: leaf.der().to_vec(),
            key: key.serialize_der(),
            root: self.root_der.clone(),
        })
    }

    /// Signs a certificate for `identity` over the CSR's key, valid for `ttl` (capped).
    pub fn sign(
        &self,
        identity: &str,
        csr: &CertificateSigningRequestParams,
        ttl: Duration,
    ) -> Result<Issued, String> {
        let (leaf, serial) = self.sign_key_serial(identity, &csr.public_key, ttl)?;
        Ok(Issued {
            chain: vec![leaf.pem(), self.root_pem.clone()],
            serial,
            identity: identity.to_string(),
        })
    }

    fn sign_key(
        &self,
        identity: &str,
        key: &impl rcgen::PublicKeyData,
        ttl: Duration,
    ) -> Result<rcgen::Certificate, String> {
        self.sign_key_serial(identity, key, ttl).map(|(c, _)| c)
    }

    fn sign_key_serial(
        &self,
        identity: &str,
        key: &impl rcgen::PublicKeyData,
        ttl: Duration,
    ) -> Result<(rcgen::Certificate, String), String> {
        let uri = identity
            .to_string()
            .try_into()
            .map_err(|e: rcgen::Error| format!("identity {identity}: {e}"))?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let mut serial: [u8; 16] = rand::random();
        serial[0] = (serial[0] & 0x7f) | 0x40;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let now = time::OffsetDateTime::now_utc();
        // Backdated by a second only: a larger allowance would shift a short certificate's
        // half-life (when node proxies refresh) into the past.
        params.not_before = now - Duration::from_secs(1);
        params.not_after = now + ttl.clamp(Duration::from_secs(1), MAX_TTL);
        let leaf = params
            .signed_by(key, &self.issuer)
            .map_err(|e| format!("signing for {identity}: {e}"))?;
        Ok((leaf, serial.iter().map(|b| format!("{b:02x}")).collect()))
    }
}

/// The identity a CSR request asks for on another's behalf (Istio's `ImpersonatedIdentity`
/// metadata field, a string), if any.
pub fn impersonated_identity(
    req: &ambit_proto::istio::v1::auth::IstioCertificateRequest,
) -> Option<String> {
    use prost_types::value::Kind;
    req.metadata
        .as_ref()
        .and_then(|m| m.fields.get("ImpersonatedIdentity"))
        .and_then(|v| match &v.kind {
            Some(Kind::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_the_csr_identity_over_its_key() {
        let ca = LabCa::new([172, 30, 0, 1].into()).unwrap();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::default();
        let id = "spiffe://cluster.local/ns/default/sa/web";
        p.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
        let csr = p.serialize_request(&key).unwrap().pem().unwrap();
        let (got, parsed) = LabCa::csr_identity(&csr).unwrap();
        assert_eq!(got, id);
        let issued = ca.sign(id, &parsed, Duration::from_secs(60)).unwrap();
        assert_eq!(issued.chain.len(), 2);
        assert_eq!(issued.serial.len(), 32);
        assert!(
            LabCa::csr_identity(
                "-----BEGIN CERTIFICATE REQUEST-----\nAA==\n-----END CERTIFICATE REQUEST-----\n"
            )
            .is_err()
        );
    }
}

//! The embedded CA (`FAKE_CA=true`): an ECDSA P-256 root kept in a directory as `root-cert.pem` and
//! `root-key.pem`, issuing short-lived workload leaves with the SPIFFE id as URI SAN.
//!
//! Invariants:
//! - Files in the directory are only ever published whole: written to a private temporary file, then
//!   hard-linked into place, which fails instead of replacing an existing file. So processes starting
//!   together on one fresh directory all end up with the first key and the first certificate
//!   published, and trust each other.
//! - The key is published before the certificate; a process that loses the race for the certificate
//!   re-reads the winner's. A certificate that does not match the key is refused, never overwritten.
//! - Leaves name the stored root's own subject as their issuer, so a root placed in the directory
//!   by hand (for example another mesh's test root, to make a mixed mesh trust one root) issues
//!   leaves that chain to it. The key may be ECDSA or RSA (PKCS#8).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};

use super::{CaClient, IdentityError};
use crate::core::Identity;
use crate::tls::WorkloadCertificate;

const CERT_FILE: &str = "root-cert.pem";
const KEY_FILE: &str = "root-key.pem";
/// Leaves start this far in the past so a peer whose clock runs a little behind accepts them.
const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// The root outlives any process that uses it.
const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The built-in certificate authority.
pub struct BuiltinCa {
    issuer: Issuer<'static, KeyPair>,
    root: CertificateDer<'static>,
    root_pem: String,
    ttl: Duration,
}

// === impl BuiltinCa ===

impl BuiltinCa {
    /// Loads the root from `dir`, creating the directory and the root when absent. Safe to call from
    /// several processes at once on the same directory: they all end up with the same root.
    pub fn load_or_create(dir: &Path, ttl: Duration) -> Result<Self, IdentityError> {
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        let key_path = dir.join(KEY_FILE);
        let cert_path = dir.join(CERT_FILE);

        if !key_path.exists() {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
                .map_err(|e| bad_root(&key_path, format!("generating key: {e}")))?;
            publish(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        }
        let key_pem = fs::read_to_string(&key_path).map_err(io_error(&key_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| bad_root(&key_path, e.to_string()))?;

        if !cert_path.exists() {
            let cert = root_params()
                .self_signed(&key)
                .map_err(|e| bad_root(&cert_path, format!("self-signing root: {e}")))?;
            publish(&cert_path, cert.pem().as_bytes(), 0o644)?;
        }
        let cert_pem = fs::read(&cert_path).map_err(io_error(&cert_path))?;
        let root = parse_root_pem(&cert_pem, &cert_path)?;
        check_root(&root, &key, &cert_path)?;

        let root_pem = String::from_utf8_lossy(&cert_pem).into_owned();
        let issuer = Issuer::from_ca_cert_der(&root, key)
            .map_err(|e| bad_root(&cert_path, format!("reading the root as an issuer: {e}")))?;
        Ok(BuiltinCa {
            issuer,
            root,
            root_pem,
            ttl,
        })
    }

    /// A fresh CA that lives only in memory: for tests, e.g. an unrelated second CA.
    pub fn in_memory(ttl: Duration) -> Result<Self, IdentityError> {
        let here = PathBuf::from("<memory>");
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| bad_root(&here, e.to_string()))?;
        let params = root_params();
        let cert = params
            .self_signed(&key)
            .map_err(|e| bad_root(&here, e.to_string()))?;
        Ok(BuiltinCa {
            root: cert.der().clone(),
            root_pem: cert.pem(),
            issuer: Issuer::new(params, key),
            ttl,
        })
    }

    /// The root certificate, PEM-encoded, as stored in `root-cert.pem`.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root
    }

    /// Mints a leaf for `id`, trusting this CA's root.
    pub fn issue_now(&self, id: &Identity) -> Result<WorkloadCertificate, IdentityError> {
        self.issue_with_roots(id, vec![self.root.clone()])
    }

    /// Mints a leaf for `id` that trusts `roots` instead of this CA's root; tests use it to build
    /// peers whose certificate and trust come from different CAs.
    pub fn issue_with_roots(
        &self,
        id: &Identity,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<WorkloadCertificate, IdentityError> {
        let generate = |reason: String| IdentityError::Generate {
            identity: id.clone(),
            reason,
        };
        let uri = id
            .to_string()
            .try_into()
            .map_err(|e: rcgen::Error| generate(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial());
        let now = time::OffsetDateTime::now_utc();
        // Valid for `ttl` from now; the skew allowance comes on top, before now.
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + self.ttl;

        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| generate(e.to_string()))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| generate(e.to_string()))?;
        WorkloadCertificate::new(
            vec![cert.der().clone()],
            PrivatePkcs8KeyDer::from(key.serialize_der()),
            roots,
        )
        .map_err(|source| IdentityError::Unusable {
            identity: id.clone(),
            source: Box::new(source),
        })
    }
}

impl BuiltinCa {
    /// A CRL signed by this CA's root listing `serials` (each a certificate's DER serial
    /// bytes), PEM-encoded: what an operator publishes at `CRL_PATH` to revoke leaves it issued.
    pub fn crl_pem(&self, serials: &[Vec<u8>]) -> Result<String, IdentityError> {
        let now = time::OffsetDateTime::now_utc();
        let crl_number = u64::try_from(now.unix_timestamp()).unwrap_or_default();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - CLOCK_SKEW,
            next_update: now + ROOT_VALIDITY,
            crl_number: SerialNumber::from(crl_number),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: SerialNumber::from_slice(s),
                    revocation_time: now - CLOCK_SKEW,
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params
            .signed_by(&self.issuer)
            .map_err(|e| bad_root(Path::new("<crl>"), format!("signing a CRL: {e}")))?;
        crl.pem()
            .map_err(|e| bad_root(Path::new("<crl>"), format!("encoding a CRL: {e}")))
    }
}

impl CaClient for BuiltinCa {
    fn issue(
        &self,
        id: &Identity,
    ) -> Pin<
        Box<
            dyn std::future::Future<Output = Result<WorkloadCertificate, IdentityError>>
                + Send
                + '_,
        >,
    > {
        // Signing is a few hundred microseconds of CPU: not worth a blocking-pool hop.
        let result = self.issue_now(id);
        Box::pin(async move { result })
    }
}

/// The root's fixed parameters; a loaded root is re-described by them when issuing (see the module
/// invariants), so they must not change between versions.
fn root_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
        .distinguished_name
        .push(DnType::OrganizationName, "ambit");
    params
        .distinguished_name
        .push(DnType::CommonName, "ambit built-in root CA");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + ROOT_VALIDITY;
    params
}

/// A positive 128-bit serial without a leading zero byte, so its DER form is exactly 16 bytes.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// Writes `contents` to a private temporary file beside `path`, then links it into place. If
/// another process published `path` first, its file wins and ours is discarded.
fn publish(path: &Path, contents: &[u8], mode: u32) -> Result<(), IdentityError> {
    let tmp = path.with_extension(format!(
        "tmp.{}.{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()
    })();
    let linked = written.and_then(|()| match fs::hard_link(&tmp, path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    });
    // The temporary name is ours alone; failing to remove it only leaves litter.
    let _ = fs::remove_file(&tmp);
    linked.map_err(io_error(path))
}

fn parse_root_pem(pem: &[u8], path: &Path) -> Result<CertificateDer<'static>, IdentityError> {
    match CertificateDer::pem_slice_iter(pem).next() {
        Some(Ok(der)) => Ok(der),
        Some(Err(e)) => Err(bad_root(path, e.to_string())),
        None => Err(bad_root(path, "no certificate in file".into())),
    }
}

/// Refuses a root that is not a CA or whose public key is not the stored key's.
fn check_root(root: &CertificateDer<'_>, key: &KeyPair, path: &Path) -> Result<(), IdentityError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(root).map_err(|e| bad_root(path, e.to_string()))?;
    if !cert.is_ca() {
        return Err(bad_root(path, "root certificate is not a CA".into()));
    }
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(bad_root(
            path,
            format!("certificate does not match the key in {KEY_FILE}"),
        ));
    }
    Ok(())
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> IdentityError + '_ {
    move |e| IdentityError::Io {
        path: path.to_path_buf(),
        source: std::sync::Arc::new(e),
    }
}

fn bad_root(path: &Path, reason: String) -> IdentityError {
    IdentityError::BadRoot {
        path: path.to_path_buf(),
        reason,
    }
}

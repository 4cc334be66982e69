//! A workload's certificate (leaf, intermediates, key, roots) and the rustls configurations built
//! from it.
//!
//! Invariants: the identity is the leaf's first SPIFFE URI SAN; the key matches the leaf; the server
//! configuration is built once in [`WorkloadCertificate::new`], and client configurations are built
//! once per distinct set of expected identities and then shared (a bounded cache).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::Resumption;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::version::{TLS12, TLS13};
use rustls::{ClientConfig, InconsistentKeys, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::revocation::{PeerRole, RevocationWatch};
use super::verify::{
    ServerIdentityVerifier, TrustDomainVerifier, TrustRoots, provider, provider_for,
    spiffe_identities,
};
use super::{ALPN_H2, ALPN_H3, TlsError, TlsPolicy};
use crate::core::Identity;

/// How many distinct expected-identity sets keep a cached client configuration. A node talks to a
/// bounded set of destinations; past this the cache starts over rather than grow without end.
const CLIENT_CONFIG_CACHE: usize = 512;

/// A workload certificate with everything needed to run either side of an HBONE handshake.
pub struct WorkloadCertificate {
    identity: Identity,
    /// Leaf first, then intermediates.
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
    roots: Vec<CertificateDer<'static>>,
    not_before: SystemTime,
    not_after: SystemTime,
    serial: Vec<u8>,
    certified: Arc<CertifiedKey>,
    trust: Arc<TrustRoots>,
    policy: TlsPolicy,
    server_config: Arc<ServerConfig>,
    /// The same server configuration with ALPN `h3` (HBONE over QUIC).
    server_config_h3: Arc<ServerConfig>,
    /// Keyed by the sorted, deduplicated expected identities. Locked only briefly, never across
    /// an `.await`.
    client_configs: Mutex<HashMap<Vec<Identity>, Arc<ClientConfig>>>,
    /// The same client configurations with ALPN `h3`, cached the same way.
    client_configs_h3: Mutex<HashMap<Vec<Identity>, Arc<ClientConfig>>>,
}

// === impl WorkloadCertificate ===

impl WorkloadCertificate {
    /// Parses the leaf: identity = first URI SAN that parses as SPIFFE; validity; serial. Checks that
    /// `key` matches the leaf and that `roots` are usable trust anchors, then builds the server
    /// configuration.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivatePkcs8KeyDer<'static>,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, TlsError> {
        Self::with_policy(chain, key, roots, TlsPolicy::default())
    }

    /// [`WorkloadCertificate::new`] whose configurations follow `policy`.
    pub fn with_policy(
        chain: Vec<CertificateDer<'static>>,
        key: PrivatePkcs8KeyDer<'static>,
        roots: Vec<CertificateDer<'static>>,
        policy: TlsPolicy,
    ) -> Result<Self, TlsError> {
        let leaf = chain
            .first()
            .ok_or_else(|| TlsError::BadCertificate("empty certificate chain".into()))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| TlsError::BadCertificate(format!("parsing leaf certificate: {e}")))?;
        let validity = parsed.validity();
        let not_before = system_time(validity.not_before.timestamp());
        let not_after = system_time(validity.not_after.timestamp());
        let serial = parsed.tbs_certificate.raw_serial().to_vec();
        let identity = spiffe_identities(leaf)?
            .into_iter()
            .next()
            .ok_or(TlsError::NoSpiffeIdentity)?;

        let signing_key = provider()
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(key.clone_key()))
            .map_err(|e| TlsError::BadKey(e.to_string()))?;
        let certified = CertifiedKey::new(chain.clone(), signing_key);
        match certified.keys_match() {
            // Unknown: the key cannot report its public half; nothing to compare, so accept.
            Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
            Err(e) => return Err(TlsError::BadKey(e.to_string())),
        }
        let certified = Arc::new(certified);
        let trust = Arc::new(TrustRoots::new(&roots)?);
        let server_config = build_server_config(&identity, &certified, &trust, &policy, false)?;
        let server_config_h3 = build_server_config(&identity, &certified, &trust, &policy, true)?;

        Ok(WorkloadCertificate {
            identity,
            chain,
            key,
            roots,
            not_before,
            not_after,
            serial,
            certified,
            trust,
            policy,
            server_config,
            server_config_h3,
            client_configs: Mutex::new(HashMap::new()),
            client_configs_h3: Mutex::new(HashMap::new()),
        })
    }

    /// The same certificate with configurations that follow `policy` instead.
    pub fn reconfigured(&self, policy: TlsPolicy) -> Result<Self, TlsError> {
        Self::with_policy(
            self.chain.clone(),
            self.key.clone_key(),
            self.roots.clone(),
            policy,
        )
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn policy(&self) -> &TlsPolicy {
        &self.policy
    }

    /// A watch on a live connection whose peer (in `role`) presented `chain`, against the CRLs
    /// of this certificate's policy; `None` when the policy has no CRL.
    pub fn watch_revocation(
        &self,
        chain: &[CertificateDer<'_>],
        role: PeerRole,
    ) -> Option<RevocationWatch> {
        let crl = self.policy.crl.as_ref()?;
        Some(crl.watch(chain, self.trust.clone(), role))
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The serial number as lowercase hex, as `/config_dump` shows it.
    pub fn serial_hex(&self) -> String {
        let mut out = String::with_capacity(self.serial.len() * 2);
        for b in &self.serial {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    /// Leaf first, then intermediates.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    pub fn private_key(&self) -> &PrivatePkcs8KeyDer<'static> {
        &self.key
    }

    /// Server side of HBONE: requires a client certificate chaining to `roots` whose first URI SAN
    /// is a SPIFFE identity in this certificate's trust domain. Built once, shared.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server_config.clone()
    }

    /// Client side of HBONE: presents this chain, accepts a server that chains to `roots`
    /// (serverAuth, names not checked) and carries one of `expected` as a SPIFFE URI SAN. No SNI,
    /// no session resumption. Cached per set of expected identities (order does not matter).
    pub fn client_config(&self, expected: &[Identity]) -> Result<Arc<ClientConfig>, TlsError> {
        self.cached_client_config(&self.client_configs, expected, ALPN_H2)
    }

    /// [`WorkloadCertificate::server_config`] with ALPN `h3`, for HBONE over QUIC. Built once.
    pub fn server_config_h3(&self) -> Arc<ServerConfig> {
        self.server_config_h3.clone()
    }

    /// [`WorkloadCertificate::client_config`] with ALPN `h3`, for HBONE over QUIC: the same
    /// suites, chain and SPIFFE verification. Cached per set of expected identities.
    pub fn client_config_h3(&self, expected: &[Identity]) -> Result<Arc<ClientConfig>, TlsError> {
        self.cached_client_config(&self.client_configs_h3, expected, ALPN_H3)
    }

    fn cached_client_config(
        &self,
        cache: &Mutex<HashMap<Vec<Identity>, Arc<ClientConfig>>>,
        expected: &[Identity],
        alpn: &[u8],
    ) -> Result<Arc<ClientConfig>, TlsError> {
        if expected.is_empty() {
            return Err(TlsError::NoExpectedIdentities);
        }
        let mut key = expected.to_vec();
        key.sort();
        key.dedup();
        let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(cfg) = cache.get(&key) {
            return Ok(cfg.clone());
        }
        let cfg = build_client_config(
            &self.certified,
            &self.trust,
            &self.policy,
            key.clone(),
            alpn,
        )?;
        if cache.len() >= CLIENT_CONFIG_CACHE {
            cache.clear();
        }
        cache.insert(key, cfg.clone());
        Ok(cfg)
    }
}

impl fmt::Debug for WorkloadCertificate {
    // The private key is deliberately left out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCertificate")
            .field("identity", &self.identity)
            .field("serial", &self.serial_hex())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("chain_len", &self.chain.len())
            .field("roots_len", &self.roots.len())
            .finish_non_exhaustive()
    }
}

/// The protocol versions of `policy`; QUIC is TLS 1.3 by definition.
fn versions(
    policy: &TlsPolicy,
    quic: bool,
) -> &'static [&'static rustls::SupportedProtocolVersion] {
    static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&TLS13];
    static TLS13_AND_12: &[&rustls::SupportedProtocolVersion] = &[&TLS13, &TLS12];
    if policy.tls12 && !quic {
        TLS13_AND_12
    } else {
        TLS13_ONLY
    }
}

fn build_server_config(
    identity: &Identity,
    certified: &Arc<CertifiedKey>,
    trust: &Arc<TrustRoots>,
    policy: &TlsPolicy,
    quic: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier =
        TrustDomainVerifier::new(trust.clone(), identity.trust_domain(), policy.crl.clone());
    let mut cfg = ServerConfig::builder_with_provider(provider_for(policy).clone())
        .with_protocol_versions(versions(policy, quic))
        .map_err(TlsError::Handshake)?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified.clone())));
    cfg.alpn_protocols = vec![if quic { ALPN_H3 } else { ALPN_H2 }.to_vec()];
    // Our clients never resume, so tickets would only cost a round of crypto per handshake.
    cfg.send_tls13_tickets = 0;
    // Nor may anyone else: a resumed session (TLS 1.2 session IDs) skips the client-certificate
    // check, and with it the CRL.
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(cfg))
}

fn build_client_config(
    certified: &Arc<CertifiedKey>,
    trust: &Arc<TrustRoots>,
    policy: &TlsPolicy,
    expected: Vec<Identity>,
    alpn: &[u8],
) -> Result<Arc<ClientConfig>, TlsError> {
    let verifier =
        ServerIdentityVerifier::new(trust.clone(), expected).with_crl(policy.crl.clone());
    let mut cfg = ClientConfig::builder_with_provider(provider_for(policy).clone())
        .with_protocol_versions(versions(policy, alpn == ALPN_H3))
        .map_err(TlsError::Handshake)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(certified.clone())));
    cfg.alpn_protocols = vec![alpn.to_vec()];
    cfg.enable_sni = false;
    cfg.resumption = Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// Converts an X.509 time (seconds since the epoch, possibly before it) to a `SystemTime`.
fn system_time(secs: i64) -> SystemTime {
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

//! Certificate revocation lists (`CRL_PATH`): parsing, the shared handle the data path reads, and
//! the watch that tells a live connection its peer was revoked.
//!
//! Invariants:
//! - A [`CrlSet`] is parsed whole or not at all: a file with one bad CRL yields an error and the
//!   caller keeps its last good set ([`CrlHandle::replace`] is only ever given a parsed set).
//! - Revocation is judged by webpki alone ([`CrlSet::check`]): the whole chain is checked, a
//!   certificate whose issuer published no CRL passes, an expired CRL still revokes, and a CRL
//!   must carry a valid signature of the certificate's issuer to revoke it.
//! - Reads on the handshake path are lock-free ([`arc_swap::ArcSwap`]); reloads notify live
//!   connections through a `watch` generation, so a connection re-checks its chain once per
//!   reload and never misses one that landed between its handshake and its subscription.
//!
//! Data path module: the file watcher that fills the handle lives on the control side
//! (`identity::crl`).

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::sync::watch;
use webpki::{
    CertRevocationList, ExpirationPolicy, RevocationCheckDepth, RevocationOptionsBuilder,
    UnknownStatusPolicy,
};

use super::verify::TrustRoots;

/// Why a CRL file could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrlError {
    /// The file could not be read.
    #[error("reading CRL file {path}: {reason}")]
    Read { path: String, reason: String },
    /// The PEM framing is broken.
    #[error("CRL file {path}: bad PEM: {reason}")]
    Pem { path: String, reason: String },
    /// One CRL (1-based, in file order) is not a valid X.509 CRL.
    #[error("CRL file {path}: CRL #{index} does not parse: {reason}")]
    Parse {
        path: String,
        index: usize,
        reason: String,
    },
}

/// The CRLs of one version of the file, parsed. Empty means nothing is revoked.
#[derive(Default)]
pub struct CrlSet {
    crls: Vec<CertRevocationList<'static>>,
    /// Revoked-certificate entries over all CRLs (for logs).
    entries: usize,
}

/// Which side of the handshake a checked chain belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerRole {
    /// The peer is a client: its chain was accepted for clientAuth (inbound).
    Client,
    /// The peer is a server: its chain was accepted for serverAuth (outbound).
    Server,
}

/// A revoked peer: which certificate of its chain a CRL lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revoked {
    /// Serial number of the revoked certificate, lowercase hex.
    pub serial: String,
    /// Whether the revoked certificate is the peer's own (leaf) rather than an intermediate.
    pub leaf: bool,
}

impl fmt::Display for Revoked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let which = if self.leaf {
            "certificate"
        } else {
            "intermediate CA certificate"
        };
        write!(f, "peer {which} serial {} revoked by CRL", self.serial)
    }
}

// === impl CrlSet ===

impl CrlSet {
    /// Parses a CRL file's bytes: PEM with any number of `X509 CRL` blocks (other blocks are
    /// skipped), or one DER CRL. An empty file, or PEM without CRL blocks, is an empty set.
    /// `path` only names the file in errors.
    pub fn parse(data: &[u8], path: &str) -> Result<CrlSet, CrlError> {
        if data.iter().all(u8::is_ascii_whitespace) {
            return Ok(CrlSet::default());
        }
        let ders: Vec<Vec<u8>> = if data.trim_ascii_start().starts_with(b"-----BEGIN") {
            let mut ders = Vec::new();
            for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(data) {
                match item {
                    Ok((SectionKind::Crl, der)) => ders.push(der),
                    Ok(_) => {}
                    Err(e) => {
                        return Err(CrlError::Pem {
                            path: path.to_string(),
                            reason: format!("{e:?}"),
                        });
                    }
                }
            }
            ders
        } else {
            vec![data.to_vec()]
        };
        let mut crls = Vec::with_capacity(ders.len());
        let mut entries = 0;
        for (i, der) in ders.iter().enumerate() {
            let bad = |e: webpki::Error| CrlError::Parse {
                path: path.to_string(),
                index: i + 1,
                reason: format!("{e:?}"),
            };
            let borrowed = webpki::BorrowedCertRevocationList::from_der(der).map_err(bad)?;
            for entry in &borrowed {
                entry.map_err(bad)?;
                entries += 1;
            }
            crls.push(CertRevocationList::from(borrowed.to_owned().map_err(bad)?));
        }
        Ok(CrlSet { crls, entries })
    }

    /// How many CRLs the set holds.
    pub fn len(&self) -> usize {
        self.crls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.crls.is_empty()
    }

    /// The entries of all CRLs together (revoked serials, counted once per CRL).
    pub fn revoked_entries(&self) -> usize {
        self.entries
    }

    /// webpki's revocation options over this set, or `None` when it is empty (nothing to check).
    pub(super) fn with_options<R>(
        &self,
        f: impl FnOnce(Option<webpki::RevocationOptions<'_>>) -> R,
    ) -> R {
        if self.crls.is_empty() {
            return f(None);
        }
        let refs: Vec<&CertRevocationList<'static>> = self.crls.iter().collect();
        let options = RevocationOptionsBuilder::new(&refs).map(|b| {
            b.with_depth(RevocationCheckDepth::Chain)
                .with_status_policy(UnknownStatusPolicy::Allow)
                .with_expiration_policy(ExpirationPolicy::Ignore)
                .build()
        });
        // `new` fails only on an empty list, excluded above.
        f(options.ok())
    }

    /// The first certificate of `chain` (leaf first) that a CRL of this set lists under its
    /// issuer. A cheap pre-filter: only webpki's verdict ([`CrlSet::check`]) counts.
    fn listed(&self, chain: &[CertificateDer<'_>]) -> Option<Revoked> {
        for (i, der) in chain.iter().enumerate() {
            let Ok(cert) = webpki::EndEntityCert::try_from(der) else {
                continue;
            };
            let hit = self.crls.iter().any(|crl| {
                crl.issuer() == cert.issuer()
                    && matches!(crl.find_serial(cert.serial()), Ok(Some(_)))
            });
            if hit {
                return Some(Revoked {
                    serial: hex(cert.serial()),
                    leaf: i == 0,
                });
            }
        }
        None
    }

    /// Whether this set revokes `chain` (leaf first) as the handshake accepted it from a peer
    /// in `role` against `roots` at `at`: `Some` only when webpki refuses it as revoked.
    pub(super) fn check(
        &self,
        chain: &[CertificateDer<'_>],
        roots: &TrustRoots,
        role: PeerRole,
        at: UnixTime,
    ) -> Option<Revoked> {
        let listed = self.listed(chain)?;
        let (leaf, intermediates) = chain.split_first()?;
        let verdict =
            self.with_options(|options| roots.verify_with(leaf, intermediates, at, role, options));
        match verdict {
            Err(webpki::Error::CertRevoked) => Some(listed),
            _ => None,
        }
    }
}

impl fmt::Debug for CrlSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CrlSet")
            .field("crls", &self.crls.len())
            .field("revoked_entries", &self.revoked_entries())
            .finish()
    }
}

fn hex(bytes: &[u8]) -> String {
    // DER keeps a leading zero byte for a positive serial whose top bit is set; it is not part
    // of the number people compare.
    let trimmed = match bytes {
        [0, rest @ ..] if !rest.is_empty() => rest,
        _ => bytes,
    };
    trimmed.iter().map(|b| format!("{b:02x}")).collect()
}

/// The CRLs in force, shared by the control side (which replaces them) and every verifier and
/// live connection (which read them). Clones share.
#[derive(Clone)]
pub struct CrlHandle {
    inner: Arc<Shared>,
}

struct Shared {
    set: ArcSwap<CrlSet>,
    /// Bumped on every replacement; live connections wait on it.
    generation: watch::Sender<u64>,
}

impl CrlHandle {
    /// A handle with nothing revoked yet.
    pub fn new() -> CrlHandle {
        CrlHandle {
            inner: Arc::new(Shared {
                set: ArcSwap::from_pointee(CrlSet::default()),
                generation: watch::Sender::new(0),
            }),
        }
    }

    /// The set in force now.
    pub fn current(&self) -> Arc<CrlSet> {
        self.inner.set.load_full()
    }

    /// Puts `set` in force and wakes every live connection to check itself against it.
    pub fn replace(&self, set: CrlSet) {
        self.inner.set.store(Arc::new(set));
        self.inner.generation.send_modify(|g| *g += 1);
    }

    /// How many times the set was replaced.
    pub fn generation(&self) -> u64 {
        *self.inner.generation.borrow()
    }

    /// A watch on the live connection whose peer presented `chain` (leaf first), accepted for
    /// `role` against `roots`.
    pub(super) fn watch(
        &self,
        chain: &[CertificateDer<'_>],
        roots: Arc<TrustRoots>,
        role: PeerRole,
    ) -> RevocationWatch {
        let mut changes = self.inner.generation.subscribe();
        // The first check in `revoked` covers every version up to now.
        changes.mark_unchanged();
        RevocationWatch {
            handle: self.clone(),
            changes,
            chain: chain.iter().map(|c| c.clone().into_owned()).collect(),
            roots,
            role,
            established: UnixTime::now(),
        }
    }
}

impl Default for CrlHandle {
    fn default() -> Self {
        CrlHandle::new()
    }
}

impl fmt::Debug for CrlHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CrlHandle")
            .field("set", &self.current())
            .field("generation", &self.generation())
            .finish()
    }
}

/// One live connection's peer chain, re-checked against every new CRL version.
pub struct RevocationWatch {
    handle: CrlHandle,
    changes: watch::Receiver<u64>,
    chain: Vec<CertificateDer<'static>>,
    roots: Arc<TrustRoots>,
    role: PeerRole,
    /// Chains are judged as of the handshake, so a certificate expiring later never turns a
    /// revocation check into a different error.
    established: UnixTime,
}

impl RevocationWatch {
    /// Resolves once the CRLs in force revoke the peer (checked at once, then on every reload);
    /// pending forever otherwise.
    pub async fn revoked(&mut self) -> Revoked {
        loop {
            let set = self.handle.current();
            if let Some(r) = set.check(&self.chain, &self.roots, self.role, self.established) {
                return r;
            }
            if self.changes.changed().await.is_err() {
                // The handle's sender lives as long as the handle we hold; unreachable.
                std::future::pending::<()>().await;
            }
        }
    }

    /// The serial of the peer's own certificate, lowercase hex.
    pub fn peer_serial(&self) -> String {
        self.chain
            .first()
            .and_then(|der| {
                webpki::EndEntityCert::try_from(der)
                    .ok()
                    .map(|c| hex(c.serial()))
            })
            .unwrap_or_default()
    }
}

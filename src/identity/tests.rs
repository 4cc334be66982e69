//! Tests of the built-in CA (files, races, leaf contents, mutual trust over real loopback TLS) and of
//! the certificate manager's schedule under paused time.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, SystemTime};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, timeout};
use x509_parser::extensions::GeneralName;

use super::*;
use crate::tls::{self, CertProvider};

const HOUR: Duration = Duration::from_secs(3600);

fn id(s: &str) -> Identity {
    s.parse().unwrap()
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "ambit-{name}-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn builtin_ca_creates_then_loads_the_same_root() {
    let dir = TempDir::new("ca-load");
    let ca_dir = dir.path().join("nested/ca");
    let first = BuiltinCa::load_or_create(&ca_dir, HOUR).unwrap();
    assert!(ca_dir.join("root-cert.pem").exists());
    assert!(ca_dir.join("root-key.pem").exists());
    let second = BuiltinCa::load_or_create(&ca_dir, HOUR).unwrap();
    assert_eq!(first.root_pem(), second.root_pem());
    assert_eq!(first.root(), second.root());
    let unrelated = BuiltinCa::in_memory(HOUR).unwrap();
    assert_ne!(first.root(), unrelated.root());
}

#[test]
fn racing_creators_end_with_one_root() {
    for round in 0..5 {
        let dir = TempDir::new(&format!("ca-race-{round}"));
        let barrier = Arc::new(Barrier::new(4));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (path, barrier) = (dir.path().to_path_buf(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    BuiltinCa::load_or_create(&path, HOUR).map(|ca| ca.root_pem().to_string())
                })
            })
            .collect();
        let roots: Vec<String> = handles
            .into_iter()
            .map(|h| h.join().unwrap().unwrap())
            .collect();
        assert!(roots.iter().all(|r| *r == roots[0]), "round {round}");
        // Only the two published files remain: no temporary litter.
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["root-cert.pem", "root-key.pem"]);
    }
}

#[test]
fn corrupt_root_is_refused() {
    let dir = TempDir::new("ca-corrupt");
    BuiltinCa::load_or_create(dir.path(), HOUR).unwrap();
    let other = BuiltinCa::in_memory(HOUR).unwrap();
    std::fs::write(dir.path().join("root-cert.pem"), other.root_pem()).unwrap();
    match BuiltinCa::load_or_create(dir.path(), HOUR) {
        Err(IdentityError::BadRoot { reason, .. }) => {
            assert_eq!(reason, "certificate does not match the key in root-key.pem")
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("mismatched root accepted"),
    }
}

#[test]
fn leaf_carries_spiffe_uri_san_and_ttl() {
    let ca = BuiltinCa::in_memory(HOUR).unwrap();
    let who = id("spiffe://cluster.local/ns/apps/sa/web");
    let cert = ca.issue_now(&who).unwrap();
    assert_eq!(cert.identity(), &who);
    assert_eq!(cert.roots(), &[ca.root().clone()][..]);
    let (_, parsed) = x509_parser::parse_x509_certificate(&cert.chain()[0]).unwrap();
    let sans: Vec<String> = parsed
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::URI(u) => u.to_string(),
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect();
    assert_eq!(sans, ["spiffe://cluster.local/ns/apps/sa/web"]);
    let eku = parsed.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let now = SystemTime::now();
    assert!(cert.not_before() < now);
    let left = cert.not_after().duration_since(now).unwrap();
    assert!(
        left > HOUR - Duration::from_secs(10) && left <= HOUR,
        "{left:?}"
    );
    assert_eq!(cert.serial_hex().len(), 32);
    // A new key per issuance.
    let again = ca.issue_now(&who).unwrap();
    assert_ne!(
        cert.private_key().secret_pkcs8_der(),
        again.private_key().secret_pkcs8_der()
    );
}

#[tokio::test]
async fn processes_sharing_a_ca_directory_trust_each_other() {
    let dir = TempDir::new("ca-trust");
    let a = BuiltinCa::load_or_create(dir.path(), HOUR).unwrap();
    let b = BuiltinCa::load_or_create(dir.path(), HOUR).unwrap();
    let server = a
        .issue_now(&id("spiffe://cluster.local/ns/a/sa/server"))
        .unwrap();
    let client = b
        .issue_now(&id("spiffe://cluster.local/ns/b/sa/client"))
        .unwrap();
    assert_eq!(handshake(&server, &client).await, *client.identity());
}

/// A real mutual-TLS handshake on loopback between `server` and `client`; the identity the
/// server saw.
async fn handshake(server: &WorkloadCertificate, client: &WorkloadCertificate) -> Identity {
    let cfg = client.client_config(&[server.identity().clone()]).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_cfg = server.server_config();
    let (accepted, connected) = timeout(Duration::from_secs(10), async {
        tokio::join!(
            async {
                let (tcp, _) = listener.accept().await.unwrap();
                tls::accept(server_cfg, tcp).await
            },
            async { tls::connect(cfg, TcpStream::connect(addr).await.unwrap()).await }
        )
    })
    .await
    .unwrap();
    connected.unwrap();
    accepted.unwrap().1
}

/// A root put in the directory by hand (another subject, another key type: as a mixed mesh of
/// ambit and another proxy would share one test root) issues leaves that chain to it.
#[tokio::test]
async fn a_hand_placed_root_issues_leaves_that_chain_to_it() {
    let dir = TempDir::new("ca-foreign");
    std::fs::create_dir_all(dir.path()).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "cluster.local");
    let root = params.self_signed(&key).unwrap();
    std::fs::write(dir.path().join("root-key.pem"), key.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("root-cert.pem"), root.pem()).unwrap();

    let ca = BuiltinCa::load_or_create(dir.path(), HOUR).unwrap();
    assert_eq!(ca.root(), root.der(), "the hand-placed root is kept");
    let server = ca
        .issue_now(&id("spiffe://cluster.local/ns/a/sa/server"))
        .unwrap();
    let client = ca
        .issue_now(&id("spiffe://cluster.local/ns/b/sa/client"))
        .unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(&server.chain()[0]).unwrap();
    let (_, parsed_root) = x509_parser::parse_x509_certificate(root.der()).unwrap();
    assert_eq!(leaf.issuer(), parsed_root.subject());
    assert!(leaf.issuer().to_string().contains("O=cluster.local"));

    assert_eq!(handshake(&server, &client).await, *client.identity());
}

// === SecretManager ===

/// A test double for the issuer: signs with a real in-memory CA, but can be made to fail, and
/// records when each issuance was asked for (on tokio's clock).
struct FakeCa {
    ca: BuiltinCa,
    fail: AtomicBool,
    /// Simulated issuance latency, so concurrent fetches really overlap.
    latency: Duration,
    calls: watch::Sender<Vec<Instant>>,
}

impl FakeCa {
    fn new(ttl: Duration) -> Arc<FakeCa> {
        Arc::new(FakeCa {
            ca: BuiltinCa::in_memory(ttl).unwrap(),
            fail: AtomicBool::new(false),
            latency: Duration::from_millis(100),
            calls: watch::channel(Vec::new()).0,
        })
    }

    /// Waits (on paused time, so auto-advancing) until `n` issuances have been asked for.
    async fn wait_calls(&self, n: usize, within: Duration) -> Vec<Instant> {
        let mut rx = self.calls.subscribe();
        let calls = timeout(within, rx.wait_for(|c| c.len() >= n))
            .await
            .unwrap_or_else(|_| panic!("fewer than {n} issuances within {within:?}"))
            .unwrap();
        calls.clone()
    }
}

impl CaClient for FakeCa {
    fn issue(
        &self,
        id: &Identity,
    ) -> Pin<Box<dyn Future<Output = Result<WorkloadCertificate, IdentityError>> + Send + '_>> {
        let id = id.clone();
        Box::pin(async move {
            self.calls.send_modify(|c| c.push(Instant::now()));
            tokio::time::sleep(self.latency).await;
            if self.fail.load(Ordering::SeqCst) {
                return Err(IdentityError::Ca {
                    identity: id,
                    reason: "CA is down".into(),
                });
            }
            self.ca.issue_now(&id)
        })
    }
}

fn web() -> Identity {
    id("spiffe://cluster.local/ns/apps/sa/web")
}

/// How long after `now` the manager should refresh `cert` (half its lifetime from `not_before`).
fn half_life_from_now(cert: &WorkloadCertificate) -> Duration {
    let life = cert.not_after().duration_since(cert.not_before()).unwrap();
    (cert.not_before() + life / 2)
        .duration_since(SystemTime::now())
        .unwrap()
}

fn assert_between(d: Duration, lo: Duration, hi: Duration) {
    assert!(lo <= d && d <= hi, "{d:?} not in [{lo:?}, {hi:?}]");
}

#[tokio::test(start_paused = true)]
async fn concurrent_fetches_share_one_issuance() {
    let ca = FakeCa::new(HOUR);
    let mgr = SecretManager::new(ca.clone(), SecretManagerConfig::default());
    let fetches = (0..10).map(|_| {
        let mgr = mgr.clone();
        tokio::spawn(async move { mgr.fetch(&web()).await })
    });
    let mut serials = Vec::new();
    for f in fetches {
        let cert = timeout(Duration::from_secs(5), f)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        serials.push(cert.serial_hex());
    }
    assert_eq!(mgr.issuance_count(), 1);
    assert!(serials.iter().all(|s| *s == serials[0]));
    let status = mgr.certificates();
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].identity, web());
    assert_eq!(status[0].state, CertificateState::Available);
    assert_eq!(status[0].serial.as_deref(), Some(serials[0].as_str()));
}

#[tokio::test(start_paused = true)]
async fn refreshes_at_half_life() {
    let ca = FakeCa::new(HOUR);
    let mgr = SecretManager::new(ca.clone(), SecretManagerConfig::default());
    assert!(mgr.certificates().is_empty());
    let first = mgr.fetch_certificate(&web()).await.unwrap();
    let issued_at = Instant::now();
    let due = half_life_from_now(&first);

    // Nothing happens until just before half-life...
    let mut rx = ca.calls.subscribe();
    assert!(
        timeout(due - Duration::from_secs(2), rx.wait_for(|c| c.len() >= 2))
            .await
            .is_err()
    );
    // ...and the refresh comes at half-life.
    let calls = ca.wait_calls(2, Duration::from_secs(10)).await;
    assert_between(
        calls[1] - issued_at,
        due - Duration::from_secs(1),
        due + Duration::from_secs(1),
    );
    tokio::time::sleep(ca.latency * 2).await;
    let second = mgr.fetch_certificate(&web()).await.unwrap();
    assert_ne!(first.serial_hex(), second.serial_hex());
    assert_eq!(mgr.issuance_count(), 2);
}

#[tokio::test(start_paused = true)]
async fn failed_refresh_keeps_old_certificate_and_backs_off() {
    let ca = FakeCa::new(HOUR);
    let mgr = SecretManager::new(ca.clone(), SecretManagerConfig::default());
    let first = mgr.fetch_certificate(&web()).await.unwrap();
    ca.fail.store(true, Ordering::SeqCst);

    ca.wait_calls(2, 2 * HOUR).await;
    tokio::time::sleep(ca.latency * 2).await;
    // The refresh failed: the old certificate is still served and still reported available.
    assert_eq!(
        mgr.fetch_certificate(&web()).await.unwrap().serial_hex(),
        first.serial_hex()
    );
    assert_eq!(mgr.certificates()[0].state, CertificateState::Available);

    // Retries back off: ~0.5 s, ~1 s, ~2 s (±20% jitter) after each failure returns.
    let calls = ca.wait_calls(5, Duration::from_secs(60)).await;
    let gaps: Vec<Duration> = calls
        .windows(2)
        .skip(1)
        .map(|w| w[1] - w[0] - ca.latency)
        .collect();
    assert_between(
        gaps[0],
        Duration::from_millis(400),
        Duration::from_millis(600),
    );
    assert_between(
        gaps[1],
        Duration::from_millis(800),
        Duration::from_millis(1200),
    );
    assert_between(
        gaps[2],
        Duration::from_millis(1600),
        Duration::from_millis(2400),
    );
    assert_eq!(calls.len(), 5);
    // Let the fifth attempt fail before the CA recovers.
    tokio::time::sleep(ca.latency * 2).await;

    // The CA recovers: the next retry's certificate replaces the old one at once.
    ca.fail.store(false, Ordering::SeqCst);
    ca.wait_calls(6, Duration::from_secs(60)).await;
    tokio::time::sleep(ca.latency * 2).await;
    let fresh = mgr.fetch_certificate(&web()).await.unwrap();
    assert_ne!(fresh.serial_hex(), first.serial_hex());
    assert_eq!(mgr.issuance_count(), 6);
}

#[tokio::test(start_paused = true)]
async fn certificate_dropped_when_it_expires_before_the_ca_recovers() {
    let ttl = Duration::from_secs(100);
    let ca = FakeCa::new(ttl);
    let mgr = SecretManager::new(ca.clone(), SecretManagerConfig::default());
    mgr.fetch_certificate(&web()).await.unwrap();
    ca.fail.store(true, Ordering::SeqCst);

    // Past expiry (the leaf is valid for `ttl` from issuance), with every retry failing.
    tokio::time::sleep(ttl + Duration::from_secs(5)).await;
    match mgr.fetch_certificate(&web()).await {
        Err(IdentityError::Ca { identity, reason }) => {
            assert_eq!((identity, reason.as_str()), (web(), "CA is down"))
        }
        other => panic!("unexpected: {:?}", other.map(|c| c.serial_hex())),
    }
    let status = &mgr.certificates()[0];
    assert_eq!(
        status.state,
        CertificateState::Unavailable(
            "CA could not issue a certificate for spiffe://cluster.local/ns/apps/sa/web: CA is down"
                .into()
        )
    );
    assert_eq!(status.serial, None);
    // Through the data-path seam the reason survives.
    let err = mgr.fetch(&web()).await.unwrap_err();
    assert!(
        matches!(&err, TlsError::CertificateUnavailable { identity, .. } if *identity == web()),
        "{err:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn forget_stops_refreshing() {
    let ca = FakeCa::new(HOUR);
    let mgr = SecretManager::new(ca.clone(), SecretManagerConfig::default());
    let first = mgr.fetch_certificate(&web()).await.unwrap();
    mgr.forget(&web());
    assert!(mgr.certificates().is_empty());

    let mut rx = ca.calls.subscribe();
    assert!(
        timeout(2 * HOUR, rx.wait_for(|c| c.len() >= 2))
            .await
            .is_err(),
        "a forgotten identity was refreshed"
    );
    assert_eq!(mgr.issuance_count(), 1);

    // Asking again starts over with a new issuance.
    let again = mgr.fetch_certificate(&web()).await.unwrap();
    assert_ne!(again.serial_hex(), first.serial_hex());
    assert_eq!(mgr.issuance_count(), 2);
}

#[tokio::test(start_paused = true)]
async fn wait_available_outlasts_failures_and_ends_when_forgotten() {
    let ca = FakeCa::new(HOUR);
    ca.fail.store(true, Ordering::SeqCst);
    let mgr = SecretManager::new(ca.clone(), SecretManagerConfig::default());
    let web_id = web();
    let waiting = mgr.wait_available(&web_id);
    tokio::pin!(waiting);
    // Three failed issuances (retried by the worker's backoff) do not end the wait.
    tokio::select! {
        r = &mut waiting => panic!("resolved while the CA fails: {:?}", r.map(|c| c.serial_hex())),
        _ = ca.wait_calls(3, Duration::from_secs(60)) => {}
    }
    ca.fail.store(false, Ordering::SeqCst);
    let cert = timeout(Duration::from_secs(60), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        mgr.current_certificate(&web()).unwrap().serial_hex(),
        cert.serial_hex()
    );

    // A wait on an identity that is forgotten meanwhile ends with `Forgotten`.
    ca.fail.store(true, Ordering::SeqCst);
    let other = id("spiffe://cluster.local/ns/apps/sa/other");
    let mgr2 = mgr.clone();
    let other2 = other.clone();
    let task = tokio::spawn(async move { mgr2.wait_available(&other2).await.map(|_| ()) });
    ca.wait_calls(5, Duration::from_secs(60)).await;
    mgr.forget(&other);
    match timeout(Duration::from_secs(60), task)
        .await
        .unwrap()
        .unwrap()
    {
        Err(IdentityError::Forgotten { identity }) => assert_eq!(identity, other),
        r => panic!("unexpected: {r:?}"),
    }
}

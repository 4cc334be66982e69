//! Tests of the pod-certificate tracker with a fake source whose certificates become available on
//! command: readiness is blocked per identity until its certificate is served, shared identities
//! are fetched once, and an identity no pod uses is forgotten (its blocker released).

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::timeout;

use super::*;

/// Available identities are in the watch; `forgotten` and `waits` record the calls.
#[derive(Default)]
struct FakeSource {
    available: watch::Sender<BTreeSet<Identity>>,
    forgotten: Mutex<Vec<Identity>>,
    waits: Mutex<Vec<Identity>>,
}

impl CertificateSource for FakeSource {
    fn wait_available(
        &self,
        id: &Identity,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        let id = id.clone();
        self.waits.lock().unwrap().push(id.clone());
        let mut rx = self.available.subscribe();
        Box::pin(async move {
            rx.wait_for(|a| a.contains(&id))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }

    fn forget(&self, id: &Identity) {
        self.forgotten.lock().unwrap().push(id.clone());
    }
}

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "apps", sa).unwrap()
}

fn set(ids: &[&Identity]) -> BTreeSet<Identity> {
    ids.iter().map(|i| (*i).clone()).collect()
}

/// Waits (bounded; paused time auto-advances) until readiness pending is `want`.
async fn wait_pending(r: &Readiness, want: &[String]) {
    let ok = timeout(Duration::from_secs(5), async {
        while r.pending() != want {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert!(ok.is_ok(), "pending {:?}, wanted {want:?}", r.pending());
}

#[tokio::test(start_paused = true)]
async fn readiness_waits_for_each_identity_and_gone_ones_are_forgotten() {
    let source = Arc::new(FakeSource::default());
    let readiness = Readiness::new();
    let mut certs = PodCertificates::new(source.clone(), readiness.clone());
    let (web, db) = (id("web"), id("db"));

    // Announced: blocked at once, before any task ran.
    certs.sync(&set(&[&web, &db]));
    let blocker = |i: &Identity| format!("inpod: certificate {i}");
    assert_eq!(readiness.pending(), vec![blocker(&db), blocker(&web)]);
    // A second pod with the same identity fetches nothing new.
    certs.sync(&set(&[&web, &db]));
    tokio::task::yield_now().await;
    assert_eq!(source.waits.lock().unwrap().len(), 2);

    // web's certificate arrives: only db blocks.
    source.available.send_modify(|a| {
        a.insert(web.clone());
    });
    wait_pending(&readiness, &[blocker(&db)]).await;

    // db's pods leave before its certificate came: forgotten, blocker gone with it.
    certs.sync(&set(&[&web]));
    wait_pending(&readiness, &[]).await;
    assert_eq!(*source.forgotten.lock().unwrap(), vec![db.clone()]);

    // The last pod leaves: web is forgotten too; readiness stays released.
    certs.sync(&BTreeSet::new());
    assert_eq!(*source.forgotten.lock().unwrap(), vec![db, web]);
    assert!(readiness.is_ready());
}

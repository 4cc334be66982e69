//! The registry and the re-authorization loop, driven by a real state store.

use std::time::Duration;

use super::*;
use crate::rbac::{Action, Authorization, Clause, Match, Rule, Scope};
use crate::state::{StateWriter, Update, Workload};

const T: Duration = Duration::from_secs(5);

fn local() -> super::super::LocalWorkload {
    super::super::LocalWorkload {
        namespace: "b".into(),
        name: "server".into(),
        default_identity: Identity::new("cluster.local", "b", "server").unwrap(),
    }
}

fn server() -> Workload {
    let mut w = Workload::new("c//Pod/b/server", "server", local().default_identity);
    w.workload_ips = vec!["10.0.0.2".parse().unwrap()];
    w
}

fn deny_namespace(ns: &str) -> Authorization {
    Authorization {
        name: "deny-ns".into(),
        namespace: "b".into(),
        scope: Scope::Namespace,
        action: Action::Deny,
        dry_run: false,
        rules: vec![Rule {
            clauses: vec![Clause {
                matches: vec![Match {
                    namespaces: vec![crate::rbac::StringMatch::Exact(ns.into())],
                    ..Default::default()
                }],
            }],
        }],
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn denied_connections_are_told_once_and_allowed_ones_are_not() {
    let tracker = ConnectionTracker::default();
    let a = Identity::new("cluster.local", "a", "client").unwrap();
    let mut denied = tracker.register(
        addr("10.0.0.1:1"),
        addr("10.0.0.2:80"),
        Some(&a),
        Default::default(),
    );
    let mut kept = tracker.register(
        addr("10.0.0.1:2"),
        addr("10.0.0.2:81"),
        None,
        Default::default(),
    );
    assert_eq!(tracker.len(), 2);
    let deny_80 = |f: &ConnFacts<'_>| {
        if f.dst.port() == 80 {
            Decision::Deny {
                policy: Some("b/p".into()),
                reason: crate::rbac::DenyReason::DenyMatched,
            }
        } else {
            Decision::Allow
        }
    };
    assert_eq!(tracker.recheck(deny_80), 1);
    assert_eq!(tracker.recheck(deny_80), 0, "told once");
    let d = tokio::time::timeout(T, denied.closed()).await.unwrap();
    assert_eq!(d.to_string(), "connection denied by policy b/p");
    assert!(
        tokio::time::timeout(Duration::from_millis(50), kept.closed())
            .await
            .is_err(),
        "an allowed connection is not revoked"
    );
    drop(denied);
    assert_eq!(tracker.len(), 1, "dropping a registration unregisters");
    drop(kept);
    assert!(tracker.is_empty());
}

#[tokio::test]
async fn a_policy_change_revokes_live_connections_and_identity_is_kept() {
    let (writer, view) = StateWriter::new();
    writer.apply(Update::default().upsert(server()));
    let tracker = ConnectionTracker::default();
    let (trigger, drain) = crate::lifecycle::drain_channel();
    let task = tokio::spawn(watch_policies(
        tracker.clone(),
        view.clone(),
        String::new(),
        local(),
        drain,
    ));
    let from_a = Identity::new("cluster.local", "a", "client").unwrap();
    let from_c = Identity::new("cluster.local", "c", "client").unwrap();
    let mut conn_a = tracker.register(
        addr("10.0.0.1:1"),
        addr("10.0.0.2:80"),
        Some(&from_a),
        Default::default(),
    );
    let mut conn_c = tracker.register(
        addr("10.0.0.3:1"),
        addr("10.0.0.2:80"),
        Some(&from_c),
        Default::default(),
    );
    let mut plain = tracker.register(
        addr("10.0.0.4:1"),
        addr("10.0.0.2:80"),
        None,
        Default::default(),
    );

    writer.apply(Update::default().upsert(deny_namespace("a")));
    let d = tokio::time::timeout(T, conn_a.closed()).await.unwrap();
    assert_eq!(d.to_string(), "connection denied by policy b/deny-ns");
    for other in [&mut conn_c, &mut plain] {
        assert!(
            tokio::time::timeout(Duration::from_millis(50), other.closed())
                .await
                .is_err()
        );
    }
    trigger.drain_immediately().await;
    tokio::time::timeout(T, task).await.unwrap().unwrap();
}

fn outbound(port: u16) -> LiveOutbound {
    LiveOutbound {
        src: addr(&format!("10.0.0.1:{port}")),
        original_dst: addr("10.0.0.2:80"),
        actual_dst: addr("10.0.0.2:15008"),
        protocol: OutboundProtocol::Hbone,
    }
}

#[tokio::test]
async fn the_drain_deadline_closes_every_connection_and_later_ones_at_once() {
    let tracker = ConnectionTracker::default();
    let (trigger, drain) = crate::lifecycle::drain_channel();
    let task = tokio::spawn(close_at_drain_deadline(tracker.clone(), drain.deadline()));
    let mut inbound = tracker.register(
        addr("10.0.0.1:1"),
        addr("10.0.0.2:80"),
        None,
        Default::default(),
    );
    let mut out = tracker.track_outbound(outbound(2), Default::default());
    // The connections hold the watcher, as their tasks do: the drain is forced, not graceful.
    let held = drain.clone();
    drop(drain);
    let drained = tokio::spawn(trigger.drain_immediately());
    let c = tokio::time::timeout(T, inbound.closed()).await.unwrap();
    assert!(matches!(c, Close::DrainDeadline), "{c:?}");
    assert_eq!(c.to_string(), "closed at the drain deadline");
    let c = tokio::time::timeout(T, out.closed()).await.unwrap();
    assert!(matches!(c, Close::DrainDeadline), "{c:?}");
    tokio::time::timeout(T, task).await.unwrap().unwrap();

    let mut late = tracker.track_outbound(outbound(3), Default::default());
    let c = tokio::time::timeout(T, late.closed()).await.unwrap();
    assert!(matches!(c, Close::DrainDeadline), "told at once: {c:?}");
    drop(held);
    tokio::time::timeout(T, drained).await.unwrap().unwrap();
}

#[tokio::test]
async fn the_deadline_task_does_not_hold_a_graceful_drain_open() {
    let tracker = ConnectionTracker::default();
    let (trigger, drain) = crate::lifecycle::drain_channel();
    let task = tokio::spawn(close_at_drain_deadline(tracker.clone(), drain.deadline()));
    drop(drain);
    let outcome = tokio::time::timeout(T, trigger.drain(Duration::from_secs(60)))
        .await
        .expect("graceful at once: only the deadline task is left");
    assert_eq!(outcome, crate::lifecycle::DrainOutcome::Graceful);
    // The trigger is gone without forcing: the task ends without telling anyone.
    tokio::time::timeout(T, task).await.unwrap().unwrap();
    assert_eq!(tracker.close_all_for_drain(), 0);
}

//! Table-style tests of the ZDS state machine; namespaces are plain numbers.

use super::*;

type Sm = StateManager<u32>;

fn info(name: &str) -> WorkloadInfo {
    WorkloadInfo {
        name: name.into(),
        namespace: "ns".into(),
        service_account: "sa".into(),
    }
}

fn add(uid: &str, netns: u32) -> (Request<u32>, usize) {
    (
        Request::Add {
            uid: uid.into(),
            info: Some(info(uid)),
            netns: Some(Ok(netns)),
        },
        1,
    )
}

fn start(uid: &str, netns: u32) -> Start<u32> {
    Start {
        uid: uid.into(),
        info: info(uid),
        netns,
    }
}

/// Handles a request, starting any proxy successfully, and returns (stops, reply).
fn step(sm: &mut Sm, (req, fds): (Request<u32>, usize)) -> (Vec<String>, Reply) {
    let plan = sm.handle(req, fds).unwrap();
    let reply = match plan.next {
        Next::Reply(r) => r,
        Next::Start(s) => sm.started(&s, Ok(())).reply,
    };
    (plan.stop, reply)
}

fn nack_contains(reply: &Reply, needle: &str) {
    match reply {
        Reply::Nack(m) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
        Reply::Ack => panic!("expected a NACK containing {needle:?}"),
    }
}

#[test]
fn malformed_requests_are_nacked_without_changing_state() {
    let cases: Vec<((Request<u32>, usize), &str)> = vec![
        (
            (
                Request::Add {
                    uid: "a".into(),
                    info: Some(info("a")),
                    netns: None,
                },
                0,
            ),
            "expected exactly one network namespace descriptor, got 0",
        ),
        (
            (
                Request::Add {
                    uid: "a".into(),
                    info: Some(info("a")),
                    netns: None,
                },
                2,
            ),
            "got 2",
        ),
        (
            (
                Request::Add {
                    uid: "a".into(),
                    info: None,
                    netns: Some(Ok(1)),
                },
                1,
            ),
            "workload_info is required",
        ),
        (
            (
                Request::Add {
                    uid: "a".into(),
                    info: Some(info("a")),
                    netns: Some(Err("not a network namespace".into())),
                },
                1,
            ),
            "AddWorkload a: not a network namespace",
        ),
        (
            (
                Request::Add {
                    uid: String::new(),
                    info: Some(info("a")),
                    netns: Some(Ok(1)),
                },
                1,
            ),
            "uid is empty",
        ),
        (
            (Request::Del { uid: "a".into() }, 1),
            "DelWorkload must not carry a file descriptor, got 1",
        ),
        (
            (Request::Keep { uid: "a".into() }, 1),
            "KeepWorkload must not carry",
        ),
        ((Request::SnapshotSent, 1), "SnapshotSent must not carry"),
        (
            (Request::Keep { uid: "zz".into() }, 0),
            "KeepWorkload zz: unknown workload",
        ),
    ];
    for (req, needle) in cases {
        let mut sm = Sm::new();
        let (stop, reply) = step(&mut sm, req);
        assert!(stop.is_empty());
        nack_contains(&reply, needle);
        assert_eq!((sm.active_count(), sm.pending_count()), (0, 0));
    }
}

#[test]
fn add_is_idempotent_for_the_same_namespace_and_replaces_on_a_new_one() {
    let mut sm = Sm::new();
    assert_eq!(step(&mut sm, add("a", 1)), (vec![], Reply::Ack));
    // Same namespace: nothing to start, nothing to stop.
    let plan = sm.handle(add("a", 1).0, 1).unwrap();
    assert_eq!(plan.stop, Vec::<String>::new());
    assert_eq!(plan.next, Next::Reply(Reply::Ack));
    // New namespace: the old proxy goes, a new one starts.
    let plan = sm.handle(add("a", 2).0, 1).unwrap();
    assert_eq!(plan.stop, vec!["a".to_string()]);
    assert_eq!(plan.next, Next::Start(start("a", 2)));
    assert_eq!(
        sm.started(&start("a", 2), Ok(())),
        Started {
            reply: Reply::Ack,
            keep: true
        }
    );
    assert_eq!(sm.active_count(), 1);
}

#[test]
fn del_stops_at_once_and_unknown_del_is_acked() {
    let mut sm = Sm::new();
    step(&mut sm, add("a", 1));
    step(&mut sm, add("b", 2));
    assert_eq!(
        step(&mut sm, (Request::Del { uid: "a".into() }, 0)),
        (vec!["a".to_string()], Reply::Ack)
    );
    assert_eq!(
        step(&mut sm, (Request::Del { uid: "a".into() }, 0)),
        (vec![], Reply::Ack)
    );
    assert_eq!(sm.active_count(), 1);
}

#[test]
fn snapshot_drains_pods_not_announced_since_reconnect() {
    let mut sm = Sm::new();
    for (uid, ns) in [("a", 1), ("b", 2), ("c", 3)] {
        step(&mut sm, add(uid, ns));
    }
    assert!(!sm.is_ready(), "no snapshot yet");
    assert_eq!(
        step(&mut sm, (Request::SnapshotSent, 0)),
        (vec![], Reply::Ack)
    );
    assert!(sm.is_ready());

    // Reconnect: a re-added, b kept, c forgotten.
    sm.connected();
    assert_eq!(step(&mut sm, add("a", 1)), (vec![], Reply::Ack));
    assert_eq!(
        step(&mut sm, (Request::Keep { uid: "b".into() }, 0)),
        (vec![], Reply::Ack)
    );
    assert_eq!(
        step(&mut sm, (Request::SnapshotSent, 0)),
        (vec!["c".to_string()], Reply::Ack)
    );
    assert_eq!(sm.active_count(), 2);
}

#[test]
fn protocol_violations_end_the_connection() {
    let mut sm = Sm::new();
    step(&mut sm, add("a", 1));
    step(&mut sm, (Request::SnapshotSent, 0));
    assert_eq!(
        sm.handle(Request::SnapshotSent, 0).unwrap_err(),
        Violation::SecondSnapshot
    );
    assert_eq!(
        sm.handle(Request::Keep { uid: "a".into() }, 0).unwrap_err(),
        Violation::KeepAfterSnapshot { uid: "a".into() }
    );
    // A new connection may send a snapshot again; readiness survives reconnects.
    sm.connected();
    assert!(sm.is_ready());
    assert!(sm.handle(Request::Keep { uid: "a".into() }, 0).is_ok());
    assert!(sm.handle(Request::SnapshotSent, 0).is_ok());
}

#[test]
fn failed_start_is_nacked_kept_pending_and_blocks_readiness() {
    let mut sm = Sm::new();
    let plan = sm.handle(add("a", 1).0, 1).unwrap();
    let Next::Start(s) = plan.next else {
        panic!("expected a start")
    };
    let out = sm.started(&s, Err("bind: address in use".into()));
    assert_eq!(
        out,
        Started {
            reply: Reply::Nack("start proxy for a: bind: address in use".into()),
            keep: false
        }
    );
    step(&mut sm, (Request::SnapshotSent, 0));
    assert!(!sm.is_ready(), "a pending pod blocks readiness");
    assert_eq!((sm.active_count(), sm.pending_count()), (0, 1));
    assert_eq!(sm.pending(), vec![start("a", 1)]);
    // The retry succeeds.
    assert!(sm.started(&start("a", 1), Ok(())).keep);
    assert!(sm.is_ready());
    assert!(sm.pending().is_empty());
}

#[test]
fn a_start_for_a_deleted_or_moved_pod_is_not_kept() {
    let mut sm = Sm::new();
    let Next::Start(s) = sm.handle(add("a", 1).0, 1).unwrap().next else {
        panic!("expected a start")
    };
    sm.started(&s, Err("boom".into()));
    // The pod moves to a new namespace before the retry of the old one reports back.
    let _ = sm.handle(add("a", 2).0, 1).unwrap();
    assert!(!sm.started(&start("a", 1), Ok(())).keep);
    step(&mut sm, (Request::Del { uid: "a".into() }, 0));
    assert!(!sm.started(&start("a", 2), Ok(())).keep);
}

#[test]
fn deleting_a_pending_pod_unblocks_readiness_without_a_stop() {
    let mut sm = Sm::new();
    let Next::Start(s) = sm.handle(add("a", 1).0, 1).unwrap().next else {
        panic!("expected a start")
    };
    sm.started(&s, Err("boom".into()));
    step(&mut sm, (Request::SnapshotSent, 0));
    assert!(!sm.is_ready());
    assert_eq!(
        step(&mut sm, (Request::Del { uid: "a".into() }, 0)),
        (vec![], Reply::Ack)
    );
    assert!(sm.is_ready());
}

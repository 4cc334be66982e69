//! The lab's own plumbing, without any node proxy: underlay and routes (pod to pod across nodes
//! and on one node, source addresses kept), the node agent's in-pod redirection rules, the ZDS
//! server's handshake, add/delete and its answers to a misbehaving client, two labs side by side,
//! and that nothing of a lab is left in `ip netns list` after it is dropped.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use ambit_lab::topology::Pod;
use ambit_lab::traffic::{Server, ServerKind, bulk_send, echo, request_response};
use ambit_lab::zds::proto::workload_request::Payload;
use ambit_lab::zds::{SeqpacketConn, ZdsError};
use ambit_lab::{Lab, LabOptions, Topology};

const STEP: Duration = Duration::from_secs(10);

const TOPOLOGY: &str = "
nodes: [{name: node-1}, {name: node-2}]
pods:
  - {name: a, node: node-1, serviceAccount: sa-a}
  - {name: e, node: node-2}
  - {name: b, node: node-1, captured: false}
  - {name: c, node: node-2, captured: false}
  - {name: d, node: node-1, captured: false}
";

fn topology() -> Topology {
    Topology::from_yaml(TOPOLOGY).unwrap()
}

/// Namespaces of run `run_id` still present.
fn leftovers(run_id: &str) -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("-{run_id}-")))
        .map(str::to_string)
        .collect()
}

fn addr(t: &Topology, pod: &str, port: u16) -> SocketAddr {
    SocketAddr::from((t.pod(pod).unwrap().ip, port))
}

#[tokio::test]
async fn pods_reach_each_other_across_nodes_and_on_one_node() {
    let lab = Lab::start(topology(), LabOptions::default()).await.unwrap();
    let run = lab.run_id().to_string();
    let t = lab.topology().clone();
    let _c = Server::start(lab.pod_ns("c").unwrap(), ServerKind::Sink, 8080).unwrap();
    let _d = Server::start(lab.pod_ns("d").unwrap(), ServerKind::Sink, 8080).unwrap();
    let b = lab.pod_ns("b").unwrap();
    for target in ["c", "d"] {
        let r = bulk_send(b, addr(&t, target, 8080), 300_000, STEP)
            .await
            .unwrap();
        assert_eq!(r.reply.bytes, 300_000, "to {target}");
        assert_eq!(r.reply.sha256, r.sha256, "to {target}");
        // Routed, not NATed: the server sees the client pod's own address.
        assert_eq!(
            r.reply.peer,
            t.pod("b").unwrap().ip.to_string(),
            "to {target}"
        );
    }
    // The other built-in servers, across nodes.
    let _e = Server::start(lab.pod_ns("c").unwrap(), ServerKind::Echo, 7).unwrap();
    let _r = Server::start(lab.pod_ns("c").unwrap(), ServerKind::RequestResponse, 9).unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    assert_eq!(echo(b, addr(&t, "c", 7), &data, STEP).await.unwrap(), data);
    let lat = request_response(b, addr(&t, "c", 9), 20, 3000, STEP)
        .await
        .unwrap();
    assert_eq!(lat.len(), 20);
    assert!(leftovers(&run).len() >= 7, "underlay + 2 nodes + 5 pods");
    drop(lab);
    assert_eq!(leftovers(&run), Vec::<String>::new());
}

#[tokio::test]
async fn captured_pods_get_the_inpod_rules() {
    let lab = Lab::start(topology(), LabOptions::default()).await.unwrap();
    let t = lab.topology().clone();
    let a = lab.pod_ns("a").unwrap();
    let rules = a
        .run(&["nft", "list", "table", "inet", "ambit_inpod"])
        .unwrap();
    for want in [
        "redirect to :15001",
        "redirect to :15006",
        "tcp dport 15008 return",
        "0x00000539",
    ] {
        assert!(rules.contains(want), "{want} missing in:\n{rules}");
    }
    assert!(
        !rules.contains("15053"),
        "DNS capture is off in this topology"
    );
    assert!(
        a.ip(&["rule", "list"])
            .unwrap()
            .contains("fwmark 0x111 lookup 100")
    );
    // Uncaptured pods have no rules at all.
    let b = lab.pod_ns("b").unwrap();
    assert!(
        !b.run(&["nft", "list", "ruleset"])
            .unwrap()
            .contains("ambit_inpod")
    );

    // Outbound from a (to c's app port) lands on a's 15001; inbound to a's app port from b lands
    // on a's 15006; inbound to 15008 is left alone.
    let accept_on = |port: u16| {
        let l = a
            .tcp_listener(SocketAddr::from(([0, 0, 0, 0], port)))
            .unwrap();
        tokio::net::TcpListener::from_std(l).unwrap()
    };
    let (out_l, in_l, hbone_l) = (accept_on(15001), accept_on(15006), accept_on(15008));
    let _out = a.connect(addr(&t, "c", 8080), STEP).await.unwrap();
    let (_, peer) = tokio::time::timeout(STEP, out_l.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(peer.ip().to_string(), t.pod("a").unwrap().ip.to_string());
    let _in = b.connect(addr(&t, "a", 8080), STEP).await.unwrap();
    let (_, peer) = tokio::time::timeout(STEP, in_l.accept())
        .await
        .unwrap()
        .unwrap();
    assert!(
        peer.to_string()
            .contains(&t.pod("b").unwrap().ip.to_string()),
        "{peer}"
    );
    let _hb = b.connect(addr(&t, "a", 15008), STEP).await.unwrap();
    tokio::time::timeout(STEP, hbone_l.accept())
        .await
        .unwrap()
        .unwrap();
}

fn pod_e2(t: &Topology) -> Pod {
    let mut p = t.pod("e").unwrap().clone();
    p.name = "e2".into();
    p.ip = std::net::Ipv4Addr::new(10, 244, 2, 50);
    p
}

#[tokio::test]
async fn zds_snapshot_add_and_delete() {
    let mut lab = Lab::start(topology(), LabOptions::default()).await.unwrap();
    let run = lab.run_id().to_string();
    let agent = lab.agent("node-2").unwrap();
    let socket = agent.socket().to_path_buf();
    let mut snapshots = agent.snapshots();
    let e_ns_path = format!("/var/run/netns/{}", lab.pod_ns("e").unwrap().name());

    // Play the node proxy: hello, then ack the snapshot (pod e only: c is not captured).
    let proxy = tokio::spawn(async move {
        let conn = SeqpacketConn::connect(&socket).unwrap();
        conn.send_hello().await.unwrap();
        let mut seen = Vec::new();
        loop {
            let (req, fds) = tokio::time::timeout(STEP, conn.recv_request())
                .await
                .unwrap()
                .unwrap();
            match req.payload.unwrap() {
                Payload::Add(add) => {
                    assert_eq!(fds.len(), 1, "AddWorkload carries exactly one fd");
                    let fd_meta = std::fs::File::from(fds.into_iter().next().unwrap())
                        .metadata()
                        .unwrap();
                    let info = add.workload_info.unwrap();
                    if add.uid == "Kubernetes//Pod/default/e" {
                        let ns_meta = std::fs::metadata(&e_ns_path).unwrap();
                        assert_eq!(
                            (fd_meta.dev(), fd_meta.ino()),
                            (ns_meta.dev(), ns_meta.ino())
                        );
                    }
                    seen.push(format!(
                        "add {} {}/{}/{}",
                        add.uid, info.namespace, info.name, info.service_account
                    ));
                }
                Payload::Del(del) => {
                    assert!(fds.is_empty());
                    seen.push(format!("del {}", del.uid));
                }
                Payload::SnapshotSent(_) => seen.push("snapshot".into()),
                Payload::Keep(k) => seen.push(format!("keep {}", k.uid)),
            }
            conn.send_ack("").await.unwrap();
            if seen.last().is_some_and(|s| s.starts_with("del")) {
                return seen;
            }
        }
    });
    tokio::time::timeout(STEP, snapshots.wait_for(|n| *n == 1))
        .await
        .unwrap()
        .unwrap();
    let e2 = pod_e2(lab.topology());
    lab.add_pod(e2).await.unwrap();
    // The new pod got its rules before it was announced.
    let rules = lab
        .pod_ns("e2")
        .unwrap()
        .run(&["nft", "list", "ruleset"])
        .unwrap();
    assert!(rules.contains("redirect to :15001"));
    lab.del_pod("e2").await.unwrap();
    let seen = tokio::time::timeout(STEP, proxy).await.unwrap().unwrap();
    assert_eq!(
        seen,
        vec![
            "add Kubernetes//Pod/default/e default/e/default",
            "snapshot",
            "add Kubernetes//Pod/default/e2 default/e2/default",
            "del Kubernetes//Pod/default/e2",
        ]
    );
    assert!(lab.pod_ns("e2").is_err(), "deleted pod's namespace is gone");
    drop(lab);
    assert_eq!(leftovers(&run), Vec::<String>::new());
}

#[tokio::test]
async fn zds_nack_and_bad_hello() {
    let mut lab = Lab::start(topology(), LabOptions::default()).await.unwrap();
    let socket = lab.agent("node-2").unwrap().socket().to_path_buf();
    let mut snapshots = lab.agent("node-2").unwrap().snapshots();

    // An undecodable hello: the agent drops the connection without sending anything.
    let bad = SeqpacketConn::connect(&socket).unwrap();
    bad.send(&[0xff, 0xff, 0xff], None).await.unwrap();
    match tokio::time::timeout(STEP, bad.recv()).await.unwrap() {
        Err(ZdsError::Closed) => {}
        other => panic!("expected the agent to close, got {other:?}"),
    }

    // A proxy that nacks new pods: the snapshot still completes, the add reports the refusal.
    let proxy = tokio::spawn(async move {
        let conn = SeqpacketConn::connect(&socket).unwrap();
        conn.send_hello().await.unwrap();
        for _ in 0..3 {
            let (req, _) = tokio::time::timeout(STEP, conn.recv_request())
                .await
                .unwrap()
                .unwrap();
            match req.payload.unwrap() {
                Payload::Add(a) if a.uid.ends_with("/e2") => {
                    conn.send_ack("no room").await.unwrap()
                }
                _ => conn.send_ack("").await.unwrap(),
            }
        }
        conn
    });
    tokio::time::timeout(STEP, snapshots.wait_for(|n| *n == 1))
        .await
        .unwrap()
        .unwrap();
    let e2 = pod_e2(lab.topology());
    let err = lab.add_pod(e2).await.unwrap_err().to_string();
    assert!(
        err.contains("refused AddWorkload Kubernetes//Pod/default/e2: no room"),
        "{err}"
    );
    let _conn = tokio::time::timeout(STEP, proxy).await.unwrap().unwrap();
}

#[tokio::test]
async fn two_labs_at_once_do_not_interfere() {
    let (l1, l2) = tokio::join!(
        Lab::start(topology(), LabOptions::default()),
        Lab::start(topology(), LabOptions::default())
    );
    let (l1, l2) = (l1.unwrap(), l2.unwrap());
    let runs = [l1.run_id().to_string(), l2.run_id().to_string()];
    assert_ne!(runs[0], runs[1]);
    let t = l1.topology().clone();
    // The same addresses in both labs, each answered by its own server.
    let _s1 = Server::start(l1.pod_ns("c").unwrap(), ServerKind::Http, 8080).unwrap();
    let _s2 = Server::start(l2.pod_ns("c").unwrap(), ServerKind::Sink, 8080).unwrap();
    let r1 = ambit_lab::http_get(l1.pod_ns("b").unwrap(), addr(&t, "c", 8080), "/", STEP)
        .await
        .unwrap();
    assert_eq!(r1.body.trim(), format!("peer {}", t.pod("b").unwrap().ip));
    let r2 = bulk_send(l2.pod_ns("b").unwrap(), addr(&t, "c", 8080), 1000, STEP)
        .await
        .unwrap();
    assert_eq!(r2.reply.sha256, r2.sha256);
    drop(l1);
    assert_eq!(leftovers(&runs[0]), Vec::<String>::new());
    // The other lab is untouched by the first one's removal.
    let r2 = bulk_send(l2.pod_ns("d").unwrap(), addr(&t, "c", 8080), 1000, STEP)
        .await
        .unwrap();
    assert_eq!(r2.reply.bytes, 1000);
    drop(l2);
    assert_eq!(leftovers(&runs[1]), Vec::<String>::new());
}

#[tokio::test]
async fn a_missing_proxy_binary_is_one_clear_line_and_leaves_nothing() {
    let opts = LabOptions {
        proxy: Some("/nonexistent/ambit".into()),
        ..LabOptions::default()
    };
    let err = Lab::start(topology(), opts).await.unwrap_err().to_string();
    assert!(
        err.contains("not found") && err.contains("cargo build"),
        "{err}"
    );
    assert!(!err.contains('\n'));
}

#[tokio::test]
async fn restarted_agent_sends_a_fresh_snapshot() {
    let mut lab = Lab::start(topology(), LabOptions::default()).await.unwrap();
    let socket = lab.agent("node-1").unwrap().socket().to_path_buf();
    let handshake = |conn: SeqpacketConn| async move {
        conn.send_hello().await.unwrap();
        loop {
            let (req, _) = tokio::time::timeout(STEP, conn.recv_request())
                .await
                .unwrap()
                .unwrap();
            conn.send_ack("").await.unwrap();
            if matches!(req.payload, Some(Payload::SnapshotSent(_))) {
                return conn;
            }
        }
    };
    let first = handshake(SeqpacketConn::connect(&socket).unwrap()).await;
    lab.restart_agent("node-1").await.unwrap();
    // The old connection is closed by the agent going away ...
    match tokio::time::timeout(STEP, first.recv()).await.unwrap() {
        Err(ZdsError::Closed) => {}
        other => panic!("expected the old connection to close, got {other:?}"),
    }
    // ... and the new agent, on the same path, serves a full snapshot again.
    let mut snapshots = lab.agent("node-1").unwrap().snapshots();
    let _second = handshake(SeqpacketConn::connect(&socket).unwrap()).await;
    tokio::time::timeout(STEP, snapshots.wait_for(|n| *n == 1))
        .await
        .unwrap()
        .unwrap();
}

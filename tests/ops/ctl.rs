//! `ambit ctl` against a running lab (shared mode, one ambit per node): every list command,
//! live connections with exact byte counts, the log filter, one-line errors with non-zero
//! exits, and `explain` for four kinds of flow, each compared with what the data path then
//! does when the flow is run: an allowed flow, one denied by a DENY rule, one through a
//! workload waypoint, and one to a VIP with two endpoints.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use ambit_lab::accesslog::{self, LogLine};
use ambit_lab::traffic::{Server, ServerKind, WaypointServer, echo};
use ambit_lab::{Lab, LabOptions, ProxyMode, Topology};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const AMBIT: &str = env!("CARGO_BIN_EXE_ambit");
const STEP: Duration = Duration::from_secs(20);
const VIP: &str = "10.96.0.40";

/// `blocked` is denied everywhere in `default` by a DENY rule on its principal; `db` sits
/// behind the `waypoint` pod; `web` is a VIP with one endpoint per node; `db` is also the
/// name of a service (so `db:8080` is ambiguous).
const TOPOLOGY: &str = r#"
nodes:
  - name: node-1
  - name: node-2
pods:
  - {name: client, serviceAccount: client, node: node-1}
  - {name: blocked, serviceAccount: blocked, node: node-1}
  - {name: web-1, serviceAccount: web, node: node-1, labels: {app: web}}
  - {name: web-2, serviceAccount: web, node: node-2, labels: {app: web}}
  - {name: waypoint, serviceAccount: waypoint, node: node-2, applicationTunnel: {protocol: PROXY, port: 15088}}
  - {name: db, serviceAccount: db, node: node-1, waypoint: waypoint, labels: {app: db}}
services:
  - {name: web, vips: [10.96.0.40], ports: {80: 8080}, selector: {app: web}}
  - {name: db, vips: [10.96.0.41], ports: {8080: 8080}, selector: {app: db}}
policies:
  - name: deny-blocked
    namespace: default
    scope: Namespace
    action: Deny
    dryRun: false
    rules:
      - - - principals: [!Suffix "/sa/blocked"]
"#;

async fn lab() -> Lab {
    let opts = LabOptions {
        proxy: Some(AMBIT.into()),
        mode: ProxyMode::Shared,
        ..LabOptions::default()
    };
    Lab::start(Topology::from_yaml(TOPOLOGY).unwrap(), opts)
        .await
        .unwrap()
}

/// `ambit ctl <args>` in `node`'s namespace (where its proxy's admin API listens):
/// (exit code, stdout, stderr).
async fn ctl(lab: &Lab, node: &str, args: &[&str]) -> (i32, String, String) {
    let mut argv = vec![AMBIT, "ctl"];
    argv.extend_from_slice(args);
    let out = lab.node_ns(node).unwrap().exec(&argv, STEP).await.unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// `ctl` that must succeed; prints the output (the notes quote it).
async fn ok(lab: &Lab, node: &str, args: &[&str]) -> String {
    let (code, out, err) = ctl(lab, node, args).await;
    assert_eq!(code, 0, "ambit ctl {args:?}: {err}");
    println!("$ ambit ctl {}\n{out}", args.join(" "));
    out
}

async fn json(lab: &Lab, node: &str, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    let (code, out, err) = ctl(lab, node, &a).await;
    assert_eq!(code, 0, "ambit ctl {a:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn ip(lab: &Lab, pod: &str) -> String {
    lab.topology().pod(pod).unwrap().ip.to_string()
}

fn spiffe(lab: &Lab, pod: &str) -> String {
    lab.topology().pod(pod).unwrap().spiffe()
}

fn access(lab: &Lab, pod: &str, parts: &[&str]) -> Vec<LogLine> {
    accesslog::access_lines(&lab.proxy_for(pod).unwrap().log(), parts)
}

/// Waits (bounded) until `f` returns at least `n` items, and returns them.
async fn at_least<T>(n: usize, f: impl Fn() -> Vec<T>) -> Vec<T> {
    let mut got = f();
    for _ in 0..200 {
        if got.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        got = f();
    }
    got
}

fn paths(e: &Value) -> &Vec<Value> {
    e["paths"].as_array().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_predicts_what_the_data_path_does() {
    let lab = lab().await;
    let _apps = [
        Server::start(lab.pod_ns("web-1").unwrap(), ServerKind::Echo, 8080).unwrap(),
        Server::start(lab.pod_ns("web-2").unwrap(), ServerKind::Echo, 8080).unwrap(),
        Server::start(lab.pod_ns("db").unwrap(), ServerKind::Echo, 8080).unwrap(),
    ];
    let wp = WaypointServer::start(lab.pod_ns("waypoint").unwrap(), 15088).unwrap();
    let client = lab.pod_ns("client").unwrap();

    // 1. Allowed, pod to pod on another node: HBONE to web-2's proxy, which must present
    // web's identity and sees the client's.
    let web2: SocketAddr = format!("{}:8080", ip(&lab, "web-2")).parse().unwrap();
    ok(&lab, "node-1", &["explain", "client", &web2.to_string()]).await;
    let e = json(&lab, "node-1", &["explain", "client", &web2.to_string()]).await;
    assert_eq!(e["verdict"], "allow");
    let [p] = paths(&e).as_slice() else {
        panic!("{e:#}")
    };
    assert_eq!(p["route"], "hbone");
    assert_eq!(p["via"], format!("{}:15008", ip(&lab, "web-2")));
    assert_eq!(p["expectedIdentities"][0], spiffe(&lab, "web-2"));
    assert_eq!(p["authorization"]["identity"], spiffe(&lab, "client"));
    assert_eq!(
        echo(client, web2, b"allowed", STEP).await.unwrap(),
        b"allowed"
    );
    let dst = format!("dst.hbone_addr={web2}");
    let src_id = format!("src.identity={}", spiffe(&lab, "client"));
    let served = at_least(1, || {
        access(&lab, "web-2", &["direction=inbound", &dst, &src_id])
    })
    .await;
    assert_eq!(served.len(), 1, "{served:#?}");
    assert!(
        served[0].has(&format!("dst.identity={}", spiffe(&lab, "web-2"))),
        "{}",
        served[0]
    );

    // 2. Denied by the DENY rule: explain names the policy and the rule that matched, and the
    // destination's proxy refuses with exactly that decision.
    let e = json(
        &lab,
        "node-1",
        &["explain", "default/blocked", &web2.to_string()],
    )
    .await;
    ok(
        &lab,
        "node-1",
        &["explain", "default/blocked", &web2.to_string()],
    )
    .await;
    assert_eq!(e["verdict"], "deny");
    let authz = &paths(&e)[0]["authorization"];
    let decision = authz["decision"].as_str().unwrap();
    assert_eq!(decision, "connection denied by policy default/deny-blocked");
    let deny = &authz["policies"][0];
    assert_eq!(
        (
            &deny["policy"],
            &deny["action"],
            &deny["matched"],
            &deny["rules"][0]["matched"]
        ),
        (
            &"default/deny-blocked".into(),
            &"DENY".into(),
            &true.into(),
            &true.into()
        )
    );
    let blocked = lab.pod_ns("blocked").unwrap();
    assert!(
        echo(blocked, web2, b"x", Duration::from_secs(5))
            .await
            .is_err()
    );
    let src = format!("src.addr^={}:", ip(&lab, "blocked"));
    let refused = at_least(1, || {
        access(
            &lab,
            "web-2",
            &["direction=inbound", &src, &format!("error={decision}")],
        )
    })
    .await;
    assert_eq!(
        refused.len(),
        1,
        "{}",
        lab.proxy_for("web-2").unwrap().tail(10)
    );

    // 3. Through a workload waypoint: to the waypoint first, then the waypoint's own
    // connection reaches db, whose proxy sees the waypoint's identity.
    let db: SocketAddr = format!("{}:8080", ip(&lab, "db")).parse().unwrap();
    ok(&lab, "node-1", &["explain", "client", &db.to_string()]).await;
    let e = json(&lab, "node-1", &["explain", "client", &db.to_string()]).await;
    assert_eq!(e["verdict"], "allow");
    let p = &paths(&e)[0];
    let wp_hbone = format!("{}:15008", ip(&lab, "waypoint"));
    assert_eq!(p["via"], wp_hbone);
    assert_eq!(p["authorization"]["workload"], "default/waypoint");
    let beyond = &p["beyondWaypoint"];
    assert_eq!(beyond["source"]["workload"], "default/waypoint");
    let last = &paths(beyond)[0];
    assert_eq!(last["via"], format!("{}:15008", ip(&lab, "db")));
    let final_identity = last["authorization"]["identity"].as_str().unwrap();
    assert_eq!(final_identity, spiffe(&lab, "waypoint"));
    assert_eq!(
        echo(client, db, b"via waypoint", STEP).await.unwrap(),
        b"via waypoint"
    );
    let wp_log = at_least(1, || wp.log()).await;
    assert_eq!(wp_log.len(), 1, "{wp_log:?}");
    assert!(wp_log[0].contains(&format!("dst={db}")), "{}", wp_log[0]);
    let to_wp_addr = format!("dst.addr={wp_hbone}");
    let to_wp = at_least(1, || {
        access(&lab, "client", &["direction=outbound", &to_wp_addr])
    })
    .await;
    assert_eq!(to_wp.len(), 1, "{to_wp:#?}");
    let at_db = format!("src.identity={final_identity}");
    let served = at_least(1, || access(&lab, "db", &["direction=inbound", &at_db])).await;
    assert_eq!(served.len(), 1, "{served:#?}");

    // 4. A VIP with two endpoints, by service name: even odds; run enough connections that
    // both are hit (each misses with probability 2^-24) and no other endpoint is.
    ok(&lab, "node-1", &["explain", "client", "web:80"]).await;
    let e = json(&lab, "node-1", &["explain", "client", "web:80"]).await;
    assert_eq!(e["destination"], format!("{VIP}:80"));
    assert_eq!(e["verdict"], "allow");
    let predicted: BTreeSet<String> = paths(&e)
        .iter()
        .map(|p| {
            assert_eq!(p["probability"], 0.5, "{p:#}");
            p["target"].as_str().unwrap().to_string()
        })
        .collect();
    let want: BTreeSet<String> = ["web-1", "web-2"]
        .iter()
        .map(|p| format!("{}:8080", ip(&lab, p)))
        .collect();
    assert_eq!(predicted, want);
    const N: usize = 24;
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    for i in 0..N as u8 {
        assert_eq!(echo(client, vip, &[i], STEP).await.unwrap(), [i]);
    }
    let from_client = format!("src.addr^={}:", ip(&lab, "client"));
    let seen = at_least(N + 1, || {
        ["web-1", "web-2"]
            .iter()
            .flat_map(|p| {
                let to = format!("dst.workload={p}");
                access(&lab, p, &["direction=inbound", &from_client, &to])
            })
            .collect()
    })
    .await;
    // One connection to web-2 came from step 1; every VIP connection reached web-1 or web-2.
    assert_eq!(seen.len(), N + 1, "{seen:#?}");
    let reached: BTreeSet<String> = seen
        .iter()
        .filter_map(|l| l.get("dst.hbone_addr").map(str::to_string))
        .collect();
    assert_eq!(reached, predicted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_lists_state_connections_and_refuses_bad_input() {
    let lab = lab().await;
    let _app = Server::start(lab.pod_ns("web-1").unwrap(), ServerKind::Echo, 8080).unwrap();

    let workloads = json(&lab, "node-1", &["workloads"]).await;
    let names: BTreeSet<&str> = workloads
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["blocked", "client", "db", "waypoint", "web-1", "web-2"].into()
    );
    let table = ok(&lab, "node-1", &["workloads", "--node", "node-2"]).await;
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(rows.iter().all(|r| r.contains("node-2")), "{table}");

    let services = ok(&lab, "node-1", &["services"]).await;
    assert!(
        services
            .lines()
            .any(|l| l.contains("web") && l.contains(VIP) && l.contains("80→8080")),
        "{services}"
    );
    let policies = json(&lab, "node-1", &["policies", "--workload", "client"]).await;
    assert_eq!(policies[0]["name"], "deny-blocked", "{policies:#}");
    ok(&lab, "node-1", &["policies"]).await;
    let certs = ok(&lab, "node-1", &["certificates"]).await;
    assert!(certs.contains(&spiffe(&lab, "client")), "{certs}");
    ok(&lab, "node-1", &["certificates", "-o", "yaml"]).await;

    // A live connection, with exactly the bytes sent both ways so far.
    let target: SocketAddr = format!("{}:8080", ip(&lab, "web-1")).parse().unwrap();
    let mut conn = lab
        .pod_ns("client")
        .unwrap()
        .connect(target, STEP)
        .await
        .unwrap();
    let payload = vec![7u8; 4321];
    conn.write_all(&payload).await.unwrap();
    let mut back = vec![0u8; payload.len()];
    tokio::time::timeout(STEP, conn.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    let mut listed = Value::Null;
    for _ in 0..100 {
        listed = json(&lab, "node-1", &["connections", "--workload", "client"]).await;
        let full = listed["connections"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["bytesSent"] == 4321 && c["bytesReceived"] == 4321)
            .count();
        if full == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let conns = listed["connections"].as_array().unwrap();
    let out = conns
        .iter()
        .find(|c| c["direction"] == "outbound")
        .unwrap_or_else(|| panic!("{listed:#}"));
    assert_eq!(out["pod"], "default/client");
    assert_eq!(out["dst"], target.to_string());
    assert_eq!(out["protocol"], "HBONE");
    assert_eq!(
        (&out["bytesSent"], &out["bytesReceived"]),
        (&4321.into(), &4321.into())
    );
    let inb = conns
        .iter()
        .find(|c| c["direction"] == "inbound")
        .unwrap_or_else(|| panic!("{listed:#}"));
    assert_eq!(inb["pod"], "default/web-1");
    assert_eq!(inb["identity"], spiffe(&lab, "client"));
    assert_eq!(
        (&inb["bytesSent"], &inb["bytesReceived"]),
        (&4321.into(), &4321.into())
    );
    let table = ok(&lab, "node-1", &["connections"]).await;
    assert!(table.contains("4.2KiB"), "{table}");
    drop(conn);

    let out = ok(&lab, "node-1", &["log"]).await;
    assert!(out.starts_with("current log level is "), "{out}");
    let out = ok(&lab, "node-1", &["log", "ambit::proxy=debug"]).await;
    assert!(out.contains("ambit::proxy=debug"), "{out}");
    let out = ok(&lab, "node-1", &["log", "reset"]).await;
    assert!(!out.contains("ambit::proxy=debug"), "{out}");

    // Bad input: one line on stderr, nothing on stdout, a non-zero exit.
    let unused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let admin = format!("127.0.0.1:{unused}");
    let cases: [(&[&str], i32, String); 6] = [
        (
            &["workloads", "--admin", &admin],
            3,
            format!("ambit ctl: cannot reach the admin API at {admin}: Connection refused (os error 111) (is the proxy running here? see --admin)"),
        ),
        (
            &["explain", "nobody", "web:80"],
            1,
            "ambit ctl: unknown workload \"nobody\"".into(),
        ),
        (
            &["explain", "client", "db:8080"],
            1,
            "ambit ctl: \"db\" is ambiguous: it names service default/db, workload default/db".into(),
        ),
        (
            &["explain", "client", "web:eighty"],
            1,
            "ambit ctl: malformed destination \"web:eighty\": expected <ip>:<port> or <name>:<port>".into(),
        ),
        (
            &["explain", "client", "nothing:80"],
            1,
            "ambit ctl: unknown destination \"nothing\": no workload or service of that name".into(),
        ),
        (
            &["policies", "--workload", "nobody"],
            1,
            "ambit ctl: unknown workload \"nobody\"".into(),
        ),
    ];
    for (args, code, want) in cases {
        let (got_code, out, err) = ctl(&lab, "node-1", args).await;
        println!("$ ambit ctl {}\n{err}(exit {got_code})", args.join(" "));
        assert_eq!(
            (got_code, out.as_str(), err.as_str()),
            (code, "", format!("{want}\n").as_str()),
            "{args:?}"
        );
    }
}

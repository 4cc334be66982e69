use std::time::Duration;

use super::*;
use crate::telemetry::format::tests::{T, capture};

fn id(s: &str) -> Identity {
    s.parse().unwrap()
}

fn base(direction: Direction) -> AccessRecord<'static> {
    AccessRecord {
        src_addr: "10.0.1.5:40000".parse().unwrap(),
        src_workload: None,
        src_namespace: None,
        src_identity: None,
        src_cluster: None,
        dst_addr: None,
        dst_hbone_addr: None,
        dst_service: None,
        dst_workload: None,
        dst_namespace: None,
        dst_identity: None,
        dst_cluster: None,
        direction,
        bytes_sent: 0,
        bytes_recv: 0,
        duration: Duration::from_millis(13),
        error: None,
        transport: None,
    }
}

#[test]
fn inbound_hbone_line() {
    let src_id = id("spiffe://cluster.local/ns/a/sa/client");
    let dst_id = id("spiffe://cluster.local/ns/b/sa/server");
    let hbone = Authority::Addr("10.0.2.7:8080".parse().unwrap());
    let (text, json) = capture(|| {
        AccessRecord {
            src_workload: Some("client-7d9f"),
            src_namespace: Some("a"),
            src_identity: Some(&src_id),
            src_cluster: Some("Kubernetes"),
            dst_addr: Some("10.0.2.7:15008".parse().unwrap()),
            dst_hbone_addr: Some(&hbone),
            dst_service: Some("server.b.svc.cluster.local"),
            dst_workload: Some("server-5c6b"),
            dst_namespace: Some("b"),
            dst_identity: Some(&dst_id),
            dst_cluster: Some("Kubernetes"),
            bytes_sent: 490,
            bytes_recv: 67,
            ..base(Direction::Inbound)
        }
        .write_complete()
    });
    assert_eq!(
        text,
        format!(
            "{T}\tinfo\taccess\tconnection complete\tsrc.addr=10.0.1.5:40000 \
             src.workload=\"client-7d9f\" src.namespace=\"a\" \
             src.identity=\"spiffe://cluster.local/ns/a/sa/client\" src.cluster=\"Kubernetes\" \
             dst.addr=10.0.2.7:15008 dst.hbone_addr=10.0.2.7:8080 \
             dst.service=\"server.b.svc.cluster.local\" dst.workload=\"server-5c6b\" \
             dst.namespace=\"b\" dst.identity=\"spiffe://cluster.local/ns/b/sa/server\" \
             dst.cluster=\"Kubernetes\" direction=\"inbound\" bytes_sent=490 bytes_recv=67 \
             duration=\"13ms\"\n"
        )
    );
    assert_eq!(
        json,
        format!(
            "{{\"level\":\"info\",\"time\":\"{T}\",\"scope\":\"access\",\
             \"message\":\"connection complete\",\"src.addr\":\"10.0.1.5:40000\",\
             \"src.workload\":\"client-7d9f\",\"src.namespace\":\"a\",\
             \"src.identity\":\"spiffe://cluster.local/ns/a/sa/client\",\
             \"src.cluster\":\"Kubernetes\",\"dst.addr\":\"10.0.2.7:15008\",\
             \"dst.hbone_addr\":\"10.0.2.7:8080\",\"dst.service\":\"server.b.svc.cluster.local\",\
             \"dst.workload\":\"server-5c6b\",\"dst.namespace\":\"b\",\
             \"dst.identity\":\"spiffe://cluster.local/ns/b/sa/server\",\
             \"dst.cluster\":\"Kubernetes\",\"direction\":\"inbound\",\"bytes_sent\":490,\
             \"bytes_recv\":67,\"duration\":\"13ms\"}}\n"
        )
    );
}

#[test]
fn outbound_hbone_line_over_quic_names_the_transport_last() {
    let src_id = id("spiffe://cluster.local/ns/a/sa/client");
    let dst_id = id("spiffe://cluster.local/ns/b/sa/server");
    let hbone = Authority::Addr("[fd00::7]:8080".parse().unwrap());
    let (text, json) = capture(|| {
        AccessRecord {
            src_workload: Some("client-7d9f"),
            src_namespace: Some("a"),
            src_identity: Some(&src_id),
            dst_addr: Some("[fd00::7]:15008".parse().unwrap()),
            dst_hbone_addr: Some(&hbone),
            dst_identity: Some(&dst_id),
            bytes_sent: 67,
            bytes_recv: 490,
            transport: Some(HboneTransportLabel::h3),
            ..base(Direction::Outbound)
        }
        .write_complete()
    });
    assert_eq!(
        text,
        format!(
            "{T}\tinfo\taccess\tconnection complete\tsrc.addr=10.0.1.5:40000 \
             src.workload=\"client-7d9f\" src.namespace=\"a\" \
             src.identity=\"spiffe://cluster.local/ns/a/sa/client\" \
             dst.addr=[fd00::7]:15008 dst.hbone_addr=[fd00::7]:8080 \
             dst.identity=\"spiffe://cluster.local/ns/b/sa/server\" direction=\"outbound\" \
             bytes_sent=67 bytes_recv=490 duration=\"13ms\" transport=\"h3\"\n"
        )
    );
    assert!(
        json.ends_with(
            "\"direction\":\"outbound\",\"bytes_sent\":67,\"bytes_recv\":490,\
             \"duration\":\"13ms\",\"transport\":\"h3\"}\n"
        ),
        "{json}"
    );
}

#[test]
fn plain_line_has_no_identities_nor_hbone_address() {
    let (text, json) = capture(|| {
        AccessRecord {
            dst_addr: Some("93.184.216.34:443".parse().unwrap()),
            bytes_sent: 5,
            bytes_recv: 0,
            duration: Duration::ZERO,
            ..base(Direction::Outbound)
        }
        .write_complete()
    });
    assert_eq!(
        text,
        format!(
            "{T}\tinfo\taccess\tconnection complete\tsrc.addr=10.0.1.5:40000 \
             dst.addr=93.184.216.34:443 direction=\"outbound\" bytes_sent=5 bytes_recv=0 \
             duration=\"0ms\"\n"
        )
    );
    assert_eq!(
        json,
        format!(
            "{{\"level\":\"info\",\"time\":\"{T}\",\"scope\":\"access\",\
             \"message\":\"connection complete\",\"src.addr\":\"10.0.1.5:40000\",\
             \"dst.addr\":\"93.184.216.34:443\",\"direction\":\"outbound\",\"bytes_sent\":5,\
             \"bytes_recv\":0,\"duration\":\"0ms\"}}\n"
        )
    );
}

#[test]
fn failed_lines() {
    let dst_id = id("spiffe://cluster.local/ns/b/sa/server");
    let (text, json) = capture(|| {
        AccessRecord {
            dst_addr: Some("10.0.2.7:8080".parse().unwrap()),
            dst_workload: Some("server-5c6b"),
            dst_namespace: Some("b"),
            dst_identity: Some(&dst_id),
            error: Some("connection denied by policy b/deny-all"),
            ..base(Direction::Inbound)
        }
        .write_complete();
        early_deny(
            "10.0.1.5:40001".parse().unwrap(),
            Some("10.0.2.7:15008".parse().unwrap()),
            Direction::Inbound,
            "TLS handshake: \"bad\" certificate",
            false,
        );
    });
    assert_eq!(
        text,
        format!(
            "{T}\terror\taccess\tconnection complete\tsrc.addr=10.0.1.5:40000 \
             dst.addr=10.0.2.7:8080 dst.workload=\"server-5c6b\" dst.namespace=\"b\" \
             dst.identity=\"spiffe://cluster.local/ns/b/sa/server\" direction=\"inbound\" \
             bytes_sent=0 bytes_recv=0 duration=\"13ms\" \
             error=\"connection denied by policy b/deny-all\"\n\
             {T}\twarn\taccess\tconnection failed\tsrc.addr=10.0.1.5:40001 \
             dst.addr=10.0.2.7:15008 direction=\"inbound\" \
             error=\"TLS handshake: \\\"bad\\\" certificate\"\n"
        )
    );
    let lines: Vec<&str> = json.lines().collect();
    assert_eq!(
        lines[1],
        format!(
            "{{\"level\":\"warn\",\"time\":\"{T}\",\"scope\":\"access\",\
             \"message\":\"connection failed\",\"src.addr\":\"10.0.1.5:40001\",\
             \"dst.addr\":\"10.0.2.7:15008\",\"direction\":\"inbound\",\
             \"error\":\"TLS handshake: \\\"bad\\\" certificate\"}}"
        )
    );
    assert!(
        lines[0].starts_with(&format!(
            "{{\"level\":\"error\",\"time\":\"{T}\",\"scope\":\"access\",\
             \"message\":\"connection complete\","
        )),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].ends_with(
            "\"duration\":\"13ms\",\"error\":\"connection denied by policy b/deny-all\"}"
        ),
        "{}",
        lines[0]
    );
}

// === Differential: the lines real ztunnel wrote, rebuilt and written by ambit ===

const ZTUNNEL_TEXT: &str = include_str!("../../../tests/data/compat/ztunnel-access-log.txt");
const ZTUNNEL_JSON: &str = include_str!("../../../tests/data/compat/ztunnel-access-log.jsonl");

/// A recorded line: its time, message, and fields by name (unquoted).
struct Recorded {
    time: String,
    message: String,
    fields: std::collections::HashMap<String, String>,
}

/// Splits `k=v k="quoted \" value" ...` (the text layout's fields).
fn text_fields(s: &str) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    let mut rest = s;
    while let Some((key, after)) = rest.split_once('=') {
        let (value, tail) = match after.strip_prefix('"') {
            Some(q) => {
                let mut v = String::new();
                let mut end = q.len();
                let mut chars = q.char_indices();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => v.extend(chars.next().map(|(_, c)| c)),
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        c => v.push(c),
                    }
                }
                (v, &q[end..])
            }
            None => {
                let end = after.find(' ').unwrap_or(after.len());
                (after[..end].to_string(), &after[end..])
            }
        };
        out.insert(key.trim().to_string(), value);
        rest = tail.trim_start();
    }
    out
}

fn recorded_text() -> Vec<Recorded> {
    ZTUNNEL_TEXT
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let parts: Vec<&str> = l.splitn(5, '\t').collect();
            Recorded {
                time: parts[0].to_string(),
                message: parts[3].to_string(),
                fields: text_fields(parts[4]),
            }
        })
        .collect()
}

fn recorded_json() -> Vec<Recorded> {
    ZTUNNEL_JSON
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let obj = v.as_object().unwrap();
            let text = |v: &serde_json::Value| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            Recorded {
                time: text(&obj["time"]),
                message: text(&obj["message"]),
                fields: obj.iter().map(|(k, v)| (k.clone(), text(v))).collect(),
            }
        })
        .collect()
}

/// Writes `r`'s connection the way ambit does, in both layouts, with `r`'s time.
fn rewrite(r: &Recorded) -> (String, String) {
    let f = |k: &str| r.fields.get(k).map(String::as_str);
    let ids = (
        f("src.identity").map(id),
        f("dst.identity").map(id),
        f("dst.hbone_addr").map(|a| a.parse::<Authority>().unwrap()),
    );
    let direction = match f("direction") {
        Some("inbound") => Direction::Inbound,
        _ => Direction::Outbound,
    };
    let rec = AccessRecord {
        src_addr: f("src.addr").unwrap().parse().unwrap(),
        src_workload: f("src.workload"),
        src_namespace: f("src.namespace"),
        src_identity: ids.0.as_ref(),
        src_cluster: f("src.cluster"),
        dst_addr: f("dst.addr").map(|a| a.parse().unwrap()),
        dst_hbone_addr: ids.2.as_ref(),
        dst_service: f("dst.service"),
        dst_workload: f("dst.workload"),
        dst_namespace: f("dst.namespace"),
        dst_identity: ids.1.as_ref(),
        dst_cluster: f("dst.cluster"),
        direction,
        bytes_sent: f("bytes_sent").map_or(0, |b| b.parse().unwrap()),
        bytes_recv: f("bytes_recv").map_or(0, |b| b.parse().unwrap()),
        duration: f("duration")
            .and_then(|d| d.strip_suffix("ms"))
            .map_or(Duration::ZERO, |ms| {
                Duration::from_millis(ms.parse().unwrap())
            }),
        error: f("error"),
        transport: None,
    };
    let (text, json) = capture(|| match r.message.as_str() {
        "connection opened" => rec.write_opened(),
        "connection complete" => rec.write_complete(),
        "connection failed" => early_deny(
            rec.src_addr,
            rec.dst_addr,
            direction,
            rec.error.unwrap(),
            false,
        ),
        other => panic!("unexpected message {other}"),
    });
    (text.replace(T, &r.time), json.replace(T, &r.time))
}

#[test]
fn ambit_writes_ztunnels_recorded_text_lines_byte_for_byte() {
    let want: Vec<&str> = ZTUNNEL_TEXT
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect();
    let recorded = recorded_text();
    assert_eq!(recorded.len(), 17);
    for (line, r) in want.iter().zip(&recorded) {
        assert_eq!(rewrite(r).0, format!("{line}\n"));
    }
}

#[test]
fn ambit_writes_ztunnels_recorded_json_lines_byte_for_byte() {
    let want: Vec<&str> = ZTUNNEL_JSON
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect();
    let recorded = recorded_json();
    assert_eq!(recorded.len(), 17);
    for (line, r) in want.iter().zip(&recorded) {
        assert_eq!(rewrite(r).1, format!("{line}\n"));
    }
}

#[test]
fn response_flags_follow_the_failure_class() {
    use crate::hbone::{ConnectStage, HboneError};
    let dst: std::net::SocketAddr = "10.0.2.7:15008".parse().unwrap();
    let at = |stage| hbone_flag(&HboneError::connect_at(dst, stage, "x"));
    assert_eq!(at(ConnectStage::Identity).as_str(), "IDENTITY_ERROR");
    assert_eq!(at(ConnectStage::Tcp).as_str(), "CONNECT");
    assert_eq!(at(ConnectStage::TcpTimeout).as_str(), "NETWORK_POLICY");
    assert_eq!(at(ConnectStage::Tls).as_str(), "TLS_FAILURE");
    let status = HboneError::Status(http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(hbone_flag(&status).as_str(), "CONNECT");
    assert_eq!(
        hbone_flag(&HboneError::ConnectionClosed).as_str(),
        "CONNECT"
    );
    let handshake = HboneError::Handshake(h2::Reason::PROTOCOL_ERROR.into());
    assert_eq!(hbone_flag(&handshake).as_str(), "H2_HANDSHAKE_FAILURE");
}

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

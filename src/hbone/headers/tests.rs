//! Round trips and malformed inputs for the HBONE request headers.

use super::*;

fn full_baggage() -> Baggage {
    Baggage {
        cluster: "Kubernetes".into(),
        namespace: "default".into(),
        workload_type: WorkloadType::Deployment,
        workload_name: "reviews-v1".into(),
        service_name: "reviews".into(),
        service_version: "v1".into(),
        region: "eu-west-1".into(),
        zone: "eu-west-1a".into(),
    }
}

#[test]
fn baggage_builds_in_ztunnel_order() {
    assert_eq!(
        full_baggage().to_string(),
        "k8s.cluster.name=Kubernetes,k8s.namespace.name=default,k8s.deployment.name=reviews-v1,\
         service.name=reviews,service.version=v1,cloud.region=eu-west-1,\
         cloud.availability_zone=eu-west-1a"
    );
}

#[test]
fn baggage_omits_empty_values() {
    let b = Baggage {
        namespace: "ns".into(),
        workload_type: WorkloadType::CronJob,
        workload_name: "nightly".into(),
        ..Baggage::default()
    };
    assert_eq!(
        b.to_string(),
        "k8s.namespace.name=ns,k8s.cronjob.name=nightly"
    );
    assert_eq!(Baggage::default().to_string(), "");
}

#[test]
fn baggage_round_trips_every_workload_type() {
    for t in [
        WorkloadType::Deployment,
        WorkloadType::CronJob,
        WorkloadType::Pod,
        WorkloadType::Job,
    ] {
        let b = Baggage {
            workload_type: t,
            ..full_baggage()
        };
        assert_eq!(b.to_string().parse::<Baggage>().unwrap(), b, "{t:?}");
    }
}

#[test]
fn baggage_parse_is_lenient() {
    let b: Baggage = " k8s.namespace.name = ns ,garbage,foo=bar,service.name=svc;prop=1,=x,"
        .parse()
        .unwrap();
    assert_eq!(
        b,
        Baggage {
            namespace: "ns".into(),
            service_name: "svc".into(),
            ..Baggage::default()
        }
    );
    assert_eq!("".parse::<Baggage>().unwrap(), Baggage::default());
}

#[test]
fn forwarded_round_trips() {
    for f in [
        Forwarded {
            for_addr: "10.0.0.1:4567".parse().unwrap(),
            host: None,
        },
        Forwarded {
            for_addr: "[fd00::1]:80".parse().unwrap(),
            host: Some("reviews.default.svc.cluster.local".into()),
        },
        Forwarded {
            for_addr: "10.0.0.1:1".parse().unwrap(),
            host: Some("odd \"host\"".into()),
        },
    ] {
        let s = f.to_string();
        assert_eq!(s.parse::<Forwarded>().unwrap(), f, "{s}");
    }
    assert_eq!(
        Forwarded {
            for_addr: "1.2.3.4:5".parse().unwrap(),
            host: Some("svc.ns".into()),
        }
        .to_string(),
        "for=\"1.2.3.4:5\";host=svc.ns"
    );
}

#[test]
fn forwarded_parses_first_element_and_ignores_other_params() {
    let f: Forwarded = "For=\"1.2.3.4:5\"; proto=https;host=\"a.b\", for=\"9.9.9.9:9\""
        .parse()
        .unwrap();
    assert_eq!(f.for_addr, "1.2.3.4:5".parse::<SocketAddr>().unwrap());
    assert_eq!(f.host.as_deref(), Some("a.b"));
}

#[test]
fn forwarded_rejects_malformed() {
    for (s, reason) in [
        ("", "missing for="),
        ("host=a.b", "missing for="),
        ("for=1.2.3.4", "for= is not an ip:port"),
        ("for=\"unknown\"", "for= is not an ip:port"),
        ("for=\"1.2.3.4:5", "bad quoted value"),
        ("for=\"1.2.3.4:5\"x", "bad quoted value"),
        ("for", "parameter without '='"),
    ] {
        assert_eq!(
            s.parse::<Forwarded>(),
            Err(HeaderError {
                header: "forwarded",
                value: s.into(),
                reason
            }),
            "{s:?}"
        );
    }
}

#[test]
fn traceparent_round_trips() {
    let t = TraceParent::new(0x0af7651916cd43dd8448eb211c80319c, 0xb7ad6b7169203331);
    assert_eq!(
        t.to_string(),
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
    );
    assert_eq!(t.to_string().parse::<TraceParent>().unwrap(), t);
    // Sampled flag and surrounding whitespace are accepted.
    let sampled: TraceParent = " 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01 "
        .parse()
        .unwrap();
    assert_eq!(sampled, t);
}

#[test]
fn traceparent_random_is_valid_and_fresh() {
    let a = TraceParent::random();
    let b = TraceParent::random();
    assert_ne!(a, b);
    assert_ne!(a.trace_id(), 0);
    assert_ne!(a.parent_id(), 0);
    assert_eq!(a.to_string().parse::<TraceParent>().unwrap(), a);
}

#[test]
fn traceparent_rejects_malformed() {
    let id = "0af7651916cd43dd8448eb211c80319c";
    let parent = "b7ad6b7169203331";
    for (s, reason) in [
        (String::new(), "expected version-traceid-parentid-flags"),
        (
            format!("00-{id}-{parent}"),
            "expected version-traceid-parentid-flags",
        ),
        (format!("ff-{id}-{parent}-00"), "bad version"),
        (format!("0-{id}-{parent}-00"), "bad version"),
        (
            format!("00-{id}-{parent}-00-extra"),
            "extra fields for version 00",
        ),
        (
            format!("00-{id}0-{parent}-00"),
            "field of wrong width or not hex",
        ),
        (
            format!("00-+{}-{parent}-00", &id[1..]),
            "field of wrong width or not hex",
        ),
        (
            format!("00-{id}-{}g-00", &parent[1..]),
            "field of wrong width or not hex",
        ),
        (
            format!("00-{id}-{parent}-0"),
            "field of wrong width or not hex",
        ),
        (format!("00-{}-{parent}-00", "0".repeat(32)), "all-zero id"),
        (format!("00-{id}-{}-00", "0".repeat(16)), "all-zero id"),
    ] {
        assert_eq!(
            s.parse::<TraceParent>(),
            Err(HeaderError {
                header: "traceparent",
                value: s.clone(),
                reason
            }),
            "{s:?}"
        );
    }
    // A later version may append fields.
    assert!(
        format!("01-{id}-{parent}-00-extra")
            .parse::<TraceParent>()
            .is_ok()
    );
}

#[test]
fn connect_headers_write_and_read_back() {
    let headers = ConnectHeaders {
        baggage: Some(full_baggage()),
        forwarded: Some(Forwarded {
            for_addr: "10.1.2.3:40000".parse().unwrap(),
            host: Some("reviews.default.svc.cluster.local".into()),
        }),
        traceparent: Some(TraceParent::random()),
        forwarded_network: Some("network-1".into()),
    };
    let mut map = HeaderMap::new();
    headers.write_to(&mut map).unwrap();
    assert_eq!(map.len(), 4);
    assert_eq!(map[&X_FORWARDED_NETWORK], "network-1");
    assert_eq!(ConnectHeaders::from_map(&map), headers);

    // Absent and malformed headers read as None rather than failing.
    let mut bad = HeaderMap::new();
    bad.insert(FORWARDED.clone(), HeaderValue::from_static("for=nowhere"));
    bad.insert(TRACEPARENT.clone(), HeaderValue::from_static("00-zz"));
    bad.insert(X_FORWARDED_NETWORK.clone(), HeaderValue::from_static(" "));
    assert_eq!(ConnectHeaders::from_map(&bad), ConnectHeaders::default());
}

#[test]
fn bad_header_bytes_fail_to_write() {
    let headers = ConnectHeaders {
        baggage: Some(Baggage {
            namespace: "a\nb".into(),
            ..Baggage::default()
        }),
        ..ConnectHeaders::default()
    };
    assert!(headers.write_to(&mut HeaderMap::new()).is_err());
}

// Found by the `hbone_headers` fuzz target: a quoted host holding `,` or `;` was written
// quoted but split at the separator when read, so the header did not parse back.
#[test]
fn forwarded_quoted_separators_round_trip() {
    for host in ["a,b", "a;b", "x\",for=\"9.9.9.9:9", "a\\,b;c"] {
        let f = Forwarded {
            for_addr: "10.0.0.1:1".parse().unwrap(),
            host: Some(host.into()),
        };
        let s = f.to_string();
        assert_eq!(s.parse::<Forwarded>(), Ok(f), "{s}");
    }
    let f: Forwarded = "for=\"1.2.3.4:5\";host=\"a,b;c\", for=\"9.9.9.9:9\""
        .parse()
        .unwrap();
    assert_eq!(f.host.as_deref(), Some("a,b;c"));
    assert_eq!(f.for_addr, "1.2.3.4:5".parse::<SocketAddr>().unwrap());
}

// Found by the `hbone_headers` fuzz target: `k8s.pod.name=` (no name) left the kind set to
// Pod, which the writer drops with the empty name, so parse → write → parse changed the value.
#[test]
fn baggage_empty_workload_name_has_no_kind() {
    let b: Baggage = "k8s.pod.name=,k8s.namespace.name=ns".parse().unwrap();
    assert_eq!(
        b,
        Baggage {
            namespace: "ns".into(),
            ..Baggage::default()
        }
    );
    assert_eq!(b.to_string().parse::<Baggage>().unwrap(), b);
}

use super::*;

pub(crate) fn proto_workload(uid: &str, ip: [u8; 4]) -> pw::Workload {
    pw::Workload {
        uid: uid.into(),
        name: format!("{uid}-name"),
        namespace: "default".into(),
        service_account: "sa".into(),
        addresses: vec![ip.to_vec()],
        tunnel_protocol: pw::TunnelProtocol::Hbone as i32,
        services: [(
            "default/svc.default.svc.cluster.local".to_string(),
            pw::PortList {
                ports: vec![pw::Port {
                    service_port: 80,
                    target_port: 8080,
                    app_protocol: 0,
                }],
            },
        )]
        .into(),
        workload_type: pw::WorkloadType::Pod as i32,
        ..Default::default()
    }
}

#[test]
fn workload_converts() {
    let w = Workload::try_from(proto_workload("w1", [10, 0, 0, 1])).unwrap();
    assert_eq!(w.uid, "w1");
    assert_eq!(
        w.identity().to_string(),
        "spiffe://cluster.local/ns/default/sa/sa"
    );
    assert_eq!(w.workload_ips, vec![IpAddr::from([10, 0, 0, 1])]);
    assert_eq!(w.protocol, TunnelProtocol::Hbone);
    assert_eq!(w.workload_type, "pod");
    assert_eq!(w.capacity, 1);
    assert_eq!(
        w.services["default/svc.default.svc.cluster.local"][&80],
        8080
    );
}

#[test]
fn workload_errors_name_resource_and_field() {
    let mut p = proto_workload("w1", [10, 0, 0, 1]);
    p.addresses.push(vec![1, 2, 3]);
    let e = Workload::try_from(p).unwrap_err();
    assert_eq!(
        e.to_string(),
        "workload \"w1\": addresses[1]: IP address must be 4 or 16 bytes, got 3"
    );

    let mut p = proto_workload("", [10, 0, 0, 1]);
    p.name = "pod".into();
    let e = Workload::try_from(p).unwrap_err();
    assert_eq!(e.resource, "workload \"default/pod\"");
    assert_eq!((e.field.as_str(), &e.problem), ("uid", &Problem::Missing));

    let mut p = proto_workload("w1", [10, 0, 0, 1]);
    p.status = 7;
    assert_eq!(
        Workload::try_from(p).unwrap_err().to_string(),
        "workload \"w1\": status: unknown enum value 7"
    );

    let mut p = proto_workload("w1", [10, 0, 0, 1]);
    p.services
        .insert("nohost".into(), pw::PortList { ports: vec![] });
    assert!(matches!(
        Workload::try_from(p).unwrap_err().problem,
        Problem::BadKey { .. }
    ));

    let mut p = proto_workload("w1", [10, 0, 0, 1]);
    p.services.values_mut().next().unwrap().ports[0].service_port = 70000;
    let e = Workload::try_from(p).unwrap_err();
    assert_eq!(e.problem, Problem::Port(70000));
    assert!(e.field.ends_with("ports[0].servicePort"), "{}", e.field);
}

#[test]
fn service_and_gateway() {
    let p = pw::Service {
        name: "svc".into(),
        namespace: "default".into(),
        hostname: "svc.default.svc.cluster.local".into(),
        addresses: vec![pw::NetworkAddress {
            network: "".into(),
            address: vec![10, 96, 0, 1],
            length: None,
        }],
        ports: vec![pw::Port {
            service_port: 80,
            target_port: 0,
            app_protocol: 0,
        }],
        waypoint: Some(pw::GatewayAddress {
            destination: Some(pw::gateway_address::Destination::Hostname(
                pw::NamespacedHostname {
                    namespace: "default".into(),
                    hostname: "wp.default.svc.cluster.local".into(),
                },
            )),
            hbone_mtls_port: 0,
        }),
        ..Default::default()
    };
    let s = Service::try_from(p.clone()).unwrap();
    assert_eq!(s.key(), "default/svc.default.svc.cluster.local");
    assert_eq!(s.vips[0].to_string(), "/10.96.0.1");
    assert_eq!(s.ports[&80], 0);
    assert_eq!(s.waypoint.unwrap().hbone_mtls_port, 15008);

    // A prefix shorter than a host makes a CIDR VIP; a host-length one stays exact.
    let mut ranged = p.clone();
    ranged.addresses[0].length = Some(16);
    ranged.addresses.push(pw::NetworkAddress {
        network: "net2".into(),
        address: vec![10, 96, 0, 2],
        length: Some(32),
    });
    let r = Service::try_from(ranged).unwrap();
    assert_eq!(
        r.cidr_vips
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>(),
        vec!["/10.96.0.1/16"]
    );
    assert_eq!(r.vips[0].to_string(), "net2/10.96.0.2");

    let mut bad = p;
    bad.addresses[0].length = Some(33);
    let e = Service::try_from(bad).unwrap_err();
    assert_eq!(e.field, "addresses[0].length");
    assert!(matches!(e.problem, Problem::BadCidr(_)));
}

pub(crate) fn proto_policy() -> ps::Authorization {
    ps::Authorization {
        name: "allow".into(),
        namespace: "default".into(),
        scope: ps::Scope::Namespace as i32,
        action: ps::Action::Allow as i32,
        rules: vec![ps::Rule {
            clauses: vec![ps::Clause {
                matches: vec![ps::Match {
                    source_ips: vec![ps::Address {
                        address: vec![10, 0, 0, 0],
                        length: 8,
                    }],
                    destination_ports: vec![80],
                    principals: vec![ps::StringMatch {
                        match_type: Some(ps::string_match::MatchType::Presence(())),
                    }],
                    ..Default::default()
                }],
            }],
        }],
        ..Default::default()
    }
}

#[test]
fn authorization_converts_and_rejects() {
    let a = Authorization::try_from(proto_policy()).unwrap();
    assert_eq!(a.key(), "default/allow");
    let m = &a.rules[0].clauses[0].matches[0];
    assert_eq!(m.source_ips[0].to_string(), "10.0.0.0/8");
    assert_eq!(m.principals, vec![StringMatch::Presence]);

    let mut p = proto_policy();
    p.rules[0].clauses[0].matches[0].source_ips[0].length = 40;
    let e = Authorization::try_from(p).unwrap_err();
    assert_eq!(
        e.to_string(),
        "authorization \"default/allow\": rules[0].clauses[0].matches[0].sourceIps[0]: \
         prefix length 40 is too long for 10.0.0.0 (max 32)"
    );

    let mut p = proto_policy();
    p.action = 9;
    assert_eq!(
        Authorization::try_from(p).unwrap_err().problem,
        Problem::UnknownEnum(9)
    );
}

#[test]
fn weighted_waypoints_convert_and_bad_entries_are_named() {
    let addr = |last: u8| pw::GatewayAddress {
        destination: Some(pw::gateway_address::Destination::Address(
            pw::NetworkAddress {
                network: "".into(),
                address: vec![10, 0, 0, last],
                length: None,
            },
        )),
        hbone_mtls_port: 15009,
    };
    let p = pw::Service {
        name: "svc".into(),
        namespace: "default".into(),
        hostname: "svc.default.svc.cluster.local".into(),
        weighted_waypoints: vec![
            pw::WeightedWaypoint {
                destination: Some(addr(1)),
                weight: 3,
            },
            pw::WeightedWaypoint {
                destination: Some(addr(2)),
                weight: 0,
            },
        ],
        ..Default::default()
    };
    let s = Service::try_from(p.clone()).unwrap();
    let got: Vec<(String, u16, u32)> = s
        .weighted_waypoints
        .iter()
        .map(|w| {
            (
                w.destination.destination.to_string(),
                w.destination.hbone_mtls_port,
                w.weight,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("/10.0.0.1".to_string(), 15009, 3),
            ("/10.0.0.2".to_string(), 15009, 0)
        ]
    );

    // An entry without a destination, or with a bad one, is a NACK naming the entry.
    let mut missing = p.clone();
    missing.weighted_waypoints[1].destination = None;
    let e = Service::try_from(missing).unwrap_err();
    assert_eq!(e.field, "weightedWaypoints[1].destination");
    assert_eq!(e.problem, Problem::Missing);
    assert_eq!(
        e.to_string(),
        "service \"default/svc.default.svc.cluster.local\": weightedWaypoints[1].destination: \
         required field is missing or empty"
    );
    let mut bad_ip = p.clone();
    if let Some(g) = bad_ip.weighted_waypoints[0].destination.as_mut() {
        g.destination = Some(pw::gateway_address::Destination::Address(
            pw::NetworkAddress {
                network: "".into(),
                address: vec![1, 2, 3],
                length: None,
            },
        ));
    }
    let e = Service::try_from(bad_ip).unwrap_err();
    assert_eq!(e.field, "weightedWaypoints[0].destination.address.address");
    assert_eq!(e.problem, Problem::IpLength(3));
    let mut bad_port = p;
    if let Some(g) = bad_port.weighted_waypoints[0].destination.as_mut() {
        g.hbone_mtls_port = 70_000;
    }
    let e = Service::try_from(bad_port).unwrap_err();
    assert_eq!(e.field, "weightedWaypoints[0].destination.hboneMtlsPort");
    assert_eq!(e.problem, Problem::Port(70_000));
}

//! Wire-compatibility tests for ambit-proto: they pin the field numbers and encodings
//! that must match Istio's and Envoy's by asserting exact bytes, decode hand-built
//! packets as a peer would send them, and round-trip resources through
//! `prost_types::Any` with the type URLs the control plane uses.
//!
//! Key byte = (field number << 3) | wire type (0 = varint, 2 = length-delimited),
//! varint-encoded; so field 20 / type 2 is `0xa2 0x01`.

use ambit_proto::envoy::config::core::v3::Node;
use ambit_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use ambit_proto::google::rpc::Status;
use ambit_proto::istio::security::{
    self, Authorization, Clause, Match, Rule, ServiceAccountMatch, StringMatch, string_match,
};
use ambit_proto::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
use ambit_proto::istio::workload::zds::{
    Ack, AddWorkload, DelWorkload, KeepWorkload, SnapshotSent, Version, WorkloadInfo,
    WorkloadRequest, WorkloadResponse, ZdsHello, workload_request, workload_response,
};
use ambit_proto::istio::workload::{
    self, Address, AppProtocol, GatewayAddress, NetworkAddress, Port, PortList, Service,
    ServiceVisibility, TunnelProtocol, WeightedWaypoint, Workload, address, gateway_address,
};
use ambit_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use prost::{Message, Name};

fn uid_workload(uid: &str) -> Workload {
    Workload {
        uid: uid.to_owned(),
        ..Default::default()
    }
}

// === istio.workload ===

#[test]
fn workload_uid_is_field_20() {
    assert_eq!(uid_workload("u").encode_to_vec(), [0xa2, 0x01, 0x01, b'u']);
}

#[test]
fn workload_hostname_and_services_fields() {
    let w = Workload {
        hostname: "h".into(),
        ..Default::default()
    };
    assert_eq!(w.encode_to_vec(), [0xaa, 0x01, 0x01, b'h']);

    // services = 22, a map entry is {key = 1, value = 2}.
    let mut w = Workload::default();
    w.services.insert(
        "k".into(),
        PortList {
            ports: vec![Port {
                service_port: 80,
                target_port: 8080,
                app_protocol: AppProtocol::Http2 as i32,
            }],
        },
    );
    let port = [0x08, 80, 0x10, 0x90, 0x3f, 0x18, 0x02];
    let mut port_list = vec![0x0a, port.len() as u8];
    port_list.extend_from_slice(&port);
    let mut entry = vec![0x0a, 0x01, b'k', 0x12, port_list.len() as u8];
    entry.extend_from_slice(&port_list);
    let mut expected = vec![0xb2, 0x01, entry.len() as u8];
    expected.extend_from_slice(&entry);
    assert_eq!(w.encode_to_vec(), expected);
}

#[test]
fn workload_capacity_is_a_wrapper_that_keeps_presence() {
    // capacity = 27 (UInt32Value): an explicit 0 must stay distinguishable from unset.
    let zero = Workload {
        capacity: Some(0),
        ..Default::default()
    };
    assert_eq!(zero.encode_to_vec(), [0xda, 0x01, 0x00]);
    let three = Workload {
        capacity: Some(3),
        ..Default::default()
    };
    assert_eq!(three.encode_to_vec(), [0xda, 0x01, 0x02, 0x08, 0x03]);
    assert_eq!(Workload::default().encode_to_vec(), Vec::<u8>::new());
    assert_eq!(
        Workload::decode(&[0xda, 0x01, 0x00][..]).unwrap().capacity,
        Some(0)
    );
}

#[test]
fn workload_scalar_fields_and_enums() {
    let w = Workload {
        addresses: vec![vec![10, 0, 0, 1]],
        tunnel_protocol: TunnelProtocol::Hbone as i32,
        network_mode: workload::NetworkMode::HostNetwork as i32,
        ..Default::default()
    };
    assert_eq!(
        w.encode_to_vec(),
        [0x1a, 0x04, 10, 0, 0, 1, 0x28, 0x01, 0xc8, 0x01, 0x01]
    );
    assert_eq!(TunnelProtocol::LegacyIstioMtls as i32, 2);
    assert_eq!(workload::WorkloadType::Job as i32, 3);
    assert_eq!(workload::IpFamilies::Dual as i32, 3);
    assert_eq!(AppProtocol::Tls as i32, 5);
    assert_eq!(workload::load_balancing::Scope::Network as i32, 6);
    assert_eq!(workload::load_balancing::Mode::Passthrough as i32, 3);
    assert_eq!(workload::load_balancing::HealthPolicy::AllowAll as i32, 1);
    assert_eq!(workload::application_tunnel::Protocol::Proxy as i32, 1);
}

#[test]
fn service_fields() {
    let s = Service {
        visibility: ServiceVisibility::Namespace as i32,
        ingress_use_waypoint: true,
        weighted_waypoints: vec![WeightedWaypoint {
            destination: None,
            weight: 7,
        }],
        ..Default::default()
    };
    assert_eq!(
        s.encode_to_vec(),
        [0x60, 0x01, 0x6a, 0x02, 0x10, 0x07, 0x70, 0x01]
    );
}

#[test]
fn gateway_and_network_address() {
    let g = GatewayAddress {
        destination: Some(gateway_address::Destination::Address(NetworkAddress {
            network: String::new(),
            address: vec![10, 0, 0, 2],
            length: Some(0),
        })),
        hbone_mtls_port: 15008,
    };
    // address = 2 {address = 2, explicit length = 3 of 0}, hbone_mtls_port = 3.
    assert_eq!(
        g.encode_to_vec(),
        [
            0x12, 0x08, 0x12, 0x04, 10, 0, 0, 2, 0x18, 0x00, 0x18, 0xa0, 0x75
        ]
    );
}

#[test]
fn decode_hand_built_address() {
    // Address{workload = 1: Workload{uid = 20 "a", name = 1 "p", namespace = 2 "n",
    // addresses = 3 [1.2.3.4], trust_domain = 6 "t", service_account = 7 "s"}}.
    let inner = [
        0xa2, 0x01, 0x01, b'a', 0x0a, 0x01, b'p', 0x12, 0x01, b'n', 0x1a, 0x04, 1, 2, 3, 4, 0x32,
        0x01, b't', 0x3a, 0x01, b's',
    ];
    let mut bytes = vec![0x0a, inner.len() as u8];
    bytes.extend_from_slice(&inner);
    let addr = Address::decode(bytes.as_slice()).unwrap();
    let Some(address::Type::Workload(w)) = addr.r#type else {
        panic!("expected a workload, got {addr:?}");
    };
    assert_eq!(w.uid, "a");
    assert_eq!(w.name, "p");
    assert_eq!(w.namespace, "n");
    assert_eq!(w.addresses, vec![vec![1, 2, 3, 4]]);
    assert_eq!(w.trust_domain, "t");
    assert_eq!(w.service_account, "s");

    // Address{service = 2: Service{hostname = 3 "h"}}.
    let svc = Address::decode(&[0x12, 0x03, 0x1a, 0x01, b'h'][..]).unwrap();
    assert!(matches!(svc.r#type, Some(address::Type::Service(s)) if s.hostname == "h"));
}

#[test]
fn address_round_trips_through_any() {
    let mut w = uid_workload("cluster/pod/ns/name");
    w.addresses = vec![vec![10, 1, 2, 3], vec![0xfd; 16]];
    w.capacity = Some(2);
    let addr = Address {
        r#type: Some(address::Type::Workload(w)),
    };
    assert_eq!(Address::type_url(), ADDRESS_TYPE_URL);

    let any = prost_types::Any::from_msg(&addr).unwrap();
    assert_eq!(any.type_url, ADDRESS_TYPE_URL);
    assert_eq!(any.value, addr.encode_to_vec());
    // Re-encode the Any itself, as it travels inside Resource.resource.
    let wire = any.encode_to_vec();
    let back: Address = prost_types::Any::decode(wire.as_slice())
        .unwrap()
        .to_msg()
        .unwrap();
    assert_eq!(back, addr);
}

// === istio.security ===

#[test]
fn authorization_fields() {
    assert_eq!(Authorization::type_url(), AUTHORIZATION_TYPE_URL);
    let policy = Authorization {
        name: "p".into(),
        action: security::Action::Deny as i32,
        scope: security::Scope::WorkloadSelector as i32,
        dry_run: true,
        rules: vec![Rule {
            clauses: vec![Clause {
                matches: vec![Match {
                    destination_ports: vec![80],
                    service_accounts: vec![ServiceAccountMatch {
                        namespace: "n".into(),
                        service_account: "s".into(),
                    }],
                    ..Default::default()
                }],
            }],
        }],
        ..Default::default()
    };
    // Match: destination_ports = 9 (packed), service_accounts = 11.
    let m = [
        0x4a, 0x01, 80, 0x5a, 0x06, 0x0a, 0x01, b'n', 0x12, 0x01, b's',
    ];
    let mut clause = vec![0x12, m.len() as u8];
    clause.extend_from_slice(&m);
    let mut rule = vec![0x0a, clause.len() as u8];
    rule.extend_from_slice(&clause);
    let mut expected = vec![
        0x0a,
        0x01,
        b'p',
        0x18,
        0x02,
        0x20,
        0x01,
        0x2a,
        rule.len() as u8,
    ];
    expected.extend_from_slice(&rule);
    expected.extend_from_slice(&[0x30, 0x01]);
    assert_eq!(policy.encode_to_vec(), expected);
}

#[test]
fn string_match_presence_is_field_4_empty() {
    let presence = StringMatch {
        match_type: Some(string_match::MatchType::Presence(())),
    };
    assert_eq!(presence.encode_to_vec(), [0x22, 0x00]);
    let decoded = StringMatch::decode(&[0x22, 0x00][..]).unwrap();
    assert_eq!(decoded, presence);
    let suffix = StringMatch::decode(&[0x1a, 0x01, b'x'][..]).unwrap();
    assert_eq!(
        suffix.match_type,
        Some(string_match::MatchType::Suffix("x".into()))
    );
}

#[test]
fn decode_hand_built_match_with_ips() {
    // Match{not_source_ips = 6: Address{address = 1 [10,0,0,0], length = 2 8},
    //       not_destination_ports = 10 packed [443], principals = 3 exact "a"}.
    let bytes = [
        0x32, 0x08, 0x0a, 0x04, 10, 0, 0, 0, 0x10, 0x08, 0x52, 0x02, 0xbb, 0x03, 0x1a, 0x03, 0x0a,
        0x01, b'a',
    ];
    let m = Match::decode(&bytes[..]).unwrap();
    assert_eq!(m.not_source_ips.len(), 1);
    assert_eq!(m.not_source_ips[0].address, vec![10, 0, 0, 0]);
    assert_eq!(m.not_source_ips[0].length, 8);
    assert_eq!(m.not_destination_ports, vec![443]);
    assert_eq!(
        m.principals[0].match_type,
        Some(string_match::MatchType::Exact("a".into()))
    );
}

// === istio.workload.zds ===

#[test]
fn zds_field_numbers() {
    let del = DelWorkload { uid: "p".into() };
    assert_eq!(del.encode_to_vec(), [0x12, 0x01, b'p']);

    let keep = WorkloadRequest {
        payload: Some(workload_request::Payload::Keep(KeepWorkload {
            uid: "k".into(),
        })),
    };
    assert_eq!(keep.encode_to_vec(), [0x2a, 0x03, 0x0a, 0x01, b'k']);

    let del = WorkloadRequest {
        payload: Some(workload_request::Payload::Del(del)),
    };
    assert_eq!(del.encode_to_vec(), [0x12, 0x03, 0x12, 0x01, b'p']);

    let snap = WorkloadRequest {
        payload: Some(workload_request::Payload::SnapshotSent(SnapshotSent {})),
    };
    assert_eq!(snap.encode_to_vec(), [0x1a, 0x00]);

    let hello = ZdsHello {
        version: Version::V1 as i32,
    };
    assert_eq!(hello.encode_to_vec(), [0x08, 0x01]);

    // A positive ack still carries the (empty) Ack message: the agent keys on it.
    let ack = WorkloadResponse {
        payload: Some(workload_response::Payload::Ack(Ack::default())),
    };
    assert_eq!(ack.encode_to_vec(), [0x0a, 0x00]);
    let nack = WorkloadResponse {
        payload: Some(workload_response::Payload::Ack(Ack { error: "e".into() })),
    };
    assert_eq!(nack.encode_to_vec(), [0x0a, 0x03, 0x0a, 0x01, b'e']);
}

#[test]
fn decode_hand_built_add_workload() {
    // WorkloadRequest{add = 1: AddWorkload{uid = 1 "u", workload_info = 2:
    //   WorkloadInfo{name = 1 "n", namespace = 2 "ns", service_account = 3 "sa",
    //   reserved field 4 "td" (must be skipped)}}}.
    let info = [
        0x0a, 0x01, b'n', 0x12, 0x02, b'n', b's', 0x1a, 0x02, b's', b'a', 0x22, 0x02, b't', b'd',
    ];
    let mut add = vec![0x0a, 0x01, b'u', 0x12, info.len() as u8];
    add.extend_from_slice(&info);
    let mut bytes = vec![0x0a, add.len() as u8];
    bytes.extend_from_slice(&add);

    let req = WorkloadRequest::decode(bytes.as_slice()).unwrap();
    let expected = WorkloadRequest {
        payload: Some(workload_request::Payload::Add(AddWorkload {
            uid: "u".into(),
            workload_info: Some(WorkloadInfo {
                name: "n".into(),
                namespace: "ns".into(),
                service_account: "sa".into(),
            }),
        })),
    };
    assert_eq!(req, expected);
}

// === envoy.service.discovery.v3 / google.rpc ===

#[test]
fn delta_request_field_numbers() {
    let ack = DeltaDiscoveryRequest {
        type_url: "t".into(),
        response_nonce: "n".into(),
        ..Default::default()
    };
    assert_eq!(ack.encode_to_vec(), [0x12, 0x01, b't', 0x32, 0x01, b'n']);

    let nack = DeltaDiscoveryRequest {
        error_detail: Some(Status {
            code: 0,
            message: "x".into(),
            details: vec![],
        }),
        ..Default::default()
    };
    assert_eq!(nack.encode_to_vec(), [0x3a, 0x03, 0x12, 0x01, b'x']);

    let mut sub = DeltaDiscoveryRequest {
        node: Some(Node {
            id: "i".into(),
            cluster: "c".into(),
            ..Default::default()
        }),
        resource_names_subscribe: vec!["*".into()],
        resource_names_unsubscribe: vec!["*".into()],
        ..Default::default()
    };
    sub.initial_resource_versions.insert("r".into(), "v".into());
    assert_eq!(
        sub.encode_to_vec(),
        [
            0x0a, 0x06, 0x0a, 0x01, b'i', 0x12, 0x01, b'c', // node = 1 {id = 1, cluster = 2}
            0x1a, 0x01, b'*', // resource_names_subscribe = 3
            0x22, 0x01, b'*', // resource_names_unsubscribe = 4
            0x2a, 0x06, 0x0a, 0x01, b'r', 0x12, 0x01, b'v', // initial_resource_versions = 5
        ]
    );
}

#[test]
fn node_metadata_is_a_struct() {
    let mut fields = std::collections::BTreeMap::new();
    fields.insert(
        "K".to_owned(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue("v".into())),
        },
    );
    let node = Node {
        metadata: Some(prost_types::Struct { fields }),
        ..Default::default()
    };
    // metadata = 3: Struct{fields = 1: entry{key = 1 "K", value = 2: Value{string = 3 "v"}}}.
    assert_eq!(
        node.encode_to_vec(),
        [
            0x1a, 0x0a, 0x0a, 0x08, 0x0a, 0x01, b'K', 0x12, 0x03, 0x1a, 0x01, b'v'
        ]
    );
}

#[test]
fn decode_hand_built_delta_response() {
    // DeltaDiscoveryResponse{system_version_info = 1 "s", resources = 2: [Resource{
    //   version = 1 "1", resource = 2: Any{type_url = 1 "t", value = 2 [0x08]},
    //   name = 3 "w", aliases = 4 "a"}], type_url = 4 "t", nonce = 5 "n",
    //   removed_resources = 6 "gone"}.
    let any = [0x0a, 0x01, b't', 0x12, 0x01, 0x08];
    let mut res = vec![0x0a, 0x01, b'1', 0x12, any.len() as u8];
    res.extend_from_slice(&any);
    res.extend_from_slice(&[0x1a, 0x01, b'w', 0x22, 0x01, b'a']);
    let mut bytes = vec![0x0a, 0x01, b's', 0x12, res.len() as u8];
    bytes.extend_from_slice(&res);
    bytes.extend_from_slice(&[0x22, 0x01, b't', 0x2a, 0x01, b'n']);
    bytes.extend_from_slice(&[0x32, 0x04, b'g', b'o', b'n', b'e']);

    let resp = DeltaDiscoveryResponse::decode(bytes.as_slice()).unwrap();
    let expected = DeltaDiscoveryResponse {
        system_version_info: "s".into(),
        resources: vec![Resource {
            version: "1".into(),
            resource: Some(prost_types::Any {
                type_url: "t".into(),
                value: vec![0x08],
            }),
            name: "w".into(),
            aliases: vec!["a".into()],
            ttl: None,
        }],
        type_url: "t".into(),
        nonce: "n".into(),
        removed_resources: vec!["gone".into()],
        control_plane: None,
    };
    assert_eq!(resp, expected);
}

#[test]
fn unknown_fields_are_skipped() {
    // A Node carrying Envoy fields we omit (user_agent_build_version = 8, extensions = 9)
    // still decodes: ambit must tolerate a richer peer.
    let bytes = [0x0a, 0x01, b'i', 0x42, 0x00, 0x4a, 0x02, 0x0a, 0x00];
    let node = Node::decode(&bytes[..]).unwrap();
    assert_eq!(node.id, "i");
}

// === istio.v1.auth ===

#[test]
fn certificate_request_field_numbers() {
    let req = IstioCertificateRequest {
        csr: "c".into(),
        validity_duration: 86_400,
        metadata: None,
    };
    // csr = 1, validity_duration = 3 (varint 86400 = 0x80 0xa3 0x05).
    assert_eq!(
        req.encode_to_vec(),
        [0x0a, 0x01, b'c', 0x18, 0x80, 0xa3, 0x05]
    );

    let resp = IstioCertificateResponse::decode(&[0x0a, 0x01, b'l', 0x0a, 0x01, b'r'][..]).unwrap();
    assert_eq!(resp.cert_chain, vec!["l".to_owned(), "r".to_owned()]);
}

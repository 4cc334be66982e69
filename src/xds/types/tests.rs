use ambit_proto::istio::workload as pw;
use ambit_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use prost::Message;

use super::*;
use crate::xds::convert::tests::{proto_policy, proto_workload};

#[test]
fn decode_resource_by_type() {
    let addr = pw::Address {
        r#type: Some(pw::address::Type::Workload(proto_workload(
            "w1",
            [10, 0, 0, 1],
        ))),
    };
    let r = decode_resource(ADDRESS_TYPE_URL, "w1", &addr.encode_to_vec()).unwrap();
    assert!(matches!(r, Resource::Workload(w) if w.uid == "w1"));
    let r = decode_resource(
        AUTHORIZATION_TYPE_URL,
        "default/allow",
        &proto_policy().encode_to_vec(),
    )
    .unwrap();
    assert!(matches!(r, Resource::Policy(_)));
    let e = decode_resource(ADDRESS_TYPE_URL, "x", &[0xff, 0xff]).unwrap_err();
    assert_eq!(e.resource, "resource \"x\"");
    assert!(matches!(e.problem, Problem::Decode(_)));
    let e = decode_resource(ADDRESS_TYPE_URL, "empty", &[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "address \"empty\": type: required field is missing or empty"
    );
}

#[test]
fn an_unregistered_type_url_is_a_wrong_type() {
    let e = decode_resource("type.googleapis.com/istio.Unknown", "n", &[]).unwrap_err();
    assert_eq!(
        e.problem,
        Problem::WrongType {
            got: "type.googleapis.com/istio.Unknown".into(),
            want: "a known type URL",
        }
    );
}

#[test]
fn unseen_removals_name_each_types_own_key() {
    let address = find(ADDRESS_TYPE_URL).unwrap();
    assert_eq!(
        address.unseen_removal("ns/web.ns.svc".into()),
        ResourceKey::Address("ns/web.ns.svc".into())
    );
    let policy = find(AUTHORIZATION_TYPE_URL).unwrap();
    assert_eq!(
        policy.unseen_removal("ns/allow".into()),
        ResourceKey::Policy("ns/allow".into())
    );
}

#[test]
fn registration_order_is_the_subscription_order() {
    let urls: Vec<_> = REGISTERED.iter().map(|t| t.type_url).collect();
    assert_eq!(urls, [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL]);
}

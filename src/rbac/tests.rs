//! Unit tests of the policy model (evaluation's are in `eval/tests.rs`).

use super::*;

#[test]
fn ip_nets_parse_and_contain() {
    let net: IpNet = "10.1.0.0/16".parse().unwrap();
    assert!(net.contains("10.1.2.3".parse().unwrap()));
    assert!(!net.contains("10.2.0.1".parse().unwrap()));
    assert!(!net.contains("::1".parse().unwrap()));
    let all: IpNet = "0.0.0.0/0".parse().unwrap();
    assert!(all.contains("192.168.1.1".parse().unwrap()));
    let host: IpNet = "fd00::1".parse().unwrap();
    assert_eq!(host.to_string(), "fd00::1/128");
    assert!(host.contains("fd00::1".parse().unwrap()));
    assert_eq!(
        "10.0.0.0/33".parse::<IpNet>(),
        Err(RbacError::PrefixTooLong {
            addr: "10.0.0.0".parse().unwrap(),
            prefix_len: 33,
            max: 32
        })
    );
    for bad in ["10.0.0.0/", "10.0.0.0/x", "10.0.0/8", "10.0.0.0/-1"] {
        assert_eq!(bad.parse::<IpNet>(), Err(RbacError::BadCidr(bad.into())));
    }
}

#[test]
fn string_matches() {
    assert!(StringMatch::Exact("a".into()).matches("a"));
    assert!(StringMatch::Prefix("ns-".into()).matches("ns-1"));
    assert!(StringMatch::Suffix("/sa/x".into()).matches("td/ns/a/sa/x"));
    assert!(StringMatch::Presence.matches("x"));
    assert!(!StringMatch::Presence.matches(""));
}

#[test]
fn policy_serializes_camel_case() {
    let p = Authorization {
        name: "allow".into(),
        namespace: "default".into(),
        scope: Scope::Namespace,
        action: Action::Allow,
        dry_run: false,
        rules: vec![Rule {
            clauses: vec![Clause {
                matches: vec![Match {
                    source_ips: vec!["10.0.0.0/8".parse().unwrap()],
                    destination_ports: vec![80],
                    ..Default::default()
                }],
            }],
        }],
    };
    assert_eq!(p.key(), "default/allow");
    let v = serde_json::to_value(&p).unwrap();
    assert_eq!(v["dryRun"], false);
    assert_eq!(
        v["rules"][0]["clauses"][0]["matches"][0]["sourceIps"][0],
        "10.0.0.0/8"
    );
}

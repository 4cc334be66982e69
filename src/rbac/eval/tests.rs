//! Table-driven tests of evaluation: every match field, rule structure, decisions, dry-run.

use super::*;
use crate::rbac::{Clause, IpNet, Rule, Scope};

use std::net::SocketAddr;

use crate::core::Identity;

fn id(ns: &str, sa: &str) -> Identity {
    Identity::new("cluster.local", ns, sa).unwrap()
}

fn policy(name: &str, action: Action, matches: Vec<Match>) -> Authorization {
    Authorization {
        name: name.into(),
        namespace: "ns".into(),
        scope: Scope::Namespace,
        action,
        dry_run: false,
        rules: vec![Rule {
            clauses: vec![Clause { matches }],
        }],
    }
}

fn facts<'a>(src: &str, dst: &str, identity: Option<&'a Identity>) -> ConnFacts<'a> {
    ConnFacts {
        src: src.parse::<SocketAddr>().unwrap(),
        dst: dst.parse::<SocketAddr>().unwrap(),
        identity,
    }
}

fn exact(s: &str) -> StringMatch {
    StringMatch::Exact(s.into())
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// Every match field, positive and negative, against one mTLS connection from
/// `ns-a/sa-a` at 10.0.0.5 to 10.1.0.3:8080.
#[test]
fn every_match_field_positive_and_negative() {
    let peer = id("ns-a", "sa-a");
    let conn = facts("10.0.0.5:40000", "10.1.0.3:8080", Some(&peer));
    let sa = |ns: &str, sa: &str| ServiceAccountMatch {
        namespace: ns.into(),
        service_account: sa.into(),
    };
    let cases: Vec<(&str, Match, bool)> = vec![
        ("empty match", Match::default(), true),
        (
            "namespaces hit",
            Match {
                namespaces: vec![exact("x"), exact("ns-a")],
                ..Default::default()
            },
            true,
        ),
        (
            "namespaces miss",
            Match {
                namespaces: vec![exact("ns-b")],
                ..Default::default()
            },
            false,
        ),
        (
            "namespaces prefix",
            Match {
                namespaces: vec![StringMatch::Prefix("ns-".into())],
                ..Default::default()
            },
            true,
        ),
        (
            "not_namespaces hit",
            Match {
                not_namespaces: vec![exact("ns-a")],
                ..Default::default()
            },
            false,
        ),
        (
            "not_namespaces miss",
            Match {
                not_namespaces: vec![exact("ns-b")],
                ..Default::default()
            },
            true,
        ),
        (
            "principals exact",
            Match {
                principals: vec![exact("cluster.local/ns/ns-a/sa/sa-a")],
                ..Default::default()
            },
            true,
        ),
        (
            "principals exact longer",
            Match {
                principals: vec![exact("cluster.local/ns/ns-a/sa/sa-ab")],
                ..Default::default()
            },
            false,
        ),
        (
            "principals exact shorter",
            Match {
                principals: vec![exact("cluster.local/ns/ns-a/sa/sa")],
                ..Default::default()
            },
            false,
        ),
        (
            "principals with scheme never match",
            Match {
                principals: vec![exact("spiffe://cluster.local/ns/ns-a/sa/sa-a")],
                ..Default::default()
            },
            false,
        ),
        (
            "principals prefix",
            Match {
                principals: vec![StringMatch::Prefix("cluster.local/ns/ns-a/".into())],
                ..Default::default()
            },
            true,
        ),
        (
            "principals prefix miss",
            Match {
                principals: vec![StringMatch::Prefix("cluster.local/ns/ns-b/".into())],
                ..Default::default()
            },
            false,
        ),
        (
            "principals suffix",
            Match {
                principals: vec![StringMatch::Suffix("/sa/sa-a".into())],
                ..Default::default()
            },
            true,
        ),
        (
            "principals suffix across parts",
            Match {
                principals: vec![StringMatch::Suffix("local/ns/ns-a/sa/sa-a".into())],
                ..Default::default()
            },
            true,
        ),
        (
            "principals suffix miss",
            Match {
                principals: vec![StringMatch::Suffix("/sa/sa-b".into())],
                ..Default::default()
            },
            false,
        ),
        (
            "principals presence",
            Match {
                principals: vec![StringMatch::Presence],
                ..Default::default()
            },
            true,
        ),
        (
            "not_principals hit",
            Match {
                not_principals: vec![exact("cluster.local/ns/ns-a/sa/sa-a")],
                ..Default::default()
            },
            false,
        ),
        (
            "not_principals miss",
            Match {
                not_principals: vec![exact("cluster.local/ns/ns-b/sa/sa-a")],
                ..Default::default()
            },
            true,
        ),
        (
            "service_accounts hit",
            Match {
                service_accounts: vec![sa("ns-a", "sa-a")],
                ..Default::default()
            },
            true,
        ),
        (
            "service_accounts wrong ns",
            Match {
                service_accounts: vec![sa("ns-b", "sa-a")],
                ..Default::default()
            },
            false,
        ),
        (
            "not_service_accounts hit",
            Match {
                not_service_accounts: vec![sa("ns-a", "sa-a")],
                ..Default::default()
            },
            false,
        ),
        (
            "not_service_accounts miss",
            Match {
                not_service_accounts: vec![sa("ns-a", "other")],
                ..Default::default()
            },
            true,
        ),
        (
            "source_ips hit",
            Match {
                source_ips: vec![net("10.0.0.0/24")],
                ..Default::default()
            },
            true,
        ),
        (
            "source_ips miss",
            Match {
                source_ips: vec![net("10.9.0.0/16"), net("fd00::/8")],
                ..Default::default()
            },
            false,
        ),
        (
            "not_source_ips hit",
            Match {
                not_source_ips: vec![net("10.0.0.5")],
                ..Default::default()
            },
            false,
        ),
        (
            "not_source_ips miss",
            Match {
                not_source_ips: vec![net("10.0.0.6")],
                ..Default::default()
            },
            true,
        ),
        (
            "destination_ips hit",
            Match {
                destination_ips: vec![net("10.1.0.0/16")],
                ..Default::default()
            },
            true,
        ),
        (
            "destination_ips miss",
            Match {
                destination_ips: vec![net("10.2.0.0/16")],
                ..Default::default()
            },
            false,
        ),
        (
            "not_destination_ips hit",
            Match {
                not_destination_ips: vec![net("10.1.0.3")],
                ..Default::default()
            },
            false,
        ),
        (
            "not_destination_ips miss",
            Match {
                not_destination_ips: vec![net("10.1.0.4")],
                ..Default::default()
            },
            true,
        ),
        (
            "destination_ports hit",
            Match {
                destination_ports: vec![80, 8080],
                ..Default::default()
            },
            true,
        ),
        (
            "destination_ports miss",
            Match {
                destination_ports: vec![80],
                ..Default::default()
            },
            false,
        ),
        (
            "not_destination_ports hit",
            Match {
                not_destination_ports: vec![8080],
                ..Default::default()
            },
            false,
        ),
        (
            "not_destination_ports miss",
            Match {
                not_destination_ports: vec![15008],
                ..Default::default()
            },
            true,
        ),
        (
            "all fields must pass",
            Match {
                namespaces: vec![exact("ns-a")],
                destination_ports: vec![80],
                ..Default::default()
            },
            false,
        ),
        (
            "all fields pass",
            Match {
                namespaces: vec![exact("ns-a")],
                source_ips: vec![net("10.0.0.0/8")],
                destination_ports: vec![8080],
                not_principals: vec![exact("x")],
                ..Default::default()
            },
            true,
        ),
    ];
    for (name, m, want) in cases {
        let p = policy("p", Action::Allow, vec![m]);
        assert_eq!(policy_matches(&p, &conn), want, "{name}");
    }
}

/// Plaintext: no identity, so identity-based matches fail (positive lists fail, negative lists
/// find nothing to exclude); address and port matches still work.
#[test]
fn plaintext_has_no_identity() {
    let conn = facts("10.0.0.5:40000", "10.1.0.3:8080", None);
    let cases: Vec<(&str, Match, bool)> = vec![
        (
            "namespaces",
            Match {
                namespaces: vec![StringMatch::Presence],
                ..Default::default()
            },
            false,
        ),
        (
            "principals presence",
            Match {
                principals: vec![StringMatch::Presence],
                ..Default::default()
            },
            false,
        ),
        (
            "principals prefix empty",
            Match {
                principals: vec![StringMatch::Prefix(String::new())],
                ..Default::default()
            },
            false,
        ),
        (
            "service accounts",
            Match {
                service_accounts: vec![ServiceAccountMatch {
                    namespace: "ns-a".into(),
                    service_account: "sa-a".into(),
                }],
                ..Default::default()
            },
            false,
        ),
        (
            "not_principals",
            Match {
                not_principals: vec![exact("cluster.local/ns/ns-a/sa/sa-a")],
                ..Default::default()
            },
            true,
        ),
        (
            "not_namespaces",
            Match {
                not_namespaces: vec![exact("ns-a")],
                ..Default::default()
            },
            true,
        ),
        (
            "source_ips",
            Match {
                source_ips: vec![net("10.0.0.0/8")],
                ..Default::default()
            },
            true,
        ),
        (
            "destination_ports",
            Match {
                destination_ports: vec![8080],
                ..Default::default()
            },
            true,
        ),
    ];
    for (name, m, want) in cases {
        let p = policy("p", Action::Allow, vec![m]);
        assert_eq!(policy_matches(&p, &conn), want, "{name}");
    }
    // A DENY "not from this principal" therefore denies plaintext, as Istio does.
    let deny = policy(
        "not-a",
        Action::Deny,
        vec![Match {
            not_principals: vec![exact("cluster.local/ns/ns-a/sa/sa-a")],
            ..Default::default()
        }],
    );
    assert!(!check(&conn, [&deny]).decision.is_allow());
}

#[test]
fn rules_or_clauses_and_matches_or() {
    let peer = id("ns-a", "sa-a");
    let conn = facts("10.0.0.5:1", "10.1.0.3:8080", Some(&peer));
    let port = |p: u16| Match {
        destination_ports: vec![p],
        ..Default::default()
    };
    let clause = |ms: Vec<Match>| Clause { matches: ms };
    let with_rules = |rules: Vec<Rule>| Authorization {
        rules,
        ..policy("p", Action::Allow, vec![])
    };
    let cases: Vec<(&str, Vec<Rule>, bool)> = vec![
        ("no rules never match", vec![], false),
        ("empty rule matches", vec![Rule::default()], true),
        (
            "rules ORed",
            vec![
                Rule {
                    clauses: vec![clause(vec![port(1)])],
                },
                Rule {
                    clauses: vec![clause(vec![port(8080)])],
                },
            ],
            true,
        ),
        (
            "clauses ANDed",
            vec![Rule {
                clauses: vec![clause(vec![port(8080)]), clause(vec![port(1)])],
            }],
            false,
        ),
        (
            "clauses ANDed, all pass",
            vec![Rule {
                clauses: vec![clause(vec![port(8080)]), clause(vec![Match::default()])],
            }],
            true,
        ),
        (
            "matches ORed",
            vec![Rule {
                clauses: vec![clause(vec![port(1), port(8080)])],
            }],
            true,
        ),
        (
            "clause without matches fails",
            vec![Rule {
                clauses: vec![clause(vec![])],
            }],
            false,
        ),
    ];
    for (name, rules, want) in cases {
        assert_eq!(policy_matches(&with_rules(rules), &conn), want, "{name}");
    }
}

#[test]
fn decisions_deny_wins_and_allow_must_match() {
    let peer = id("ns-a", "sa-a");
    let conn = facts("10.0.0.5:1", "10.1.0.3:8080", Some(&peer));
    let hit = || {
        vec![Match {
            destination_ports: vec![8080],
            ..Default::default()
        }]
    };
    let miss = || {
        vec![Match {
            destination_ports: vec![9],
            ..Default::default()
        }]
    };
    let allow_hit = policy("allow-hit", Action::Allow, hit());
    let allow_miss = policy("allow-miss", Action::Allow, miss());
    let deny_hit = policy("deny-hit", Action::Deny, hit());
    let deny_miss = policy("deny-miss", Action::Deny, miss());
    let denied_by = |k: &str| Decision::Deny {
        policy: Some(k.into()),
        reason: DenyReason::DenyMatched,
    };
    let not_allowed = Decision::Deny {
        policy: None,
        reason: DenyReason::NoAllowMatched,
    };
    let cases: Vec<(&str, Vec<&Authorization>, Decision)> = vec![
        ("no policy allows", vec![], Decision::Allow),
        ("no ALLOW means allow", vec![&deny_miss], Decision::Allow),
        ("DENY matches", vec![&deny_hit], denied_by("ns/deny-hit")),
        (
            "DENY over ALLOW",
            vec![&allow_hit, &deny_hit],
            denied_by("ns/deny-hit"),
        ),
        (
            "an ALLOW must match",
            vec![&allow_miss],
            not_allowed.clone(),
        ),
        (
            "any ALLOW suffices",
            vec![&allow_miss, &allow_hit, &deny_miss],
            Decision::Allow,
        ),
        (
            "duplicates change nothing",
            vec![&allow_hit, &allow_hit],
            Decision::Allow,
        ),
    ];
    for (name, ps, want) in cases {
        let v = check(&conn, ps);
        assert_eq!(v.decision, want, "{name}");
        assert_eq!(v.dry_run, None, "{name}");
    }
    assert_eq!(
        denied_by("ns/deny-hit").to_string(),
        "connection denied by policy ns/deny-hit"
    );
    assert_eq!(
        not_allowed.to_string(),
        "connection denied: no ALLOW policy matched"
    );
}

#[test]
fn dry_run_is_reported_not_enforced() {
    let peer = id("ns-a", "sa-a");
    let conn = facts("10.0.0.5:1", "10.1.0.3:8080", Some(&peer));
    let hit = || {
        vec![Match {
            destination_ports: vec![8080],
            ..Default::default()
        }]
    };
    let miss = || {
        vec![Match {
            destination_ports: vec![9],
            ..Default::default()
        }]
    };
    let dry = |mut p: Authorization| {
        p.dry_run = true;
        p
    };
    let dry_deny = dry(policy("dry-deny", Action::Deny, hit()));
    let dry_allow_miss = dry(policy("dry-allow", Action::Allow, miss()));
    let deny_hit = policy("deny", Action::Deny, hit());

    let v = check(&conn, [&dry_deny]);
    assert_eq!(
        v.decision,
        Decision::Allow,
        "a dry-run DENY is not enforced"
    );
    assert_eq!(
        v.dry_run,
        Some(Decision::Deny {
            policy: Some("ns/dry-deny".into()),
            reason: DenyReason::DenyMatched
        })
    );

    let v = check(&conn, [&dry_allow_miss]);
    assert_eq!(
        v.decision,
        Decision::Allow,
        "a dry-run ALLOW does not make ALLOW apply"
    );
    assert_eq!(
        v.dry_run,
        Some(Decision::Deny {
            policy: None,
            reason: DenyReason::NoAllowMatched
        })
    );

    let v = check(&conn, [&dry_allow_miss, &deny_hit]);
    assert_eq!(
        v.decision,
        Decision::Deny {
            policy: Some("ns/deny".into()),
            reason: DenyReason::DenyMatched
        },
        "enforced policies still decide"
    );
}

#[test]
fn ipv6_connections_match_ipv6_networks_only() {
    let conn = facts("[fd00:1::2]:1", "[fd00:1::3]:8080", None);
    let m = |src: &str| Match {
        source_ips: vec![net(src)],
        ..Default::default()
    };
    assert!(policy_matches(
        &policy("p", Action::Allow, vec![m("fd00:1::/64")]),
        &conn
    ));
    assert!(!policy_matches(
        &policy("p", Action::Allow, vec![m("0.0.0.0/0")]),
        &conn
    ));
}

//! Replays the `xds_convert` fuzz corpus (`fuzz/corpus/xds_convert/`) through the same calls as
//! the fuzz target, on stable: conversion must never panic, whatever the bytes. Also checks the
//! seeds still mean what they were written for (valid ones convert, broken ones are rejected).
//!
//! `cargo test --test offline xds_fuzz_corpus::write_seed_corpus -- --ignored` rewrites the seed files.

use std::path::PathBuf;

use ambit::xds::convert::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use ambit::xds::decode_resource;
use ambit_proto::istio::security as ps;
use ambit_proto::istio::workload as pw;
use prost::Message;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/xds_convert")
}

/// The same calls as `fuzz/fuzz_targets/xds_convert.rs`.
fn fuzz_one(data: &[u8]) -> (bool, bool) {
    let a = decode_resource(ADDRESS_TYPE_URL, "fuzz", data).is_ok();
    let b = decode_resource(AUTHORIZATION_TYPE_URL, "fuzz", data).is_ok();
    (a, b)
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let workload = pw::Workload {
        uid: "Kubernetes//Pod/default/w1".into(),
        name: "w1".into(),
        namespace: "default".into(),
        service_account: "sa".into(),
        addresses: vec![vec![10, 0, 0, 1], vec![0xfd; 16]],
        tunnel_protocol: 1,
        services: [(
            "default/web.default.svc.cluster.local".to_string(),
            pw::PortList {
                ports: vec![pw::Port {
                    service_port: 80,
                    target_port: 8080,
                    app_protocol: 0,
                }],
            },
        )]
        .into(),
        capacity: Some(3),
        ..Default::default()
    };
    let service = pw::Service {
        name: "web".into(),
        namespace: "default".into(),
        hostname: "web.default.svc.cluster.local".into(),
        addresses: vec![pw::NetworkAddress {
            network: "n1".into(),
            address: vec![10, 96, 0, 1],
            length: Some(32),
        }],
        ports: vec![pw::Port {
            service_port: 80,
            target_port: 0,
            app_protocol: 1,
        }],
        ..Default::default()
    };
    let policy = ps::Authorization {
        name: "allow".into(),
        namespace: "default".into(),
        scope: 1,
        action: 0,
        rules: vec![ps::Rule {
            clauses: vec![ps::Clause {
                matches: vec![ps::Match {
                    source_ips: vec![ps::Address {
                        address: vec![10, 0, 0, 0],
                        length: 8,
                    }],
                    not_destination_ports: vec![22],
                    principals: vec![ps::StringMatch {
                        match_type: Some(ps::string_match::MatchType::Prefix(
                            "cluster.local/".into(),
                        )),
                    }],
                    ..Default::default()
                }],
            }],
        }],
        ..Default::default()
    };
    let addr = |t| pw::Address { r#type: Some(t) }.encode_to_vec();
    let mut bad_ip = workload.clone();
    bad_ip.addresses = vec![vec![1, 2, 3]];
    let mut bad_cidr = policy.clone();
    bad_cidr.rules[0].clauses[0].matches[0].source_ips[0].length = 99;
    vec![
        ("workload.bin", addr(pw::address::Type::Workload(workload))),
        ("service.bin", addr(pw::address::Type::Service(service))),
        ("authorization.bin", policy.encode_to_vec()),
        (
            "workload-bad-ip.bin",
            addr(pw::address::Type::Workload(bad_ip)),
        ),
        ("authorization-bad-cidr.bin", bad_cidr.encode_to_vec()),
        ("truncated.bin", vec![0x0a, 0x20, 0x0a]),
        ("empty.bin", Vec::new()),
    ]
}

#[test]
#[ignore = "rewrites the seed corpus"]
fn write_seed_corpus() {
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in seeds() {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

#[test]
fn corpus_replays_without_panic() {
    let mut n = 0;
    for entry in std::fs::read_dir(corpus_dir()).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        fuzz_one(&data);
        n += 1;
    }
    assert!(n >= seeds().len(), "corpus has only {n} files");
}

#[test]
fn seeds_mean_what_they_say() {
    let dir = corpus_dir();
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    assert!(fuzz_one(&read("workload.bin")).0);
    assert!(fuzz_one(&read("service.bin")).0);
    assert!(fuzz_one(&read("authorization.bin")).1);
    assert!(!fuzz_one(&read("workload-bad-ip.bin")).0);
    assert!(!fuzz_one(&read("authorization-bad-cidr.bin")).1);
    assert_eq!(fuzz_one(&read("truncated.bin")), (false, false));
}

/// A stable stand-in for a short fuzzing run: deterministic byte mutations of every seed
/// (flips, truncations, insertions) through the same calls. Never panics.
#[test]
fn mutated_seeds_never_panic() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    let mut rng = StdRng::seed_from_u64(0x5eed);
    for (_, seed) in seeds() {
        for _ in 0..2_000 {
            let mut data = seed.clone();
            for _ in 0..rng.random_range(1..4) {
                match rng.random_range(0..3) {
                    0 if !data.is_empty() => {
                        let i = rng.random_range(0..data.len());
                        data[i] ^= 1 << rng.random_range(0..8);
                    }
                    1 if !data.is_empty() => {
                        let len = rng.random_range(0..data.len());
                        data.truncate(len);
                    }
                    _ => {
                        let i = rng.random_range(0..=data.len());
                        data.insert(i, rng.random());
                    }
                }
            }
            fuzz_one(&data);
        }
    }
}

//! What the lab reads to judge a flow, without trusting any one proxy's log wording, so the same
//! verdicts hold for ambit, for ztunnel and for a mixed mesh:
//! - **the wire**: nftables counters in every node namespace count the bytes forwarded to port
//!   15008 (TCP for HBONE over h2, UDP for HBONE over QUIC). A tunneled flow of N bytes puts at
//!   least N bytes there; a plain one puts none.
//! - **Istio's metrics**: `istio_tcp_connections_opened_total` of every node proxy, whose labels
//!   (`reporter`, `source_principal`) say which proxy saw the connection and with what identity.
//!
//! Invariant: a [`Reading`] is a before/after pair of whole snapshots; the flows a verdict judges
//! run one at a time, so a delta belongs to the flow between the two snapshots.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::promtext::{self, Sample};
use crate::{Lab, LabError, Netns, http_get};

/// The nftables table that holds the wire counters (one per node namespace).
const TABLE: &str = "ambit_lab_witness";
/// The family of connection counts every ztunnel-compatible proxy exposes.
pub const OPENED: &str = "istio_tcp_connections_opened_total";
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);

/// The counter rule set: bytes forwarded to port 15008, TCP and UDP.
pub fn counters_ruleset() -> String {
    format!(
        "table inet {TABLE}
delete table inet {TABLE}
table inet {TABLE} {{
  counter hbone_tcp {{ }}
  counter hbone_udp {{ }}
  chain forward {{
    type filter hook forward priority -300; policy accept;
    tcp dport 15008 counter name hbone_tcp
    udp dport 15008 counter name hbone_udp
  }}
}}
"
    )
}

/// Installs the wire counters in every node namespace of `lab` (idempotent).
pub fn install(lab: &Lab) -> Result<(), LabError> {
    for node in &lab.topology().nodes {
        if let Some(ns) = lab.node_ns(&node.name) {
            ns.nft(&counters_ruleset())?;
        }
    }
    Ok(())
}

/// One snapshot of the wire and of every proxy's connection counts.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Bytes forwarded to 15008, summed over the nodes.
    pub hbone_bytes: u64,
    /// `istio_tcp_connections_opened_total` samples, by proxy key.
    pub opened: BTreeMap<String, Vec<Sample>>,
}

/// Takes a snapshot: the node namespaces' counters and a scrape of every node proxy.
pub async fn snapshot(lab: &Lab) -> Result<Snapshot, LabError> {
    let mut snap = Snapshot::default();
    for node in &lab.topology().nodes {
        if let Some(ns) = lab.node_ns(&node.name) {
            snap.hbone_bytes += counter_bytes(ns, "hbone_tcp")? + counter_bytes(ns, "hbone_udp")?;
        }
    }
    for (key, ns) in lab.proxy_namespaces() {
        let text = scrape(ns).await?;
        let opened = promtext::samples(&text)
            .into_iter()
            .filter(|s| s.name == OPENED)
            .collect();
        snap.opened.insert(key.to_string(), opened);
    }
    Ok(snap)
}

/// The metrics text a node proxy in `ns` serves on 15020.
pub async fn scrape(ns: &Netns) -> Result<String, LabError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], 15020));
    Ok(http_get(ns, addr, "/metrics", SCRAPE_TIMEOUT).await?.body)
}

fn counter_bytes(ns: &Netns, name: &str) -> Result<u64, LabError> {
    let out = ns.run(&["nft", "list", "counter", "inet", TABLE, name])?;
    Ok(parse_counter_bytes(&out).unwrap_or(0))
}

/// The `bytes N` of `nft list counter` output.
fn parse_counter_bytes(text: &str) -> Option<u64> {
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "bytes" {
            return words.next()?.parse().ok();
        }
    }
    None
}

/// A connection a proxy counted between two snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    pub proxy: String,
    /// `source` or `destination`.
    pub reporter: String,
    /// The `source_principal` label; `None` when the proxy reported `unknown`.
    pub principal: Option<String>,
}

/// What changed between two snapshots.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    pub hbone_bytes: u64,
    pub counted: Vec<Counted>,
}

impl Reading {
    pub fn between(before: &Snapshot, after: &Snapshot) -> Reading {
        let mut counted = Vec::new();
        for (proxy, samples) in &after.opened {
            let old = before.opened.get(proxy).map(Vec::as_slice).unwrap_or(&[]);
            for s in samples {
                let prev = old
                    .iter()
                    .find(|o| o.labels == s.labels)
                    .map_or(0.0, |o| o.value);
                if s.value > prev {
                    counted.push(Counted {
                        proxy: proxy.clone(),
                        reporter: s.label("reporter").unwrap_or("unknown").to_string(),
                        principal: s
                            .label("source_principal")
                            .filter(|p| *p != "unknown" && !p.is_empty())
                            .map(str::to_string),
                    });
                }
            }
        }
        Reading {
            hbone_bytes: after.hbone_bytes.saturating_sub(before.hbone_bytes),
            counted,
        }
    }

    /// The connections counted by a proxy as `reporter`.
    pub fn by(&self, reporter: &str) -> impl Iterator<Item = &Counted> {
        self.counted.iter().filter(move |c| c.reporter == reporter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nft_counter_bytes() {
        let text = "table inet ambit_lab_witness {\n\tcounter hbone_tcp {\n\t\tpackets 12 bytes 34567\n\t}\n}\n";
        assert_eq!(parse_counter_bytes(text), Some(34567));
        assert_eq!(parse_counter_bytes("nothing"), None);
    }

    fn sample(reporter: &str, principal: &str, value: f64) -> Sample {
        Sample {
            name: OPENED.into(),
            labels: vec![
                ("reporter".into(), reporter.into()),
                ("source_principal".into(), principal.into()),
            ],
            value,
        }
    }

    #[test]
    fn a_reading_keeps_only_what_grew() {
        let id = "spiffe://cluster.local/ns/default/sa/client";
        let before = Snapshot {
            hbone_bytes: 100,
            opened: [(
                "node-b".to_string(),
                vec![
                    sample("destination", id, 1.0),
                    sample("source", "unknown", 4.0),
                ],
            )]
            .into(),
        };
        let after = Snapshot {
            hbone_bytes: 2_000_100,
            opened: [
                (
                    "node-b".to_string(),
                    vec![
                        sample("destination", id, 2.0),
                        sample("source", "unknown", 4.0),
                    ],
                ),
                ("node-a".to_string(), vec![sample("source", id, 1.0)]),
            ]
            .into(),
        };
        let r = Reading::between(&before, &after);
        assert_eq!(r.hbone_bytes, 2_000_000);
        let dst: Vec<_> = r.by("destination").collect();
        assert_eq!(dst.len(), 1);
        assert_eq!(dst[0].proxy, "node-b");
        assert_eq!(dst[0].principal.as_deref(), Some(id));
        assert_eq!(
            r.by("source").count(),
            1,
            "the new proxy's first sample counts"
        );
    }
}

//! `workloadState` (shared mode): per pod uid, `{state, connections?, info}` with the pod
//! proxy's live connections, in the shape ztunnel's workload manager writes and istioctl's
//! `ztunnel-config connections` reads.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Serialize;
use serde_json::Value;

use crate::inpod::{PodPhase, PodStates};
use crate::proxy::OutboundProtocol;

#[derive(Serialize)]
struct PodDump {
    state: &'static str,
    /// Only while the proxy is up.
    #[serde(skip_serializing_if = "Option::is_none")]
    connections: Option<ConnectionsDump>,
    info: InfoDump,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InfoDump {
    name: String,
    namespace: String,
    service_account: String,
}

#[derive(Serialize)]
struct ConnectionsDump {
    inbound: Vec<ConnDump>,
    outbound: Vec<ConnDump>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConnDump {
    src: SocketAddr,
    /// Outbound: where the app was connecting. Inbound: the service host name the peer asked
    /// for, which ambit does not track (always `null`, as ztunnel shows it for a connection
    /// addressed to a pod).
    original_dst: Option<String>,
    actual_dst: SocketAddr,
    protocol: &'static str,
}

pub(super) fn workload_state(pods: &PodStates) -> Value {
    let dump: BTreeMap<String, PodDump> = pods
        .snapshot()
        .into_iter()
        .map(|(uid, pod)| {
            let connections = match (pod.phase, pod.connections) {
                (PodPhase::Up, Some(tracker)) => Some(ConnectionsDump {
                    inbound: tracker
                        .inbound()
                        .into_iter()
                        .map(|c| ConnDump {
                            src: c.src,
                            original_dst: None,
                            actual_dst: c.dst,
                            protocol: if c.mtls { "HBONE" } else { "TCP" },
                        })
                        .collect(),
                    outbound: tracker
                        .outbound()
                        .into_iter()
                        .map(|c| ConnDump {
                            src: c.src,
                            original_dst: Some(c.original_dst.to_string()),
                            actual_dst: c.actual_dst,
                            protocol: match c.protocol {
                                OutboundProtocol::Tcp => "TCP",
                                OutboundProtocol::Hbone => "HBONE",
                                OutboundProtocol::DoubleHbone => "DOUBLEHBONE",
                            },
                        })
                        .collect(),
                }),
                _ => None,
            };
            let dump = PodDump {
                state: match pod.phase {
                    PodPhase::Pending => "Pending",
                    PodPhase::Up => "Up",
                },
                connections,
                info: InfoDump {
                    name: pod.info.name,
                    namespace: pod.info.namespace,
                    service_account: pod.info.service_account,
                },
            };
            (uid, dump)
        })
        .collect();
    serde_json::to_value(dump).unwrap_or(Value::Null)
}

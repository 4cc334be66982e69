//! The diagnostic endpoints `ambit ctl` reads besides `/config_dump`:
//! - `GET /debug/explain?src=<workload>&dst=<destination:port>`: the decision the data path
//!   would make for that flow ([`crate::proxy::explain`]), as JSON;
//! - `GET /debug/connections`: every live connection of every pod proxy, with age and bytes.
//!
//! Errors are JSON `{"error": "..."}` with a status that says whose fault it is: 400 for a
//! malformed request, 404 for an unknown name, 409 for an ambiguous one, 503 when this process
//! has nothing to explain with.

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use serde::Serialize;
use serde_json::json;

use crate::inpod::PodPhase;
use crate::proxy::explain::{self, ExplainInputs, LookupError};
use crate::proxy::{ConnectionInfo, ConnectionTracker};

use super::DumpSources;
use super::ops::query_params;

/// What the diagnostic endpoints read, beyond the dump's sources.
#[derive(Clone)]
pub struct DebugSources {
    pub explain: ExplainInputs,
    /// Dedicated mode: the one proxy's connections (shared mode lists the pods').
    pub connections: Option<ConnectionTracker>,
    /// Dedicated mode: `namespace/name` of the workload served.
    pub local: Option<String>,
}

/// Answers `/debug/explain` and `/debug/connections`; `None` for any other path.
pub(super) fn route(
    sources: &DumpSources,
    path: &str,
    query: Option<&str>,
) -> Option<Response<Full<Bytes>>> {
    match path {
        "/debug/explain" => Some(explain_flow(sources, query)),
        "/debug/connections" => Some(connections(sources)),
        _ => None,
    }
}

fn json_response(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let text = serde_json::to_string_pretty(body)
        .unwrap_or_else(|e| format!("{{\"error\": {:?}}}", e.to_string()));
    let mut resp = super::text(status, text);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response<Full<Bytes>> {
    json_response(status, &json!({ "error": msg.to_string() }))
}

fn lookup_status(e: &LookupError) -> StatusCode {
    match e {
        LookupError::Unknown(_) | LookupError::UnknownDestination(_) => StatusCode::NOT_FOUND,
        LookupError::Ambiguous { .. } => StatusCode::CONFLICT,
        LookupError::BadDestination(_) | LookupError::NoAddress(_) => StatusCode::BAD_REQUEST,
    }
}

fn explain_flow(sources: &DumpSources, query: Option<&str>) -> Response<Full<Bytes>> {
    let Some(debug) = &sources.debug else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this process has no proxy state to explain with",
        );
    };
    let params = query_params(query);
    let (Some(src), Some(dst)) = (params.get("src"), params.get("dst")) else {
        return error(
            StatusCode::BAD_REQUEST,
            "usage: /debug/explain?src=<workload>&dst=<destination>:<port>",
        );
    };
    let inputs = &debug.explain;
    let snapshot = inputs.state.snapshot();
    let found = explain::find_workload(&snapshot, &inputs.network, src)
        .and_then(|w| explain::find_destination(&snapshot, &inputs.network, dst).map(|d| (w, d)));
    match found {
        Ok((wl, dst)) => json_response(StatusCode::OK, &explain::explain(inputs, &wl, dst)),
        Err(e) => error(lookup_status(&e), e),
    }
}

/// A connection and the pod whose proxy holds it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PodConnection {
    /// `namespace/name`.
    pod: String,
    #[serde(flatten)]
    conn: ConnectionInfo,
}

fn connections(sources: &DumpSources) -> Response<Full<Bytes>> {
    let mut out: Vec<PodConnection> = Vec::new();
    if let Some(pods) = &sources.workload_state {
        for pod in pods.snapshot().into_values() {
            let (PodPhase::Up, Some(tracker)) = (pod.phase, pod.connections) else {
                continue;
            };
            let name = format!("{}/{}", pod.info.namespace, pod.info.name);
            out.extend(tracker.connections().into_iter().map(|conn| PodConnection {
                pod: name.clone(),
                conn,
            }));
        }
    }
    if let Some(debug) = &sources.debug
        && let Some(tracker) = &debug.connections
    {
        out.extend(tracker.connections().into_iter().map(|conn| PodConnection {
            pod: debug.local.clone().unwrap_or_default(),
            conn,
        }));
    }
    out.sort_by(|a, b| a.conn.opened.total_cmp(&b.conn.opened));
    json_response(StatusCode::OK, &json!({ "connections": out }))
}

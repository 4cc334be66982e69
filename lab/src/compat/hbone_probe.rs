//! Requests on a pod's port 15008, good and bad, as a peer proxy would send them (mutual TLS with a
//! certificate from the lab's CA, HTTP/2), recording what the node proxy answers.
//!
//! Invariant: each case runs on a fresh TLS connection, so one case's failure cannot colour the
//! next; every step is bounded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ambit::core::Identity;
use ambit::tls::WorkloadCertificate;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};

use crate::{Lab, LabError};

const STEP: Duration = Duration::from_secs(5);

/// Runs every case against the first captured pod of `node` (besides `client`) and returns
/// case → outcome.
pub async fn probe(lab: &Lab, node: &str) -> Result<BTreeMap<String, String>, LabError> {
    let t = lab.topology();
    let cp = lab.control_plane().ok_or_else(|| {
        LabError::Usage("the HBONE probes need the lab's control plane (its CA)".into())
    })?;
    let client = t
        .pod("client")
        .ok_or_else(|| LabError::Usage("the topology has no pod named client".into()))?;
    let target = t
        .pods
        .iter()
        .find(|p| p.node == node && p.captured && p.name != "client")
        .ok_or_else(|| LabError::Usage(format!("no captured server pod on {node}")))?;
    let other = t
        .pods
        .iter()
        .find(|p| p.node != node && p.captured)
        .map_or_else(|| "10.9.9.9".to_string(), |p| p.ip.to_string());
    let ns = lab
        .node_ns(node)
        .ok_or_else(|| LabError::Usage(format!("no node {node}")))?;
    let server_id: Identity = parse_id(&target.spiffe())?;
    let keyed = cp.issue_with_key(&client.spiffe())?;
    let root = CertificateDer::from(keyed.root.clone());
    let good = WorkloadCertificate::new(
        vec![CertificateDer::from(keyed.leaf.clone())],
        PrivatePkcs8KeyDer::from(keyed.key.clone()),
        vec![root.clone()],
    )
    .map_err(|e| usage(format!("lab certificate: {e}")))?;
    let good = good
        .client_config(std::slice::from_ref(&server_id))
        .map_err(|e| usage(e.to_string()))?;
    let (chain, key) = foreign_leaf(&client.spiffe())?;
    let foreign = WorkloadCertificate::new(chain, key, vec![root])
        .map_err(|e| usage(format!("foreign certificate: {e}")))?
        .client_config(std::slice::from_ref(&server_id))
        .map_err(|e| usage(e.to_string()))?;

    let dst = SocketAddr::new(target.ip.into(), 15008);
    let ip = target.ip;
    let cases: Vec<(&str, Arc<rustls::ClientConfig>, http::Method, String)> = vec![
        (
            "CONNECT to the app's ip:port",
            good.clone(),
            http::Method::CONNECT,
            format!("{ip}:8080"),
        ),
        (
            "CONNECT to a closed port of the pod",
            good.clone(),
            http::Method::CONNECT,
            format!("{ip}:1"),
        ),
        (
            "CONNECT to port 0",
            good.clone(),
            http::Method::CONNECT,
            format!("{ip}:0"),
        ),
        (
            "CONNECT to a pod of another node",
            good.clone(),
            http::Method::CONNECT,
            format!("{other}:8080"),
        ),
        (
            "CONNECT to an address no workload has",
            good.clone(),
            http::Method::CONNECT,
            "10.9.9.9:8080".into(),
        ),
        (
            "CONNECT with a hostname authority",
            good.clone(),
            http::Method::CONNECT,
            "web.default.svc.cluster.local:80".into(),
        ),
        (
            "GET instead of CONNECT",
            good.clone(),
            http::Method::GET,
            format!("https://{ip}:8080/"),
        ),
        (
            "client certificate from another CA",
            foreign,
            http::Method::CONNECT,
            format!("{ip}:8080"),
        ),
    ];
    let mut out = BTreeMap::new();
    for (name, cfg, method, uri) in cases {
        let outcome = one(ns, dst, cfg, method, &uri).await;
        out.insert(name.to_string(), outcome);
    }
    Ok(out)
}

/// One request on a fresh connection: `status N`, or where it failed.
async fn one(
    ns: &crate::Netns,
    dst: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    method: http::Method,
    uri: &str,
) -> String {
    let tcp = match ns.connect(dst, STEP).await {
        Ok(t) => t,
        Err(e) => return format!("tcp connect failed: {e}"),
    };
    let tls = match tokio::time::timeout(STEP, ambit::tls::connect(cfg, tcp)).await {
        Ok(Ok(t)) => t,
        Ok(Err(_)) => return REFUSED.into(),
        Err(_) => return "TLS handshake timed out".into(),
    };
    let (send, conn) = match tokio::time::timeout(STEP, h2::client::handshake(tls)).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return h2_failure(&e),
        Err(_) => return "HTTP/2 handshake timed out".into(),
    };
    let driver = tokio::spawn(conn);
    let outcome = async {
        let req = http::Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .map_err(|e| format!("request not sendable: {e}"))?;
        let mut send = send.ready().await.map_err(|e| h2_failure(&e))?;
        let (resp, _stream) = send.send_request(req, true).map_err(|e| h2_failure(&e))?;
        let resp = resp.await.map_err(|e| h2_failure(&e))?;
        Ok::<_, String>(outcome_of(&resp))
    };
    let res = match tokio::time::timeout(STEP, outcome).await {
        Ok(Ok(s)) | Ok(Err(s)) => s,
        Err(_) => "no answer".into(),
    };
    driver.abort();
    res
}

/// `status N`, and for a `200` the keys of its `baggage` (the destination's metadata, which
/// peers read for their labels): keys, not values, since each proxy names its own test pods.
fn outcome_of(resp: &http::Response<h2::RecvStream>) -> String {
    let status = resp.status().as_u16();
    if status != 200 {
        return format!("status {status}");
    }
    let keys: Vec<&str> = resp
        .headers()
        .get("baggage")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(',')
                .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.trim()))
                .collect()
        })
        .unwrap_or_default();
    if keys.is_empty() {
        return "status 200, no baggage".into();
    }
    format!("status 200, baggage {}", keys.join(","))
}

const REFUSED: &str = "refused: TLS alert or connection closed before any answer";

/// TLS 1.3 lets the client finish its handshake before the server has checked the client
/// certificate: a refusal then arrives under the first HTTP/2 read or write, as an alert or as
/// a bare close depending on timing, so both read as one outcome.
fn h2_failure(e: &h2::Error) -> String {
    if e.get_io().is_some() {
        return REFUSED.into();
    }
    match e.reason() {
        Some(r) => format!("stream reset ({r:?})"),
        None => "connection closed".into(),
    }
}

fn parse_id(s: &str) -> Result<Identity, LabError> {
    s.parse()
        .map_err(|e| usage(format!("identity {s:?}: {e:?}")))
}

fn usage(s: String) -> LabError {
    LabError::Usage(s)
}

/// A CA of its own (not the mesh's) and a leaf it signed for `spiffe`.
fn foreign_leaf(
    spiffe: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivatePkcs8KeyDer<'static>), LabError> {
    let err = |e: rcgen::Error| usage(format!("foreign CA: {e}"));
    let ca_key = rcgen::KeyPair::generate().map_err(err)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).map_err(err)?;
    let leaf_key = rcgen::KeyPair::generate().map_err(err)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    params.subject_alt_names = vec![rcgen::SanType::URI(spiffe.try_into().map_err(err)?)];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let leaf = params.signed_by(&leaf_key, &ca).map_err(err)?;
    let key = PrivatePkcs8KeyDer::from(leaf_key.serialize_der());
    Ok((vec![leaf.der().clone()], key))
}

/// What [`connect_as`] got back.
#[derive(Debug)]
pub struct ConnectAnswer {
    pub status: u16,
    pub headers: http::HeaderMap,
}

/// One CONNECT to `authority` on the pod `to`'s 15008, as the pod `from` would send it (a
/// certificate for `from`'s identity from the lab's CA) but from `to`'s node namespace, so the
/// TCP source is no workload's address; `headers` are added to the request. The stream is
/// dropped once the answer is read.
pub async fn connect_as(
    lab: &Lab,
    (from, to): (&str, &str),
    authority: &str,
    headers: &[(&str, &str)],
) -> Result<ConnectAnswer, LabError> {
    let t = lab.topology();
    let cp = lab.control_plane().ok_or_else(|| {
        LabError::Usage("the HBONE probes need the lab's control plane (its CA)".into())
    })?;
    let pod = |name: &str| {
        t.pod(name)
            .ok_or_else(|| usage(format!("the topology has no pod named {name}")))
    };
    let (from, to) = (pod(from)?, pod(to)?);
    let ns = lab
        .node_ns(&to.node)
        .ok_or_else(|| usage(format!("no node {}", to.node)))?;
    let keyed = cp.issue_with_key(&from.spiffe())?;
    let cfg = WorkloadCertificate::new(
        vec![CertificateDer::from(keyed.leaf.clone())],
        PrivatePkcs8KeyDer::from(keyed.key.clone()),
        vec![CertificateDer::from(keyed.root.clone())],
    )
    .map_err(|e| usage(format!("lab certificate: {e}")))?
    .client_config(&[parse_id(&to.spiffe())?])
    .map_err(|e| usage(e.to_string()))?;
    let dst = SocketAddr::new(to.ip.into(), 15008);
    let fail =
        |what: &str, e: &dyn std::fmt::Display| usage(format!("CONNECT to {dst}: {what}: {e}"));
    let tcp = ns.connect(dst, STEP).await?;
    let tls = tokio::time::timeout(STEP, ambit::tls::connect(cfg, tcp))
        .await
        .map_err(|e| fail("TLS", &e))?
        .map_err(|e| fail("TLS", &e))?;
    let (send, conn) = tokio::time::timeout(STEP, h2::client::handshake(tls))
        .await
        .map_err(|e| fail("HTTP/2", &e))?
        .map_err(|e| fail("HTTP/2", &e))?;
    let driver = tokio::spawn(conn);
    let answer = async {
        let mut req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(authority);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(()).map_err(|e| fail("request", &e))?;
        let mut send = send.ready().await.map_err(|e| fail("ready", &e))?;
        let (resp, _stream) = send
            .send_request(req, false)
            .map_err(|e| fail("send", &e))?;
        let resp = resp.await.map_err(|e| fail("answer", &e))?;
        Ok::<_, LabError>(ConnectAnswer {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
        })
    };
    let res = tokio::time::timeout(STEP, answer)
        .await
        .map_err(|e| fail("answer", &e))
        .and_then(|r| r);
    driver.abort();
    res
}

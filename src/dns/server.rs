//! The DNS server: UDP and TCP listeners, and the answer to one query (the mesh's when the name
//! is a mesh service, the upstream's otherwise).
//!
//! Invariants: every query that parses gets exactly one answer (an upstream failure is
//! SERVFAIL, a malformed query FORMERR when its id is readable); every query is counted once
//! in `istio_dns_requests_total`, every forward once in the upstream series; UDP answers larger
//! than the client's payload size are truncated (TC set) so the client retries over TCP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tracing::{debug, info, warn};

use super::metrics::DnsLabels;
use super::{DnsInputs, Transport};
use crate::lifecycle::{AcceptBackoff, DrainWatcher};

/// The TTL of mesh answers (Istio's).
pub const MESH_TTL: u32 = 30;
/// The payload a client without EDNS accepts over UDP.
const CLASSIC_UDP_PAYLOAD: usize = 512;
/// The payload we advertise and honour with EDNS (the DNS flag day's safe size).
const EDNS_PAYLOAD: u16 = 1232;
/// How long a TCP client may stay idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Bound sockets, ready to serve.
pub struct DnsServer {
    inputs: Arc<DnsInputs>,
    udp: Vec<Arc<UdpSocket>>,
    tcp: Vec<TcpListener>,
}

impl DnsServer {
    /// Serves on sockets the caller bound (inside the pod's namespace in in-pod mode).
    pub fn new(inputs: DnsInputs, udp: Vec<UdpSocket>, tcp: Vec<TcpListener>) -> DnsServer {
        DnsServer {
            inputs: Arc::new(inputs),
            udp: udp.into_iter().map(Arc::new).collect(),
            tcp,
        }
    }

    /// The addresses served, UDP then TCP.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        let udp = self.udp.iter().filter_map(|s| s.local_addr().ok());
        let tcp = self.tcp.iter().filter_map(|l| l.local_addr().ok());
        udp.chain(tcp).collect()
    }

    /// Serves until a drain starts.
    pub async fn run(self, drain: DrainWatcher) {
        info!(addrs = ?self.local_addrs(), namespace = %self.inputs.resolver.scope().namespace, "dns proxy listening");
        let mut tasks = tokio::task::JoinSet::new();
        for socket in self.udp {
            tasks.spawn(serve_udp(self.inputs.clone(), socket, drain.clone()));
        }
        for listener in self.tcp {
            tasks.spawn(serve_tcp(self.inputs.clone(), listener, drain.clone()));
        }
        while tasks.join_next().await.is_some() {}
    }
}

async fn serve_udp(inputs: Arc<DnsInputs>, socket: Arc<UdpSocket>, drain: DrainWatcher) {
    let mut buf = vec![0u8; 65535];
    loop {
        let received = tokio::select! {
            biased;
            _ = drain.draining() => break,
            r = socket.recv_from(&mut buf) => r,
        };
        match received {
            Ok((n, peer)) => {
                let query = buf[..n].to_vec();
                let (inputs, socket) = (inputs.clone(), socket.clone());
                tokio::spawn(async move {
                    if let Some(answer) = respond(&inputs, &query, Transport::Udp).await
                        && let Err(e) = socket.send_to(&answer, peer).await
                    {
                        debug!(%peer, error = %e, "dns: udp reply failed");
                    }
                });
            }
            Err(e) => {
                // ICMP errors from earlier replies surface here; the socket is still usable.
                debug!(error = %e, "dns: udp receive failed");
                tokio::task::yield_now().await;
            }
        }
    }
}

async fn serve_tcp(inputs: Arc<DnsInputs>, listener: TcpListener, drain: DrainWatcher) {
    let mut backoff = AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = drain.draining() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff.succeeded();
                let (inputs, drain) = (inputs.clone(), drain.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        r = serve_tcp_conn(&inputs, stream) => {
                            if let Err(e) = r {
                                debug!(%peer, error = %e, "dns: tcp connection ended");
                            }
                        }
                        _ = drain.draining() => {}
                    }
                });
            }
            // Out of descriptors: pause instead of spinning (see `lifecycle::accept_backoff`).
            Err(e) => {
                let pause = backoff.on_error("dns tcp", &e);
                tokio::select! {
                    biased;
                    _ = drain.draining() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

/// Length-prefixed queries, answered in order, until the client closes or idles out.
async fn serve_tcp_conn(inputs: &DnsInputs, mut stream: TcpStream) -> std::io::Result<()> {
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Err(_) => return Ok(()),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(r) => r?,
        };
        let mut query = vec![0u8; usize::from(len)];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let Some(answer) = respond(inputs, &query, Transport::Tcp).await else {
            return Ok(());
        };
        let Ok(n) = u16::try_from(answer.len()) else {
            return Ok(());
        };
        let mut framed = Vec::with_capacity(answer.len() + 2);
        framed.extend_from_slice(&n.to_be_bytes());
        framed.extend_from_slice(&answer);
        stream.write_all(&framed).await?;
    }
}

/// The answer to one query, as bytes; `None` when not even the query id is readable.
pub(super) async fn respond(
    inputs: &DnsInputs,
    query: &[u8],
    transport: Transport,
) -> Option<Vec<u8>> {
    let req = match Message::from_vec(query) {
        Ok(m) => m,
        Err(e) => {
            debug!(error = %e, "dns: malformed query");
            let id = u16::from_be_bytes([*query.first()?, *query.get(1)?]);
            return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                .to_vec()
                .ok();
        }
    };
    let id = req.metadata.id;
    if req.metadata.message_type != MessageType::Query || req.queries.len() != 1 {
        return error(&req, ResponseCode::FormErr);
    }
    if req.metadata.op_code != OpCode::Query {
        return error(&req, ResponseCode::NotImp);
    }
    let q = &req.queries[0];
    let labels = labels(inputs, q.query_type, transport);
    inputs.metrics.requests.get_or_create(&labels).inc();

    if matches!(q.query_type, RecordType::A | RecordType::AAAA)
        && let Some(found) = inputs.resolver.mesh(&q.name.to_ascii())
    {
        let mut resp = reply_to(&req, ResponseCode::NoError);
        resp.metadata.authoritative = true;
        let ips: Vec<RData> = found
            .addrs
            .iter()
            .filter_map(|ip| match (q.query_type, ip) {
                (RecordType::A, std::net::IpAddr::V4(v4)) => Some(RData::A(A(*v4))),
                (RecordType::AAAA, std::net::IpAddr::V6(v6)) if inputs.resolver.ipv6() => {
                    Some(RData::AAAA(AAAA(*v6)))
                }
                _ => None,
            })
            .collect();
        // A mesh name without an address of the asked family (a single-family service, or
        // IPv6 off) is an empty, authoritative answer: not NXDOMAIN, and no CNAME (ztunnel's).
        if ips.is_empty() {
            return encode(&req, resp, transport);
        }
        let target = if found.hostname == super::resolve::normalize(&q.name.to_ascii()) {
            q.name.clone()
        } else {
            let Ok(mut target) = Name::from_ascii(&found.hostname) else {
                return error(&req, ResponseCode::ServFail);
            };
            target.set_fqdn(true);
            resp.add_answer(Record::from_rdata(
                q.name.clone(),
                MESH_TTL,
                RData::CNAME(CNAME(target.clone())),
            ));
            target
        };
        for data in ips {
            resp.add_answer(Record::from_rdata(target.clone(), MESH_TTL, data));
        }
        return encode(&req, resp, transport);
    }

    inputs
        .metrics
        .upstream_requests
        .get_or_create(&labels)
        .inc();
    let start = Instant::now();
    match inputs.resolver.forwarder().forward(query, transport).await {
        Ok(answer) => {
            inputs
                .metrics
                .upstream_duration
                .get_or_create(&labels)
                .observe(start.elapsed().as_secs_f64());
            Some(answer)
        }
        Err(e) => {
            inputs
                .metrics
                .upstream_failures
                .get_or_create(&labels)
                .inc();
            warn!(id, name = %q.name, error = %e, "dns: upstream failed");
            error(&req, ResponseCode::ServFail)
        }
    }
}

fn labels(inputs: &DnsInputs, qtype: RecordType, transport: Transport) -> DnsLabels {
    let scope = inputs.resolver.scope();
    let (service, revision) = match inputs
        .resolver
        .state()
        .workload_by_name(&scope.namespace, &inputs.pod_name)
    {
        Some(wl) => (
            non_empty(&wl.canonical_name, &wl.name),
            non_empty(&wl.canonical_revision, "latest"),
        ),
        None => ("unknown".to_string(), "unknown".to_string()),
    };
    DnsLabels {
        request_query_type: qtype.to_string(),
        request_protocol: transport.as_str(),
        source_canonical_service: service,
        source_canonical_revision: revision,
    }
}

fn non_empty(s: &str, fallback: &str) -> String {
    if s.is_empty() { fallback } else { s }.to_string()
}

/// A response to `req` with its id, question and flags.
fn reply_to(req: &Message, code: ResponseCode) -> Message {
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata.response_code = code;
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.add_queries(req.queries.iter().cloned());
    if req.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        resp.set_edns(edns);
    }
    resp
}

fn error(req: &Message, code: ResponseCode) -> Option<Vec<u8>> {
    reply_to(req, code).to_vec().ok()
}

/// Encodes `resp`, truncated when it does not fit the client's UDP payload.
fn encode(req: &Message, resp: Message, transport: Transport) -> Option<Vec<u8>> {
    let bytes = resp.to_vec().ok()?;
    let limit = match &req.edns {
        Some(edns) => usize::from(edns.max_payload().clamp(512, EDNS_PAYLOAD)),
        None => CLASSIC_UDP_PAYLOAD,
    };
    if transport == Transport::Udp && bytes.len() > limit {
        return resp.truncate().to_vec().ok();
    }
    Some(bytes)
}

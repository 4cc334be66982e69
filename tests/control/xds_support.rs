//! Test doubles for istiod, shared by the `xds_*` tests: a delta ADS server the test drives
//! response by response, and helpers to build WDS resources.
//!
//! These are in-process tonic servers on loopback: a stand-in at a boundary this task cannot
//! reach yet (the lab's control plane comes later). They speak the real gRPC protocol over real
//! TCP, so the client under test is exercised end to end.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use ambit_proto::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use ambit_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use ambit_proto::istio::workload as pw;
use futures_util::Stream;
use tokio::sync::{mpsc, oneshot};
use tonic::metadata::MetadataMap;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

pub const WAIT: Duration = Duration::from_secs(10);

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

/// One client stream as the server sees it.
pub struct Conn {
    pub headers: MetadataMap,
    pub requests: mpsc::UnboundedReceiver<DeltaDiscoveryRequest>,
    pub responses: mpsc::UnboundedSender<Result<DeltaDiscoveryResponse, Status>>,
}

/// A running fake ADS server; dropping it (or [`FakeAds::stop`]) shuts it down.
pub struct FakeAds {
    pub addr: SocketAddr,
    pub conns: mpsc::UnboundedReceiver<Conn>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

struct Svc {
    conns: mpsc::UnboundedSender<Conn>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Svc {
    type StreamAggregatedResourcesStream =
        Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
    type DeltaAggregatedResourcesStream = ResponseStream;

    async fn stream_aggregated_resources(
        &self,
        _: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("state of the world is not served"))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let headers = request.metadata().clone();
        let mut inbound = request.into_inner();
        let (req_tx, req_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(r)) = inbound.message().await {
                if req_tx.send(r).is_err() {
                    break;
                }
            }
        });
        let (resp_tx, resp_rx) = mpsc::unbounded_channel();
        let _ = self.conns.send(Conn {
            headers,
            requests: req_rx,
            responses: resp_tx,
        });
        let out = futures_util::stream::unfold(resp_rx, |mut rx| async move {
            rx.recv().await.map(|r| (r, rx))
        });
        Ok(Response::new(Box::pin(out)))
    }
}

impl FakeAds {
    pub async fn start(addr: SocketAddr) -> FakeAds {
        FakeAds::start_with(addr, None).await
    }

    /// Serves over TLS with this certificate and key (PEM).
    pub async fn start_tls(addr: SocketAddr, cert_pem: &str, key_pem: &str) -> FakeAds {
        let tls = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(cert_pem, key_pem));
        FakeAds::start_with(addr, Some(tls)).await
    }

    async fn start_with(
        addr: SocketAddr,
        tls: Option<tonic::transport::ServerTlsConfig>,
    ) -> FakeAds {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (conns_tx, conns) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).unwrap();
        }
        let task = tokio::spawn(async move {
            let _ = builder
                .add_service(AggregatedDiscoveryServiceServer::new(Svc {
                    conns: conns_tx,
                }))
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                    let _ = stop_rx.await;
                })
                .await;
        });
        FakeAds {
            addr,
            conns,
            stop: Some(stop_tx),
            task,
        }
    }

    pub async fn next_conn(&mut self) -> Conn {
        tokio::time::timeout(WAIT, self.conns.recv())
            .await
            .expect("no connection in time")
            .expect("server gone")
    }

    /// Stops accepting and waits for the server task to end (streams must be closed first).
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(WAIT, &mut self.task).await;
        self.task.abort();
    }
}

impl Drop for FakeAds {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Conn {
    pub async fn next_request(&mut self) -> DeltaDiscoveryRequest {
        tokio::time::timeout(WAIT, self.requests.recv())
            .await
            .expect("no request in time")
            .expect("client stream ended")
    }

    /// The two initial subscriptions, keyed by type URL order of arrival.
    pub async fn initial_requests(&mut self) -> Vec<DeltaDiscoveryRequest> {
        vec![self.next_request().await, self.next_request().await]
    }

    pub fn push(&self, response: DeltaDiscoveryResponse) {
        self.responses.send(Ok(response)).unwrap();
    }
}

pub fn response(
    type_url: &str,
    nonce: &str,
    resources: Vec<Resource>,
    removed: &[&str],
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: type_url.into(),
        nonce: nonce.into(),
        resources,
        removed_resources: removed.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

pub fn resource<M: prost::Name>(name: &str, version: &str, msg: &M) -> Resource {
    Resource {
        name: name.into(),
        version: version.into(),
        resource: Some(prost_types::Any::from_msg(msg).unwrap()),
        ..Default::default()
    }
}

pub fn workload(uid: &str, ip: [u8; 4], service: Option<(&str, u32, u32)>) -> pw::Address {
    let services = service
        .map(|(key, svc, target)| {
            (
                key.to_string(),
                pw::PortList {
                    ports: vec![pw::Port {
                        service_port: svc,
                        target_port: target,
                        app_protocol: 0,
                    }],
                },
            )
        })
        .into_iter()
        .collect();
    pw::Address {
        r#type: Some(pw::address::Type::Workload(pw::Workload {
            uid: uid.into(),
            name: format!("{uid}-pod"),
            namespace: "default".into(),
            service_account: "sa".into(),
            addresses: vec![ip.to_vec()],
            tunnel_protocol: pw::TunnelProtocol::Hbone as i32,
            services,
            ..Default::default()
        })),
    }
}

pub fn service(namespace: &str, name: &str, vip: [u8; 4], port: u32) -> pw::Address {
    pw::Address {
        r#type: Some(pw::address::Type::Service(pw::Service {
            name: name.into(),
            namespace: namespace.into(),
            hostname: format!("{name}.{namespace}.svc.cluster.local"),
            addresses: vec![pw::NetworkAddress {
                network: String::new(),
                address: vip.to_vec(),
                length: None,
            }],
            ports: vec![pw::Port {
                service_port: port,
                target_port: 0,
                app_protocol: 0,
            }],
            ..Default::default()
        })),
    }
}

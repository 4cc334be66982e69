//! Loopback gRPC test: the generated tonic client and server for
//! `istio.v1.auth.IstioCertificateService` talk over a real TCP socket, proving the
//! service path and codec wiring, not just the message encoding.

use std::time::Duration;

use ambit_proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use ambit_proto::istio::v1::auth::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use ambit_proto::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
use tokio::time::timeout;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// Echoes the CSR back as a one-element chain and the requested lifetime as a second one.
struct EchoCa;

#[tonic::async_trait]
impl IstioCertificateService for EchoCa {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let req = request.into_inner();
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: vec![req.csr, req.validity_duration.to_string()],
        }))
    }
}

#[tokio::test]
async fn create_certificate_over_loopback() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(IstioCertificateServiceServer::new(EchoCa))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );

    let mut client = timeout(
        Duration::from_secs(5),
        IstioCertificateServiceClient::connect(format!("http://{addr}")),
    )
    .await
    .unwrap()
    .unwrap();
    let resp = timeout(
        Duration::from_secs(5),
        client.create_certificate(IstioCertificateRequest {
            csr: "PEM".into(),
            validity_duration: 3600,
            metadata: None,
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.into_inner().cert_chain, vec!["PEM", "3600"]);
    server.abort();
}

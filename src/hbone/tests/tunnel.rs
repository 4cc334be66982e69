//! CONNECT round trips through `serve` and `H2Client`: bytes, headers, half-close, resets,
//! rejections, graceful shutdown and a large flow-controlled transfer.

use h2::Reason;
use http::{Method, Request, StatusCode, Uri};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::*;

async fn client_to(server: &TestServer, cfg: &H2Config) -> H2Client {
    let tcp = t(TcpStream::connect(server.addr)).await.unwrap();
    t(handshake(tcp, cfg)).await.unwrap()
}

fn dest_baggage() -> Baggage {
    Baggage {
        namespace: "default".into(),
        workload_type: WorkloadType::Pod,
        workload_name: "reviews-0".into(),
        ..Baggage::default()
    }
}

#[tokio::test]
async fn connect_round_trip_with_headers_and_half_close() {
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let server = TestServer::start(H2Config::default(), move |req: InboundRequest| {
        let seen_tx = seen_tx.clone();
        async move {
            let _ = seen_tx.send((req.authority.clone(), req.headers.clone()));
            let Ok(stream) = req.accept(Some(&dest_baggage())) else {
                return;
            };
            let (mut recv, mut send) = stream.split();
            let mut total = 0;
            // Echo until the client half-closes ...
            while let Some(chunk) = recv.recv().await {
                let chunk = chunk.unwrap();
                total += chunk.len();
                send.send(chunk).await.unwrap();
            }
            // ... then keep sending on our half before closing it.
            send.send(Bytes::from(format!("bye after {total}")))
                .await
                .unwrap();
            send.finish().unwrap();
        }
    })
    .await;

    let client = client_to(&server, &H2Config::default()).await;
    let headers = ConnectHeaders {
        baggage: Some(Baggage {
            namespace: "client-ns".into(),
            workload_name: "productpage".into(),
            ..Baggage::default()
        }),
        forwarded: Some(Forwarded {
            for_addr: "10.0.0.7:43210".parse().unwrap(),
            host: Some("reviews.default.svc.cluster.local".into()),
        }),
        traceparent: Some(TraceParent::random()),
        forwarded_network: None,
    };
    let req = ConnectRequest {
        authority: "[fd00::5]:9080".parse().unwrap(),
        headers: headers.clone(),
    };
    let stream = t(client.connect(&req)).await.unwrap();
    assert_eq!(stream.response_baggage(), Some(&dest_baggage()));
    assert_eq!(client.active_streams(), 1);

    let (seen_authority, seen_headers) = t(seen_rx.recv()).await.unwrap();
    assert_eq!(seen_authority, req.authority);
    assert_eq!(seen_headers, headers);

    let (mut recv, mut send) = ping_pong(stream, b"first").await;
    t(send.send(Bytes::from_static(b"second"))).await.unwrap();
    assert_eq!(&t(recv.recv()).await.unwrap().unwrap()[..], b"second");
    send.finish().unwrap();
    assert!(matches!(
        t(send.send(Bytes::from_static(b"late"))).await,
        Err(HboneError::StreamClosed)
    ));

    let mut rest = Vec::new();
    while let Some(chunk) = t(recv.recv()).await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(rest, b"bye after 11");
    drop((recv, send));
    assert_eq!(client.active_streams(), 0);
}

#[tokio::test]
async fn async_read_write_interface() {
    let server = TestServer::start(H2Config::default(), echo).await;
    let client = client_to(&server, &H2Config::default()).await;
    let mut stream = t(client.connect(&request("10.0.0.1:80"))).await.unwrap();
    t(stream.write_all(b"through the io traits")).await.unwrap();
    t(stream.shutdown()).await.unwrap();
    let mut back = Vec::new();
    t(stream.read_to_end(&mut back)).await.unwrap();
    assert_eq!(back, b"through the io traits");
}

/// Runs one stream against a handler that sends `hello` and then resets with `reason`;
/// returns what the client read and how reading ended.
async fn read_until_reset(reason: Reason) -> (Vec<u8>, Option<HboneError>) {
    let (sent_tx, sent_rx) = oneshot::channel::<()>();
    let sent_rx = Arc::new(Mutex::new(Some(sent_rx)));
    let server = TestServer::start(H2Config::default(), move |req: InboundRequest| {
        let sent_rx = sent_rx.clone();
        async move {
            let (_recv, mut send) = req.accept(None).unwrap().split();
            send.send(Bytes::from_static(b"hello")).await.unwrap();
            // Wait until the client has the data, so the reset cannot overtake it.
            let waiter = sent_rx.lock().unwrap().take();
            if let Some(w) = waiter {
                let _ = w.await;
            }
            send.reset(reason);
        }
    })
    .await;
    let client = client_to(&server, &H2Config::default()).await;
    let (mut recv, _send) = t(client.connect(&request("10.0.0.1:80")))
        .await
        .unwrap()
        .split();
    let mut got = t(recv.recv()).await.unwrap().unwrap().to_vec();
    sent_tx.send(()).unwrap();
    loop {
        match t(recv.recv()).await {
            None => return (got, None),
            Some(Ok(chunk)) => got.extend_from_slice(&chunk),
            Some(Err(e)) => return (got, Some(e)),
        }
    }
}

#[tokio::test]
async fn reset_with_cancel_is_eof() {
    let (got, err) = read_until_reset(Reason::CANCEL).await;
    assert_eq!(got, b"hello");
    assert!(err.is_none(), "{err:?}");
}

#[tokio::test]
async fn reset_with_error_is_an_error() {
    let (got, err) = read_until_reset(Reason::INTERNAL_ERROR).await;
    assert_eq!(got, b"hello");
    match err {
        Some(HboneError::H2(e)) => assert_eq!(e.reason(), Some(Reason::INTERNAL_ERROR)),
        other => panic!("expected an INTERNAL_ERROR reset, got {other:?}"),
    }
}

#[tokio::test]
async fn handler_reject_surfaces_as_status() {
    let server = TestServer::start(H2Config::default(), |req: InboundRequest| async move {
        req.reject(StatusCode::SERVICE_UNAVAILABLE);
    })
    .await;
    let client = client_to(&server, &H2Config::default()).await;
    match t(client.connect(&request("10.0.0.1:80"))).await {
        Err(HboneError::Status(s)) => assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE),
        Err(e) => panic!("expected status 503, got {e}"),
        Ok(_) => panic!("expected status 503, got a stream"),
    }
    assert_eq!(client.active_streams(), 0);
}

/// Sends a raw h2 request (bypassing `H2Client`) and returns the response status.
async fn raw_status(addr: SocketAddr, method: Method, uri: Uri) -> StatusCode {
    let tcp = t(TcpStream::connect(addr)).await.unwrap();
    let (send, conn) = t(h2::client::handshake(tcp)).await.unwrap();
    tokio::spawn(conn);
    let mut send = t(send.ready()).await.unwrap();
    let req = Request::builder().method(method).uri(uri).body(()).unwrap();
    let (resp, _stream) = send.send_request(req, true).unwrap();
    t(resp).await.unwrap().status()
}

fn authority_only(a: &str) -> Uri {
    let mut parts = http::uri::Parts::default();
    parts.authority = Some(a.parse().unwrap());
    Uri::from_parts(parts).unwrap()
}

#[tokio::test]
async fn server_answers_400_to_non_hbone_requests() {
    let calls = Arc::new(AtomicUsize::new(0));
    let calls2 = calls.clone();
    let server = TestServer::start(H2Config::default(), move |req: InboundRequest| {
        calls2.fetch_add(1, Ordering::SeqCst);
        echo(req)
    })
    .await;

    let get = raw_status(
        server.addr,
        Method::GET,
        "http://10.0.0.1:80/".parse().unwrap(),
    );
    assert_eq!(get.await, StatusCode::BAD_REQUEST);
    for bad in ["example.com", "10.0.0.1:0", "[fd00::1]", "a..b:80"] {
        let status = raw_status(server.addr, Method::CONNECT, authority_only(bad)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "handler must not see bad requests"
    );

    // A good request on the same kind of connection reaches the handler.
    let status = raw_status(server.addr, Method::CONNECT, authority_only("10.0.0.1:80")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_streams_finish() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let shutdown = async {
            let _ = shutdown_rx.await;
        };
        serve(tcp, &H2Config::default(), shutdown, echo).await
    });
    let tcp = t(TcpStream::connect(addr)).await.unwrap();
    let client = t(handshake(tcp, &H2Config::default())).await.unwrap();
    let stream = t(client.connect(&request("10.0.0.1:80"))).await.unwrap();
    let (mut recv, mut send) = ping_pong(stream, b"before").await;

    shutdown_tx.send(()).unwrap();
    // The stream opened before the GOAWAY keeps working.
    t(send.send(Bytes::from_static(b"after"))).await.unwrap();
    assert_eq!(&t(recv.recv()).await.unwrap().unwrap()[..], b"after");
    send.finish().unwrap();
    assert!(t(recv.recv()).await.is_none());
    drop((recv, send));
    // With its last stream done, the draining server ends the connection.
    t(server).await.unwrap().unwrap();
    eventually("client connection closed", || client.is_closed()).await;
}

/// Deterministic pseudo-random bytes (xorshift), so the payload does not compress or repeat.
fn payload(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transfer_is_byte_identical() {
    const LEN: usize = 64 * 1024 * 1024;
    let server = TestServer::start(H2Config::default(), echo).await;
    let client = client_to(&server, &H2Config::default()).await;
    let data = Bytes::from(payload(LEN));
    let want = Sha256::digest(&data);

    let stream = t(client.connect(&request("10.0.0.1:80"))).await.unwrap();
    let (mut recv, mut send) = stream.split();
    let sender = tokio::spawn(async move {
        // 256 KiB pieces, each a slice of one buffer: no copies on the way out.
        let mut rest = data;
        while !rest.is_empty() {
            let piece = rest.split_to(rest.len().min(256 * 1024));
            send.send(piece).await?;
        }
        send.finish()
    });
    let mut hasher = Sha256::new();
    let mut received = 0;
    let big = Duration::from_secs(120);
    while let Some(chunk) = tokio::time::timeout(big, recv.recv()).await.unwrap() {
        let chunk = chunk.unwrap();
        received += chunk.len();
        hasher.update(&chunk);
    }
    tokio::time::timeout(big, sender)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(received, LEN);
    assert_eq!(hasher.finalize(), want);
}

/// HTTP/2 client preface plus an empty SETTINGS frame: enough for the server handshake.
const CLIENT_PREFACE: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

fn fast_ping() -> H2Config {
    H2Config {
        ping_interval: Duration::from_millis(50),
        ping_timeout: Duration::from_millis(100),
        ..H2Config::default()
    }
}

#[tokio::test]
async fn client_closes_connection_when_ping_is_not_answered() {
    // A peer that accepts TCP and then says nothing at all.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let silent = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        std::future::pending::<()>().await;
        drop(tcp);
    });
    let tcp = t(TcpStream::connect(addr)).await.unwrap();
    let client = t(handshake(tcp, &fast_ping())).await.unwrap();
    assert!(!client.is_closed());
    eventually("unanswered PING closes the client", || client.is_closed()).await;
    assert!(matches!(
        t(client.connect(&request("10.0.0.1:80"))).await,
        Err(HboneError::ConnectionClosed)
    ));
    silent.abort();
}

#[tokio::test]
async fn server_ends_connection_when_ping_is_not_answered() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut peer = t(TcpStream::connect(addr)).await.unwrap();
    let (tcp, _) = t(listener.accept()).await.unwrap();
    // Say hello in HTTP/2, then never read or answer again.
    t(peer.write_all(CLIENT_PREFACE)).await.unwrap();
    let result = t(serve(tcp, &fast_ping(), std::future::pending(), echo)).await;
    assert!(
        matches!(result, Err(HboneError::PingTimeout(_))),
        "{result:?}"
    );
}

#[test]
fn streams_can_carry_an_inner_connection() {
    // Double HBONE runs TLS and h2 inside a stream, so a stream must be a valid transport.
    fn transport<T: AsyncReadWrite + 'static>() {}
    transport::<H2Stream>();
}

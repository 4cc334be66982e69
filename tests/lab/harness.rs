//! End-to-end tests of the lab itself, needing no ambit: two pod namespaces joined by a veth
//! (IPv4 and IPv6), real curl across it, the outbound-capture rules redirecting to a tiny
//! listener on 15001 that recovers the original destination (`SO_ORIGINAL_DST` /
//! `IP6T_SO_ORIGINAL_DST`), and the original-source return path that the inbound proxy relies on
//! (a transparent, marked socket connecting to the app with the client's address as source).

use crate::common;

use std::net::SocketAddr;

use ambit_lab::nft::PROXY_MARK;
use common::{PodPair, STEP, servers};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_crosses_the_veth_v4_and_v6() {
    let pair = PodPair::new("curl_crosses_the_veth");
    let mut app = servers::http(&pair.server, common::APP_PORT);
    for v6 in [false, true] {
        let out = common::curl(&pair.client, &[&common::url(common::app_addr(v6), "/")]).await;
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "curl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let expected_peer_ip = common::client_ip(v6);
        assert!(body.starts_with("hello from 8080, you are "), "{body}");
        let seen = app.next_seen().await;
        assert_eq!(seen.peer.ip(), expected_peer_ip);
    }
}

/// A stand-in for ambit's outbound listener: answers each connection with an HTTP response whose
/// body is the original destination it recovered.
fn original_dst_listener(pair: &PodPair) -> tokio::task::JoinHandle<()> {
    let std = pair
        .client
        .tcp_listener(SocketAddr::from(([0u16; 8], 15001)))
        .unwrap();
    let listener = tokio::net::TcpListener::from_std(std).unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, peer)) = listener.accept().await {
            let orig = {
                let sock = socket2::SockRef::from(&s);
                // The listener is dual-stack: IPv4 clients arrive v4-mapped, and their original
                // destination is in the IPv4 conntrack table.
                let res = if peer.ip().to_canonical().is_ipv4() {
                    sock.original_dst_v4()
                } else {
                    sock.original_dst_v6()
                };
                res.ok()
                    .and_then(|a| a.as_socket())
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "none".into())
            };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{orig}",
                orig.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
            let _ = s.shutdown().await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_capture_redirects_to_15001_with_original_destination() {
    let pair = PodPair::new("outbound_capture");
    pair.install_redirection();
    let mut app = servers::http(&pair.server, common::APP_PORT);
    let _capture = original_dst_listener(&pair);

    for v6 in [false, true] {
        let dst = common::app_addr(v6);
        let out = common::curl(&pair.client, &[&common::url(dst, "/")]).await;
        assert!(
            out.status.success(),
            "curl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            dst.to_string(),
            "captured, with original dst"
        );
    }
    assert!(
        !app.saw_any(),
        "captured connections must not reach the app"
    );

    // The proxy's own connections (socket mark 0x539) are not captured.
    for v6 in [false, true] {
        let dst = common::app_addr(v6);
        let sock = pair
            .client
            .tcp_socket_with(dst, |s| s.set_mark(PROXY_MARK))
            .unwrap();
        let mut s = tokio::time::timeout(STEP, sock.connect(dst))
            .await
            .unwrap()
            .unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut resp = String::new();
        tokio::time::timeout(STEP, s.read_to_string(&mut resp))
            .await
            .unwrap()
            .unwrap();
        assert!(resp.contains("hello from 8080"), "{resp}");
        assert_eq!(app.next_seen().await.peer.ip(), common::client_ip(v6));
    }

    // Loopback traffic is not captured either.
    let _local = servers::http(&pair.client, 9090);
    let out = common::curl(&pair.client, &["http://127.0.0.1:9090/"]).await;
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("hello from 9090"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn return_path_delivers_transparent_connections_with_client_source() {
    let pair = PodPair::new("return_path");
    pair.install_redirection();
    let mut app = servers::echo(&pair.server, common::APP_PORT);

    for v6 in [false, true] {
        let src = SocketAddr::new(common::client_ip(v6), 0);
        let dst = common::app_addr(v6);
        // What ambit's inbound side does: a marked, transparent socket bound to the client's
        // (non-local) address, connecting to the local app.
        let sock = pair
            .server
            .tcp_socket_with(dst, move |s| {
                s.set_mark(PROXY_MARK)?;
                if v6 {
                    s.set_ip_transparent_v6(true)?
                } else {
                    s.set_ip_transparent_v4(true)?
                }
                s.bind(&src.into())
            })
            .unwrap();
        let mut s = tokio::time::timeout(STEP, sock.connect(dst))
            .await
            .expect("connect timed out")
            .unwrap();
        common::mesh::echo_all(&mut s, b"ping through the return path", "echo").await;
        let seen = app.next_seen().await;
        assert_eq!(
            seen.peer.ip(),
            common::client_ip(v6),
            "app sees the client's address"
        );
    }
}

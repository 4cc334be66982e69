//! Pool behaviour: sharing, per-connection stream limits, keys, eviction and idle timeout.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use futures_util::future::join_all;

use super::*;

fn pool_with(cfg: H2Config) -> (Pool, Arc<TcpConnector>) {
    let connector = Arc::new(TcpConnector::default());
    (Pool::new(cfg, connector.clone()), connector)
}

fn hash_of(k: &PoolKey) -> u64 {
    let mut h = DefaultHasher::new();
    k.hash(&mut h);
    h.finish()
}

#[test]
fn pool_key_ignores_order_and_duplicates_of_expected() {
    let dst = "10.0.0.1:15008".parse().unwrap();
    let a = key(dst, &["a", "b", "c"]);
    let b = key(dst, &["c", "a", "b", "a"]);
    assert_eq!(a, b);
    assert_eq!(hash_of(&a), hash_of(&b));
    assert_eq!(a.expected.len(), 3);
    assert_ne!(a, key(dst, &["a", "b"]));
    assert_ne!(a, key("10.0.0.2:15008".parse().unwrap(), &["a", "b", "c"]));
}

#[tokio::test]
async fn concurrent_first_sends_share_one_connection() {
    let server = TestServer::start(H2Config::default(), echo).await;
    let (pool, connector) = pool_with(H2Config::default());
    let k = key(server.addr, &["server"]);
    let req = request("10.0.0.1:80");
    let streams = t(join_all((0..20).map(|_| pool.send(&k, &req)))).await;
    assert_eq!(pool.connections_opened(), 1);
    assert_eq!(connector.calls.load(Ordering::Relaxed), 1);
    assert_eq!(pool.connections_open(), 1);
    for s in streams {
        ping_pong(s.unwrap(), b"shared").await;
    }
}

#[tokio::test]
async fn sequential_sends_reuse_one_connection() {
    let server = TestServer::start(H2Config::default(), echo).await;
    let (pool, _) = pool_with(H2Config::default());
    let k = key(server.addr, &["server"]);
    for _ in 0..50 {
        let stream = t(pool.send(&k, &request("10.0.0.1:80"))).await.unwrap();
        ping_pong(stream, b"again").await;
    }
    assert_eq!(pool.connections_opened(), 1);
    assert_eq!(pool.connections_open(), 1);
}

#[tokio::test]
async fn stream_limit_opens_more_connections() {
    let server = TestServer::start(H2Config::default(), echo).await;
    let cfg = H2Config {
        pool_max_streams_per_conn: 2,
        ..H2Config::default()
    };
    let (pool, _) = pool_with(cfg);
    let k = key(server.addr, &["server"]);
    let req = request("10.0.0.1:80");
    let held: Vec<_> = t(join_all((0..5).map(|_| pool.send(&k, &req))))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(pool.connections_opened(), 3);
    assert_eq!(pool.connections_open(), 3);

    // With a slot free again, the next stream reuses a connection instead of opening one.
    let mut held = held.into_iter();
    let first = held.next().unwrap();
    ping_pong(first, b"done").await;
    let again = t(pool.send(&k, &req)).await.unwrap();
    assert_eq!(pool.connections_opened(), 3);
    ping_pong(again, b"reused").await;
}

#[tokio::test]
async fn peer_stream_limit_caps_a_connection() {
    // The server allows one stream per connection; our own cap (100) is higher.
    let server = TestServer::start(
        H2Config {
            server_max_concurrent_streams: 1,
            ..H2Config::default()
        },
        echo,
    )
    .await;
    let (pool, _) = pool_with(H2Config::default());
    let k = key(server.addr, &["server"]);
    // Let the first connection learn the peer's SETTINGS before counting.
    let first = t(pool.send(&k, &request("10.0.0.1:80"))).await.unwrap();
    let (_r1, _s1) = ping_pong(first, b"one").await;
    let second = t(pool.send(&k, &request("10.0.0.1:80"))).await.unwrap();
    let (_r2, _s2) = ping_pong(second, b"two").await;
    assert_eq!(pool.connections_opened(), 2);
}

#[tokio::test]
async fn different_expected_identities_get_their_own_connection() {
    let server = TestServer::start(H2Config::default(), echo).await;
    let (pool, _) = pool_with(H2Config::default());
    let req = request("10.0.0.1:80");
    let a = t(pool.send(&key(server.addr, &["a", "b"]), &req))
        .await
        .unwrap();
    let b = t(pool.send(&key(server.addr, &["c"]), &req)).await.unwrap();
    assert_eq!(pool.connections_opened(), 2);
    // The same set in another order, even written by hand, is the same key.
    let by_hand = PoolKey {
        src_id: identity("client"),
        src_ip: "127.0.0.1".parse().unwrap(),
        dst: server.addr,
        expected: vec![identity("b"), identity("a")],
    };
    let c = t(pool.send(&by_hand, &req)).await.unwrap();
    assert_eq!(pool.connections_opened(), 2);
    for s in [a, b, c] {
        ping_pong(s, b"keyed").await;
    }
}

#[tokio::test]
async fn broken_connection_is_evicted_and_replaced() {
    let server = TestServer::start(H2Config::default(), echo).await;
    let (pool, _) = pool_with(H2Config::default());
    let k = key(server.addr, &["server"]);
    let stream = t(pool.send(&k, &request("10.0.0.1:80"))).await.unwrap();
    ping_pong(stream, b"before").await;
    assert_eq!(pool.connections_open(), 1);

    server.kill_connections();
    // Sent right away: whether or not the pool has noticed yet, the request must not land on
    // the dead connection.
    let stream = t(pool.send(&k, &request("10.0.0.1:80"))).await.unwrap();
    ping_pong(stream, b"after").await;
    assert_eq!(pool.connections_opened(), 2);
    eventually("dead connection evicted", || pool.connections_open() == 1).await;
}

#[tokio::test]
async fn evicted_before_next_send() {
    let server = TestServer::start(H2Config::default(), echo).await;
    let (pool, _) = pool_with(H2Config::default());
    let k = key(server.addr, &["server"]);
    let stream = t(pool.send(&k, &request("10.0.0.1:80"))).await.unwrap();
    ping_pong(stream, b"before").await;
    server.kill_connections();
    eventually("dead connection evicted", || pool.connections_open() == 0).await;
    let stream = t(pool.send(&k, &request("10.0.0.1:80"))).await.unwrap();
    ping_pong(stream, b"after").await;
    assert_eq!(pool.connections_opened(), 2);
}

#[tokio::test]
async fn idle_connection_is_closed_after_timeout() {
    let server = TestServer::start(H2Config::default(), echo).await;
    let idle = Duration::from_millis(150);
    let (pool, _) = pool_with(H2Config {
        pool_idle_timeout: idle,
        ..H2Config::default()
    });
    let k = key(server.addr, &["server"]);

    // A connection with a live stream is not idle, however long it waits.
    let stream = t(pool.send(&k, &request("10.0.0.1:80"))).await.unwrap();
    tokio::time::sleep(idle * 3).await;
    assert_eq!(pool.connections_open(), 1);
    ping_pong(stream, b"still here").await;

    // Once the stream is dropped the idle timer runs and closes it.
    eventually("idle connection closed", || pool.connections_open() == 0).await;
    eventually("idle key dropped", || pool.keys_tracked() == 0).await;
    let stream = t(pool.send(&k, &request("10.0.0.1:80"))).await.unwrap();
    ping_pong(stream, b"fresh").await;
    assert_eq!(pool.connections_opened(), 2);
}

#[tokio::test]
async fn connector_errors_carry_their_message_and_shutdown_closes_the_pool() {
    // Nothing listens on this port once the listener is gone.
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let (pool, _) = pool_with(H2Config::default());
    match t(pool.send(&key(dead, &["x"]), &request("10.0.0.1:80"))).await {
        Err(HboneError::Connect { dst, message, .. }) => {
            assert_eq!(dst, dead);
            assert!(message.contains("refused"), "{message}");
        }
        Err(e) => panic!("expected a connect error, got {e}"),
        Ok(_) => panic!("expected a connect error, got a stream"),
    }
    assert_eq!(pool.connections_opened(), 0);
    assert_eq!(
        pool.keys_tracked(),
        0,
        "a key that never connected is not kept"
    );

    let server = TestServer::start(H2Config::default(), echo).await;
    let k = key(server.addr, &["server"]);
    let stream = t(pool.send(&k, &request("10.0.0.1:80"))).await.unwrap();
    drop(stream);
    pool.shutdown();
    assert_eq!(pool.connections_open(), 0);
    assert!(matches!(
        t(pool.send(&k, &request("10.0.0.1:80"))).await,
        Err(HboneError::PoolClosed)
    ));
}

#[tokio::test]
async fn draining_connection_is_not_reused_but_keeps_its_streams() {
    let server = TestServer::start(H2Config::default(), echo).await;
    let (pool, _) = pool_with(H2Config::default());
    let k = key(server.addr, &["server"]);
    let held = t(pool.send(&k, &request("10.0.0.1:80"))).await.unwrap();
    let (mut recv, mut send) = ping_pong(held, b"before drain").await;

    server.drain();
    // Every send succeeds; once the client has seen the GOAWAY, sends go to a new connection.
    let deadline = tokio::time::Instant::now() + STEP;
    while pool.connections_opened() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new connection after GOAWAY"
        );
        let stream = t(pool.send(&k, &request("10.0.0.1:80"))).await.unwrap();
        ping_pong(stream, b"during drain").await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The stream opened before the drain still works end to end.
    t(send.send(Bytes::from_static(b"still"))).await.unwrap();
    assert_eq!(&t(recv.recv()).await.unwrap().unwrap()[..], b"still");
    send.finish().unwrap();
    assert!(t(recv.recv()).await.is_none());
    drop((recv, send));
    eventually("drained connection closed", || pool.connections_open() == 1).await;
}

/// Plain TCP whose connections close when the test says so, with a reason (what the proxy's
/// connector does for a server a CRL revokes).
struct CuttingConnector {
    cut: tokio::sync::watch::Sender<bool>,
}

impl Connector for CuttingConnector {
    fn connect(
        &self,
        key: &PoolKey,
    ) -> Pin<Box<dyn Future<Output = Result<Connected, HboneError>> + Send + '_>> {
        let dst = key.dst;
        let mut cut = self.cut.subscribe();
        Box::pin(async move {
            let tcp = TcpStream::connect(dst)
                .await
                .map_err(|e| HboneError::connect(dst, e))?;
            let cut_when: CutWhen = Box::pin(async move {
                let _ = cut.wait_for(|c| *c).await;
                "peer certificate serial 42 revoked by CRL".to_string()
            });
            Ok(Connected {
                io: Box::new(tcp) as BoxedIo,
                cut_when: Some(cut_when),
            })
        })
    }
}

#[tokio::test]
async fn a_cut_connection_ends_its_streams_and_says_why() {
    let server = TestServer::start(H2Config::default(), echo).await;
    let connector = Arc::new(CuttingConnector {
        cut: tokio::sync::watch::Sender::new(false),
    });
    let pool = Pool::new(H2Config::default(), connector.clone());
    let k = key(server.addr, &["server"]);
    let stream = t(pool.send(&k, &request("10.0.0.1:80"))).await.unwrap();
    let probe = stream.cut_probe().expect("a pooled stream has a probe");
    let (mut recv, _send) = ping_pong(stream, b"before").await;
    assert_eq!(probe.reason(), None);

    connector.cut.send_replace(true);
    // The stream fails (not a clean end) and the reason is readable by then.
    let ended = t(recv.recv()).await;
    assert!(!matches!(ended, Some(Ok(_))), "{ended:?}");
    assert_eq!(
        probe.reason(),
        Some("peer certificate serial 42 revoked by CRL")
    );
    eventually("the cut connection leaves the pool", || {
        pool.connections_open() == 0
    })
    .await;
    // A new request opens a new connection (which this connector no longer cuts).
    connector.cut.send_replace(false);
    let again = t(pool.send(&k, &request("10.0.0.1:80"))).await.unwrap();
    assert_eq!(again.cut_probe().unwrap().reason(), None);
    assert_eq!(pool.connections_opened(), 2);
}

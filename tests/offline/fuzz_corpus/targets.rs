//! The bodies of the fuzz targets, shared by `fuzz/fuzz_targets/*.rs` (libFuzzer: cargo-fuzz,
//! or `fuzz/stable.sh` on stable) and the stable replay in `tests/offline/fuzz_corpus.rs`, so both run
//! exactly the same checks. Each takes arbitrary bytes, must not panic, asserts its parser's
//! invariants, and returns whether the input was accepted (the replay checks that the seeds
//! still mean what their names say).

use std::collections::BTreeSet;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};

use ambit::core::{Authority, Identity, IdentityError};
use ambit::hbone::{Baggage, ConnectHeaders, Forwarded, TraceParent};
use ambit::inpod::protocol::{MAX_PACKET, decode_request, to_request};
use ambit::inpod::statemanager::{Next, Reply, Request, StateManager};
use ambit::proxy::proxyproto::{self, SOURCE_IDENTITY_TLV};
use ambit::proxy::socks5::{ResolveFuture, Socks5Error, negotiate};
use ambit::tls::CrlSet;
use ambit_proto::istio::workload::zds;
use http::{HeaderMap, HeaderName, HeaderValue};
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Errors end up in log lines: one line each.
fn one_line(e: &dyn std::fmt::Display) {
    let msg = e.to_string();
    assert!(!msg.contains('\n') && !msg.contains('\r'), "{msg:?}");
}

/// HBONE request headers: `name: value` lines become a header map that
/// [`ConnectHeaders::from_map`] reads as the server does; each value is also parsed on its own.
/// What is read must write back and read back the same; `from_map` must agree with `FromStr`.
pub fn hbone_headers(data: &[u8]) -> bool {
    let mut map = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let value = line[colon + 1..].trim_ascii();
        if let Ok(text) = std::str::from_utf8(value) {
            check_header_values(text);
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(line[..colon].trim_ascii()),
            HeaderValue::from_bytes(value),
        ) {
            map.append(name, value);
        }
    }
    let headers = ConnectHeaders::from_map(&map);
    let first = |name: &str| map.get(name).and_then(|v| v.to_str().ok());
    assert_eq!(
        headers.baggage,
        first("baggage").and_then(|v| v.parse().ok())
    );
    assert_eq!(
        headers.forwarded,
        first("forwarded").and_then(|v| v.parse().ok())
    );
    assert_eq!(
        headers.traceparent,
        first("traceparent").and_then(|v| v.parse().ok())
    );
    let mut again = HeaderMap::new();
    headers
        .write_to(&mut again)
        .expect("what was read from headers writes back");
    assert_eq!(ConnectHeaders::from_map(&again), headers);

    // Any host the writer is handed must survive its own quoting.
    if let Ok(host) = std::str::from_utf8(data)
        && !host.is_empty()
    {
        let f = Forwarded {
            for_addr: SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 1),
            host: Some(host.to_string()),
        };
        assert_eq!(f.to_string().parse::<Forwarded>(), Ok(f));
    }
    headers != ConnectHeaders::default()
}

fn check_header_values(v: &str) {
    let b: Baggage = v.parse().expect("baggage parsing is lenient");
    assert_eq!(b.to_string().parse::<Baggage>(), Ok(b));
    match v.parse::<Forwarded>() {
        Ok(f) => {
            assert!(f.host.as_ref().is_none_or(|h| !h.is_empty()));
            assert_eq!(f.to_string().parse::<Forwarded>(), Ok(f));
        }
        Err(e) => one_line(&e),
    }
    match v.parse::<TraceParent>() {
        Ok(t) => {
            assert!(t.trace_id() != 0 && t.parent_id() != 0);
            let s = t.to_string();
            assert_eq!(s.len(), 55, "{s}");
            assert_eq!(s.parse::<TraceParent>(), Ok(t));
        }
        Err(e) => one_line(&e),
    }
}

/// A CONNECT `:authority`, parsed as text and as the server gets it (through `http`'s URI
/// authority). Accepted: a non-zero port, a lower-case host name of valid labels or a socket
/// address, printing back to itself and to something a client can send.
pub fn authority(data: &[u8]) -> bool {
    let mut accepted = false;
    if let Ok(s) = std::str::from_utf8(data) {
        accepted |= check_authority(s);
    }
    if let Ok(a) = http::uri::Authority::try_from(data) {
        accepted |= check_authority(a.as_str());
    }
    accepted
}

fn check_authority(s: &str) -> bool {
    let a = match s.parse::<Authority>() {
        Ok(a) => a,
        Err(e) => {
            one_line(&e);
            return false;
        }
    };
    assert_ne!(a.port(), 0, "{s:?}");
    match &a {
        Authority::Addr(addr) => assert_eq!(a.ip(), Some(addr.ip())),
        Authority::Host(h, _) => {
            assert!(a.ip().is_none());
            assert!(!h.is_empty() && h.len() <= 253, "{h:?}");
            assert!(
                h.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b)),
                "{h:?}"
            );
            assert!(h.parse::<IpAddr>().is_err(), "{h:?}");
        }
    }
    let printed = a.to_string();
    assert_eq!(printed.parse::<Authority>().as_ref(), Ok(&a), "{s:?}");
    assert!(
        http::uri::Authority::try_from(printed.as_str()).is_ok(),
        "{printed:?} from {s:?} cannot be sent"
    );
    true
}

/// SPIFFE identities: accepted only in the exact `spiffe://td/ns/x/sa/y` form, printing back
/// to the input; parsing and building from parts agree. Input `a|b|c` also builds from parts.
pub fn identity(data: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(data) else {
        return false;
    };
    let parsed = s.parse::<Identity>();
    match &parsed {
        Ok(id) => {
            assert_eq!(id.to_string(), s);
            let rest = s
                .strip_prefix("spiffe://")
                .expect("accepted without scheme");
            let parts: Vec<&str> = rest.split('/').collect();
            assert_eq!(parts.len(), 5, "{s:?}");
            assert_eq!((parts[1], parts[3]), ("ns", "sa"));
            let fields = [id.trust_domain(), id.namespace(), id.service_account()];
            assert_eq!(fields, [parts[0], parts[2], parts[4]]);
            for f in fields {
                assert!(!f.is_empty());
                assert!(
                    !f.chars()
                        .any(|c| c.is_whitespace() || c.is_control() || "/?#".contains(c))
                );
            }
            assert_eq!(id.principal(), rest);
            assert_eq!(
                Identity::new(fields[0], fields[1], fields[2]).as_ref(),
                Ok(id)
            );
        }
        Err(e) => {
            one_line(e);
            if !s.starts_with("spiffe://") {
                assert_eq!(e, &IdentityError::NotSpiffe(s.to_string()));
            }
        }
    }
    let mut parts = s.splitn(3, '|');
    if let (Some(td), Some(ns), Some(sa)) = (parts.next(), parts.next(), parts.next()) {
        match Identity::new(td, ns, sa) {
            Ok(id) => assert_eq!(id.to_string().parse::<Identity>().as_ref(), Ok(&id)),
            Err(e) => one_line(&e),
        }
    }
    parsed.is_ok()
}

/// ZDS: a sequence of frames `[control][length][message]` (control bits 0-1: descriptors
/// passed, 2: the namespace is invalid, 3-4: which namespace, 5: the proxy start fails, 6: a
/// reconnect before the frame), each decoded, converted and run through the state machine as
/// the workload manager does, beside a model of the protocol's rules (wire.md §2.2).
pub fn zds(data: &[u8]) -> bool {
    let mut sm = StateManager::<u8>::new();
    // The model: pods added or kept since the (re)connect; whether a snapshot ended.
    let mut announced = BTreeSet::<String>::new();
    let (mut snapshot_on_connection, mut snapshot_ever) = (false, false);
    let mut rest = data;
    let mut any_ack = false;
    while let [control, len, tail @ ..] = rest {
        let (payload, next) = tail.split_at(usize::from(*len).min(tail.len()));
        rest = next;
        let fds = usize::from(control & 0b11);
        let (bad_netns, netns) = (control & 0b100 != 0, (control >> 3) & 0b11);
        let start_fails = control & 0b10_0000 != 0;
        if control & 0b100_0000 != 0 {
            sm.connected();
            (announced, snapshot_on_connection) = (BTreeSet::new(), false);
        }
        let Ok(msg) = decode_request(&payload[..payload.len().min(MAX_PACKET)]) else {
            continue;
        };
        assert_eq!(
            zds::WorkloadRequest::decode(msg.encode_to_vec().as_slice()).as_ref(),
            Ok(&msg)
        );
        let Some(req) = to_request(msg, vec![(); fds], |()| {
            if bad_netns {
                Err("not a network namespace".to_string())
            } else {
                Ok(netns)
            }
        }) else {
            continue;
        };
        let before: Vec<(String, bool)> = pods(&sm);
        let (kind, uid) = match &req {
            Request::Add { uid, .. } => ("add", uid.clone()),
            Request::Keep { uid } => ("keep", uid.clone()),
            Request::Del { uid } => ("del", uid.clone()),
            Request::SnapshotSent => ("snapshot", String::new()),
        };
        // Keep after SnapshotSent and a second SnapshotSent end the connection.
        let violation = fds == 0 && snapshot_on_connection && matches!(kind, "keep" | "snapshot");
        let plan = match sm.handle(req, fds) {
            Err(v) => {
                assert!(violation, "{v}");
                assert_eq!(pods(&sm), before);
                sm.connected();
                (announced, snapshot_on_connection) = (BTreeSet::new(), false);
                continue;
            }
            Ok(plan) => plan,
        };
        assert!(
            !violation,
            "{kind} {uid} after SnapshotSent was not a violation"
        );
        for stopped in &plan.stop {
            assert!(
                before.contains(&(stopped.clone(), true)),
                "stopping {stopped}"
            );
        }
        match plan.next {
            Next::Reply(Reply::Nack(msg)) => {
                assert!(plan.stop.is_empty());
                assert_eq!(pods(&sm), before, "a NACK changed the pods: {msg}");
            }
            Next::Reply(Reply::Ack) => {
                any_ack = true;
                match kind {
                    "add" | "keep" => _ = announced.insert(uid),
                    "del" => {
                        assert!(pods(&sm).iter().all(|(u, _)| *u != uid), "{uid} kept");
                        announced.remove(&uid);
                    }
                    _ => {
                        (snapshot_on_connection, snapshot_ever) = (true, true);
                        let kept: Vec<_> = before
                            .iter()
                            .filter(|(u, _)| announced.contains(u))
                            .cloned()
                            .collect();
                        assert_eq!(pods(&sm), kept, "the snapshot kept other pods");
                    }
                }
            }
            Next::Start(start) => {
                assert!(kind == "add" && fds == 1 && !bad_netns && !start.uid.is_empty());
                assert_eq!((&start.uid, start.netns), (&uid, netns));
                announced.insert(uid);
                let result = if start_fails {
                    Err("start failed".to_string())
                } else {
                    Ok(())
                };
                let outcome = sm.started(&start, result);
                assert_eq!(outcome.keep, !start_fails);
                assert_eq!(outcome.reply == Reply::Ack, !start_fails);
                let running = pods(&sm).contains(&(start.uid.clone(), true));
                assert_eq!(running, !start_fails);
                any_ack |= !start_fails;
            }
        }
        let all = pods(&sm);
        assert_eq!(sm.active_count() + sm.pending_count(), all.len());
        assert_eq!(sm.pending().len(), sm.pending_count());
        assert_eq!(sm.workloads().count(), all.len());
        assert_eq!(sm.is_ready(), snapshot_ever && sm.pending_count() == 0);
    }
    any_ack
}

fn pods(sm: &StateManager<u8>) -> Vec<(String, bool)> {
    sm.pods()
        .map(|(uid, _, running)| (uid.to_string(), running))
        .collect()
}

/// SOCKS5: the client's bytes in memory (handed out three at a time), the negotiation run to
/// completion. It must read exactly the greeting and the request (never the app's first bytes
/// behind them), write the method selection and at most one reply, and reach the address the
/// request names (domain names through a fixed resolver).
pub fn socks5(data: &[u8]) -> bool {
    let mut wire = Wire {
        input: data,
        read: 0,
        written: Vec::new(),
    };
    let resolver = |host: String| -> ResolveFuture {
        let answer = if host.ends_with("fail") {
            Err("no such host".to_string())
        } else if host.ends_with("none") {
            Ok(Vec::new())
        } else {
            Ok(vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, host.len() as u8))])
        };
        Box::pin(std::future::ready(answer))
    };
    let result = run_ready(negotiate(&mut wire, &resolver));
    let greeting = 2 + usize::from(*data.get(1).unwrap_or(&0));
    let reply = |code: u8| [&[5, 0][..], &[5, code, 0, 1, 0, 0, 0, 0, 0, 0]].concat();
    let w = wire.written.as_slice();
    match result {
        Ok(addr) => {
            assert_eq!(w, [5, 0], "only the method selection before the connect");
            assert!(data[2..greeting].contains(&0));
            let req = &data[greeting..];
            assert_eq!(req[..2], [5, 1]);
            let (ip, at): (IpAddr, usize) = match req[3] {
                1 => (<[u8; 4]>::try_from(&req[4..8]).unwrap().into(), 8),
                4 => (<[u8; 16]>::try_from(&req[4..20]).unwrap().into(), 20),
                3 => {
                    let end = 5 + usize::from(req[4]);
                    let host = std::str::from_utf8(&req[5..end]).expect("a UTF-8 name");
                    let ip = host.parse::<IpAddr>().unwrap_or_else(|_| {
                        assert!(!host.ends_with("fail") && !host.ends_with("none"));
                        IpAddr::V4(Ipv4Addr::new(10, 0, 0, host.len() as u8))
                    });
                    (ip, end)
                }
                other => panic!("accepted address type {other}"),
            };
            let port = u16::from_be_bytes([req[at], req[at + 1]]);
            assert_eq!(addr, SocketAddr::new(ip, port));
            assert_eq!(wire.read, greeting + at + 2, "read past the request");
            true
        }
        Err(e) => {
            one_line(&e);
            match e {
                Socks5Error::Io(_) => {
                    assert_eq!(wire.read, data.len(), "gave up before the end of the input");
                    assert!(w.is_empty() || w == [5, 0] || w == [5, 0xff], "{w:?}");
                }
                Socks5Error::Version(v) if w.is_empty() => {
                    assert_eq!((wire.read, v), (1, data[0]));
                    assert_ne!(v, 5);
                }
                Socks5Error::Version(v) => {
                    assert_eq!(w, [5, 0]);
                    assert_eq!((wire.read, v), (greeting + 4, data[greeting]));
                    assert_ne!(v, 5);
                }
                Socks5Error::NoAcceptableMethod => {
                    assert_eq!(w, [5, 0xff]);
                    assert_eq!(wire.read, greeting);
                    assert!(!data[2..greeting].contains(&0));
                }
                Socks5Error::Command(c) => {
                    assert_ne!(c, 1);
                    assert_eq!(w, reply(7));
                }
                Socks5Error::AddressType(t) => {
                    assert!(![1, 3, 4].contains(&t));
                    assert_eq!(w, reply(8));
                    assert_eq!(wire.read, greeting + 4);
                }
                Socks5Error::BadDomain | Socks5Error::Resolve { .. } => assert_eq!(w, reply(4)),
                Socks5Error::Timeout => panic!("no timer runs here"),
            }
            false
        }
    }
}

/// Polls a future that only touches memory: it must finish without waiting.
fn run_ready<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("an in-memory negotiation waited"),
    }
}

/// A client connection in memory: reads hand out at most three bytes, then end of stream.
struct Wire<'a> {
    input: &'a [u8],
    read: usize,
    written: Vec<u8>,
}

impl AsyncRead for Wire<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = (self.input.len() - self.read).min(buf.remaining()).min(3);
        let start = self.read;
        buf.put_slice(&self.input[start..start + n]);
        self.read += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Wire<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.written.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// PROXY v2 header builder inputs: `[flags][src ip][src port][dst ip][dst port][identity…]`
/// (flag bit 0: source IPv6, bit 1: destination IPv6; missing bytes are zero). The identity is
/// the rest parsed as a SPIFFE ID, or else used as a service account. The header must parse
/// back (with `ppp`) to the same addresses (mapped to IPv6 when the families differ), exactly
/// one identity TLV when there is an identity, and nothing after it.
pub fn proxy_protocol(data: &[u8]) -> bool {
    let flags = data.first().copied().unwrap_or(0);
    let mut at = 1;
    let mut take = |n: usize| -> Vec<u8> {
        let bytes = (0..n).map(|i| *data.get(at + i).unwrap_or(&0)).collect();
        at += n;
        bytes
    };
    let mut addr = |v6: bool| -> SocketAddr {
        let ip: IpAddr = if v6 {
            <[u8; 16]>::try_from(take(16)).unwrap().into()
        } else {
            <[u8; 4]>::try_from(take(4)).unwrap().into()
        };
        let port = take(2);
        SocketAddr::new(ip, u16::from_be_bytes([port[0], port[1]]))
    };
    let (src, dst) = (addr(flags & 1 != 0), addr(flags & 2 != 0));
    let rest = data.get(at..).unwrap_or_default();
    let identity = std::str::from_utf8(rest).ok().and_then(|s| {
        s.parse::<Identity>()
            .or_else(|_| Identity::new("cluster.local", "default", s))
            .ok()
    });
    let bytes = match proxyproto::header(src, dst, identity.as_ref()) {
        Ok(b) => b,
        Err(e) => {
            one_line(&e);
            let id_len = identity.map_or(0, |id| id.to_string().len());
            assert!(3 + id_len + 36 > usize::from(u16::MAX), "{e}");
            return false;
        }
    };
    let h = ppp::v2::Header::try_from(bytes.as_slice()).expect("our header parses");
    assert_eq!(h.len(), bytes.len());
    assert_eq!(h.command, ppp::v2::Command::Proxy);
    assert_eq!(h.protocol, ppp::v2::Protocol::Stream);
    let mapped = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    match h.addresses {
        ppp::v2::Addresses::IPv4(a) => {
            assert!(src.is_ipv4() && dst.is_ipv4());
            let got = (a.source_address, a.source_port);
            assert_eq!((IpAddr::from(got.0), got.1), (src.ip(), src.port()));
            let got = (a.destination_address, a.destination_port);
            assert_eq!((IpAddr::from(got.0), got.1), (dst.ip(), dst.port()));
        }
        ppp::v2::Addresses::IPv6(a) => {
            assert!(src.is_ipv6() || dst.is_ipv6());
            let got = (a.source_address, a.source_port);
            assert_eq!(got, (mapped(src), src.port()));
            let got = (a.destination_address, a.destination_port);
            assert_eq!(got, (mapped(dst), dst.port()));
        }
        other => panic!("addresses {other:?} for {src} -> {dst}"),
    }
    let tlvs: Vec<(u8, Vec<u8>)> = h
        .tlvs()
        .map(|t| {
            let t = t.expect("a well-formed TLV");
            (t.kind, t.value.to_vec())
        })
        .collect();
    let want: Vec<(u8, Vec<u8>)> = identity
        .iter()
        .map(|id| (SOURCE_IDENTITY_TLV, id.to_string().into_bytes()))
        .collect();
    assert_eq!(tlvs, want);
    // A reader that has only part of the header must ask for more, not misread it.
    assert!(ppp::v2::Header::try_from(&bytes[..bytes.len() - 1]).is_err());
    true
}

/// CRL files (`CRL_PATH`): PEM with any number of CRL blocks, or one DER CRL. A file is taken
/// whole or refused with a one-line error naming it; parsing is deterministic.
pub fn crl(data: &[u8]) -> bool {
    match CrlSet::parse(data, "/etc/crl.pem") {
        Ok(set) => {
            let again = CrlSet::parse(data, "/etc/crl.pem").expect("accepted once, accepted again");
            assert_eq!(
                (set.len(), set.revoked_entries()),
                (again.len(), again.revoked_entries())
            );
            assert!(set.revoked_entries() == 0 || !set.is_empty());
            true
        }
        Err(e) => {
            one_line(&e);
            assert!(e.to_string().contains("/etc/crl.pem"), "{e}");
            false
        }
    }
}

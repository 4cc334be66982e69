//! The seed corpora of the parser targets and their mutation dictionaries. A seed named `ok-…`
//! must be accepted by its target and `bad-…` rejected; files libFuzzer adds (hash names) carry
//! no expectation. `cargo test --test offline fuzz_corpus::write_seeds -- --ignored` rewrites the seed files.

use ambit_proto::istio::workload::zds;
use prost::Message;
use rustls_pki_types::CertificateRevocationListDer;
use rustls_pki_types::pem::PemObject;

type Seeds = Vec<(&'static str, Vec<u8>)>;

fn text(seeds: &[(&'static str, &str)]) -> Seeds {
    seeds
        .iter()
        .map(|(n, s)| (*n, s.as_bytes().to_vec()))
        .collect()
}

pub fn hbone_headers() -> Seeds {
    text(&[
        (
            "ok-full.txt",
            "baggage: k8s.cluster.name=Kubernetes,k8s.namespace.name=default,\
             k8s.deployment.name=reviews-v1,service.name=reviews,service.version=v1,\
             cloud.region=eu-west-1,cloud.availability_zone=eu-west-1a\n\
             forwarded: for=\"10.0.0.1:4567\";host=reviews.default.svc.cluster.local\n\
             traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\n\
             x-forwarded-network: network-1\n",
        ),
        (
            "ok-baggage-lenient.txt",
            "baggage:  k8s.pod.name = p;prop=1 ,garbage,foo=bar,service.name=svc,=x,\n",
        ),
        (
            "ok-forwarded-chain.txt",
            "Forwarded: For=\"[fd00::1]:80\"; proto=https;host=\"a,b;c\\\"d\", for=\"9.9.9.9:9\"\n",
        ),
        (
            "ok-traceparent-later-version.txt",
            "traceparent: 01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00-extra\n",
        ),
        ("ok-network.txt", "x-forwarded-network:  net-2 \n"),
        (
            "ok-baggage-twice.txt",
            "baggage: k8s.job.name=j\nbaggage: k8s.pod.name=p\n",
        ),
        (
            "bad-malformed.txt",
            "forwarded: for=nowhere\ntraceparent: 00-zz\nx-forwarded-network: \n",
        ),
        (
            "bad-forwarded-unterminated.txt",
            "forwarded: for=\"1.2.3.4:5;host=a\nforwarded: host=a.b\n",
        ),
        (
            "bad-traceparent-zero.txt",
            "traceparent: 00-00000000000000000000000000000000-b7ad6b7169203331-00\n\
             traceparent: ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00\n",
        ),
        ("bad-no-headers.txt", "not a header line"),
        ("bad-empty.txt", ""),
    ])
    .into_iter()
    .chain([(
        "bad-not-ascii.txt",
        b"forwarded: for=\"1.2.3.4:5\";host=\xc3\xa9\n".to_vec(),
    )])
    .collect()
}

pub const HBONE_HEADERS_DICT: &[&[u8]] = &[
    b"baggage: ",
    b"forwarded: ",
    b"traceparent: ",
    b"x-forwarded-network: ",
    b"\n",
    b",",
    b";",
    b"=",
    b"\"",
    b"\\",
    b" ",
    b"for=",
    b"host=",
    b"k8s.pod.name=",
    b"k8s.cluster.name=",
    b"\"[::1]:80\"",
    b"1.2.3.4:5",
    b"00-",
    b"-",
    b"ff",
];

pub fn authority() -> Seeds {
    text(&[
        ("ok-v4.txt", "10.0.0.1:8080"),
        ("ok-v6.txt", "[fd00::1]:80"),
        ("ok-v4-mapped.txt", "[::ffff:10.0.0.1]:443"),
        ("ok-host.txt", "Reviews.default.svc.cluster.local:9080"),
        ("ok-short-host.txt", "a:1"),
        ("ok-underscore.txt", "my_svc.ns:65535"),
        ("ok-v6-scope-id.txt", "[fe80::1%2]:80"),
        ("ok-port-leading-zeros.txt", "a.b:0080"),
        ("bad-empty.txt", ""),
        ("bad-no-port.txt", "10.0.0.1"),
        ("bad-port-0.txt", "10.0.0.1:0"),
        ("bad-port-range.txt", "10.0.0.1:70000"),
        ("bad-port-sign.txt", "host:+80"),
        ("bad-empty-host.txt", ":80"),
        ("bad-v6-unbracketed.txt", "fd00::1:80"),
        ("bad-v6-no-port.txt", "[fd00::1]"),
        ("bad-v6-scope.txt", "[fe80::1%eth0]:80"),
        ("bad-empty-label.txt", "a..b:80"),
        ("bad-label-dash.txt", "-a.b:80"),
        ("bad-slash.txt", "a/b:80"),
        ("bad-userinfo.txt", "user@host:80"),
    ])
}

pub const AUTHORITY_DICT: &[&[u8]] = &[
    b":",
    b"[",
    b"]",
    b".",
    b"-",
    b"_",
    b"::",
    b"%",
    b"@",
    b"0",
    b"65535",
    b"65536",
    b"%25",
    b"[::ffff:1.2.3.4]",
];

pub fn identity() -> Seeds {
    text(&[
        (
            "ok-istio.txt",
            "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
        ),
        ("ok-other-domain.txt", "spiffe://example.org/ns/a/sa/b"),
        ("ok-unicode.txt", "spiffe://td/ns/naïve/sa/ünïcode"),
        ("bad-scheme.txt", "https://cluster.local/ns/a/sa/b"),
        ("bad-short.txt", "spiffe://cluster.local/ns/a"),
        ("bad-empty-domain.txt", "spiffe:///ns/a/sa/b"),
        ("bad-empty-namespace.txt", "spiffe://td/ns//sa/b"),
        ("bad-space.txt", "spiffe://td/ns/a/sa/b c"),
        ("bad-trailing-slash.txt", "spiffe://td/ns/a/sa/b/"),
        ("bad-swapped.txt", "spiffe://td/sa/a/ns/b"),
        ("bad-query.txt", "spiffe://td/ns/a/sa/b?x"),
        ("bad-parts.txt", "cluster.local|default|sa"),
        ("bad-empty.txt", ""),
    ])
}

pub const IDENTITY_DICT: &[&[u8]] = &[
    b"spiffe://",
    b"/ns/",
    b"/sa/",
    b"/",
    b"|",
    b" ",
    b"?",
    b"#",
    b"\t",
    "é".as_bytes(),
];

/// One ZDS frame of the `zds` target: control byte, length, message.
fn frame(control: u8, payload: zds::workload_request::Payload) -> Vec<u8> {
    let bytes = zds::WorkloadRequest {
        payload: Some(payload),
    }
    .encode_to_vec();
    let len = u8::try_from(bytes.len()).expect("a seed message under 256 bytes");
    [&[control, len][..], &bytes].concat()
}

fn add(uid: &str) -> zds::workload_request::Payload {
    zds::workload_request::Payload::Add(zds::AddWorkload {
        uid: uid.into(),
        workload_info: Some(zds::WorkloadInfo {
            name: format!("{uid}-name"),
            namespace: "default".into(),
            service_account: "sa".into(),
        }),
    })
}

fn keep(uid: &str) -> zds::workload_request::Payload {
    zds::workload_request::Payload::Keep(zds::KeepWorkload { uid: uid.into() })
}

fn del(uid: &str) -> zds::workload_request::Payload {
    zds::workload_request::Payload::Del(zds::DelWorkload { uid: uid.into() })
}

fn snapshot() -> zds::workload_request::Payload {
    zds::workload_request::Payload::SnapshotSent(zds::SnapshotSent {})
}

/// Control bits of a frame (see `targets::zds`).
const ONE_FD: u8 = 1;
const BAD_NETNS: u8 = 0b100;
const NETNS_2: u8 = 0b1_0000;
const START_FAILS: u8 = 0b10_0000;
const RECONNECT: u8 = 0b100_0000;

pub fn zds() -> Seeds {
    let cat = |frames: Vec<Vec<u8>>| frames.concat();
    vec![
        (
            "ok-snapshot.bin",
            cat(vec![
                frame(ONE_FD, add("uid-1")),
                frame(ONE_FD | NETNS_2, add("uid-2")),
                frame(0, snapshot()),
            ]),
        ),
        (
            "ok-reconnect-keep.bin",
            cat(vec![
                frame(ONE_FD, add("uid-1")),
                frame(0, snapshot()),
                frame(RECONNECT, keep("uid-1")),
                frame(0, snapshot()),
                frame(0, del("uid-1")),
            ]),
        ),
        (
            "ok-sandbox-replaced-and-retry.bin",
            cat(vec![
                frame(ONE_FD, add("uid-1")),
                frame(ONE_FD | NETNS_2 | START_FAILS, add("uid-1")),
                frame(ONE_FD | NETNS_2, add("uid-1")),
                frame(ONE_FD | NETNS_2, add("uid-1")),
            ]),
        ),
        (
            "ok-violations.bin",
            cat(vec![
                frame(0, snapshot()),
                frame(0, keep("uid-1")),
                frame(0, snapshot()),
                frame(0, snapshot()),
            ]),
        ),
        (
            "bad-nacks.bin",
            cat(vec![
                frame(0, add("uid-1")),
                frame(2, add("uid-1")),
                frame(ONE_FD | BAD_NETNS, add("uid-1")),
                frame(ONE_FD, add("")),
                frame(
                    ONE_FD,
                    zds::workload_request::Payload::Add(zds::AddWorkload {
                        uid: "no-info".into(),
                        workload_info: None,
                    }),
                ),
                frame(0, keep("unknown")),
                frame(ONE_FD, snapshot()),
                frame(ONE_FD, del("uid-1")),
            ]),
        ),
        ("bad-undecodable.bin", vec![0, 3, 0xff, 0xff, 0xff]),
        ("bad-no-payload.bin", vec![0, 0]),
        ("bad-empty.bin", Vec::new()),
    ]
}

pub const ZDS_DICT: &[&[u8]] = &[
    &[0x0a],
    &[0x12],
    &[0x1a, 0x00],
    &[0x2a],
    &[0x01],
    &[0x41],
    &[0x80, 0x01],
    &[0xff, 0xff, 0xff, 0xff, 0x0f],
];

pub fn socks5() -> Seeds {
    let domain = |name: &str| {
        let len = u8::try_from(name.len()).unwrap();
        [
            &[5, 1, 0, 5, 1, 0, 3, len][..],
            name.as_bytes(),
            &[0x23, 0x82],
        ]
        .concat()
    };
    let mut v6 = vec![5, 2, 2, 0, 5, 1, 0, 4];
    v6.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 187]);
    vec![
        (
            "ok-v4-early-data.bin",
            [
                &[5, 1, 0, 5, 1, 0, 1, 10, 0, 0, 1, 0, 80][..],
                b"GET / HTTP/1.1\r\n",
            ]
            .concat(),
        ),
        ("ok-v6.bin", v6),
        ("ok-domain.bin", domain("reviews.default.svc")),
        ("ok-domain-ip-literal.bin", domain("10.1.2.3")),
        ("ok-domain-v6-literal.bin", domain("fd00::7")),
        ("bad-version.bin", vec![4, 1, 0]),
        ("bad-no-method.bin", vec![5, 1, 2]),
        (
            "bad-command-bind.bin",
            vec![5, 1, 0, 5, 2, 0, 1, 1, 2, 3, 4, 0, 80],
        ),
        ("bad-address-type.bin", vec![5, 1, 0, 5, 1, 0, 9]),
        (
            "bad-domain-utf8.bin",
            vec![5, 1, 0, 5, 1, 0, 3, 2, 0xff, 0xfe, 0, 80],
        ),
        ("bad-resolve-fails.bin", domain("x.fail")),
        ("bad-resolve-empty.bin", domain("x.none")),
        ("bad-truncated.bin", vec![5, 1, 0, 5, 1, 0, 1, 10, 0]),
        (
            "bad-request-version.bin",
            vec![5, 1, 0, 4, 1, 0, 1, 1, 2, 3, 4, 0, 80],
        ),
        ("bad-empty.bin", Vec::new()),
    ]
}

pub const SOCKS5_DICT: &[&[u8]] = &[
    &[5],
    &[0],
    &[1],
    &[3],
    &[4],
    &[0xff],
    b"fail",
    b"none",
    b"10.0.0.1",
    b"::1",
];

pub fn proxy_protocol() -> Seeds {
    let v4 = |ip: [u8; 4], port: u16| [&ip[..], &port.to_be_bytes()].concat();
    let v6 = |last: u8, port: u16| {
        let mut ip = [0u8; 16];
        (ip[0], ip[15]) = (0xfd, last);
        [&ip[..], &port.to_be_bytes()].concat()
    };
    let seed = |flags: u8, src: Vec<u8>, dst: Vec<u8>, id: &str| {
        [&[flags][..], &src, &dst, id.as_bytes()].concat()
    };
    vec![
        (
            "ok-v4-identity.bin",
            seed(
                0,
                v4([10, 0, 0, 1], 40000),
                v4([10, 96, 0, 1], 80),
                "spiffe://cluster.local/ns/a/sa/client",
            ),
        ),
        ("ok-v6-none.bin", seed(3, v6(1, 1), v6(2, 2), "")),
        (
            "ok-mixed-v6-src.bin",
            seed(1, v6(1, 443), v4([10, 0, 0, 2], 8080), "sa-name"),
        ),
        (
            "ok-mixed-v4-src.bin",
            seed(2, v4([10, 0, 0, 1], 1), v6(2, 2), "not an identity/"),
        ),
        ("ok-short.bin", vec![0, 1]),
        ("ok-empty.bin", Vec::new()),
    ]
}

pub const PROXY_PROTOCOL_DICT: &[&[u8]] = &[
    b"spiffe://",
    b"/ns/",
    b"/sa/",
    &[0xff; 16],
    &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff],
];

/// CRLs signed by a built-in CA: empty, one with two serials, two concatenated, DER, and
/// damaged ones.
pub fn crl() -> Seeds {
    let ca = ambit::identity::BuiltinCa::in_memory(std::time::Duration::from_secs(3600))
        .expect("built-in CA");
    let one = ca
        .crl_pem(&[vec![0x01, 0x02], vec![0x7f; 16]])
        .expect("CRL");
    let other = ca.crl_pem(&[vec![0x42]]).expect("CRL");
    let der = CertificateRevocationListDer::pem_slice_iter(one.as_bytes())
        .next()
        .and_then(Result::ok)
        .map(|d| d.as_ref().to_vec())
        .expect("a CRL block");
    let mut truncated = der.clone();
    truncated.truncate(der.len() / 2);
    let mut flipped = der.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x55;
    vec![
        ("ok-empty.pem", Vec::new()),
        ("ok-one.pem", one.clone().into_bytes()),
        ("ok-two.pem", format!("{one}{other}").into_bytes()),
        ("ok-der.der", der),
        (
            "ok-with-other-blocks.pem",
            format!("{}{one}", ca.root_pem()).into_bytes(),
        ),
        ("bad-garbage.txt", b"this is not a CRL".to_vec()),
        ("bad-truncated.der", truncated),
        ("bad-flipped.der", flipped),
        (
            "bad-base64.pem",
            b"-----BEGIN X509 CRL-----\n!!!!\n-----END X509 CRL-----\n".to_vec(),
        ),
    ]
}

pub const CRL_DICT: &[&[u8]] = &[
    b"-----BEGIN X509 CRL-----\n",
    b"-----END X509 CRL-----\n",
    b"-----BEGIN CERTIFICATE-----\n",
    b"\x30\x82",
    b"\x02\x01\x01",
    b"\n",
];

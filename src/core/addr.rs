//! HBONE targets: the `:authority` of a CONNECT request.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// Where a CONNECT request asks to go: a socket address (`1.2.3.4:80`, `[fd00::1]:80`) or a
/// host name and port (`reviews.default.svc.cluster.local:9080`, used through gateways).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Authority {
    Addr(SocketAddr),
    Host(String, u16),
}

/// Why a string is not a CONNECT authority.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid authority {authority:?}: {reason}")]
pub struct AuthorityError {
    pub authority: String,
    pub reason: &'static str,
}

// === impl Authority ===

impl Authority {
    pub fn port(&self) -> u16 {
        match self {
            Authority::Addr(a) => a.port(),
            Authority::Host(_, p) => *p,
        }
    }

    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Authority::Addr(a) => Some(a.ip()),
            Authority::Host(..) => None,
        }
    }
}

impl From<SocketAddr> for Authority {
    fn from(a: SocketAddr) -> Self {
        Authority::Addr(a)
    }
}

impl FromStr for Authority {
    type Err = AuthorityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| AuthorityError {
            authority: s.to_string(),
            reason,
        };
        if let Ok(addr) = s.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err(err("port 0"));
            }
            return Ok(Authority::Addr(addr));
        }
        if s.starts_with('[') {
            return Err(err("bad IPv6 address or port"));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| err("missing port"))?;
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("port is not a number"));
        }
        let port: u16 = port.parse().map_err(|_| err("port out of range"))?;
        if port == 0 {
            return Err(err("port 0"));
        }
        if host.is_empty() {
            return Err(err("empty host"));
        }
        if host.parse::<IpAddr>().is_ok() {
            // An IPv6 address without brackets: `::1:80` is ambiguous.
            return Err(err("IPv6 address without brackets"));
        }
        let valid_label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if host.len() > 253 || !host.split('.').all(valid_label) {
            return Err(err("bad host name"));
        }
        Ok(Authority::Host(host.to_ascii_lowercase(), port))
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // SocketAddr's Display brackets IPv6 addresses, as an authority must.
            Authority::Addr(a) => write!(f, "{a}"),
            Authority::Host(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_socket_addresses() {
        assert_eq!(
            "10.0.0.1:8080".parse::<Authority>().unwrap(),
            Authority::Addr("10.0.0.1:8080".parse().unwrap())
        );
        let v6: Authority = "[fd00::1]:80".parse().unwrap();
        assert_eq!(v6, Authority::Addr("[fd00::1]:80".parse().unwrap()));
        assert_eq!(v6.to_string(), "[fd00::1]:80");
    }

    #[test]
    fn parses_host_names() {
        let a: Authority = "Reviews.default.svc.cluster.local:9080".parse().unwrap();
        assert_eq!(
            a,
            Authority::Host("reviews.default.svc.cluster.local".into(), 9080)
        );
        assert_eq!(a.to_string(), "reviews.default.svc.cluster.local:9080");
    }

    #[test]
    fn rejects_malformed() {
        for (s, reason) in [
            ("", "missing port"),
            ("10.0.0.1", "missing port"),
            ("10.0.0.1:", "port is not a number"),
            ("10.0.0.1:http", "port is not a number"),
            ("10.0.0.1:70000", "port out of range"),
            ("10.0.0.1:0", "port 0"),
            (":80", "empty host"),
            ("fd00::1:80", "IPv6 address without brackets"),
            ("[fd00::1]", "bad IPv6 address or port"),
            ("[fd00::zz]:80", "bad IPv6 address or port"),
            ("a b:80", "bad host name"),
            ("a..b:80", "bad host name"),
            ("-a.b:80", "bad host name"),
            ("a/b:80", "bad host name"),
        ] {
            assert_eq!(
                s.parse::<Authority>(),
                Err(AuthorityError {
                    authority: s.into(),
                    reason
                }),
                "{s:?}"
            );
        }
    }
}

//! The nftables rule sets the tests need, as text, and their installation.
//!
//! - [`outbound_capture`]: in a client pod, TCP leaving the pod (not loopback, not sent by the
//!   proxy itself, recognised by its socket mark) is redirected to the proxy's outbound port. The
//!   proxy recovers the original destination with `SO_ORIGINAL_DST`.
//! - [`return_path`]: in a server pod, the proxy connects to the local app with the *client's*
//!   address as source (`IP_TRANSPARENT`). The app's replies are addressed to a non-local IP and
//!   would leave through the pod's interface; instead the proxy's connections are tagged in
//!   conntrack, the tag is copied onto the app's reply packets, and a policy route sends packets
//!   with that tag to the local table, so they reach the proxy's socket.
//!
//! Both families are handled by one `inet` table per rule set.

use crate::{LabError, Netns};

/// The socket mark ambit puts on its own connections (`PACKET_MARK=1337`).
pub const PROXY_MARK: u32 = 0x539;
/// The mark used to route the app's replies back to the proxy (distinct from [`PROXY_MARK`]
/// so the proxy's own marked traffic to other pods keeps using the main table).
pub const RETURN_MARK: u32 = 0x111;
/// The routing table holding the `local` routes of the return path.
pub const RETURN_TABLE: u32 = 100;

/// The outbound-capture rule set: TCP to anything but loopback, not marked `proxy_mark`, is
/// redirected to `port` on the local host.
pub fn outbound_capture(port: u16, proxy_mark: u32) -> String {
    format!(
        "table inet ambit_capture
delete table inet ambit_capture
table inet ambit_capture {{
  chain output {{
    type nat hook output priority -100; policy accept;
    meta mark {proxy_mark:#x} return
    oifname \"lo\" return
    ip daddr 127.0.0.0/8 return
    ip6 daddr ::1 return
    meta l4proto tcp redirect to :{port}
  }}
}}
"
    )
}

/// The return-path rule set: connections whose packets carry `proxy_mark` get conntrack mark
/// `return_mark`; locally generated packets of such connections that are *not* the proxy's (the
/// app's replies) get packet mark `return_mark`, which a `route` chain turns into a re-route.
pub fn return_path(proxy_mark: u32, return_mark: u32) -> String {
    format!(
        "table inet ambit_return
delete table inet ambit_return
table inet ambit_return {{
  chain output {{
    type route hook output priority -150; policy accept;
    meta mark {proxy_mark:#x} ct mark set {return_mark:#x} return
    ct mark {return_mark:#x} meta mark set {return_mark:#x}
  }}
}}
"
    )
}

/// Installs [`outbound_capture`] in `ns`.
pub fn install_outbound_capture(ns: &Netns, port: u16) -> Result<(), LabError> {
    ns.nft(&outbound_capture(port, PROXY_MARK))
}

/// Installs [`return_path`] in `ns`, with the policy routes for IPv4 and IPv6 and with reverse
/// path filtering off (the re-routed replies arrive on `lo` from a non-local source).
pub fn install_return_path(ns: &Netns) -> Result<(), LabError> {
    ns.nft(&return_path(PROXY_MARK, RETURN_MARK))?;
    install_return_routes(ns)
}

/// The policy routes and sysctls of the return path (the nft part is separate).
fn install_return_routes(ns: &Netns) -> Result<(), LabError> {
    let mark = format!("{RETURN_MARK:#x}");
    let table = RETURN_TABLE.to_string();
    // Idempotent: a pod captured again (deleted and re-added) gets the same routes, not an error.
    for family in ["-4", "-6"] {
        let _ = ns.ip(&[family, "rule", "del", "fwmark", &mark, "lookup", &table]);
        ns.ip(&[family, "rule", "add", "fwmark", &mark, "lookup", &table])?;
    }
    ns.ip(&[
        "-4",
        "route",
        "replace",
        "local",
        "0.0.0.0/0",
        "dev",
        "lo",
        "table",
        &table,
    ])?;
    ns.ip(&[
        "-6", "route", "replace", "local", "::/0", "dev", "lo", "table", &table,
    ])?;
    for key in [
        "net.ipv4.conf.all.rp_filter",
        "net.ipv4.conf.default.rp_filter",
        "net.ipv4.conf.lo.rp_filter",
    ] {
        ns.sysctl(key, "0")?;
    }
    Ok(())
}

/// The node agent's in-pod rule set for a captured pod (what istio-cni writes in shared mode):
/// - outbound: TCP not from the proxy (socket mark `proxy_mark` under mask 0xfff) and not to
///   loopback goes to 15001; with `dns`, port 53 (UDP and TCP) goes to 15053 first;
/// - inbound: TCP arriving from outside, except to the HBONE port 15008, goes to 15006;
/// - the original-source return path of [`return_path`] (connmark on the proxy's connections,
///   the app's replies re-routed locally).
pub fn inpod_rules(proxy_mark: u32, return_mark: u32, dns: bool) -> String {
    let dns_rules = if dns {
        "    udp dport 53 redirect to :15053\n    tcp dport 53 redirect to :15053\n"
    } else {
        ""
    };
    format!(
        "table inet ambit_inpod
delete table inet ambit_inpod
table inet ambit_inpod {{
  chain output_nat {{
    type nat hook output priority -100; policy accept;
    meta mark & 0xfff == {proxy_mark:#x} return
{dns_rules}    oifname \"lo\" return
    ip daddr 127.0.0.0/8 return
    ip6 daddr ::1 return
    meta l4proto tcp redirect to :15001
  }}
  chain prerouting_nat {{
    type nat hook prerouting priority -100; policy accept;
    iifname \"lo\" return
    meta mark & 0xfff == {proxy_mark:#x} return
    tcp dport 15008 return
    meta l4proto tcp redirect to :15006
  }}
  chain output_route {{
    type route hook output priority -150; policy accept;
    meta mark & 0xfff == {proxy_mark:#x} ct mark set {return_mark:#x} return
    ct mark {return_mark:#x} meta mark set {return_mark:#x}
  }}
}}
"
    )
}

/// Installs [`inpod_rules`] in a captured pod, with the return path's policy routes.
pub fn install_inpod(ns: &Netns, dns: bool) -> Result<(), LabError> {
    ns.nft(&inpod_rules(PROXY_MARK, RETURN_MARK, dns))?;
    install_return_routes(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inpod_rules_capture_both_ways_and_dns_only_when_asked() {
        let plain = inpod_rules(PROXY_MARK, RETURN_MARK, false);
        assert!(plain.contains("meta l4proto tcp redirect to :15001"));
        assert!(plain.contains("tcp dport 15008 return\n    meta l4proto tcp redirect to :15006"));
        assert!(plain.contains("meta mark & 0xfff == 0x539 return"));
        assert!(plain.contains("ct mark set 0x111"));
        assert!(!plain.contains("15053"));
        let dns = inpod_rules(PROXY_MARK, RETURN_MARK, true);
        assert!(dns.contains("udp dport 53 redirect to :15053"));
        // DNS is redirected before the loopback exemptions (resolvers often live on 127.0.0.x).
        assert!(dns.find("15053").unwrap() < dns.find("oifname").unwrap());
    }
}

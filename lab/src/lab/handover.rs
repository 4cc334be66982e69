//! Replacing a node's proxy as an upgrade does: the new proxy starts beside the old one, in a
//! namespace of its own (as a new DaemonSet pod has; the node-level ports 15000/15020/15021
//! would collide in the node's), connects to the node agent, gets the node's pods and serves
//! them alongside the old one (in-pod listeners share their ports); then the old one gets
//! SIGTERM and drains.

use std::net::SocketAddr;
use std::time::Duration;

use super::{Lab, ProxyMode};
use crate::topology::UNDERLAY_PREFIX;
use crate::{LabError, Netns, Process, link, wait_http_ok};

/// How long the old proxy may take to drain and exit (its connection-termination deadline is
/// 5 s by default).
const DRAIN_WITHIN: Duration = Duration::from_secs(20);

impl Lab {
    /// Hands node `node`'s pods over to a new proxy and ends the old one gracefully; returns
    /// once the old one has exited. The new proxy's node-level ports are in
    /// [`Lab::proxy_ns_for`]'s namespace no more but in its own.
    pub async fn hand_over_proxy(&mut self, node: &str) -> Result<(), LabError> {
        if self.opts.mode != ProxyMode::Shared {
            return Err(LabError::Usage(
                "a proxy hand-over needs shared mode (one proxy per node)".into(),
            ));
        }
        self.restarts += 1;
        let n = self.restarts;
        let ns = Netns::with_name(self.ns_name("h", &format!("{node}-{n}")))?;
        let port = format!("h{n}");
        link::veth(&self.underlay, &port, &ns, "eth0")?;
        self.underlay.ip(&["link", "set", &port, "master", "br0"])?;
        // An underlay address no node takes (nodes count up from .2).
        ns.add_addr(
            "eth0",
            &format!("172.30.0.{}/{UNDERLAY_PREFIX}", 200 + n % 50),
        )?;
        let Some((_, spec)) = self.proxy_spec(node, &format!(".{n}")) else {
            return Err(LabError::NoSuchPod {
                pod: node.to_string(),
                hint: " (no node proxy runs for it)".into(),
            });
        };
        let mut new = Process::spawn(Some(&ns), &spec, &self.run_dir)?;
        let ready = SocketAddr::from(([127, 0, 0, 1], 15021));
        wait_http_ok(
            &ns,
            ready,
            "/healthz/ready",
            150,
            Duration::from_secs(1),
            Some(&mut new),
        )
        .await?;
        let old = self.proxies.insert(node.to_string(), new);
        self.handover_ns.push(ns);
        if let Some(mut old) = old
            && old.terminate(DRAIN_WITHIN).await.is_none()
        {
            return Err(LabError::Usage(format!(
                "the old proxy of {node} did not exit within {DRAIN_WITHIN:?} of SIGTERM"
            )));
        }
        Ok(())
    }
}

//! On-demand DNS: a service endpoint known by host name only (a `ServiceEntry` with
//! `resolution: DNS` becomes a workload with a `hostname` and no address) is resolved when a
//! connection picks it, as ztunnel does. The proxy is handed a [`OnDemandDns`] (the composition
//! root builds [`SystemDns`] from a `resolv.conf`; tests hand in their own), so the data path
//! never reaches for configuration itself.
//!
//! Invariants: answers are cached for their TTL by the resolver (hickory's cache), so a busy
//! endpoint costs one lookup per TTL, not one per connection; every connection that needs a
//! name counts once in `istio_on_demand_dns_total`, cached or not (ztunnel counts requests).

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::LookupIpStrategy;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use rand::seq::IndexedRandom;

/// Why a host name gave no address.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("no resolver for on-demand DNS: {0}")]
    NotConfigured(Arc<str>),
    #[error("{0}")]
    Resolve(String),
    #[error("the answer has no address")]
    Empty,
}

/// Why the on-demand resolver could not be built.
#[derive(Debug, thiserror::Error)]
#[error("on-demand DNS resolver from {path}: {reason}")]
pub struct ResolverConfigError {
    path: String,
    reason: String,
}

/// The future of one lookup: every address of the name, both families.
pub type LookupFuture = Pin<Box<dyn Future<Output = Result<Vec<IpAddr>, LookupError>> + Send>>;

/// Resolves the host names of workloads that have no address.
pub trait Lookup: Send + Sync + 'static {
    fn lookup(&self, hostname: &str) -> LookupFuture;
}

/// The proxy's on-demand resolver: a shared handle, cheap to clone into every pod's proxy.
#[derive(Clone)]
pub struct OnDemandDns(Arc<dyn Lookup>);

impl OnDemandDns {
    pub fn new(lookup: Arc<dyn Lookup>) -> Self {
        OnDemandDns(lookup)
    }

    /// One address of `hostname`, of `like`'s family when the answer has one (a pure IPv4 or
    /// IPv6 client could not use the other), picked at random among them, as ztunnel does.
    pub async fn resolve(&self, hostname: &str, like: IpAddr) -> Result<IpAddr, LookupError> {
        let addrs = self.0.lookup(hostname).await?;
        let (same, other): (Vec<IpAddr>, Vec<IpAddr>) = addrs
            .into_iter()
            .partition(|ip| ip.is_ipv4() == like.is_ipv4());
        let mut rng = rand::rng();
        same.choose(&mut rng)
            .or_else(|| other.choose(&mut rng))
            .copied()
            .ok_or(LookupError::Empty)
    }
}

impl OnDemandDns {
    /// No resolver (why is in every lookup's error): a workload known by name only cannot be
    /// reached, everything else works.
    pub fn unavailable(why: &str) -> Self {
        OnDemandDns(Arc::new(NotConfigured(why.into())))
    }
}

impl Default for OnDemandDns {
    fn default() -> Self {
        OnDemandDns::unavailable("none configured")
    }
}

impl fmt::Debug for OnDemandDns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OnDemandDns")
    }
}

struct NotConfigured(Arc<str>);

impl Lookup for NotConfigured {
    fn lookup(&self, _: &str) -> LookupFuture {
        let why = self.0.clone();
        Box::pin(async move { Err(LookupError::NotConfigured(why)) })
    }
}

/// Lookups through the name servers of a `resolv.conf` (ztunnel reads the system's), with a
/// TTL-honouring cache.
pub struct SystemDns {
    resolver: TokioResolver,
}

/// Answers kept in the cache (ztunnel's size).
const CACHE_SIZE: u64 = 4096;

impl SystemDns {
    /// Reads `path` (name servers, search domains, options). `ipv6` asks for AAAA records as
    /// well as A (both in parallel, so the client's family can be preferred per connection).
    pub fn from_resolv_conf(path: &Path, ipv6: bool) -> Result<SystemDns, ResolverConfigError> {
        let err = |reason: String| ResolverConfigError {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let (config, mut opts) = hickory_resolver::system_conf::parse_resolv_conf(text)
            .map_err(|e| err(e.to_string()))?;
        opts.cache_size = CACHE_SIZE;
        opts.ip_strategy = if ipv6 {
            LookupIpStrategy::Ipv4AndIpv6
        } else {
            LookupIpStrategy::Ipv4Only
        };
        let mut builder =
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
        *builder.options_mut() = opts;
        let resolver = builder.build().map_err(|e| err(e.to_string()))?;
        Ok(SystemDns { resolver })
    }
}

impl Lookup for SystemDns {
    fn lookup(&self, hostname: &str) -> LookupFuture {
        let resolver = self.resolver.clone();
        let hostname = hostname.to_string();
        Box::pin(async move {
            let answer = resolver
                .lookup_ip(hostname.as_str())
                .await
                .map_err(|e| LookupError::Resolve(e.to_string()))?;
            Ok(answer.iter().collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Vec<IpAddr>);

    impl Lookup for Fixed {
        fn lookup(&self, _: &str) -> LookupFuture {
            let addrs = self.0.clone();
            Box::pin(async move { Ok(addrs) })
        }
    }

    fn dns(addrs: &[&str]) -> OnDemandDns {
        OnDemandDns::new(Arc::new(Fixed(
            addrs.iter().map(|a| a.parse().unwrap()).collect(),
        )))
    }

    #[tokio::test]
    async fn prefers_the_clients_family_and_falls_back_to_the_other() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let v6: IpAddr = "fd00::1".parse().unwrap();
        let both = dns(&["fd00::9", "192.0.2.7"]);
        assert_eq!(
            both.resolve("x", v4).await.unwrap(),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            both.resolve("x", v6).await.unwrap(),
            "fd00::9".parse::<IpAddr>().unwrap()
        );
        let only6 = dns(&["fd00::9"]);
        assert_eq!(
            only6.resolve("x", v4).await.unwrap(),
            "fd00::9".parse::<IpAddr>().unwrap()
        );
        assert!(matches!(
            dns(&[]).resolve("x", v4).await,
            Err(LookupError::Empty)
        ));
        assert_eq!(
            OnDemandDns::default()
                .resolve("x", v4)
                .await
                .unwrap_err()
                .to_string(),
            "no resolver for on-demand DNS: none configured"
        );
    }

    #[test]
    fn a_resolv_conf_without_name_servers_is_an_error_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("ambit-ondemand-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("resolv.conf");
        std::fs::write(&path, "search example.com\n").unwrap();
        let e = SystemDns::from_resolv_conf(&path, false).err().unwrap();
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        std::fs::write(&path, "nameserver 127.0.0.1\n").unwrap();
        assert!(SystemDns::from_resolv_conf(&path, true).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

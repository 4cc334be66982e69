//! Reading the sources: the machine and the mesh config file ([`Host`]); variables, with "empty
//! means unset" and errors that name the variable; and the settings derived from several
//! variables (token, CPUs and threads, drain deadline).

use std::path::PathBuf;
use std::time::Duration;

use super::{ConfigError, MESH_CONFIG_PATH, MeshError, WorkloadInfo, parse};
use crate::grpc::{AuthToken, RootCert};

const DEFAULT_ROOT_CERT: &str = "./var/run/secrets/istio/root-cert.pem";
const DEFAULT_AUTH_TOKEN: &str = "./var/run/secrets/tokens/istio-token";

/// What the configuration reads besides variables: the machine and the mesh config file.
#[derive(Clone, Debug, Default)]
pub struct Host {
    /// Logical CPUs.
    pub cpus: usize,
    /// The mesh config file's text, when the file exists.
    pub mesh_config: Option<String>,
}

impl Host {
    /// This machine, and ztunnel's mesh config file (relative to the working directory).
    pub fn current() -> Result<Host, ConfigError> {
        let mesh_config = match std::fs::read_to_string(MESH_CONFIG_PATH) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(MeshError::File {
                    path: MESH_CONFIG_PATH.into(),
                    reason: e.to_string(),
                }
                .into());
            }
        };
        Ok(Host {
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            mesh_config,
        })
    }
}

/// Variable lookup with "empty means unset" and errors that name the variable.
pub(super) struct Env<'a>(pub(super) &'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    pub(super) fn get(&self, var: &str) -> Option<String> {
        (self.0)(var).filter(|v| !v.is_empty())
    }

    pub(super) fn parse<T>(
        &self,
        var: &'static str,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        match self.get(var) {
            None => Ok(None),
            Some(value) => {
                f(&value)
                    .map(Some)
                    .map_err(|reason| ConfigError::Invalid { var, value, reason })
            }
        }
    }

    /// A control-plane address: unset ⇒ `fallback` (the proxy config's), else `default`;
    /// `""` ⇒ disabled (`None`). Without a scheme, `https://` is added (as ztunnel does).
    pub(super) fn address(
        &self,
        var: &'static str,
        fallback: Option<&str>,
        default: &str,
    ) -> Result<Option<String>, ConfigError> {
        let value = match (self.0)(var) {
            None => fallback.unwrap_or(default).to_string(),
            Some(v) if v.is_empty() => return Ok(None),
            Some(v) => v,
        };
        parse::control_plane_address(&value)
            .map(Some)
            .map_err(|reason| ConfigError::Invalid { var, value, reason })
    }
}

/// `AUTH_TOKEN`: an existing file's path, or else the token itself (ztunnel's rule). A value
/// that looks like a path but names no file is refused, since sending a path as a token only
/// fails later, at the control plane.
pub(super) fn auth_token(env: &Env<'_>) -> Result<Option<AuthToken>, ConfigError> {
    let Some(value) = env.get("AUTH_TOKEN") else {
        let default = PathBuf::from(DEFAULT_AUTH_TOKEN);
        return Ok(default.exists().then_some(AuthToken::File(default)));
    };
    let path = PathBuf::from(&value);
    if path.exists() {
        return Ok(Some(AuthToken::File(path)));
    }
    if value.starts_with('/') || value.starts_with("./") {
        return Err(ConfigError::Invalid {
            var: "AUTH_TOKEN",
            value,
            reason: "no such file".into(),
        });
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::InvalidSecret {
            var: "AUTH_TOKEN",
            reason: "neither an existing file nor a token (visible ASCII without spaces)".into(),
        });
    }
    Ok(Some(AuthToken::Static(value)))
}

/// The CPUs the thread count is derived from: an explicit resource limit
/// (`ZTUNNEL_RESOURCE_CPU_LIMIT`, a CPU quantity), else `ZTUNNEL_CPU_LIMIT` (whole CPUs, the
/// downward API's `limits.cpu`, which is the node's CPUs when no limit is set), else the
/// machine's.
pub(super) fn cpu_count(env: &Env<'_>, machine: usize) -> Result<usize, ConfigError> {
    if let Some(limit) = env.parse("ZTUNNEL_RESOURCE_CPU_LIMIT", parse::cpu_quantity)? {
        return Ok(limit);
    }
    Ok(env
        .parse("ZTUNNEL_CPU_LIMIT", parse::number::<usize>)?
        .unwrap_or(machine))
}

/// ztunnel's thread count when nothing sets one: an explicit CPU limit as is; otherwise a
/// quarter of the CPUs, rounded up, at least two; either raised to the CPU request.
pub(super) fn default_worker_threads(env: &Env<'_>, cpus: usize) -> Result<usize, ConfigError> {
    let request = env
        .parse("ZTUNNEL_RESOURCE_CPU_REQUEST", parse::cpu_quantity)?
        .unwrap_or(0);
    Ok(
        match env.parse("ZTUNNEL_RESOURCE_CPU_LIMIT", parse::cpu_quantity)? {
            Some(limit) => limit.max(request),
            None => cpus.div_ceil(4).max(request).max(2),
        },
    )
}

pub(super) fn root_cert(env: &Env<'_>, var: &str) -> RootCert {
    RootCert::from_setting(&env.get(var).unwrap_or_else(|| DEFAULT_ROOT_CERT.into()))
}

pub(super) fn workload_info(s: &str) -> Result<WorkloadInfo, String> {
    match s.split('/').collect::<Vec<_>>().as_slice() {
        [ns, name, sa] if !ns.is_empty() && !name.is_empty() && !sa.is_empty() => {
            Ok(WorkloadInfo {
                namespace: ns.to_string(),
                name: name.to_string(),
                service_account: sa.to_string(),
            })
        }
        _ => Err("expected namespace/name/service-account".into()),
    }
}

/// `CONNECTION_TERMINATION_DEADLINE`, else derived from Kubernetes'
/// `TERMINATION_GRACE_PERIOD_SECONDS` (leave a margin before the kubelet's SIGKILL: 5 s when
/// the grace period exceeds 10 s, else 1 s, never below 1 s), else 5 s.
pub(super) fn termination_deadline(env: &Env<'_>) -> Result<Duration, ConfigError> {
    if let Some(d) = env.parse("CONNECTION_TERMINATION_DEADLINE", parse::duration)? {
        return Ok(d);
    }
    if let Some(grace) = env.parse("TERMINATION_GRACE_PERIOD_SECONDS", parse::number::<u64>)? {
        let secs = if grace > 10 {
            grace - 5
        } else {
            grace.saturating_sub(1)
        };
        return Ok(Duration::from_secs(secs.max(1)));
    }
    Ok(Duration::from_secs(5))
}

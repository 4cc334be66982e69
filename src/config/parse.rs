//! Value parsers for environment variables: each returns a `reason` string that the caller
//! wraps in [`super::ConfigError::Invalid`] with the variable's name and value.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

/// `true` or `false`, as ztunnel accepts them.
pub(super) fn boolean(s: &str) -> Result<bool, String> {
    match s {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("not a boolean (true or false)".into()),
    }
}

/// A non-negative decimal integer that fits in `T`.
pub(super) fn number<T: TryFrom<u64>>(s: &str) -> Result<T, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err("not a number".into());
    }
    let n: u64 = s.parse().map_err(|_| "number too large".to_string())?;
    T::try_from(n).map_err(|_| "number too large".to_string())
}

/// A duration in ztunnel's syntax, read by the crate ztunnel reads it with (`duration-str`):
/// a bare number is seconds; units from `ns` to `y` in short or long form (`ms`, `s`/`sec`,
/// `m`/`min`, `h`/`hr`, `d`, `w`, ...); parts may be separated by spaces (`1h 30m`) or joined
/// (`1h30m`).
pub(super) fn duration(s: &str) -> Result<Duration, String> {
    // The crate's own messages span several lines (they draw the input); ours is one.
    duration_str::parse(s)
        .map_err(|_| "not a duration (e.g. 500ms, 90s, 3min, 1h 30m, 1d, 1w)".to_string())
}

pub(super) fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = duration(s)?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

pub(super) fn positive_u32(s: &str) -> Result<u32, String> {
    match number::<u32>(s)? {
        0 => Err("must be greater than zero".into()),
        n => Ok(n),
    }
}

/// Formats a duration so that [`duration`] reads it back, in the largest exact unit.
pub(super) fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms != 0 && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// A Kubernetes CPU quantity (`2`, `1.5`, `500m`) as whole CPUs, rounded up.
pub(super) fn cpu_quantity(s: &str) -> Result<usize, String> {
    let bad = || "not a CPU quantity (e.g. 2, 1.5, 500m)".to_string();
    let cores = match s.strip_suffix('m') {
        Some(millis) => millis.parse::<f64>().map_err(|_| bad())? / 1000.0,
        None => s.parse::<f64>().map_err(|_| bad())?,
    };
    if !cores.is_finite() || cores <= 0.0 {
        return Err("must be a positive CPU quantity".into());
    }
    if cores > 1_000_000.0 {
        return Err("CPU quantity too large".into());
    }
    Ok(cores.ceil() as usize)
}

/// `ZTUNNEL_WORKER_THREADS`: `N` threads (`0` = one per CPU) or `P%` of the CPUs (`0 < P <= 100`,
/// fractions allowed; rounded up, at least one).
pub(super) fn worker_threads(s: &str, cpus: usize) -> Result<usize, String> {
    if let Some(pct) = s.strip_suffix('%') {
        let pct: f64 = pct
            .parse()
            .map_err(|_| "not a number or percentage (N or N%)".to_string())?;
        if !(pct > 0.0 && pct <= 100.0) {
            return Err("percentage must be greater than 0% and at most 100%".into());
        }
        return Ok(((cpus as f64 * pct / 100.0).ceil() as usize).max(1));
    }
    let n: usize = number(s).map_err(|_| "not a number or percentage (N or N%)".to_string())?;
    Ok(if n == 0 { cpus.max(1) } else { n })
}

/// HTTP/2 flow-control windows: 65535 ..= 2^31-1 (RFC 9113 §6.9).
pub(super) fn window_size(s: &str) -> Result<u32, String> {
    let n = number::<u32>(s)?;
    if !(65_535..=(1 << 31) - 1).contains(&n) {
        return Err("window size must be between 65535 and 2147483647".into());
    }
    Ok(n)
}

/// HTTP/2 SETTINGS_MAX_FRAME_SIZE: 16384 ..= 16777215 (RFC 9113 §6.5.2).
pub(super) fn frame_size(s: &str) -> Result<u32, String> {
    let n = number::<u32>(s)?;
    if !(16_384..=16_777_215).contains(&n) {
        return Err("frame size must be between 16384 and 16777215".into());
    }
    Ok(n)
}

/// `ip:port`, or `localhost:port` (loopback IPv4).
pub(super) fn dns_addr(s: &str) -> Result<SocketAddr, String> {
    if let Some(port) = s.strip_prefix("localhost:") {
        let port = number::<u16>(port)?;
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    s.parse()
        .map_err(|_| "not an address (ip:port or localhost:port)".to_string())
}

/// A control-plane address as ztunnel takes it: a URI, `https://` added when it has no scheme
/// (Istio's chart sets `istiod.istio-system.svc:15012`).
pub(super) fn control_plane_address(s: &str) -> Result<String, String> {
    let uri: http::Uri = s
        .parse()
        .map_err(|e| format!("not an address (host:port or https://host:port): {e}"))?;
    if uri.scheme().is_some() {
        return Ok(s.to_string());
    }
    if uri.authority().is_none() {
        return Err("not an address (host:port or https://host:port)".into());
    }
    Ok(format!("https://{s}"))
}

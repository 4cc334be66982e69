//! Value parsers for environment variables: each returns a `reason` string that the caller
//! wraps in [`super::ConfigError::Invalid`] with the variable's name and value.

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

/// A duration: one or more `<integer><unit>` groups with units `ms`, `s`, `m`, `h`, `d`
/// (`24h`, `90s`, `1500ms`, `1h30m`); a bare integer is seconds.
pub(super) fn duration(s: &str) -> Result<Duration, String> {
    let err = || "not a duration (e.g. 24h, 5m, 90s, 1500ms)".to_string();
    if s.is_empty() {
        return Err(err());
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<u64>().map(Duration::from_secs).map_err(|_| err());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(err());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit_ms: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(err()),
        };
        rest = &rest[unit_len..];
        let ms = n.checked_mul(unit_ms).ok_or_else(err)?;
        total = total
            .checked_add(Duration::from_millis(ms))
            .ok_or_else(err)?;
    }
    Ok(total)
}

/// Formats a duration the way [`duration`] reads it, in the largest exact unit.
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

/// `ZTUNNEL_WORKER_THREADS`: `N` threads (`0` = one per CPU) or `N%` of the CPUs (rounded up,
/// at least one).
pub(super) fn worker_threads(s: &str, cpus: usize) -> Result<usize, String> {
    if let Some(pct) = s.strip_suffix('%') {
        let pct: u64 =
            number(pct).map_err(|_| "not a number or percentage (N or N%)".to_string())?;
        if pct == 0 || pct > 100 {
            return Err("percentage must be between 1% and 100%".into());
        }
        let cpus = cpus as u64;
        return Ok(usize::try_from((cpus * pct).div_ceil(100))
            .unwrap_or(1)
            .max(1));
    }
    let n: usize = number(s).map_err(|_| "not a number or percentage (N or N%)".to_string())?;
    Ok(if n == 0 { cpus.max(1) } else { n })
}

/// ztunnel's CPU-aware default: a quarter of the CPUs, rounded up, and at least two.
pub(super) fn default_worker_threads(cpus: usize) -> usize {
    cpus.div_ceil(4).max(2)
}

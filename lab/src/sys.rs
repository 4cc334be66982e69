//! Host-level plumbing: the pre-flight check (root, tools, namespace support), running the short
//! configuration commands (`ip`, `nft`, `sysctl`) synchronously, and the run id that makes every
//! name unique across parallel tests and processes.
//!
//! Configuration commands are run synchronously on purpose: they finish in milliseconds, and
//! `Drop` guards (which cannot be async) must be able to run them too.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::LabError;

/// Prefix of every namespace the lab creates; `ambit-lab cleanup` removes what matches it.
pub const NAME_PREFIX: &str = "ambit-lab-";

/// The tools the lab shells out to.
const TOOLS: &[&str] = &["ip", "nft"];

/// Checks once per process that the lab can work here: root, `ip` and `nft` installed, network
/// namespaces available. Returns the same one-line error every time when it cannot.
pub fn preflight() -> Result<(), LabError> {
    static RESULT: OnceLock<Result<(), String>> = OnceLock::new();
    let res = RESULT.get_or_init(|| check().map_err(|e| e.to_string()));
    match res {
        Ok(()) => Ok(()),
        Err(line) => Err(recheck_or(line)),
    }
}

/// Re-derives the typed error (it is not `Clone`); falls back to a generic one with the same text.
fn recheck_or(line: &str) -> LabError {
    match check() {
        Err(e) => e,
        Ok(()) => LabError::NetnsUnsupported {
            detail: line.to_string(),
        },
    }
}

fn check() -> Result<(), LabError> {
    // The owner of /proc/self is the effective uid: no unsafe libc call needed.
    let uid = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(u32::MAX);
    if uid != 0 {
        return Err(LabError::NotRoot { uid });
    }
    for tool in TOOLS {
        if !on_path(tool) {
            return Err(LabError::ToolMissing { tool });
        }
    }
    if !std::path::Path::new("/proc/self/ns/net").exists() {
        return Err(LabError::NetnsUnsupported {
            detail: "/proc/self/ns/net is absent".into(),
        });
    }
    Ok(())
}

/// Whether `tool` is an executable file in one of the `PATH` directories (plus the sbin ones,
/// which a non-login root shell may lack).
pub fn on_path(tool: &str) -> bool {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .any(|dir| std::path::Path::new(dir).join(tool).is_file())
}

/// A run id unique on this machine for the life of this process: `<pid>-<4 hex random>-<counter>`.
/// The pid lets `cleanup` tell a live run's namespaces from a crashed one's.
pub fn unique_suffix() -> String {
    static RUN: OnceLock<String> = OnceLock::new();
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let run = RUN.get_or_init(|| format!("{}-{:04x}", std::process::id(), rand::random::<u16>()));
    format!("{run}-{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Runs a short configuration command to completion, optionally feeding `stdin`, and returns its
/// stdout. A non-zero exit becomes [`LabError::Command`] with the command line and its stderr.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, LabError> {
    let command = format!("{program} {}", args.join(" "));
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| LabError::Spawn {
        command: command.clone(),
        source,
    })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|source| LabError::Spawn {
                command: command.clone(),
                source,
            })?;
        // Dropping the pipe closes it so the program sees end of input.
    }
    let out = child.wait_with_output().map_err(|source| LabError::Spawn {
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(LabError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace('\n', "; "),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

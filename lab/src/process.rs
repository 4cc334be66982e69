//! `Process`: a program running inside a namespace (or on the host), its stdout and stderr going
//! to one log file that outlives it for diagnostics. Invariants: the child is killed and reaped on
//! `Drop`; if the owning thread is panicking (a failing test), the log's tail is printed first so
//! the failure explains itself.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::{LabError, Netns};

/// How many log lines [`Process`] prints when its owner panics.
const TAIL_ON_PANIC: usize = 40;

/// What to run.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// A short label for logs and errors ("client-ambit").
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Set on top of the inherited environment.
    pub env: Vec<(String, String)>,
}

/// A running child process; killed and reaped on drop.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

// === impl ProcessSpec ===

impl ProcessSpec {
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>) -> Self {
        ProcessSpec {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

// === impl Process ===

impl Process {
    /// Starts `spec` inside `ns` (or on the host when `None`), logging to `<log_dir>/<name>.log`.
    pub fn spawn(ns: Option<&Netns>, spec: &ProcessSpec, log_dir: &Path) -> Result<Self, LabError> {
        let log = log_dir.join(format!("{}.log", spec.name));
        let file_err = |source| LabError::File {
            path: log.display().to_string(),
            source,
        };
        std::fs::create_dir_all(log_dir).map_err(file_err)?;
        let out = File::create(&log).map_err(file_err)?;
        let err = out.try_clone().map_err(file_err)?;
        let mut cmd = match ns {
            // `ip netns exec` execs the program in place, so the child's pid is the program's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns.name()]).arg(&spec.program);
                c
            }
            None => Command::new(&spec.program),
        };
        cmd.args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = cmd.spawn().map_err(|source| LabError::Spawn {
            command: format!("{} {}", spec.program.display(), spec.args.join(" ")),
            source,
        })?;
        Ok(Process {
            name: spec.name.clone(),
            child,
            log,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The whole log so far (stdout and stderr interleaved as written).
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends SIGTERM and waits up to `within` for the process to exit; its status, or `None`
    /// if it was still running then (it is killed when dropped).
    pub async fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// An error if the process has already exited (for readiness loops: fail fast, with the log).
    pub fn ensure_running(&mut self) -> Result<(), LabError> {
        match self.try_status() {
            None => Ok(()),
            Some(status) => Err(LabError::ExitedEarly {
                name: self.name.clone(),
                status: status.to_string(),
                tail: self.tail(TAIL_ON_PANIC),
            }),
        }
    }

    /// Sends SIGKILL and reaps the child.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- {} (log {}), last {TAIL_ON_PANIC} lines ----\n{}\n----",
                self.name,
                self.log.display(),
                self.tail(TAIL_ON_PANIC)
            );
        }
        self.kill();
    }
}

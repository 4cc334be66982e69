//! `ambit ctl`: an operator's view of a running node proxy, read from its admin API
//! (`127.0.0.1:15000` by default, `--admin`): workloads, services, policies, certificates, live
//! connections, the log filter, and `explain` (the data path's decision for one flow, computed
//! by the proxy itself at `/debug/explain`).
//!
//! A client only: nothing in the proxy imports it (`tests/offline/layering.rs`), and it reads nothing
//! but the admin API's JSON, so it works against any process serving that API.
//!
//! Every failure is one line on stderr and a non-zero exit: 1 for what the proxy answered
//! (unknown or ambiguous name, malformed destination), 2 for a usage error, 3 when the admin
//! API cannot be reached.

mod http;
mod render;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::Value;

/// Why a `ctl` command failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(
        "cannot reach the admin API at {addr}: {reason} (is the proxy running here? see --admin)"
    )]
    Unreachable { addr: SocketAddr, reason: String },
    #[error("{0}")]
    Refused(String),
    #[error("unexpected answer from the admin API: {0}")]
    BadAnswer(String),
    #[error("{0}")]
    Usage(String),
}

impl CtlError {
    fn exit_code(&self) -> u8 {
        match self {
            CtlError::Unreachable { .. } => 3,
            CtlError::Usage(_) => 2,
            CtlError::Refused(_) | CtlError::BadAnswer(_) => 1,
        }
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "ambit ctl",
    about = "Inspect a running ambit (or ztunnel) node proxy through its admin API"
)]
struct Cli {
    /// The admin API's address.
    #[arg(long, global = true, default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(flatten)]
    filter: Filter,
    #[command(subcommand)]
    command: CtlCommand,
}

/// What lists are narrowed to.
#[derive(Args, Debug, Default, Clone)]
struct Filter {
    /// Only this namespace.
    #[arg(long, global = true)]
    namespace: Option<String>,
    /// Only workloads on this node (and their connections).
    #[arg(long, global = true)]
    node: Option<String>,
    /// Only this workload (`name` or `namespace/name`); for policies, those that apply to it.
    #[arg(long, global = true)]
    workload: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
    Yaml,
}

#[derive(Subcommand, Debug)]
enum CtlCommand {
    /// Workloads the proxy knows.
    Workloads,
    /// Services the proxy knows, with their endpoints.
    Services,
    /// Authorization policies.
    Policies,
    /// Certificates the proxy holds, and when they expire.
    Certificates,
    /// Live connections with their age and bytes.
    Connections {
        /// Refresh every this many seconds, like `top` (until interrupted).
        #[arg(long, num_args = 0..=1, default_missing_value = "2")]
        watch: Option<f64>,
    },
    /// Show the log filter, or add a level (`debug`, `ambit::proxy=trace`, ...; `reset`
    /// restores the initial one).
    Log { level: Option<String> },
    /// The decision the proxy would make for a flow, step by step.
    Explain {
        /// The source workload: `name`, `namespace/name`, or an address.
        source: String,
        /// `<ip>:<port>`, or `<name>:<port>` naming a workload or a service.
        destination: String,
    },
}

/// Runs `ambit ctl <args>`; prints and returns the exit code.
pub fn main(args: &[String]) -> ExitCode {
    let argv = std::iter::once("ambit ctl".to_string()).chain(args.iter().cloned());
    let cli = match Cli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) if e.use_stderr() => {
            // One line, like every other failure; `--help` has the rest.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            eprintln!(
                "ambit ctl: {} (see --help)",
                first.strip_prefix("error: ").unwrap_or(first)
            );
            return ExitCode::from(2);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ambit ctl: runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ambit ctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run(cli: &Cli) -> Result<(), CtlError> {
    let admin = cli.admin;
    match &cli.command {
        CtlCommand::Workloads | CtlCommand::Services | CtlCommand::Policies => {
            let dump = http::get_json(admin, "/config_dump").await?;
            let (rows, value) = match cli.command {
                CtlCommand::Workloads => render::workloads(&dump, &cli.filter)?,
                CtlCommand::Services => render::services(&dump, &cli.filter)?,
                _ => render::policies(&dump, &cli.filter)?,
            };
            emit(cli.output, &value, || rows.to_string())
        }
        CtlCommand::Certificates => {
            let dump = http::get_json(admin, "/config_dump").await?;
            let (rows, value) = render::certificates(&dump, &cli.filter);
            emit(cli.output, &value, || rows.to_string())
        }
        CtlCommand::Connections { watch } => {
            let filter = connection_filter(admin, &cli.filter).await?;
            loop {
                let conns = http::get_json(admin, "/debug/connections").await?;
                let (rows, value) = render::connections(&conns, &filter)?;
                if watch.is_some() {
                    // Clear the screen and home the cursor, as `watch` does.
                    print!("\x1b[2J\x1b[H");
                }
                emit(cli.output, &value, || rows.to_string())?;
                match watch {
                    Some(secs) => tokio::time::sleep(Duration::from_secs_f64(secs.max(0.2))).await,
                    None => return Ok(()),
                }
            }
        }
        CtlCommand::Log { level } => {
            let path = match level.as_deref() {
                None => "/logging".to_string(),
                Some("reset") => "/logging?reset".to_string(),
                Some(l) => format!("/logging?level={}", http::encode(l)),
            };
            let text = http::post_text(admin, &path).await?;
            let value = serde_json::json!({ "logging": text.trim() });
            emit(cli.output, &value, || text.clone())
        }
        CtlCommand::Explain {
            source,
            destination,
        } => {
            let path = format!(
                "/debug/explain?src={}&dst={}",
                http::encode(source),
                http::encode(destination)
            );
            let value = http::get_json(admin, &path).await?;
            emit(cli.output, &value, || render::explanation(&value))
        }
    }
}

/// The addresses of the workloads the filter keeps, to narrow connections by (`None`: all).
async fn connection_filter(
    admin: SocketAddr,
    filter: &Filter,
) -> Result<render::ConnFilter, CtlError> {
    if filter.namespace.is_none() && filter.node.is_none() && filter.workload.is_none() {
        return Ok(render::ConnFilter::default());
    }
    let dump = http::get_json(admin, "/config_dump").await?;
    render::ConnFilter::from_dump(&dump, filter)
}

fn emit(format: Format, value: &Value, table: impl FnOnce() -> String) -> Result<(), CtlError> {
    let text = match format {
        Format::Table => table(),
        Format::Json => {
            serde_json::to_string_pretty(value).map_err(|e| CtlError::BadAnswer(e.to_string()))?
        }
        Format::Yaml => {
            serde_yaml_ng::to_string(value).map_err(|e| CtlError::BadAnswer(e.to_string()))?
        }
    };
    if text.ends_with('\n') {
        print!("{text}");
    } else {
        println!("{text}");
    }
    Ok(())
}

#[cfg(test)]
mod tests;

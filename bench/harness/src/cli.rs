//! The command line of `ambit-bench`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "ambit-bench",
    about = "Benchmarks node proxies on the ambit lab"
)]
pub struct Cli {
    #[command(subcommand)]
    pub pod: Option<PodCmd>,
    /// Short runs (about 1–2 s each) and fewer idle connections: the CI smoke test.
    #[arg(long)]
    pub quick: bool,
    /// A node-proxy binary to measure, optionally labelled (`fast=/path/ambit`); repeatable.
    /// Default: the workspace's release `ambit`.
    #[arg(long = "proxy-binary")]
    pub proxy_binary: Vec<String>,
    /// HBONE transports to measure, comma-separated (`h2,h3`; also `auto`): every proxy binary
    /// runs once per transport (`AMBIT_HBONE_TRANSPORT`), labelled `<label>/<transport>`; the
    /// first is the baseline of the ratio columns. Default: the proxy's own default, unlabelled.
    #[arg(long, value_delimiter = ',')]
    pub transport: Vec<String>,
    /// Extra environment for the node proxies of one subject (`LABEL:KEY=VALUE`, LABEL a
    /// subject's label or its binary's label) or of all (`KEY=VALUE`); repeatable.
    #[arg(long = "proxy-env")]
    pub proxy_env: Vec<String>,
    /// Where the JSON file and the charts go.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// Rounds of every scenario (default 2, `--quick` 1).
    #[arg(long)]
    pub rounds: Option<u32>,
    /// Persistent-connection request rate for the latency scenarios (new connections: a fifth).
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// `RUST_LOG` of the node proxies (access logs at `info` would be measured too).
    #[arg(long, default_value = "warn")]
    pub proxy_log: String,
    /// Workloads in the control-plane push scenario (default 10,000; `--quick` 1,000).
    #[arg(long)]
    pub push_workloads: Option<u32>,
    /// How to get the control-plane figures: `release` (`cargo bench`), `debug` (`cargo test`,
    /// the `--quick` default), or `skip`.
    #[arg(long)]
    pub xds: Option<String>,
    /// Run only these scenarios (comma-separated); default: all. For iterating on one figure,
    /// not for the full comparison; the data-path labs start only when a data-path scenario
    /// runs.
    #[arg(long, value_delimiter = ',', value_enum)]
    pub only: Vec<Scenario>,
    /// While the memory scenario holds its connections, save each node proxy's heap profile
    /// (`/debug/pprof/heap` on its admin port) here; run the proxies with jemalloc profiling on
    /// (e.g. `--proxy-env _RJEM_MALLOC_CONF=prof:true,lg_prof_sample:10`).
    #[arg(long)]
    pub heap_profiles: Option<PathBuf>,
}

/// The scenarios `--only` can pick.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    Throughput,
    Latency,
    Connrate,
    Memory,
    Push,
}

impl Cli {
    pub fn runs(&self, s: Scenario) -> bool {
        self.only.is_empty() || self.only.contains(&s)
    }
}

#[derive(Subcommand, Debug)]
pub enum PodCmd {
    /// Internal: runs inside a pod.
    Pod {
        #[command(subcommand)]
        cmd: PodWork,
    },
}

#[derive(Subcommand, Debug)]
pub enum PodWork {
    Serve,
    Latency {
        addr: SocketAddr,
        size: u32,
        rate: u32,
        secs: f64,
        #[arg(long)]
        newconn: bool,
    },
    Connrate {
        addr: SocketAddr,
        secs: f64,
        workers: u32,
    },
    Hold {
        addr: SocketAddr,
        count: u32,
    },
}

//! `ambit-lab`: the lab's command line. `cleanup` removes the network namespaces that crashed or
//! killed runs left behind (their owner process is gone), or all of the lab's namespaces with
//! `--all`; `rules` prints the nftables rule sets so shell scripts (the demo) share them.

use clap::{Parser, Subcommand};

use ambit_lab::{netns, nft, sys};

#[derive(Parser)]
#[command(name = "ambit-lab", about = "ambit's network-namespace lab")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Remove lab namespaces whose creating process has exited (all of them with --all).
    Cleanup {
        /// Also remove namespaces of runs that are still alive.
        #[arg(long)]
        all: bool,
    },
    /// Print one of the lab's nftables rule sets (for scripts: pipe into `nft -f -`).
    Rules {
        #[arg(value_enum)]
        which: Ruleset,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Ruleset {
    /// Outbound capture: pod TCP to anything but loopback, unless marked by the proxy, to :15001.
    Capture,
    /// Original-source return path (nft part; the policy routes are `ip rule`/`ip route`).
    ReturnPath,
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Cmd::Cleanup { all } => match cleanup(all) {
            Ok(n) => {
                println!("ambit-lab: removed {n} namespace(s)");
                0
            }
            Err(e) => {
                eprintln!("ambit-lab: {e}");
                1
            }
        },
        Cmd::Rules { which } => {
            match which {
                Ruleset::Capture => print!("{}", nft::outbound_capture(15001, nft::PROXY_MARK)),
                Ruleset::ReturnPath => {
                    print!("{}", nft::return_path(nft::PROXY_MARK, nft::RETURN_MARK))
                }
            }
            0
        }
    };
    std::process::exit(code);
}

fn cleanup(all: bool) -> Result<usize, ambit_lab::LabError> {
    sys::preflight()?;
    let list = sys::run("ip", &["netns", "list"], None)?;
    let mut removed = 0;
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix(sys::NAME_PREFIX) else {
            continue;
        };
        let owner_alive = rest
            .split('-')
            .next()
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if all || !owner_alive {
            netns::remove(name);
            removed += 1;
        }
    }
    Ok(removed)
}

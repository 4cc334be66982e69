//! `ambit-lab`: the lab's command line. For now one command, `cleanup`, which removes the network
//! namespaces that crashed or killed runs left behind (their owner process is gone), or all of
//! the lab's namespaces with `--all`.

use clap::{Parser, Subcommand};

use ambit_lab::{netns, sys};

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

//! The `ambit` binary: configuration from the environment, then the app until shutdown.

#![deny(unsafe_code)]

use std::process::ExitCode;

use ambit::config::Config;
use ambit::telemetry;

fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ambit: {e}");
            return ExitCode::from(2);
        }
    };
    let log = match telemetry::init(config.log_format, &config.log_filter) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ambit: {e}");
            return ExitCode::from(2);
        }
    };
    match ambit::app::run(config, log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes, for people and for log scrapers alike.
            eprintln!("ambit: {e:#}");
            ExitCode::from(1)
        }
    }
}

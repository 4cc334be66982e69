//! The control side, one test binary: the xDS client and the CA client against the lab's
//! control plane scripted in-process (`ambit_lab::control_scripted`), the admin server's view of
//! pushed state, and ambit configured by a local file, by environment and by the lab's control
//! plane (`cp`).

#[path = "../common/mod.rs"]
mod common;

mod config;
mod config_env;
mod cp;
mod xds_admin;
mod xds_ca;
mod xds_client;

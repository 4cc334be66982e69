//! Configuration sources that feed the state store. For now: [`local`], the local config file
//! (ztunnel's `LOCAL_XDS_PATH` / `LOCAL_XDS`). The delta-xDS client will live here too, and
//! drive the same [`crate::state::StateWriter::apply`] with [`crate::state::Update`]s.

pub mod local;

pub use local::{LocalConfig, LocalConfigError};

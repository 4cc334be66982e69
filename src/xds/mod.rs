//! Configuration sources that feed the state store: the delta-ADS client ([`client`]) talking to
//! istiod, and the local config file ([`local`], ztunnel's `LOCAL_XDS_PATH` / `LOCAL_XDS`). Both
//! drive [`crate::state::StateWriter::apply`] with [`crate::state::Update`]s.
//!
//! Generated protobuf types never leave this module: [`convert`] turns them into domain types;
//! [`types`] holds one handler per resource type the client subscribes to.

pub mod client;
pub mod convert;
pub mod local;
pub mod types;

pub use client::{NodeInfo, XdsClient, XdsConfig, XdsError};
pub use convert::{ConvertError, Problem};
pub use local::{LocalConfig, LocalConfigError};
pub use types::{XdsType, decode_resource};

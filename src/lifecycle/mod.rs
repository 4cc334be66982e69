//! Process lifecycle: graceful drain with a deadline, readiness guards, OS signals and
//! in-process shutdown requests (`/quitquitquit`).
//!
//! These are level-1 building blocks: every accept loop and connection task holds a
//! [`DrainWatcher`]; every startup task that must finish before traffic is accepted holds a
//! [`BlockReady`].

pub mod accept_backoff;
mod drain;
mod readiness;
pub mod settled_file;
mod shutdown;
mod signal;

pub use accept_backoff::AcceptBackoff;
pub use drain::{
    DrainDeadline, DrainOutcome, DrainTrigger, DrainWatcher, channel as drain_channel,
};
pub use readiness::{BlockReady, Readiness};
pub use settled_file::{FilePoll, SettledFile};
pub use shutdown::{ShutdownHandle, ShutdownRequested, shutdown_channel};
pub use signal::shutdown_signal;

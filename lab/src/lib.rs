//! ambit-lab: the network-namespace toolkit under ambit's end-to-end tests, benchmarks and demo.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`sys`] | pre-flight (root, `ip`, `nft`, namespaces), unique names, running configuration commands |
//! | [`netns`] | [`Netns`]: a named namespace removed on drop; commands, sysctls, sockets inside it |
//! | [`link`] | veth pairs between namespaces |
//! | [`nft`] | the outbound-capture and original-source return-path rule sets |
//! | [`process`] | [`Process`]: a program in a namespace, logged to a file, killed on drop |
//! | [`http`] | bounded HTTP probes from inside a namespace (readiness, metrics) |
//!
//! Everything the lab creates is named `ambit-lab-<pid>-<random>-...`, so parallel tests never
//! collide and `ambit-lab cleanup` can find what a crashed run left behind.

#![deny(unsafe_code)]

mod error;
pub mod http;
pub mod link;
pub mod netns;
pub mod nft;
pub mod process;
pub mod sys;

pub use error::LabError;
pub use http::{HttpResponse, http_get, wait_http_ok};
pub use link::veth;
pub use netns::Netns;
pub use process::{Process, ProcessSpec};
pub use sys::preflight;

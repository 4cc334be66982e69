//! Small shared vocabulary used by every other module: workload identities and address newtypes.
//!
//! Nothing here does I/O; everything here is cheap to clone.

mod addr;
mod identity;

pub use addr::{Authority, AuthorityError};
pub use identity::{Identity, IdentityError};

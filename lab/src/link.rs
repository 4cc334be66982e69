//! Links between namespaces: veth pairs created directly inside their two namespaces (so their
//! interface names never meet the host's, and two tests may both call theirs `eth0`).

use crate::{LabError, Netns};

/// Creates a veth pair with end `a_if` in `a` and end `b_if` in `b`, both up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<(), LabError> {
    a.ip(&[
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ])?;
    a.link_up(a_if)?;
    b.link_up(b_if)
}

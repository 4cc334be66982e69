//! xds (being built)

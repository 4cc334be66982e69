//! proxy (being built)

//! lifecycle (being built)

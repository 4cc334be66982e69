//! metrics (being built)

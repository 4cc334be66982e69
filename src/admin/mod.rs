//! admin (being built)

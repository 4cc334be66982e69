//! identity (being built)

//! hbone (being built)

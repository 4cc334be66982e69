//! tls (being built)

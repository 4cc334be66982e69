//! ambit-proto

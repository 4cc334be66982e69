//! ambit-lab

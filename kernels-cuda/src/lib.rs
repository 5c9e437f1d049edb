//! The CUDA backend of gptoss-rs.

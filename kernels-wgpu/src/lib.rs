//! The wgpu backend of gptoss-rs.

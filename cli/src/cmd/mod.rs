//! One module per `gptoss` command.
pub mod synth;

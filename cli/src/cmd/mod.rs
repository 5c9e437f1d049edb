//! One module per `gptoss` command.
pub mod convert;
pub mod dequant;
pub mod inspect;
pub mod quantize;
pub mod bench;
pub mod compare;
pub mod serve;
pub mod chat;
pub mod synth;
pub mod tokenize;
pub mod validate;
pub mod generate;
pub mod logits;
pub mod run;

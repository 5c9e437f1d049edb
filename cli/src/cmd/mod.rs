//! One module per `gptoss` command.
pub mod bench;
pub mod chat;
pub mod compare;
pub mod convert;
pub mod dequant;
pub mod generate;
pub mod inspect;
pub mod logits;
pub mod quantize;
pub mod run;
pub mod serve;
pub mod synth;
pub mod tokenize;
pub mod validate;

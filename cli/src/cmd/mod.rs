//! One module per `gptoss` command.

//! GPT-OSS from GGUF: architecture, KV cache, sampling, tokenizer and Harmony chat.

//! `gptoss logits -m MODEL --tokens 1,2,3 --out FILE.safetensors [--backend B]`: the logits at
//! every position of one prefill pass, as an f32 safetensors tensor `logits` `[T, vocab]`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use gptoss_backend::Backend;
use gptoss_model::{Model, open_gguf};
use safetensors::{Dtype, tensor::TensorView};

use crate::backends::{NAMES, WithBackend};
use crate::cmd::generate::parse_tokens;

/// Arguments of `gptoss logits`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The GGUF model.
    #[arg(short = 'm', long = "model")]
    pub model: PathBuf,
    /// Input token ids, comma-separated (`1,2,3`).
    #[arg(long)]
    pub tokens: String,
    /// Where to write the safetensors file (written to a temporary file beside it, then renamed).
    #[arg(long)]
    pub out: PathBuf,
    /// Compute backend. The default is the exact CPU reference, since this command exists to
    /// produce numbers to compare.
    #[arg(long, default_value = "cpu-ref", help = format!("Compute backend: {NAMES}"))]
    pub backend: String,
    /// Split the model over these GPUs (tensor parallel through NCCL), e.g. `--gpus 0,1` with
    /// `--backend cuda`; with `--backend cpu` it simulates the split on CPU ranks.
    #[arg(long, value_delimiter = ',', value_parser = crate::backends::parse_gpus)]
    pub gpus: Option<Vec<usize>>,
}

struct Job<'a> {
    gguf: &'a gguf_format::GgufModel,
    tokens: Vec<u32>,
}

impl WithBackend for Job<'_> {
    type Out = (Vec<f32>, usize, usize, String);
    fn run<B: Backend>(self, backend: B) -> Result<Self::Out> {
        let name = backend.name();
        let model = Model::from_gguf(backend, self.gguf)?;
        let mut session = model.new_session(Some(self.tokens.len()))?;
        let logits = model.forward(&mut session, &self.tokens, true)?;
        let (data, rows, cols) = model.backend().to_host(&logits)?;
        Ok((data, rows, cols, name))
    }
}

/// Run the command.
pub fn run(args: Args) -> Result<ExitCode> {
    let tokens = parse_tokens(&args.tokens)?;
    let gguf = open_gguf(&args.model)?;
    let (data, rows, cols, backend) = crate::backends::with_backend_gpus(
        &args.backend,
        args.gpus.as_deref(),
        Job {
            gguf: &gguf,
            tokens,
        },
    )?;
    let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    let view = TensorView::new(Dtype::F32, vec![rows, cols], &bytes)?;
    let meta = std::collections::HashMap::from([
        ("model".to_string(), args.model.display().to_string()),
        ("backend".to_string(), backend),
    ]);
    let serialized = safetensors::serialize([("logits", view)], Some(meta))?;
    // Write beside the target, then rename: a reader never sees a half-written file.
    let mut tmp_name = args.out.clone().into_os_string();
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    std::fs::write(&tmp, &serialized).with_context(|| format!("writing {}", tmp.display()))?;
    if let Err(e) = std::fs::rename(&tmp, &args.out) {
        let _ = std::fs::remove_file(&tmp);
        return Err(anyhow::Error::new(e).context(format!("renaming into {}", args.out.display())));
    }
    eprintln!("wrote logits [{rows}, {cols}] to {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}

//! Progress bars (indicatif) shared by the commands; hidden with `--quiet` or when stderr is
//! not a terminal's business (indicatif hides itself off a TTY).

use indicatif::{ProgressBar, ProgressStyle};

/// A byte-counting bar with `msg` in front, hidden when `quiet`.
pub fn bytes_bar(total: u64, msg: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

/// Load a model from an opened GGUF onto `backend` with a byte progress bar ("loading PATH on
/// BACKEND"), hidden when `quiet`. The bar advances as each tensor is handed to the backend, so
/// it shows upload progress on a GPU and page-in progress on the CPU.
pub fn load_model<B: gptoss_backend::Backend>(
    backend: B,
    gguf: &gguf_format::GgufModel,
    label: &str,
    quiet: bool,
) -> anyhow::Result<gptoss_model::Model<B>> {
    use anyhow::Context;
    let total: u64 = gguf.tensors().map(|t| t.size_bytes()).sum();
    let msg = format!("loading {label} on {}", backend.name());
    let pb = bytes_bar(total, &msg, quiet);
    let config = gptoss_model::ModelConfig::from_metadata(gguf.metadata())
        .with_context(|| format!("loading {label}"))?;
    let src = CountingSource {
        inner: gguf,
        pb: &pb,
    };
    let model = gptoss_model::Model::from_source(backend, config, &src)
        .with_context(|| format!("loading {label}"))?;
    pb.finish_and_clear();
    Ok(model)
}

/// A tensor source that advances a progress bar by each tensor's bytes as it is fetched.
struct CountingSource<'a> {
    inner: &'a gguf_format::GgufModel,
    pb: &'a ProgressBar,
}

impl gptoss_model::TensorSource for CountingSource<'_> {
    fn weight(&self, name: &str) -> gptoss_model::Result<Option<gptoss_backend::WeightData>> {
        let w = self.inner.weight(name)?;
        if let Some(w) = &w {
            self.pb.inc(w.bytes.len() as u64);
        }
        Ok(w)
    }
}

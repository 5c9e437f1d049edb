//! The model worker: one thread owns the model and runs queued requests one at a time. A request
//! whose client went away (its event channel closed) is skipped or stopped at the next token,
//! which frees the worker for the next one.

use std::path::PathBuf;

use anyhow::Result;
use gptoss_backend::Backend;
use gptoss_model::{GenerateOptions, Model, Sampler, SamplerConfig};
use tokio::sync::mpsc;

use crate::backends::WithBackend;

/// One generation request.
pub struct Job {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Sampling settings.
    pub sampler: SamplerConfig,
    /// End-of-generation ids.
    pub stop: Vec<u32>,
    /// Where the tokens go; closed when the client disconnects.
    pub events: mpsc::Sender<Event>,
}

/// What the worker reports for a job.
#[derive(Debug)]
pub enum Event {
    /// A generated token.
    Token(u32),
    /// The end: `stopped` is true when an end-of-generation token ended it.
    Done {
        /// Prompt tokens.
        prompt_tokens: usize,
        /// Generated tokens.
        completion_tokens: usize,
        /// Ended by an end-of-generation token (else by the length limit).
        stopped: bool,
    },
    /// The job failed.
    Error(String),
}

/// What the worker tells the server once the model is loaded.
pub struct Ready {
    /// Backend name.
    pub backend: String,
    /// Model context length.
    pub context_length: usize,
}

/// The worker loop, run on the chosen backend.
pub struct WorkerJob {
    /// Model file.
    pub path: PathBuf,
    /// Jobs to run.
    pub jobs: mpsc::Receiver<Job>,
    /// Load result, sent once.
    pub ready: std::sync::mpsc::Sender<Result<Ready, String>>,
}

impl WithBackend for WorkerJob {
    type Out = ();

    fn run<B: Backend>(mut self, backend: B) -> Result<()> {
        let name = backend.name();
        let label = self.path.display().to_string();
        let loaded = gptoss_model::open_gguf(&self.path)
            .map_err(anyhow::Error::from)
            .and_then(|g| crate::progress::load_model(backend, &g, &label, false));
        let model = match loaded {
            Ok(m) => m,
            Err(e) => {
                let _ = self.ready.send(Err(format!("{e}")));
                return Ok(());
            }
        };
        let _ = self.ready.send(Ok(Ready {
            backend: name,
            context_length: model.config().context_length,
        }));
        while let Some(job) = self.jobs.blocking_recv() {
            if job.events.is_closed() {
                tracing::debug!("skipping a request whose client left while it was queued");
                continue;
            }
            let ev = match run_one(&model, &job) {
                Ok(ev) => ev,
                Err(e) => Event::Error(format!("{e:#}")),
            };
            let _ = job.events.blocking_send(ev);
        }
        Ok(())
    }
}

fn run_one<B: Backend>(model: &Model<B>, job: &Job) -> Result<Event> {
    let mut session = model.new_session(Some(job.prompt.len() + job.max_tokens))?;
    let mut sampler = Sampler::new(job.sampler.clone())?;
    let opts = GenerateOptions {
        max_tokens: job.max_tokens,
        stop_tokens: job.stop.clone(),
    };
    let gen_ = gptoss_model::generate(
        model,
        &mut session,
        &job.prompt,
        &mut sampler,
        &opts,
        &mut |id| {
            // A closed channel means the client disconnected: stop and free the worker.
            job.events.blocking_send(Event::Token(id)).is_ok()
        },
    )?;
    Ok(Event::Done {
        prompt_tokens: gen_.prompt_tokens,
        completion_tokens: gen_.tokens.len(),
        stopped: matches!(gen_.stop, gptoss_model::StopReason::EndOfGeneration(_)),
    })
}

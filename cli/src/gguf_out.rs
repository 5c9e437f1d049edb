//! Streaming GGUF output for the commands that write models (synth, convert, quantize): the
//! header goes first, then each tensor's bytes in order with alignment padding, into a temporary
//! file that is renamed into place only when everything was written, so an interrupted run never
//! leaves a truncated model behind.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use gguf_format::{GgmlType, GgufWriter, Metadata, TensorInfo};

/// One tensor's header entry (offsets are computed by the writer).
#[derive(Debug, Clone)]
pub struct OutTensor {
    /// Name.
    pub name: String,
    /// Shape in ggml order.
    pub ne: Vec<u64>,
    /// Type.
    pub ty: GgmlType,
}

impl OutTensor {
    /// Data bytes.
    pub fn n_bytes(&self) -> Result<u64> {
        let n: u64 = self.ne.iter().product();
        self.ty.bytes_for(n).with_context(|| {
            format!(
                "tensor {}: {n} elements are not whole {} blocks",
                self.name, self.ty
            )
        })
    }
}

impl OutTensor {
    fn info(&self) -> Result<TensorInfo> {
        if self.name.len() >= gguf_format::MAX_NAME_BYTES {
            bail!(
                "tensor name '{}' is {} bytes; llama.cpp accepts at most {}",
                self.name,
                self.name.len(),
                gguf_format::MAX_NAME_BYTES - 1
            );
        }
        self.n_bytes()?;
        Ok(TensorInfo {
            name: self.name.clone(),
            ggml_type: self.ty,
            shape: self.ne.clone(),
            offset: 0,
        })
    }
}

fn infos(tensors: &[OutTensor]) -> Result<Vec<TensorInfo>> {
    tensors.iter().map(OutTensor::info).collect()
}

/// The size a file with this metadata and these tensors will have.
pub fn file_size(meta: &Metadata, tensors: &[OutTensor]) -> Result<u64> {
    let mut infos = infos(tensors)?;
    let align = match meta.get("general.alignment") {
        Some(gguf_format::Value::U32(a)) => *a as u64,
        _ => gguf_format::DEFAULT_ALIGNMENT,
    };
    let data = gguf_format::writer::pack_offsets(&mut infos, align)?;
    let (_, data_offset) = gguf_format::writer::encode_header(meta, &infos, Default::default())?;
    Ok(data_offset + data)
}

/// A GGUF file being written (gguf-format's [`GgufWriter`], which writes a temporary file and
/// renames it into place at the end): create it, call [`TensorSink::write`] with each tensor's
/// bytes in header order (any number of calls per tensor), then [`TensorSink::finish`].
pub struct TensorSink {
    w: GgufWriter,
    dest: PathBuf,
}

impl TensorSink {
    /// Write the header to a temporary file beside `dest`.
    pub fn create(dest: &Path, meta: &Metadata, tensors: &[OutTensor]) -> Result<TensorSink> {
        let w = GgufWriter::create_packed(dest, meta, infos(tensors)?, Default::default())
            .with_context(|| format!("creating {}", dest.display()))?;
        Ok(TensorSink {
            w,
            dest: dest.to_path_buf(),
        })
    }

    /// Total file size once finished.
    pub fn total_bytes(&self) -> u64 {
        self.w.file_size()
    }

    /// Append bytes of the current tensor; moves on to the next tensor when it is complete.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.w
            .write_tensor_part(bytes)
            .with_context(|| format!("writing {}", self.dest.display()))
    }

    /// Check every tensor was written, flush, and rename into place.
    pub fn finish(self) -> Result<u64> {
        let dest = self.dest;
        self.w
            .finish()
            .with_context(|| format!("finishing {}", dest.display()))
    }
}

/// Write a whole file whose tensors are produced in chunks: `n_chunks[i]` chunks for tensor `i`,
/// `make(i, c)` returning the bytes of chunk `c` of tensor `i`. Chunks are made in parallel
/// (rayon) in batches while the previous batch is being written, so generation and disk overlap
/// and memory stays bounded by two batches. Returns the file size.
pub fn write_chunked<F>(
    dest: &Path,
    meta: &Metadata,
    tensors: &[OutTensor],
    n_chunks: &[usize],
    make: F,
    label: &str,
    quiet: bool,
) -> Result<u64>
where
    F: Fn(usize, usize) -> Result<Vec<u8>> + Sync,
{
    use rayon::prelude::*;
    let mut sink = TensorSink::create(dest, meta, tensors)?;
    let pb = crate::progress::bytes_bar(sink.total_bytes(), label, quiet);
    let jobs: Vec<(usize, usize)> = n_chunks
        .iter()
        .enumerate()
        .flat_map(|(i, &n)| (0..n).map(move |c| (i, c)))
        .collect();
    let batch = (rayon::current_num_threads() * 4).max(8);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Vec<u8>>>(1);
    let total = std::thread::scope(|scope| -> Result<u64> {
        let pbw = pb.clone();
        let writer = scope.spawn(move || -> Result<u64> {
            for chunks in rx {
                for c in chunks {
                    sink.write(&c)?;
                    pbw.inc(c.len() as u64);
                }
            }
            sink.finish()
        });
        let mut result = Ok(());
        for group in jobs.chunks(batch) {
            let made: Result<Vec<Vec<u8>>> = group.par_iter().map(|&(i, c)| make(i, c)).collect();
            match made {
                Ok(m) => {
                    if tx.send(m).is_err() {
                        break; // the writer failed; its error is returned below
                    }
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        drop(tx);
        let written = writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer thread panicked"))?;
        result?;
        written
    })?;
    pb.finish_and_clear();
    Ok(total)
}

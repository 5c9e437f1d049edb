//! Streaming GGUF output for the commands that write models (synth, convert, quantize): the
//! header goes first, then each tensor's bytes in order with alignment padding, into a temporary
//! file that is renamed into place only when everything was written, so an interrupted run never
//! leaves a truncated model behind.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use gguf_format::{Array, GgmlType, Metadata, Value};

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

const ALIGN: u64 = 32;

fn pad(n: u64) -> u64 {
    n.div_ceil(ALIGN) * ALIGN - n
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

fn put_array(b: &mut Vec<u8>, a: &Array) {
    b.extend(a.element_type().id().to_le_bytes());
    b.extend((a.len() as u64).to_le_bytes());
    match a {
        Array::U8(v) => b.extend(v),
        Array::I8(v) => b.extend(v.iter().map(|&x| x as u8)),
        Array::U16(v) => v.iter().for_each(|x| b.extend(x.to_le_bytes())),
        Array::I16(v) => v.iter().for_each(|x| b.extend(x.to_le_bytes())),
        Array::U32(v) => v.iter().for_each(|x| b.extend(x.to_le_bytes())),
        Array::I32(v) => v.iter().for_each(|x| b.extend(x.to_le_bytes())),
        Array::F32(v) => v.iter().for_each(|x| b.extend(x.to_le_bytes())),
        Array::Bool(v) => b.extend(v.iter().map(|&x| x as u8)),
        Array::String(v) => v.iter().for_each(|s| put_str(b, s)),
        Array::Array(v) => v.iter().for_each(|x| put_array(b, x)),
        Array::U64(v) => v.iter().for_each(|x| b.extend(x.to_le_bytes())),
        Array::I64(v) => v.iter().for_each(|x| b.extend(x.to_le_bytes())),
        Array::F64(v) => v.iter().for_each(|x| b.extend(x.to_le_bytes())),
    }
}

fn put_value(b: &mut Vec<u8>, v: &Value) {
    b.extend(v.value_type().id().to_le_bytes());
    match v {
        Value::U8(x) => b.push(*x),
        Value::I8(x) => b.push(*x as u8),
        Value::U16(x) => b.extend(x.to_le_bytes()),
        Value::I16(x) => b.extend(x.to_le_bytes()),
        Value::U32(x) => b.extend(x.to_le_bytes()),
        Value::I32(x) => b.extend(x.to_le_bytes()),
        Value::F32(x) => b.extend(x.to_le_bytes()),
        Value::Bool(x) => b.push(*x as u8),
        Value::String(s) => put_str(b, s),
        Value::Array(a) => put_array(b, a),
        Value::U64(x) => b.extend(x.to_le_bytes()),
        Value::I64(x) => b.extend(x.to_le_bytes()),
        Value::F64(x) => b.extend(x.to_le_bytes()),
    }
}

/// The header bytes (magic through the padding before the data section) and the data size.
pub fn header_bytes(meta: &Metadata, tensors: &[OutTensor]) -> Result<(Vec<u8>, u64)> {
    let mut b = Vec::with_capacity(1 << 20);
    b.extend(b"GGUF");
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((meta.len() as u64).to_le_bytes());
    for (k, v) in meta.iter() {
        put_str(&mut b, k);
        put_value(&mut b, v);
    }
    let mut off = 0u64;
    for t in tensors {
        if t.name.len() >= gguf_format::MAX_NAME_BYTES {
            bail!(
                "tensor name '{}' is {} bytes; llama.cpp accepts at most 63",
                t.name,
                t.name.len()
            );
        }
        put_str(&mut b, &t.name);
        b.extend((t.ne.len() as u32).to_le_bytes());
        for &n in &t.ne {
            b.extend(n.to_le_bytes());
        }
        b.extend(t.ty.id().to_le_bytes());
        b.extend(off.to_le_bytes());
        let n = t.n_bytes()?;
        off += n + pad(n);
    }
    let p = pad(b.len() as u64);
    b.extend(std::iter::repeat_n(0u8, p as usize));
    Ok((b, off))
}

/// A GGUF file being written: create it, call [`TensorSink::write`] with each tensor's bytes in
/// header order (any number of calls per tensor), then [`TensorSink::finish`].
pub struct TensorSink {
    out: Option<BufWriter<File>>,
    tmp: PathBuf,
    dest: PathBuf,
    sizes: Vec<(String, u64)>,
    current: usize,
    written: u64,
    total: u64,
}

impl TensorSink {
    /// Write the header to `dest`'s temporary sibling.
    pub fn create(dest: &Path, meta: &Metadata, tensors: &[OutTensor]) -> Result<TensorSink> {
        let (header, data) = header_bytes(meta, tensors)?;
        let name = dest.file_name().context("output path has no file name")?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(".tmp");
        let tmp = dest.with_file_name(tmp_name);
        let f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut out = BufWriter::with_capacity(8 << 20, f);
        out.write_all(&header)
            .with_context(|| format!("writing {}", tmp.display()))?;
        let sizes = tensors
            .iter()
            .map(|t| Ok((t.name.clone(), t.n_bytes()?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(TensorSink {
            out: Some(out),
            tmp,
            dest: dest.to_path_buf(),
            sizes,
            current: 0,
            written: 0,
            total: header.len() as u64 + data,
        })
    }

    /// Total file size once finished.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// Append bytes of the current tensor; moves on to the next tensor when it is complete.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let Some((name, size)) = self.sizes.get(self.current) else {
            bail!("more tensor data than the header announces");
        };
        if self.written + bytes.len() as u64 > *size {
            bail!("tensor {name}: more than its {size} bytes written");
        }
        let out = self.out.as_mut().context("file already finished")?;
        out.write_all(bytes)
            .with_context(|| format!("writing {}", self.tmp.display()))?;
        self.written += bytes.len() as u64;
        if self.written == *size {
            let p = pad(*size) as usize;
            out.write_all(&[0u8; 32][..p])?;
            self.current += 1;
            self.written = 0;
        }
        Ok(())
    }

    /// Check every tensor was written, flush, and rename into place.
    pub fn finish(mut self) -> Result<u64> {
        // Zero-sized tensors need no write call.
        while self.current < self.sizes.len() && self.sizes[self.current].1 == 0 {
            self.current += 1;
        }
        if self.current != self.sizes.len() {
            bail!(
                "tensor {} was not written completely",
                self.sizes[self.current].0
            );
        }
        let mut out = self.out.take().context("file already finished")?;
        out.flush()?;
        let f = out.into_inner().map_err(|e| e.into_error())?;
        f.sync_all().ok();
        drop(f);
        std::fs::rename(&self.tmp, &self.dest).with_context(|| {
            format!("renaming {} to {}", self.tmp.display(), self.dest.display())
        })?;
        Ok(self.total)
    }
}

impl Drop for TensorSink {
    fn drop(&mut self) {
        // An unfinished file is removed; after finish() the temporary no longer exists.
        let _ = std::fs::remove_file(&self.tmp);
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

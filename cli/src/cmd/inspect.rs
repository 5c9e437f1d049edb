//! `gptoss inspect FILE [--json]`: what a GGUF file holds, like gguf-dump.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use gguf_format::{Array, GgmlType, GgufFile, Value};

/// Arguments of `gptoss inspect`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The GGUF file.
    pub file: PathBuf,
    /// Print one JSON object (metadata with arrays in full, tensor list) instead of the human view.
    #[arg(long)]
    pub json: bool,
    /// Array elements shown per metadata array in the human view.
    #[arg(long, default_value_t = 8)]
    pub max_array: usize,
}

/// Run the command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let f = GgufFile::open(&args.file)
        .with_context(|| format!("inspecting {}", args.file.display()))?;
    let out = if args.json {
        let mut s = serde_json::to_string_pretty(&f.to_json())?;
        s.push('\n');
        s
    } else {
        human(&f, args.max_array)
    };
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth a message.
    if let Err(e) = stdout
        .write_all(out.as_bytes())
        .and_then(|_| stdout.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Err(e.into());
    }
    Ok(ExitCode::SUCCESS)
}

fn short_str(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(max).collect();
        format!("{head:?}... ({} bytes)", s.len())
    }
}

fn show_value(v: &Value, max_array: usize) -> String {
    match v {
        Value::String(s) => short_str(s, 60),
        Value::Array(a) => show_array(a, max_array),
        Value::F32(x) => format!("{x}"),
        Value::F64(x) => format!("{x}"),
        v => v.to_json().to_string(),
    }
}

fn show_array(a: &Array, max_array: usize) -> String {
    let n = a.len();
    let shown: Vec<String> = match a {
        Array::String(s) => s.iter().take(max_array).map(|x| short_str(x, 30)).collect(),
        Array::Array(v) => v
            .iter()
            .take(max_array)
            .map(|x| show_array(x, max_array))
            .collect(),
        a => (0..n.min(max_array))
            .filter_map(|i| a.get(i))
            .map(|v| show_value(&v, max_array))
            .collect(),
    };
    let more = if n > max_array {
        format!(", ... {} more", n - max_array)
    } else {
        String::new()
    };
    format!("[{}{more}]", shown.join(", "))
}

fn human_bytes(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = b as f64;
    let mut u = 0;
    while x >= 1024.0 && u < U.len() - 1 {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{x:.2} {}", U[u])
    }
}

fn human(f: &GgufFile, max_array: usize) -> String {
    let mut o = String::new();
    let md = f.metadata();
    let _ = writeln!(
        o,
        "{}: GGUF v{} {:?}-endian, {} bytes, alignment {}, {} metadata keys, {} tensors, data section at {}",
        f.path().display(),
        f.version(),
        f.endian(),
        f.len(),
        f.alignment(),
        md.len(),
        f.tensors().len(),
        f.data_offset()
    );
    let _ = writeln!(o, "\nMetadata:");
    let kw = md.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in md.iter() {
        let _ = writeln!(
            o,
            "  {k:kw$}  {:<22} {}",
            v.type_description(),
            show_value(v, max_array)
        );
    }
    if f.tensors().is_empty() {
        return o;
    }
    let _ = writeln!(o, "\nTensors:");
    let nw = f
        .tensors()
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(
        o,
        "  {:>4}  {:nw$}  {:<7}  {:<24}  {:>12}  {:>12}",
        "#", "name", "type", "shape (ggml order)", "bytes", "offset"
    );
    let mut by_type: BTreeMap<GgmlType, (usize, u64, u64)> = BTreeMap::new();
    for (i, t) in f.tensors().iter().enumerate() {
        let shape = format!("{:?}", t.shape);
        let _ = writeln!(
            o,
            "  {i:>4}  {:nw$}  {:<7}  {shape:<24}  {:>12}  {:>12}",
            t.name,
            t.ggml_type.name(),
            t.size_bytes(),
            t.offset
        );
        let e = by_type.entry(t.ggml_type).or_default();
        e.0 += 1;
        e.1 += t.n_elements();
        e.2 += t.size_bytes();
    }
    let _ = writeln!(o, "\nSummary by type:");
    let _ = writeln!(
        o,
        "  {:<7}  {:>7}  {:>15}  {:>12}  {:>11}",
        "type", "tensors", "parameters", "bytes", "bits/weight"
    );
    let (mut tn, mut tp, mut tb) = (0usize, 0u64, 0u64);
    for (ty, (n, p, b)) in &by_type {
        let _ = writeln!(
            o,
            "  {:<7}  {n:>7}  {p:>15}  {:>12}  {:>11.3}",
            ty.name(),
            human_bytes(*b),
            *b as f64 * 8.0 / (*p).max(1) as f64
        );
        tn += n;
        tp += p;
        tb += b;
    }
    let _ = writeln!(
        o,
        "  {:<7}  {tn:>7}  {tp:>15}  {:>12}  {:>11.3}",
        "total",
        human_bytes(tb),
        tb as f64 * 8.0 / tp.max(1) as f64
    );
    o
}

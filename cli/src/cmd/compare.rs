//! `gptoss compare`: the table this project exists for. Synthesizes a GPT-OSS once, requantizes
//! it to each type, benches each on one backend, and prints one markdown table with every number
//! relative to MXFP4 (the published format, experts kept native).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args as ClapArgs;

use crate::benchcore::{Row, fmt_bytes};
use crate::gguf_out::OutTensor;
use crate::qplan::FileType;
use crate::synth::{self, Hparams, Vocab};

/// Arguments of `gptoss compare`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Model shape to synthesize: small (default: seconds on a laptop CPU), tiny, 20b, 120b.
    #[arg(long, default_value = "small")]
    pub preset: String,
    /// File types to compare (the first is the baseline of the relative columns).
    #[arg(long, value_delimiter = ',', default_value = "mxfp4_moe,q4_k_m,iq4_xs,q8_0,bf16", value_parser = FileType::parse)]
    pub types: Vec<FileType>,
    /// Backend: auto (cuda, else a GPU through wgpu, else cpu), cuda[:N], wgpu, cpu, cpu-ref.
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// Prompt length of the prefill test (default: 512 for 20b/120b, 64 otherwise).
    #[arg(short = 'p', long)]
    pub n_prompt: Option<usize>,
    /// Tokens of the decode test (default: 128 for 20b/120b, 16 otherwise).
    #[arg(short = 'n', long)]
    pub n_gen: Option<usize>,
    /// Repetitions (default: 3 for 20b/120b, 2 otherwise).
    #[arg(short = 'r', long)]
    pub reps: Option<usize>,
    /// Folder for the model files (default: a temporary folder, deleted afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Tokenizer from this GGUF instead of the built-in vocabulary.
    #[arg(long)]
    pub vocab: Option<PathBuf>,
    /// Random seed of the synthesized weights.
    #[arg(long, default_value_t = 20251126)]
    pub seed: u64,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
}

fn synthesize(hp: &Hparams, vocab: &Vocab, seed: u64, out: &Path, quiet: bool) -> Result<()> {
    let ftype = FileType::MXFP4_MOE;
    let specs = synth::tensors_for(hp, ftype);
    let meta = synth::metadata(hp, ftype, &specs, vocab)?;
    let outs: Vec<OutTensor> = specs
        .iter()
        .map(|s| OutTensor {
            name: s.name.clone(),
            ne: s.ne.clone(),
            ty: s.ty,
        })
        .collect();
    let n_chunks: Vec<usize> = specs.iter().map(synth::n_chunks).collect();
    crate::gguf_out::write_chunked(
        out,
        &meta,
        &outs,
        &n_chunks,
        |i, c| {
            let mut v = Vec::new();
            synth::generate_chunk(&specs[i], i, seed, c, &mut v)?;
            Ok(v)
        },
        "synth",
        quiet,
    )?;
    Ok(())
}

fn requantize(src: &Path, ftype: FileType, out: &Path, quiet: bool) -> Result<()> {
    let model = gguf_format::GgufModel::open(src)?;
    let plan = crate::requant::plan(&model, ftype)?;
    let n_chunks: Vec<usize> = (0..plan.src.len())
        .map(|i| crate::requant::n_chunks(&plan, i))
        .collect();
    crate::gguf_out::write_chunked(
        out,
        &plan.meta,
        &plan.out,
        &n_chunks,
        |i, c| crate::requant::chunk(&model, &plan, i, c),
        ftype.name(),
        quiet,
    )?;
    Ok(())
}

/// Bench one model in a fresh `gptoss bench` process, so its peak memory (device memory, or the
/// process's peak RSS on the CPU) belongs to that model alone and a crash costs one row.
fn bench_in_child(
    path: &Path,
    backend: &str,
    p: usize,
    n: usize,
    reps: usize,
    quiet: bool,
) -> Result<Vec<Row>> {
    let exe = std::env::current_exe().context("finding the gptoss executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["bench", "-o", "json", "--backend", backend])
        .arg("-m")
        .arg(path)
        .args([
            "-p",
            &p.to_string(),
            "-n",
            &n.to_string(),
            "-r",
            &reps.to_string(),
        ]);
    if quiet {
        cmd.arg("--quiet");
    }
    let out = cmd.stderr(std::process::Stdio::piped()).output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    if !quiet {
        eprint!("{err}");
    }
    if !out.status.success() {
        bail!(
            "{}",
            err.lines()
                .rev()
                .find(|l| l.starts_with("error"))
                .unwrap_or("gptoss bench failed")
                .trim()
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing gptoss bench output")?;
    let rows = v
        .as_array()
        .context("gptoss bench output is not a JSON array")?;
    rows.iter().map(Row::from_json).collect()
}

/// One line of the table.
struct Line {
    ftype: FileType,
    file_size: u64,
    result: std::result::Result<(Row, Row), String>,
}

fn ratio(x: f64, base: f64) -> String {
    if base > 0.0 && x.is_finite() {
        format!("{:.2}x", x / base)
    } else {
        "-".into()
    }
}

/// Run `gptoss compare`.
pub fn run(args: Args) -> Result<ExitCode> {
    let t0 = Instant::now();
    let mut hp = Hparams::preset(&args.preset)?;
    let big = matches!(args.preset.as_str(), "20b" | "120b");
    let n_prompt = args.n_prompt.unwrap_or(if big { 512 } else { 64 });
    let n_gen = args.n_gen.unwrap_or(if big { 128 } else { 16 });
    let reps = args.reps.unwrap_or(if big { 3 } else { 2 });
    if args.types.is_empty() {
        bail!("--types is empty");
    }
    let vocab = match &args.vocab {
        Some(p) => {
            let f = gguf_format::GgufFile::open(p)?;
            hp.n_vocab = f.metadata().get_array("tokenizer.ggml.tokens")?.len();
            Vocab::FromGguf(f.metadata().clone())
        }
        None => Vocab::Builtin,
    };
    let tmp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let base = dir.join(format!("{}-mxfp4_moe.gguf", hp.name));
    if !args.quiet {
        eprintln!(
            "synthesizing {} ({} layers, {} experts) ...",
            hp.name, hp.n_layer, hp.n_expert
        );
    }
    synthesize(&hp, &vocab, args.seed, &base, args.quiet)?;
    let mut lines = Vec::new();
    let mut backend_name = String::new();
    for &ft in &args.types {
        let path = if ft == FileType::MXFP4_MOE {
            base.clone()
        } else {
            let p = dir.join(format!("{}-{}.gguf", hp.name, ft.name()));
            requantize(&base, ft, &p, args.quiet)?;
            p
        };
        let file_size = std::fs::metadata(&path)?.len();
        let result = match bench_in_child(&path, &args.backend, n_prompt, n_gen, reps, args.quiet) {
            Ok(rows) if rows.len() == 2 => {
                backend_name = rows[0].backend.clone();
                Ok((rows[0].clone(), rows[1].clone()))
            }
            Ok(rows) => Err(format!("expected 2 results, got {}", rows.len())),
            Err(e) => {
                let msg = format!("{e:#}");
                if !args.quiet {
                    eprintln!("{}: not measured: {msg}", ft.name());
                }
                Err(msg)
            }
        };
        if ft != FileType::MXFP4_MOE && args.dir.is_none() {
            std::fs::remove_file(&path).ok();
        }
        lines.push(Line {
            ftype: ft,
            file_size,
            result,
        });
    }
    let baseline = lines
        .iter()
        .find(|l| l.ftype == FileType::MXFP4_MOE)
        .or(lines.first());
    let (b_size, b_mem, b_pp, b_tg) = match baseline {
        Some(Line {
            file_size,
            result: Ok((pp, tg)),
            ..
        }) => (
            *file_size as f64,
            pp.peak_memory
                .or(tg.peak_memory)
                .map(|m| m as f64)
                .unwrap_or(f64::NAN),
            pp.mean(),
            tg.mean(),
        ),
        Some(l) => (l.file_size as f64, f64::NAN, f64::NAN, f64::NAN),
        None => (f64::NAN, f64::NAN, f64::NAN, f64::NAN),
    };
    let base_name = baseline.map(|l| l.ftype.name()).unwrap_or("-");
    println!(
        "gptoss compare: {} ({} layers, {} experts, hidden {}), backend {}, pp{} / tg{}, {} reps\n",
        hp.name,
        hp.n_layer,
        hp.n_expert,
        hp.n_embd,
        if backend_name.is_empty() {
            args.backend.as_str()
        } else {
            backend_name.as_str()
        },
        n_prompt,
        n_gen,
        reps
    );
    println!(
        "| type | file size | peak mem | prefill tok/s | decode tok/s | size vs {base_name} | mem vs {base_name} | prefill vs {base_name} | decode vs {base_name} |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for l in &lines {
        match &l.result {
            Ok((pp, tg)) => {
                let mem = pp.peak_memory.or(tg.peak_memory);
                println!(
                    "| {} | {} | {} | {:.1} ± {:.1} | {:.2} ± {:.2} | {} | {} | {} | {} |",
                    l.ftype.name(),
                    fmt_bytes(l.file_size),
                    mem.map(fmt_bytes).unwrap_or_else(|| "n/a".into()),
                    pp.mean(),
                    pp.stddev(),
                    tg.mean(),
                    tg.stddev(),
                    ratio(l.file_size as f64, b_size),
                    mem.map(|m| ratio(m as f64, b_mem))
                        .unwrap_or_else(|| "-".into()),
                    ratio(pp.mean(), b_pp),
                    ratio(tg.mean(), b_tg),
                );
            }
            Err(e) => println!(
                "| {} | {} | - | - | - | {} | - | - | - |  <!-- not measured: {} -->",
                l.ftype.name(),
                fmt_bytes(l.file_size),
                ratio(l.file_size as f64, b_size),
                e.lines().next().unwrap_or("")
            ),
        }
    }
    if !args.quiet {
        eprintln!("compare finished in {:.1} s", t0.elapsed().as_secs_f64());
    }
    Ok(ExitCode::SUCCESS)
}

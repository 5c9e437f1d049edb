//! `gptoss validate FILE`: structure and data checks; exit 0 when valid, 1 listing every finding.

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `gptoss validate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The GGUF file (each file of a split set is validated on its own).
    pub file: PathBuf,
}

/// Run the command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let report = gguf_format::validate(&args.file);
    for f in &report.findings {
        println!("{}: {f}", args.file.display());
    }
    let errors = report.errors().count();
    let warnings = report.findings.len() - errors;
    let verdict = if report.is_valid() {
        "valid"
    } else {
        "INVALID"
    };
    println!(
        "{}: {verdict}: {errors} errors, {warnings} warnings; {} tensors ({} bytes of data) checked",
        args.file.display(),
        report.tensors_checked,
        report.bytes_checked
    );
    Ok(if report.is_valid() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

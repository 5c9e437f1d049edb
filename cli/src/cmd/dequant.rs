//! `gptoss dequant FILE TENSOR --out OUT.safetensors`: one tensor of a GGUF decoded to f32.
//!
//! A debugging tool: the output holds the tensor under its own name, shaped as the GGUF says
//! (ggml's dimension order reversed, i.e. row-major `[ne_last, ..., ne0]`), so any tool that reads
//! safetensors can compare a file's numbers with its own.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use gguf_format::GgufModel;
use safetensors::Dtype;
use safetensors::tensor::TensorView;

/// Arguments of `gptoss dequant`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The GGUF file (any shard of a split set names the whole set).
    pub file: PathBuf,
    /// The tensor's name, e.g. `blk.0.ffn_down_exps.weight`.
    pub tensor: String,
    /// Output file (safetensors, one F32 tensor).
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs the command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let model =
        GgufModel::open(&args.file).with_context(|| format!("opening {}", args.file.display()))?;
    let Some(view) = model
        .tensor_checked(&args.tensor)
        .with_context(|| format!("tensor {:?} of {}", args.tensor, args.file.display()))?
    else {
        bail!(
            "{} has no tensor named {:?} ({} tensors; `gptoss inspect` lists them)",
            args.file.display(),
            args.tensor,
            model.tensor_count()
        );
    };
    let info = view.info;
    let ty = info.ggml_type;
    let n = info
        .shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .with_context(|| format!("tensor {:?}: element count overflows", info.name))?;
    // The count is checked against the bytes actually present before anything is allocated.
    let expected = ty.bytes_for(n).with_context(|| {
        format!(
            "tensor {:?}: {n} elements is not a whole number of {ty} blocks",
            info.name
        )
    })?;
    if expected != view.data.len() as u64 {
        bail!(
            "tensor {:?}: {} bytes of data, but {n} elements of {ty} need {expected}",
            info.name,
            view.data.len()
        );
    }
    let n = usize::try_from(n).context("tensor too large for this platform")?;
    let mut values = vec![0.0f32; n];
    gptoss_quant::dequantize(ty, view.data, &mut values)
        .with_context(|| format!("decoding tensor {:?} ({ty})", info.name))?;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    drop(values);
    let shape: Vec<usize> = info.shape.iter().rev().map(|&d| d as usize).collect();
    let tensor = TensorView::new(Dtype::F32, shape.clone(), &bytes)
        .map_err(|e| anyhow::anyhow!("building the output tensor: {e}"))?;
    let meta = HashMap::from([
        ("source".to_string(), args.file.display().to_string()),
        ("ggml_type".to_string(), ty.name().to_string()),
        ("ggml_shape".to_string(), format!("{:?}", info.shape)),
    ]);
    write_atomically(&args.out, |tmp| {
        safetensors::serialize_to_file([(info.name.as_str(), tensor)], Some(meta), tmp)
            .map_err(|e| anyhow::anyhow!("{e}"))
    })?;
    eprintln!(
        "{}: {ty} {:?} -> F32 {:?} in {}",
        info.name,
        info.shape,
        shape,
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes through a temporary file in the destination folder, renamed into place at the end.
fn write_atomically(
    out: &Path,
    write: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let name = out
        .file_name()
        .with_context(|| format!("{} is not a file path", out.display()))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = out.with_file_name(tmp_name);
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!("writing {}", tmp.display())));
    }
    std::fs::rename(&tmp, out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gguf_format::writer::{WriteOptions, pack_offsets, to_bytes};
    use gguf_format::{GgmlType, Metadata, TensorInfo};

    fn info(name: &str, ggml_type: GgmlType, shape: Vec<u64>) -> TensorInfo {
        TensorInfo {
            name: name.to_string(),
            ggml_type,
            shape,
            offset: 0,
        }
    }

    #[test]
    fn writes_the_decoded_tensor_shaped_row_major() {
        let dir = tempfile::tempdir().unwrap();
        // F16 values k/4 (exact in f16) in a {3, 2} tensor (ggml order): 2 rows of 3.
        let f16_vals: Vec<f32> = (0..6).map(|k| k as f32 / 4.0 - 0.5).collect();
        let f16_bytes: Vec<u8> = f16_vals
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_bits().to_le_bytes())
            .collect();
        // One MXFP4 block with scale byte 128 (x2) and codes 0..15 then 15..0.
        let mut mx = vec![128u8];
        for j in 0..16u8 {
            mx.push(j | ((15 - j) << 4));
        }
        let e2m1 = [
            0.0f32, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0,
            -6.0,
        ];
        let mx_expected: Vec<f32> = (0..32)
            .map(|i| 2.0 * if i < 16 { e2m1[i] } else { e2m1[31 - i] })
            .collect();
        let mut tensors = vec![
            info("a.weight", GgmlType::F16, vec![3, 2]),
            info("b.weight", GgmlType::MXFP4, vec![32, 1]),
        ];
        let md = Metadata::new();
        pack_offsets(&mut tensors, 32).unwrap();
        let file = to_bytes(&md, &tensors, &[&f16_bytes, &mx], WriteOptions::default()).unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, file).unwrap();

        for (name, want, shape) in [
            ("a.weight", f16_vals.clone(), vec![2usize, 3]),
            ("b.weight", mx_expected.clone(), vec![1, 32]),
        ] {
            let out = dir.path().join(format!("{name}.safetensors"));
            let code = run(Args {
                file: path.clone(),
                tensor: name.to_string(),
                out: out.clone(),
            })
            .unwrap();
            assert_eq!(code, ExitCode::SUCCESS);
            let bytes = std::fs::read(&out).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let t = st.tensor(name).unwrap();
            assert_eq!(t.dtype(), Dtype::F32);
            assert_eq!(t.shape(), shape.as_slice());
            let got: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            assert_eq!(got, want, "{name}");
        }

        let missing = run(Args {
            file: path,
            tensor: "nope".into(),
            out: dir.path().join("x.safetensors"),
        });
        assert!(missing.unwrap_err().to_string().contains("no tensor named"));
    }
}

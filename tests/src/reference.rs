//! Reading reference outputs (safetensors + JSON) and comparing logits the way the end-to-end
//! tests need: tolerances, and rankings that respect near-ties.

use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;

/// A safetensors file loaded into memory, with typed accessors that panic with the tensor's
/// name (test helpers: a missing reference tensor is a broken fixture, not a skip).
pub struct RefTensors {
    f32s: HashMap<String, (Vec<f32>, Vec<usize>)>,
    i32s: HashMap<String, (Vec<i32>, Vec<usize>)>,
}

impl RefTensors {
    /// Load every f32 and i32 tensor of `path`.
    pub fn load(path: &Path) -> RefTensors {
        let bytes =
            std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let st = SafeTensors::deserialize(&bytes)
            .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
        let mut out = RefTensors {
            f32s: HashMap::new(),
            i32s: HashMap::new(),
        };
        for (name, view) in st.tensors() {
            let shape = view.shape().to_vec();
            let words = view
                .data()
                .chunks_exact(4)
                .map(|c| [c[0], c[1], c[2], c[3]]);
            match view.dtype() {
                Dtype::F32 => {
                    out.f32s
                        .insert(name, (words.map(f32::from_le_bytes).collect(), shape));
                }
                Dtype::I32 => {
                    out.i32s
                        .insert(name, (words.map(i32::from_le_bytes).collect(), shape));
                }
                _ => {}
            }
        }
        out
    }

    /// An f32 tensor and its shape.
    pub fn f32(&self, name: &str) -> (&[f32], &[usize]) {
        let (d, s) = self
            .f32s
            .get(name)
            .unwrap_or_else(|| panic!("reference tensor '{name}' (f32) is missing"));
        (d, s)
    }

    /// An i32 tensor and its shape.
    pub fn i32(&self, name: &str) -> (&[i32], &[usize]) {
        let (d, s) = self
            .i32s
            .get(name)
            .unwrap_or_else(|| panic!("reference tensor '{name}' (i32) is missing"));
        (d, s)
    }

    /// Whether an f32 tensor of that name exists.
    pub fn has_f32(&self, name: &str) -> bool {
        self.f32s.contains_key(name)
    }
}

/// Indices of `row` sorted by value descending (ties: lower index first).
pub fn ranking(row: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx
}

/// Check that the top-`k` ranking of `ours` agrees with the reference's wherever the reference
/// separates the candidates by more than `eps`: the i-th id of ours must be the reference's
/// i-th id, or one whose reference value lies within `eps` of the reference's i-th value
/// (a near-tie that numerical error may reorder). With `|ours - ref| <= d` elementwise,
/// `eps = 2 d` never flags a correct result. Returns a description of the first disagreement.
pub fn check_topk(ours: &[f32], reference: &[f32], k: usize, eps: f64) -> Result<(), String> {
    let ro = ranking(ours);
    let rr = ranking(reference);
    for i in 0..k.min(ours.len()) {
        let (mine, theirs) = (ro[i], rr[i]);
        if mine != theirs {
            let gap = (reference[mine] as f64 - reference[theirs] as f64).abs();
            if gap > eps {
                return Err(format!(
                    "rank {i}: ours id {mine} (ref value {}), reference id {theirs} (value {}), gap {gap:.3e} > eps {eps:.3e}",
                    reference[mine], reference[theirs]
                ));
            }
        }
    }
    Ok(())
}

/// A file of the tiny GPT-OSS fixture (`../shared/fixtures/gpt-oss-tiny/FILE`).
pub fn tiny(file: &str) -> std::path::PathBuf {
    crate::fixtures_dir().join("gpt-oss-tiny").join(file)
}

/// Parse a JSON file, panicking with the path on failure (a missing fixture must fail the test).
pub fn read_json(path: &Path) -> serde_json::Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// A JSON array of token ids.
pub fn ids_of(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("an array of ids")
        .iter()
        .map(|x| x.as_u64().expect("an id") as u32)
        .collect()
}

/// The sequences of a reference JSON: (name, prompt ids, greedy_24).
pub fn sequences(json: &serde_json::Value) -> Vec<(String, Vec<u32>, Vec<u32>)> {
    let seqs = json["sequences"].as_object().expect("sequences");
    assert!(!seqs.is_empty(), "reference has no sequences");
    seqs.iter()
        .map(|(name, s)| (name.clone(), ids_of(&s["ids"]), ids_of(&s["greedy_24"])))
        .collect()
}

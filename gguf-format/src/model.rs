//! A model: one GGUF file or a split set `NAME-00001-of-0000N.gguf` read as one.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use crate::{GgufError, GgufFile, Metadata, TensorInfo};

/// A tensor of a model: its info, its bytes, and where they live in which map.
#[derive(Debug, Clone)]
pub struct TensorView<'a> {
    /// Name, type, shape, offset.
    pub info: &'a TensorInfo,
    /// The data, zero-copy.
    pub data: &'a [u8],
    /// The map holding `data` (clone the `Arc` to keep the bytes alive past this borrow).
    pub mmap: &'a Arc<Mmap>,
    /// Absolute byte range of `data` in `mmap`.
    pub range: Range<usize>,
}

/// A GGUF model: a single file or every file of a split set, with one tensor namespace.
///
/// Metadata come from the first file (where llama.cpp's `gguf-split` puts them).
#[derive(Debug, Clone)]
pub struct GgufModel {
    files: Vec<GgufFile>,
    /// Tensor name -> (file index, tensor index in that file).
    index: HashMap<String, (usize, usize)>,
}

/// If `path` names a shard `PREFIX-0000k-of-0000n.gguf`, the paths of all `n` shards in order.
pub fn split_paths(path: &Path) -> Option<Vec<PathBuf>> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".gguf")?;
    // "-00001-of-00003": 5 digits, "-of-", 5 digits (llama.cpp's "%s-%05d-of-%05d.gguf").
    let (rest, count) = stem.rsplit_once("-of-")?;
    let (prefix, no) = rest.rsplit_once('-')?;
    let digits = |s: &str| s.len() >= 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(no) || !digits(count) {
        return None;
    }
    let n: usize = count.parse().ok()?;
    let k: usize = no.parse().ok()?;
    if n == 0 || k == 0 || k > n {
        return None;
    }
    let dir = path.parent().unwrap_or(Path::new(""));
    Some(
        (1..=n)
            .map(|i| dir.join(format!("{prefix}-{i:05}-of-{n:05}.gguf")))
            .collect(),
    )
}

impl GgufModel {
    /// Open a single file, or, when `path` names any shard of a split set, every shard.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufModel, GgufError> {
        let path = path.as_ref();
        let paths = split_paths(path).unwrap_or_else(|| vec![path.to_path_buf()]);
        let files = paths
            .iter()
            .map(GgufFile::open)
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_files(files)
    }

    /// Assemble a model from already opened files (the first holds the metadata), checking
    /// that split keys, when present, agree and no tensor appears twice.
    pub fn from_files(files: Vec<GgufFile>) -> Result<GgufModel, GgufError> {
        let Some(first) = files.first() else {
            return Err(GgufError::Split {
                path: PathBuf::new(),
                offset: 0,
                detail: "no files".into(),
            });
        };
        let n = files.len();
        if n > 1 || first.metadata().contains_key("split.count") {
            for (k, f) in files.iter().enumerate() {
                let md = f.metadata();
                let err = |key: &str, detail: String| GgufError::Split {
                    path: f.path().to_path_buf(),
                    offset: md.offset_of(key).unwrap_or(0),
                    detail,
                };
                if let Ok(count) = md.get_u64("split.count")
                    && count != n as u64
                {
                    return Err(err(
                        "split.count",
                        format!("split.count is {count} but the set has {n} files"),
                    ));
                }
                if let Ok(no) = md.get_u64("split.no")
                    && no != k as u64
                {
                    return Err(err(
                        "split.no",
                        format!("split.no is {no} but the file is number {k} (0-based) of the set"),
                    ));
                }
            }
        }
        let mut index = HashMap::new();
        for (fi, f) in files.iter().enumerate() {
            for (ti, t) in f.tensors().iter().enumerate() {
                if let Some((other, _)) = index.insert(t.name.clone(), (fi, ti)) {
                    return Err(GgufError::Split {
                        path: f.path().to_path_buf(),
                        offset: 0,
                        detail: format!(
                            "tensor {:?} is also in {}",
                            t.name,
                            files[other].path().display()
                        ),
                    });
                }
            }
        }
        if n > 1
            && let Ok(total) = first.metadata().get_u64("split.tensors.count")
            && total != index.len() as u64
        {
            return Err(GgufError::Split {
                path: first.path().to_path_buf(),
                offset: first
                    .metadata()
                    .offset_of("split.tensors.count")
                    .unwrap_or(0),
                detail: format!(
                    "split.tensors.count is {total} but the files hold {} tensors",
                    index.len()
                ),
            });
        }
        Ok(GgufModel { files, index })
    }

    /// Metadata of the model (the first file's).
    pub fn metadata(&self) -> &Metadata {
        self.files[0].metadata()
    }

    /// Every tensor info, file by file, in file order.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorInfo> + '_ {
        self.files.iter().flat_map(|f| f.tensors().iter())
    }

    /// Number of tensors in all files.
    pub fn tensor_count(&self) -> usize {
        self.index.len()
    }

    /// The tensor named `name`, or `None` when absent or when its data lie outside its file
    /// (use [`GgufModel::tensor_checked`] to get that error).
    pub fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        self.tensor_checked(name).ok().flatten()
    }

    /// The tensor named `name`: `Ok(None)` when absent, an error when its data are out of bounds.
    pub fn tensor_checked(&self, name: &str) -> Result<Option<TensorView<'_>>, GgufError> {
        let Some(&(fi, ti)) = self.index.get(name) else {
            return Ok(None);
        };
        let f = &self.files[fi];
        let info = &f.tensors()[ti];
        let range = f.tensor_range(info)?;
        Ok(Some(TensorView {
            info,
            data: &f.mmap()[range.clone()],
            mmap: f.mmap(),
            range,
        }))
    }

    /// The file holding the tensor named `name`.
    pub fn file_of(&self, name: &str) -> Option<&GgufFile> {
        self.index.get(name).map(|&(fi, _)| &self.files[fi])
    }

    /// The files, in split order.
    pub fn files(&self) -> &[GgufFile] {
        &self.files
    }
}

//! Loading a GPT-OSS model from a GGUF file: metadata into [`ModelConfig`], tensors handed to
//! the backend as zero-copy views of the memory map.

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::model::{Model, TensorSource};
use gguf_format::GgufModel;
use gptoss_backend::{Backend, HostBytes, WeightData};
use std::path::Path;
use std::sync::Arc;

impl TensorSource for GgufModel {
    fn weight(&self, name: &str) -> Result<Option<WeightData>> {
        let view = match self.tensor_checked(name) {
            Ok(Some(v)) => v,
            Ok(None) => return Ok(None),
            Err(e) => {
                return Err(ModelError::BadTensor {
                    name: name.to_string(),
                    detail: e.to_string(),
                });
            }
        };
        let shape = view
            .info
            .shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<std::result::Result<Vec<usize>, _>>()
            .map_err(|_| ModelError::BadTensor {
                name: name.to_string(),
                detail: format!(
                    "shape {:?} does not fit this machine's address space",
                    view.info.shape
                ),
            })?;
        let backing: Arc<dyn AsRef<[u8]> + Send + Sync> = view.mmap.clone();
        let bytes =
            HostBytes::new(backing, view.range.clone()).ok_or_else(|| ModelError::BadTensor {
                name: name.to_string(),
                detail: format!("byte range {:?} lies outside its file", view.range),
            })?;
        Ok(Some(WeightData {
            name: name.to_string(),
            dtype: view.info.ggml_type,
            shape,
            bytes,
        }))
    }
}

/// Open a GGUF file (or the first shard of a split set).
pub fn open_gguf(path: &Path) -> Result<GgufModel> {
    GgufModel::open(path).map_err(|e| {
        let shown = path.display().to_string();
        let msg = e.to_string();
        ModelError::File {
            // The reader's messages usually name the file already.
            message: if msg.contains(&shown) {
                msg
            } else {
                format!("{shown}: {msg}")
            },
            path: shown,
        }
    })
}

impl<B: Backend> Model<B> {
    /// Read the hyperparameters and upload every tensor of an opened GGUF model.
    pub fn from_gguf(backend: B, gguf: &GgufModel) -> Result<Self> {
        let config = ModelConfig::from_metadata(gguf.metadata())?;
        Model::from_source(backend, config, gguf)
    }

    /// Open the GGUF file at `path` and load it onto `backend`.
    pub fn load(backend: B, path: impl AsRef<Path>) -> Result<Self> {
        let gguf = open_gguf(path.as_ref())?;
        Model::from_gguf(backend, &gguf)
    }
}

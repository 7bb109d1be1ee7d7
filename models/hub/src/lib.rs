//! Where model files come from: a local directory, or a Hugging Face Hub repository resolved
//! through hf-hub's standard cache (`HF_HOME`, `~/.cache/huggingface/hub`).
//!
//! A file already in the cache is used without any request, `HF_HUB_OFFLINE=1` never touches
//! the network, and `HF_ENDPOINT` points the client elsewhere (tests serve a fake hub on
//! loopback). Every failure is one line that names the source, the file and the way out.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::{Device, Tensor};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

/// Why a model file could not be had.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("`{0}` is neither a directory nor a hub repo id (owner/name[@revision])")]
    InvalidSource(String),
    #[error("{dir} has no `{file}`")]
    MissingLocalFile { dir: PathBuf, file: String },
    #[error(
        "`{file}` of hub repo `{repo}` is not in the cache and HF_HUB_OFFLINE is set; \
         unset it to download, or pass --model /path/to/a/local/directory"
    )]
    NotCached { repo: String, file: String },
    #[error(
        "cannot download `{file}` from hub repo `{repo}`: {reason}; \
         pass --model /path/to/a/local/directory to use local weights"
    )]
    Download {
        repo: String,
        file: String,
        reason: String,
    },
    #[error("cannot read weights {path}: {reason}")]
    Weights { path: PathBuf, reason: String },
}

/// Reads every tensor of a safetensors file onto the CPU, on all cores: the file is
/// memory-mapped for its header, f32 tensors are read from it into fresh buffers, others copied
/// out of the map (the copies, and the page faults of the fresh buffers they fill, are what
/// loading costs).
pub fn load_safetensors(path: &Path) -> Result<BTreeMap<String, Tensor>, HubError> {
    use candle_core::safetensors::Load;
    use rayon::prelude::*;

    let unreadable = |reason: String| HubError::Weights {
        path: path.to_path_buf(),
        reason,
    };
    let handle = std::fs::File::open(path).map_err(|e| unreadable(e.to_string()))?;
    // SAFETY: the map is read-only and dropped before returning; the header is parsed from it
    // and f32 tensors are read from the file, other types copied out of it. A file truncated by
    // another process meanwhile could fault; model files are not rewritten in place.
    let map = unsafe { memmap2::Mmap::map(&handle) }.map_err(|e| unreadable(e.to_string()))?;
    let file = safetensors::SafeTensors::deserialize(&map).map_err(|e| unreadable(e.to_string()))?;
    let names: Vec<&str> = file.names();
    names
        .into_par_iter()
        .map(|name| {
            let view = file.tensor(name).map_err(|e| unreadable(e.to_string()))?;
            let tensor = match view.dtype() {
                safetensors::Dtype::F32 => {
                    let offset = view.data().as_ptr() as usize - map.as_ptr() as usize;
                    f32_tensor(&handle, offset as u64, &view)
                }
                _ => view.load(&Device::Cpu),
            }
            .map_err(|e| unreadable(e.to_string()))?;
            Ok((name.to_string(), tensor))
        })
        .collect()
}

/// An f32 tensor read from the file (at `offset`, the bytes `view` maps) into memory backed by
/// huge pages where the kernel grants them: filling 500 MB of fresh 4 KiB pages costs a page
/// fault each, which dominated GPT-2's start-up. Reading rather than copying out of the map
/// spares mapping (and unmapping) every page of the file. Large tensors are read in slices on
/// every core: GPT-2's token embedding alone is a third of its bytes.
fn f32_tensor(
    file: &std::fs::File,
    offset: u64,
    view: &safetensors::tensor::TensorView<'_>,
) -> candle_core::Result<Tensor> {
    use std::os::unix::fs::FileExt;

    use rayon::prelude::*;

    /// Values per parallel slice (1 MiB).
    const SLICE: usize = 1 << 18;

    let len = view.data().len() / 4;
    // Zeroed by the kernel when the allocation is fresh, so the zeros cost nothing here.
    let mut values = vec![0f32; len];
    advise_huge_pages(&mut values);
    values
        .par_chunks_mut(SLICE)
        .enumerate()
        .try_for_each(|(i, slice)| {
            // Safetensors stores little-endian values: on a little-endian machine the bytes
            // are the values.
            let bytes: &mut [u8] = bytemuck::cast_slice_mut(slice);
            file.read_exact_at(bytes, offset + (i * SLICE * 4) as u64)?;
            if cfg!(target_endian = "big") {
                slice
                    .iter_mut()
                    .for_each(|v| *v = f32::from_bits(v.to_bits().swap_bytes()));
            }
            Ok::<_, std::io::Error>(())
        })?;
    Tensor::from_vec(values, view.shape(), &Device::Cpu)
}

/// Asks the kernel to back `memory` with transparent huge pages (when it is over 2 MiB, one huge page). Model
/// weights are streamed from memory once per token or image, and on 4 KiB pages every page is
/// a TLB miss (GPT-2's bf16 weights, converted into 4 KiB pages, decoded 0-10% slower than on
/// huge pages: within this machine's noise, but never faster); filling fresh 4 KiB pages also
/// costs a page fault each. Advise before the first write: pages already touched stay small.
pub fn advise_huge_pages<T>(memory: &mut [T]) {
    let bytes = std::mem::size_of_val(memory);
    let start = memory.as_mut_ptr() as usize;
    let aligned = start.next_multiple_of(4096);
    if bytes > 2 * 1024 * 1024 && aligned < start + bytes {
        // SAFETY: the range lies inside `memory`; the advice only changes how the kernel
        // backs it.
        unsafe {
            libc::madvise(
                aligned as *mut libc::c_void,
                start + bytes - aligned,
                libc::MADV_HUGEPAGE,
            );
        }
    }
}

/// A `--model` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A directory used as it is.
    Local(PathBuf),
    /// A hub repository, at a revision (a branch, tag or commit; `main` when absent).
    Hub { repo: String, revision: Option<String> },
}

impl FromStr for ModelSource {
    type Err = HubError;

    /// An existing directory wins; otherwise the value must look like `owner/name[@revision]`.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let path = Path::new(value);
        if path.is_dir() {
            return Ok(Self::Local(path.to_path_buf()));
        }
        let (repo, revision) = match value.split_once('@') {
            Some((repo, revision)) => (repo, Some(revision.to_string())),
            None => (value, None),
        };
        let valid_part = |s: &str| {
            !s.is_empty()
                && !s.starts_with('.')
                && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        match repo.split_once('/') {
            Some((owner, name))
                if valid_part(owner)
                    && valid_part(name)
                    && revision.as_deref().is_none_or(|r| !r.is_empty()) =>
            {
                Ok(Self::Hub {
                    repo: repo.to_string(),
                    revision,
                })
            }
            _ => Err(HubError::InvalidSource(value.to_string())),
        }
    }
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local(dir) => write!(f, "{}", dir.display()),
            Self::Hub {
                repo,
                revision: Some(revision),
            } => write!(f, "{repo}@{revision}"),
            Self::Hub { repo, revision: None } => write!(f, "{repo}"),
        }
    }
}

impl ModelSource {
    /// The name answers give the model: the repo id, or a local directory's own name.
    pub fn model_name(&self) -> String {
        match self {
            Self::Hub { .. } => self.to_string(),
            Self::Local(dir) => dir
                .canonicalize()
                .ok()
                .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| self.to_string()),
        }
    }

    /// The local path of `file`, downloading it into the cache when needed and allowed.
    pub fn fetch(&self, file: &str) -> Result<PathBuf, HubError> {
        match self {
            Self::Local(dir) => {
                let path = dir.join(file);
                if path.is_file() {
                    Ok(path)
                } else {
                    Err(HubError::MissingLocalFile {
                        dir: dir.clone(),
                        file: file.to_string(),
                    })
                }
            }
            Self::Hub { repo, revision } => {
                let hub_repo = match revision {
                    Some(revision) => Repo::with_revision(repo.clone(), RepoType::Model, revision.clone()),
                    None => Repo::new(repo.clone(), RepoType::Model),
                };
                if offline() {
                    return Cache::from_env()
                        .repo(hub_repo)
                        .get(file)
                        .ok_or_else(|| HubError::NotCached {
                            repo: self.to_string(),
                            file: file.to_string(),
                        });
                }
                let download_error = |reason: String| HubError::Download {
                    repo: self.to_string(),
                    file: file.to_string(),
                    reason,
                };
                let api = ApiBuilder::from_env()
                    .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .build()
                    .map_err(|e| download_error(e.to_string()))?;
                api.repo(hub_repo)
                    .get(file)
                    .map_err(|e| download_error(e.to_string()))
            }
        }
    }
}

/// `HF_HUB_OFFLINE` set to a true value, as huggingface_hub reads it.
fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_repo_ids_and_revisions() {
        assert_eq!(
            "timm/mobilenetv2_100.ra_in1k".parse::<ModelSource>().unwrap(),
            ModelSource::Hub {
                repo: "timm/mobilenetv2_100.ra_in1k".into(),
                revision: None
            }
        );
        assert_eq!(
            "owner/name@v1.0".parse::<ModelSource>().unwrap(),
            ModelSource::Hub {
                repo: "owner/name".into(),
                revision: Some("v1.0".into())
            }
        );
        for bad in [
            "no-slash",
            "/abs/missing/dir",
            "./rel/missing",
            "a/b/c",
            "owner/name@",
            "own er/x",
        ] {
            assert!(bad.parse::<ModelSource>().is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn existing_directory_is_local() {
        let dir = std::env::temp_dir();
        let source: ModelSource = dir.to_str().unwrap().parse().unwrap();
        assert_eq!(source, ModelSource::Local(dir.clone()));
        let err = source.fetch("surely-not-here.safetensors").unwrap_err();
        assert!(err.to_string().contains("surely-not-here.safetensors"), "{err}");
    }
}

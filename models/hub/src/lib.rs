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
use std::sync::Arc;

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

/// A safetensors file mapped into memory, for weights that are used where they lie: mapping a
/// file the page cache holds costs a page-table update per (large) page, where reading it into
/// fresh memory costs a copy, a zeroed page each 4 KiB, and on huge pages the kernel's
/// compaction, which stalled some starts for hundreds of milliseconds.
#[derive(Debug, Clone)]
pub struct SafetensorsFile {
    path: PathBuf,
    map: Arc<memmap2::Mmap>,
    entries: Arc<BTreeMap<String, Entry>>,
}

/// Where a tensor lies in the file.
#[derive(Debug, Clone)]
struct Entry {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    /// Byte range in the whole file.
    bytes: std::ops::Range<usize>,
}

/// A tensor's values as f32: in the mapped file when it stores them so (and aligned), else
/// converted into memory of their own. Cheap to clone; derefs to the values.
#[derive(Clone)]
pub struct F32Values {
    storage: F32Storage,
    shape: Vec<usize>,
}

#[derive(Clone)]
enum F32Storage {
    Mapped {
        map: Arc<memmap2::Mmap>,
        start: usize,
        len: usize,
    },
    Owned(Arc<Vec<f32>>),
}

impl fmt::Debug for F32Values {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let place = match self.storage {
            F32Storage::Mapped { .. } => "mapped",
            F32Storage::Owned(_) => "owned",
        };
        f.debug_struct("F32Values")
            .field("shape", &self.shape)
            .field("storage", &place)
            .finish()
    }
}

impl std::ops::Deref for F32Values {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match &self.storage {
            // SAFETY: `start` is 4-byte aligned and `start + 4 * len` lies in the map (checked
            // when the values were made); the map is read-only and outlives this borrow.
            F32Storage::Mapped { map, start, len } => unsafe {
                std::slice::from_raw_parts(map.as_ptr().add(*start).cast::<f32>(), *len)
            },
            F32Storage::Owned(values) => values,
        }
    }
}

impl F32Values {
    /// Values of their own, not in any file.
    pub fn owned(values: Vec<f32>, shape: Vec<usize>) -> Self {
        assert_eq!(
            values.len(),
            shape.iter().product::<usize>(),
            "values do not fill {shape:?}"
        );
        Self {
            storage: F32Storage::Owned(Arc::new(values)),
            shape,
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Whether the values are read from the mapped file in place.
    pub fn is_mapped(&self) -> bool {
        matches!(self.storage, F32Storage::Mapped { .. })
    }

    /// Tells the kernel that mapped values will not be read for a while (a copy of them took
    /// their place): their pages leave the process's resident memory and stay in the page
    /// cache, where a later read finds them again. Does nothing for values of their own.
    pub fn release_pages(&self) {
        if let F32Storage::Mapped { map, start, len } = &self.storage {
            let begin = map.as_ptr() as usize + start;
            let end = begin + len * 4;
            let (first, last) = (begin.next_multiple_of(4096), end / 4096 * 4096);
            if first < last {
                // SAFETY: the range lies inside the read-only private map; MADV_DONTNEED on it
                // only drops page-table entries, which the next read of a page refills from
                // the file.
                unsafe {
                    libc::madvise(first as *mut libc::c_void, last - first, libc::MADV_DONTNEED);
                }
            }
        }
    }
}

impl SafetensorsFile {
    /// Maps `path` and reads its header.
    pub fn open(path: &Path) -> Result<Self, HubError> {
        let unreadable = |reason: String| HubError::Weights {
            path: path.to_path_buf(),
            reason,
        };
        let handle = std::fs::File::open(path).map_err(|e| unreadable(e.to_string()))?;
        // SAFETY: the map is read-only. A file truncated or rewritten in place by another
        // process while mapped could fault; model files are not rewritten in place. (Mapping
        // it populated holds the process's memory lock for the whole call, which stalled the
        // tokenizer built meanwhile: pages are mapped as the warm-up reads them instead.)
        let map = unsafe { memmap2::Mmap::map(&handle) }.map_err(|e| unreadable(e.to_string()))?;
        let (header, metadata) =
            safetensors::SafeTensors::read_metadata(&map).map_err(|e| unreadable(e.to_string()))?;
        let data = 8 + header;
        let entries = metadata
            .tensors()
            .into_iter()
            .map(|(name, info)| {
                let entry = Entry {
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    bytes: data + info.data_offsets.0..data + info.data_offsets.1,
                };
                (name, entry)
            })
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            map: Arc::new(map),
            entries: Arc::new(entries),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tensors' names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// A tensor's shape, if the file has it.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|entry| entry.shape.as_slice())
    }

    fn entry(&self, name: &str) -> Result<&Entry, HubError> {
        self.entries.get(name).ok_or_else(|| HubError::Weights {
            path: self.path.clone(),
            reason: format!("no tensor `{name}`"),
        })
    }

    /// A tensor's values as f32, in place when the file stores them as aligned little-endian
    /// f32 (GPT-2's and timm's files do), converted otherwise.
    pub fn f32_values(&self, name: &str) -> Result<F32Values, HubError> {
        let entry = self.entry(name)?;
        let start = entry.bytes.start;
        let aligned = (self.map.as_ptr() as usize + start).is_multiple_of(std::mem::align_of::<f32>());
        if entry.dtype == safetensors::Dtype::F32 && aligned && cfg!(target_endian = "little") {
            return Ok(F32Values {
                storage: F32Storage::Mapped {
                    map: self.map.clone(),
                    start,
                    len: (entry.bytes.end - start) / 4,
                },
                shape: entry.shape.clone(),
            });
        }
        let values = self
            .tensor(name)?
            .to_dtype(candle_core::DType::F32)
            .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
            .map_err(|e| HubError::Weights {
                path: self.path.clone(),
                reason: format!("`{name}`: {e}"),
            })?;
        Ok(F32Values::owned(values, entry.shape.clone()))
    }

    /// A tensor copied into a candle tensor of the file's type.
    pub fn tensor(&self, name: &str) -> Result<Tensor, HubError> {
        let entry = self.entry(name)?;
        let failed = |e: candle_core::Error| HubError::Weights {
            path: self.path.clone(),
            reason: format!("`{name}`: {e}"),
        };
        let dtype = match entry.dtype {
            safetensors::Dtype::F32 => candle_core::DType::F32,
            safetensors::Dtype::F16 => candle_core::DType::F16,
            safetensors::Dtype::BF16 => candle_core::DType::BF16,
            safetensors::Dtype::F64 => candle_core::DType::F64,
            other => {
                return Err(HubError::Weights {
                    path: self.path.clone(),
                    reason: format!("`{name}` is {other:?}, not a floating-point type"),
                })
            }
        };
        Tensor::from_raw_buffer(&self.map[entry.bytes.clone()], dtype, &entry.shape, &Device::Cpu)
            .map_err(failed)
    }
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

pub use simd::advise_huge_pages;

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

    /// f32 tensors are read where they lie, other types converted, absent ones named; dropping
    /// resident pages changes nothing a read sees.
    #[test]
    fn a_mapped_file_answers_its_tensors() {
        use safetensors::tensor::TensorView;

        let dir = std::env::temp_dir().join(format!("hub-mapped-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.safetensors");
        let wide: Vec<f32> = (0..(1 << 20) + 3).map(|i| i as f32 * 0.5).collect();
        let narrow: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        let tensors = [
            (
                "big",
                TensorView::new(
                    safetensors::Dtype::F32,
                    vec![wide.len()],
                    bytemuck::cast_slice(&wide),
                )
                .unwrap(),
            ),
            (
                "half",
                TensorView::new(safetensors::Dtype::F16, vec![2], &narrow).unwrap(),
            ),
        ];
        safetensors::serialize_to_file(tensors, None, &path).unwrap();

        let file = SafetensorsFile::open(&path).unwrap();
        assert_eq!(file.names().collect::<Vec<_>>(), ["big", "half"]);
        let big = file.f32_values("big").unwrap();
        assert!(big.is_mapped());
        assert_eq!(big.shape(), [wide.len()]);
        assert_eq!(&big[..], &wide[..]);
        big.release_pages();
        assert_eq!(&big[..], &wide[..]);
        let half = file.f32_values("half").unwrap();
        assert!(!half.is_mapped());
        assert_eq!(&half[..], [1.5, -2.0]);
        let missing = file.f32_values("absent").unwrap_err().to_string();
        assert!(missing.contains("no tensor `absent`"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

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

//! A folder of labelled photos, one sub-folder per class (TensorFlow's `flower_photos` layout),
//! and its stratified train/validation split.

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;

/// Why a data folder cannot be trained or evaluated on.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{0} has no class sub-folders (expected one folder of images per class)")]
    NoClasses(String),
    #[error("{dir} has a single class, `{class}`: a classifier needs at least two")]
    SingleClass { dir: String, class: String },
    #[error("class folder `{0}` has no images")]
    EmptyClass(String),
}

/// One photo and the index of its class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub path: PathBuf,
    pub class: usize,
}

/// The classes (sub-folder names, sorted) and every file under them, in order.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    pub classes: Vec<String>,
    pub samples: Vec<Sample>,
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    let error = |source| DatasetError::Read {
        path: dir.display().to_string(),
        source,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(error)? {
        let path = entry.map_err(error)?.path();
        if !path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

/// Every file under `dir`, at any depth, in path order (hidden files and folders skipped), for
/// commands that run over a folder of photos whatever its layout: `flower_photos/` keeps them in
/// one sub-folder per class. Whether a file is an image is decided when it is decoded.
pub fn files_under(dir: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    let mut files = Vec::new();
    for path in read_dir(dir)? {
        if path.is_dir() {
            files.extend(files_under(&path)?);
        } else if path.is_file() {
            files.push(path);
        }
    }
    Ok(files)
}

impl ImageFolder {
    /// Lists `dir`: each sub-folder is a class, each file in it a sample (hidden files skipped;
    /// whether a file is an image is decided when it is decoded).
    pub fn scan(dir: &Path) -> Result<Self, DatasetError> {
        let folders: Vec<PathBuf> = read_dir(dir)?.into_iter().filter(|p| p.is_dir()).collect();
        let name = |p: &Path| {
            p.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        };
        match folders.as_slice() {
            [] => return Err(DatasetError::NoClasses(dir.display().to_string())),
            [only] => {
                return Err(DatasetError::SingleClass {
                    dir: dir.display().to_string(),
                    class: name(only),
                })
            }
            _ => {}
        }
        let mut samples = Vec::new();
        for (class, folder) in folders.iter().enumerate() {
            let files: Vec<PathBuf> = read_dir(folder)?.into_iter().filter(|p| p.is_file()).collect();
            if files.is_empty() {
                return Err(DatasetError::EmptyClass(name(folder)));
            }
            samples.extend(files.into_iter().map(|path| Sample { path, class }));
        }
        Ok(Self {
            classes: folders.iter().map(|f| name(f)).collect(),
            samples,
        })
    }
}

/// Splits sample indices into (train, validation), class by class, so that each class keeps
/// its share in both; the same seed gives the same split. A class of two or more samples keeps
/// at least one on each side.
pub fn stratified_split(classes: &[usize], validation: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let count = classes.iter().max().map_or(0, |&c| c + 1);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for class in 0..count {
        let mut members: Vec<usize> = (0..classes.len()).filter(|&i| classes[i] == class).collect();
        members.shuffle(&mut rng);
        let n = members.len();
        let mut n_val = (n as f64 * validation).round() as usize;
        if n >= 2 && validation > 0.0 {
            n_val = n_val.clamp(1, n - 1);
        }
        val.extend_from_slice(&members[..n_val.min(n)]);
        train.extend_from_slice(&members[n_val.min(n)..]);
    }
    train.sort_unstable();
    val.sort_unstable();
    (train, val)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_stratified_and_reproducible() {
        let classes: Vec<usize> = (0..100).map(|i| usize::from(i >= 80)).collect();
        let (train, val) = stratified_split(&classes, 0.2, 7);
        assert_eq!(train.len() + val.len(), 100);
        assert_eq!(val.iter().filter(|&&i| classes[i] == 0).count(), 16);
        assert_eq!(val.iter().filter(|&&i| classes[i] == 1).count(), 4);
        assert_eq!(stratified_split(&classes, 0.2, 7), (train.clone(), val.clone()));
        assert_ne!(stratified_split(&classes, 0.2, 8).1, val);
        let (train, val) = stratified_split(&[0, 0, 1, 1], 0.1, 0);
        assert_eq!((train.len(), val.len()), (2, 2));
    }

    #[test]
    fn files_under_walks_sub_folders_in_name_order_and_skips_hidden_files() {
        let dir = std::env::temp_dir().join(format!("files-under-{}", std::process::id()));
        for (folder, file) in [
            ("b", "2.jpg"),
            ("b", "1.jpg"),
            ("a", "z.jpg"),
            (".cache", "x"),
            ("", ".hidden"),
            ("", "top.png"),
        ] {
            std::fs::create_dir_all(dir.join(folder)).unwrap();
            std::fs::write(dir.join(folder).join(file), b"").unwrap();
        }
        let found: Vec<String> = files_under(&dir)
            .unwrap()
            .iter()
            .map(|p| p.strip_prefix(&dir).unwrap().display().to_string())
            .collect();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found, ["a/z.jpg", "b/1.jpg", "b/2.jpg", "top.png"]);
        assert!(matches!(files_under(&dir), Err(DatasetError::Read { .. })));
    }
}

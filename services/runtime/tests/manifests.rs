//! The Knative and KServe manifests in deploy/ against the typed models of the Kubernetes and
//! KServe Python clients (deploy/check_manifests.py), and a manifest with a misspelled field
//! and a mistyped value, which the check must refuse.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn manifests() -> Vec<PathBuf> {
    let mut found = Vec::new();
    for platform in ["knative", "kserve"] {
        for entry in std::fs::read_dir(root().join("deploy").join(platform)).unwrap() {
            found.push(entry.unwrap().path());
        }
    }
    found.sort();
    found
}

fn check(python: &str, paths: &[PathBuf]) -> Output {
    Command::new(python)
        .arg(root().join("deploy/check_manifests.py"))
        .args(paths)
        .output()
        .unwrap()
}

#[test]
fn the_manifests_parse_with_the_typed_clients_and_a_wrong_field_fails() {
    let Ok(python) = std::env::var("DEPLOY_TEST_PYTHON") else {
        eprintln!("skipped: DEPLOY_TEST_PYTHON is not set (.ci/run sets it to a Python with `kserve` and `kubernetes`)");
        return;
    };
    let paths = manifests();
    assert_eq!(paths.len(), 4, "{paths:?}");
    let output = check(&python, &paths);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.ends_with(')') && l.contains(": ok ("))
            .count(),
        4,
        "{stdout}"
    );

    let dir = std::env::temp_dir().join(format!("manifests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for path in &paths {
        let text = std::fs::read_to_string(path).unwrap();
        let broken = text
            .replace("containerConcurrency: 64", "containerConcurency: 64")
            .replace("containerConcurrency: 32", "containerConcurrency: 16")
            .replace("periodSeconds: 5", "periodSeconds: \"5\"");
        assert_ne!(broken, text);
        let copy = dir.join(format!(
            "{}-{}",
            path.parent().unwrap().file_name().unwrap().to_string_lossy(),
            path.file_name().unwrap().to_string_lossy()
        ));
        std::fs::write(&copy, broken).unwrap();
        let output = check(&python, std::slice::from_ref(&copy));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(1), "{stdout}");
        assert!(
            stdout.contains("periodSeconds: expected int, got '5'"),
            "{stdout}"
        );
        assert!(
            stdout.contains("containerConcurency: V1beta1PredictorSpec has no such field")
                || stdout.contains("containerConcurency: V1PodSpec has no such field")
                || stdout.contains("containerConcurrency 16 is not MAX_CONCURRENCY 32"),
            "{stdout}"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

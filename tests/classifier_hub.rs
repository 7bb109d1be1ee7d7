//! Model sources through the real binary against a fake Hugging Face Hub on loopback
//! (`HF_ENDPOINT`): the first start downloads into the standard cache, the second makes no
//! request, and offline or missing files fail at start with exit code 2 and one clear line.

mod common;

const BINARY: &str = env!("CARGO_BIN_EXE_classifier");

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

const REPO: &str = "acme/mobilenetv2-tiny";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Serves the files of `dir` as `REPO` at revision `main`, the way hf-hub asks for them (a
/// ranged GET for metadata, then a GET for the bytes), and records every request path.
struct FakeHub {
    endpoint: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl FakeHub {
    fn serve(dir: PathBuf) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let dir = dir.clone();
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let _ = answer(stream, &dir, &seen);
                });
            }
        });
        FakeHub { endpoint, requests }
    }

    fn request_count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

fn answer(stream: std::net::TcpStream, dir: &Path, seen: &Mutex<Vec<String>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut range = (0, None);
        loop {
            let mut header = String::new();
            reader.read_line(&mut header)?;
            if header.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("range") {
                    range = parse_range(value.trim());
                }
            }
        }
        seen.lock().unwrap().push(path.clone());
        let prefix = format!("/{REPO}/resolve/main/");
        let file = path
            .strip_prefix(&prefix)
            .map(|f| dir.join(f))
            .filter(|p| p.is_file());
        let Some(file) = file else {
            write!(
                writer,
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nX-Error-Code: EntryNotFound\r\n\r\n"
            )?;
            continue;
        };
        let bytes = std::fs::read(&file)?;
        let etag = format!(
            "{:016x}{:016x}",
            bytes.len(),
            bytes.iter().map(|&b| b as u64).sum::<u64>()
        );
        let start = range.0.min(bytes.len());
        let end = range
            .1
            .map_or(bytes.len(), |last: usize| last + 1)
            .min(bytes.len());
        write!(
            writer,
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nETag: \"{etag}\"\r\nX-Repo-Commit: {COMMIT}\r\n\r\n",
            end - start,
            end.saturating_sub(1),
            bytes.len()
        )?;
        writer.write_all(&bytes[start..end])?;
        writer.flush()?;
    }
}

/// `bytes=START-[END]` (END inclusive): hf-hub probes with `bytes=0-0`, downloads with `bytes=N-`.
fn parse_range(value: &str) -> (usize, Option<usize>) {
    let Some((start, end)) = value.strip_prefix("bytes=").and_then(|r| r.split_once('-')) else {
        return (0, None);
    };
    (start.parse().unwrap_or(0), end.parse().ok())
}

fn predict(hub: &FakeHub, hf_home: &Path, model: &str, envs: &[(&str, &str)]) -> Output {
    let image = common::tiny_model().join("images/synthetic-0-224x224.png");
    let mut command = Command::new(BINARY);
    command
        .args(["predict", "--json", "--model", model])
        .arg(&image)
        .env("HF_ENDPOINT", &hub.endpoint)
        .env("HF_HOME", hf_home)
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("MODEL");
    for (k, v) in envs {
        command.env(k, v);
    }
    command.output().unwrap()
}

fn stderr_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn first_start_downloads_second_start_makes_no_request() {
    let hub = FakeHub::serve(common::tiny_model());
    let hf_home = common::temp_dir("hub-cache");

    let first = predict(&hub, &hf_home, REPO, &[]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let after_first = hub.request_count();
    assert!(after_first >= 2, "expected downloads, saw {after_first} requests");
    let cached = hf_home
        .join("hub/models--acme--mobilenetv2-tiny/snapshots")
        .join(COMMIT)
        .join("model.safetensors");
    assert_eq!(
        std::fs::read(cached).unwrap(),
        std::fs::read(common::tiny_model().join("model.safetensors")).unwrap()
    );
    let stdout = String::from_utf8_lossy(&first.stdout);
    let answer: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(answer["model"], REPO);
    assert_eq!(answer["predictions"].as_array().unwrap().len(), 5);

    let second = predict(&hub, &hf_home, REPO, &[]);
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(hub.request_count(), after_first, "the second start made requests");

    let offline = predict(&hub, &hf_home, REPO, &[("HF_HUB_OFFLINE", "1")]);
    assert!(
        offline.status.success(),
        "cached files must work offline: {}",
        String::from_utf8_lossy(&offline.stderr)
    );
    assert_eq!(hub.request_count(), after_first);
}

#[test]
fn offline_without_cache_fails_with_exit_2_and_one_line() {
    let hub = FakeHub::serve(common::tiny_model());
    let hf_home = common::temp_dir("hub-offline");
    let output = predict(&hub, &hf_home, REPO, &[("HF_HUB_OFFLINE", "1")]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(hub.request_count(), 0, "offline must not touch the network");
    let lines = stderr_lines(&output);
    assert_eq!(lines.len(), 1, "{lines:?}");
    for needle in [REPO, "config.json", "HF_HUB_OFFLINE", "--model"] {
        assert!(lines[0].contains(needle), "`{needle}` missing from: {}", lines[0]);
    }
}

#[test]
fn missing_file_fails_with_exit_2_and_one_line() {
    let empty_repo = common::temp_dir("hub-empty-repo");
    let hub = FakeHub::serve(empty_repo.to_path_buf());
    let hf_home = common::temp_dir("hub-missing");
    let output = predict(&hub, &hf_home, REPO, &[]);
    assert_eq!(output.status.code(), Some(2));
    let lines = stderr_lines(&output);
    assert_eq!(lines.len(), 1, "{lines:?}");
    for needle in [REPO, "config.json", "--model"] {
        assert!(lines[0].contains(needle), "`{needle}` missing from: {}", lines[0]);
    }
}

#[test]
fn bad_model_values_fail_with_exit_2() {
    let hub = FakeHub::serve(common::tiny_model());
    let hf_home = common::temp_dir("hub-bad");
    let empty_dir = common::temp_dir("hub-local-empty");
    for model in ["not a repo id", "./no/such/dir", empty_dir.to_str().unwrap()] {
        let output = predict(&hub, &hf_home, model, &[]);
        assert_eq!(output.status.code(), Some(2), "{model}");
        assert_eq!(
            stderr_lines(&output).len(),
            1,
            "{model}: {:?}",
            stderr_lines(&output)
        );
    }
}

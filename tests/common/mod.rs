//! Helpers for end-to-end tests: start a real service binary on a free port, talk HTTP to it,
//! and find the committed fixtures and the shared data.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// The tiny timm-layout MobileNetV2 written by `scripts/make_fixtures.py`.
pub fn tiny_model() -> PathBuf {
    root().join("tests/fixtures/mobilenetv2-tiny")
}

/// `../shared/data/<rel>` beside the checkout, or `None` with a printed reason.
pub fn shared_data(rel: &str) -> Option<PathBuf> {
    let path = root().join("../shared/data").join(rel);
    if path.exists() {
        Some(path)
    } else {
        eprintln!(
            "skipped: {} is absent (tests read it from ../shared/data)",
            path.display()
        );
        None
    }
}

/// A fresh empty directory under the system temp directory, removed with what it holds when
/// dropped: test runs would otherwise leave their models and datasets behind.
pub fn temp_dir(name: &str) -> TempDir {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("service-test-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

/// A directory of [`temp_dir`]'s; its path through `Deref`.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for TempDir {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `<binary> serve`, killed when dropped.
pub struct Server {
    child: Option<Child>,
    pub base: String,
    /// Log lines after "ready", for tests that look at the log.
    pub log: mpsc::Receiver<String>,
}

impl Server {
    /// Starts `<binary> serve --port 0 <args>` (or on `PORT` when `envs` sets it) and waits
    /// for its "ready" log line.
    pub fn start(binary: &str, args: &[&str], envs: &[(&str, &str)]) -> Server {
        let mut command = Command::new(binary);
        command.arg("serve").args(["--host", "127.0.0.1"]);
        if !envs.iter().any(|(k, _)| *k == "PORT") {
            command.args(["--port", "0"]);
        }
        command.args(args);
        command
            .env_remove("PORT")
            .env_remove("API_KEY")
            .env_remove("MODEL");
        for (k, v) in envs {
            command.env(k, v);
        }
        Self::spawn(command, binary)
    }

    /// Runs `command`, which serves with JSON logs on stdout, and waits for its "ready" line.
    pub fn spawn(mut command: Command, what: &str) -> Server {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the service");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("{what} did not become ready; status {:?}", child.try_wait()));
            let Ok(json) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if json["fields"]["message"] == "ready" {
                let address = json["fields"]["address"].as_str().unwrap();
                // A server on every interface (in a container) is asked on loopback.
                let address = address.replace("0.0.0.0:", "127.0.0.1:");
                return Server {
                    child: Some(child),
                    base: format!("http://{address}"),
                    log: rx,
                };
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// `host:port`, for tests that talk TCP.
    pub fn address(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.wait_for_exit()
    }

    /// Waits for the exit status of a server already sent a signal.
    pub fn wait_for_exit(mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        wait_with_timeout(&mut child, Duration::from_secs(30))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn wait_with_timeout(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "process did not exit within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An HTTP answer: status, headers we look at, body parsed as JSON when it is JSON.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub retry_after: Option<String>,
    pub text: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    /// Asserts an OpenAI-style JSON error with this status and returns its `code`.
    pub fn expect_error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "unexpected status; body: {}", self.text);
        assert!(
            self.content_type.starts_with("application/json"),
            "error is not JSON: {self:?}"
        );
        let body = self.json();
        let error = &body["error"];
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "no message: {body}"
        );
        assert!(error["type"].is_string(), "no type: {body}");
        error["code"].as_str().expect("code").to_string()
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build()
}

fn answer(result: Result<ureq::Response, ureq::Error>) -> Answer {
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("transport error: {e}"),
    };
    let status = response.status();
    let content_type = response.header("content-type").unwrap_or("").to_string();
    let retry_after = response.header("retry-after").map(str::to_string);
    let mut text = String::new();
    response.into_reader().read_to_string(&mut text).unwrap();
    Answer {
        status,
        content_type,
        retry_after,
        text,
    }
}

pub fn get(url: &str) -> Answer {
    answer(agent().get(url).call())
}

pub fn get_with(url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = agent().get(url);
    for (k, v) in headers {
        request = request.set(k, v);
    }
    answer(request.call())
}

/// POSTs `body` with an optional Content-Type and extra headers.
pub fn post(url: &str, content_type: Option<&str>, body: &[u8], headers: &[(&str, &str)]) -> Answer {
    let mut request = agent().post(url);
    if let Some(ct) = content_type {
        request = request.set("Content-Type", ct);
    }
    for (k, v) in headers {
        request = request.set(k, v);
    }
    answer(request.send_bytes(body))
}

/// POSTs `body` as JSON.
pub fn post_json(url: &str, body: &Value) -> Answer {
    post(url, Some("application/json"), body.to_string().as_bytes(), &[])
}

/// A multipart/form-data body of file parts (name, file name, bytes) and text fields.
pub fn multipart(files: &[(&str, &str, &[u8])], fields: &[(&str, &str)]) -> (String, Vec<u8>) {
    let boundary = "----classifier-test-boundary-7d1f";
    let mut body = Vec::new();
    for (name, file_name, bytes) in files {
        body.extend(format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{file_name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        ).as_bytes());
        body.extend(*bytes);
        body.extend(b"\r\n");
    }
    for (name, value) in fields {
        body.extend(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                .as_bytes(),
        );
    }
    body.extend(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// A 66-byte PNG whose header claims 50000x50000 pixels (`scripts/make_fixtures.py`).
pub fn png_bomb() -> Vec<u8> {
    std::fs::read(root().join("tests/fixtures/png-bomb-50000x50000.png")).unwrap()
}

/// How many of `classifier predict`'s text lines (`PATH: label score, ...`) give as the best
/// label the name of the folder the photo is in (the class folders of a labelled data set).
pub fn labelled_as_their_folder(lines: &[&str]) -> usize {
    lines
        .iter()
        .filter(|line| {
            let (path, labels) = line.split_once(": ").expect("PATH: labels");
            let folder = Path::new(path).parent().and_then(Path::file_name);
            folder.and_then(|f| f.to_str()) == labels.split(' ').next()
        })
        .count()
}

/// `qemu-x86_64` (Debian's `qemu-user`) when it is on the PATH, or `None` with a printed
/// reason: it runs a binary on a CPU model without AVX, so that the portable kernels run on
/// a CPU that lacks the vector instructions, not only behind a flag.
pub fn qemu() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("qemu-x86_64"))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        eprintln!("skipped: qemu-x86_64 is not installed (Debian: apt-get install qemu-user)");
    }
    found
}

/// The CPU model the no-AVX runs emulate: SSE4.2, no AVX.
pub const CPU_WITHOUT_AVX: &str = "Westmere";

/// Runs `binary` with `args`, natively or (with `qemu`) under it on [`CPU_WITHOUT_AVX`];
/// answers stdout, after checking it succeeded and that its log names the kernels it ran at
/// (`portable` when emulated).
pub fn run_maybe_emulated(qemu: Option<&Path>, binary: &str, args: &[&str]) -> String {
    let mut command = match qemu {
        Some(qemu) => {
            let mut command = Command::new(qemu);
            command.args(["-cpu", CPU_WITHOUT_AVX, binary]);
            command
        }
        None => Command::new(binary),
    };
    let output = command
        .args(args)
        .env_remove("CPU_KERNELS")
        .env_remove("MODEL")
        .env("RUST_LOG", "info")
        .output()
        .expect("run the binary");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{binary} {args:?} (emulated: {}): {log}",
        qemu.is_some()
    );
    let kernels = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["fields"]["message"] == "cpu kernels")
        .map(|line| line["fields"]["kernels"].clone());
    match qemu {
        Some(_) => assert_eq!(kernels, Some(Value::from("portable")), "{log}"),
        None => assert!(kernels.is_some(), "no cpu kernels line: {log}"),
    }
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// A TCP connection to `address` that has sent `bytes` and sends nothing more.
pub fn connect_and_send(address: &str, bytes: &[u8]) -> std::net::TcpStream {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream.write_all(bytes).expect("send");
    stream
}

/// Everything the server sends on `stream` until it closes it, and how long that took; panics
/// when it is still open after `limit`.
pub fn read_until_closed(stream: &mut std::net::TcpStream, limit: Duration) -> (String, Duration) {
    let start = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("still open after {:.1} s ({e})", start.elapsed().as_secs_f64()),
        }
    }
    (String::from_utf8_lossy(&received).into_owned(), start.elapsed())
}

/// Copies of the model directory `fixture` with its `model.safetensors` broken in one way each,
/// by name: cut in half, overwritten with noise, a tensor's shape transposed, a tensor's dtype
/// changed to I32 (the same size, so only the dtype is wrong), the first tensor renamed (so the
/// model misses it); and the name of the tensor changed where there is one.
pub fn broken_weights(fixture: &Path) -> Vec<(&'static str, TempDir, Option<String>)> {
    let weights = std::fs::read(fixture.join("model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&weights[8..8 + header_len]).unwrap();
    let data = &weights[8 + header_len..];
    let matrix = header
        .iter()
        .find(|(name, info)| {
            *name != "__metadata__"
                && info["shape"]
                    .as_array()
                    .is_some_and(|s| s.len() == 2 && s[0] != s[1])
        })
        .map(|(name, _)| name.clone())
        .expect("a 2-D tensor that is not square");
    let first = header
        .keys()
        .find(|name| *name != "__metadata__")
        .expect("a tensor")
        .clone();
    let with_header = |header: &serde_json::Map<String, Value>| {
        let mut json = serde_json::to_vec(header).unwrap();
        json.resize(json.len().div_ceil(8) * 8, b' ');
        let mut file = (json.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(&json);
        file.extend_from_slice(data);
        file
    };
    let edited = |edit: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut header = header.clone();
        edit(&mut header);
        with_header(&header)
    };
    let variants: Vec<(&'static str, Vec<u8>, Option<String>)> = vec![
        ("truncated", weights[..weights.len() / 2].to_vec(), None),
        (
            "noise",
            (0..weights.len()).map(|i| (i * 7919 % 251) as u8).collect(),
            None,
        ),
        (
            "wrong-shape",
            edited(&|h| {
                let shape = h[&matrix]["shape"].as_array().unwrap().clone();
                h[&matrix]["shape"] = Value::from(vec![shape[1].clone(), shape[0].clone()]);
            }),
            Some(matrix.clone()),
        ),
        (
            "wrong-dtype",
            edited(&|h| h[&matrix]["dtype"] = Value::from("I32")),
            Some(matrix.clone()),
        ),
        (
            "missing-tensor",
            edited(&|h| {
                let info = h.remove(&first).unwrap();
                h.insert(format!("{first}.renamed"), info);
            }),
            Some(first.clone()),
        ),
    ];
    variants
        .into_iter()
        .map(|(name, bytes, tensor)| {
            let dir = temp_dir(&format!("broken-{name}"));
            for entry in std::fs::read_dir(fixture).unwrap().map(Result::unwrap) {
                if entry.file_type().unwrap().is_file() {
                    std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
                }
            }
            std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
            (name, dir, tensor)
        })
        .collect()
}

/// Asserts that every copy [`broken_weights`] makes of `fixture` stops `binary serve` with exit
/// code 2 and one line naming the weights file (and the tensor, where one is at fault).
pub fn broken_weights_stop_the_start(binary: &str, fixture: &Path) {
    for (broken, dir, tensor) in broken_weights(fixture) {
        let (code, lines) = failed_start(binary, &dir);
        assert_eq!(code, Some(2), "{broken}: {lines:?}");
        assert_eq!(lines.len(), 1, "{broken}: {lines:?}");
        assert!(lines[0].contains("model.safetensors"), "{broken}: {}", lines[0]);
        if let Some(tensor) = tensor {
            assert!(lines[0].contains(&tensor), "{broken}: {}", lines[0]);
        }
        eprintln!("{broken}: {}", lines[0]);
    }
}

/// Runs `binary serve --model <dir>` (on a free port) and answers its exit code and the lines
/// it wrote to stderr; it must stop by itself within 60 s.
pub fn failed_start(binary: &str, model: &Path) -> (Option<i32>, Vec<String>) {
    let mut child = Command::new(binary)
        .args(["serve", "--host", "127.0.0.1", "--port", "0", "--model"])
        .arg(model)
        .env_remove("MODEL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the service");
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let status = wait_with_timeout(&mut child, Duration::from_secs(60));
    (status.code(), stderr.lines().map(str::to_string).collect())
}

/// True once the server reports more than `requests` requests in flight (the metrics call
/// itself is one).
pub fn has_in_flight(server: &Server, requests: i64) -> bool {
    get(&server.url("/metrics"))
        .text
        .lines()
        .find_map(|l| l.strip_prefix("http_requests_in_flight "))
        .and_then(|v| v.parse::<i64>().ok())
        .is_some_and(|n| n > requests)
}

/// The container engine the image tests use: `podman`, or `docker` where its engine answers;
/// `None`, with the reason printed, where neither works.
pub fn container_engine() -> Option<String> {
    let answers = |engine: &str, probe: &str| {
        Command::new(engine)
            .arg(probe)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let engine = std::env::var("ENGINE").ok().or_else(|| {
        ["podman", "docker"]
            .into_iter()
            .find(|engine| answers(engine, "--version"))
            .map(str::to_string)
    });
    match engine {
        Some(engine) if answers(&engine, "info") => Some(engine),
        Some(engine) => {
            eprintln!("skipped: `{engine} info` fails: no container engine runs here");
            None
        }
        None => {
            eprintln!("skipped: neither podman nor docker is installed");
            None
        }
    }
}

/// Builds `<service>:latest` with scripts/container.sh from the binary cargo built, with
/// `model` baked in when given, and answers the image's size in bytes.
pub fn build_image(engine: &str, service: &str, model: Option<&Path>) -> u64 {
    let mut command = Command::new(root().join("scripts/container.sh"));
    command
        .args(["build", service])
        .env("ENGINE", engine)
        .env("PREBUILT", "1");
    command.args(model);
    let status = command.status().expect("run scripts/container.sh");
    assert!(status.success(), "building the {service} image failed: {status}");
    let size = Command::new(engine)
        .args([
            "image",
            "inspect",
            &format!("{service}:latest"),
            "--format",
            "{{.Size}}",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&size.stdout)
        .trim()
        .parse()
        .expect("the image's size")
}

/// Whether the engine runs `<service>:latest` here (`--version`). Where `ENGINE_ARGS` is set the
/// settings are deliberate, so a failure fails the test; where it is not, the engine's defaults
/// may simply not work on this machine (these sandboxes need `.ci/run`'s settings), so the test
/// is skipped with the reason printed.
pub fn image_runs(engine: &str, service: &str) -> bool {
    let engine_args = std::env::var("ENGINE_ARGS").ok();
    let output = Command::new(engine)
        .args(["run", "--rm"])
        .args(engine_args.iter().flat_map(|a| a.split_whitespace()))
        .arg(format!("{service}:latest"))
        .arg("--version")
        .output()
        .expect("run the container engine");
    if output.status.success() {
        return true;
    }
    let why = String::from_utf8_lossy(&output.stderr);
    assert!(
        engine_args.is_none(),
        "{engine} cannot run {service}:latest with ENGINE_ARGS: {why}"
    );
    eprintln!(
        "skipped: {engine} cannot run containers here with its defaults ({}); set ENGINE_ARGS and CONTAINERS_CONF as .ci/run does",
        why.trim()
    );
    false
}

/// `scripts/container.sh run <service> <args>` on a free port, once the service is ready.
pub fn run_image(engine: &str, service: &str, args: &[&str]) -> Server {
    let port = free_port();
    let mut command = Command::new(root().join("scripts/container.sh"));
    command
        .args(["run", service])
        .args(args)
        .env("ENGINE", engine)
        .env("PORT", port.to_string());
    Server::spawn(command, &format!("the {service} container"))
}

/// A free port on loopback (free when asked; a test uses it at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

/// `<binary> serve` as an AWS Lambda function, behind the Lambda Runtime API emulator of
/// cargo-lambda (`cargo lambda watch --only-lambda-apis`); both stopped when dropped.
pub struct LambdaFunction {
    /// One emulator at a time: two side by side (the tests of one file run in parallel) were
    /// seen to lose one of them.
    _alone: std::sync::MutexGuard<'static, ()>,
    emulator: Child,
    function: Child,
    cargo_lambda: String,
    port: u16,
    /// The function's log lines up to and including its "ready" line.
    pub init_log: Vec<String>,
}

impl LambdaFunction {
    /// Starts the emulator and the function, or `None`, with the reason printed, where
    /// `CARGO_LAMBDA` does not name cargo-lambda's binary (.ci/run installs it from PyPI).
    pub fn start(binary: &str, args: &[&str], envs: &[(&str, &str)]) -> Option<Self> {
        let Ok(cargo_lambda) = std::env::var("CARGO_LAMBDA") else {
            eprintln!("skipped: CARGO_LAMBDA is not set (.ci/run sets it to cargo-lambda's binary)");
            return None;
        };
        static EMULATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let alone = EMULATOR.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let port = free_port();
        let emulator = Command::new(&cargo_lambda)
            .args([
                "lambda",
                "watch",
                "--only-lambda-apis",
                "--invoke-port",
                &port.to_string(),
            ])
            .current_dir(root())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start cargo lambda watch");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the Lambda emulator did not open port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .args(args)
            .env_remove("PORT")
            .env_remove("MODEL")
            .env("AWS_LAMBDA_RUNTIME_API", format!("http://127.0.0.1:{port}/.rt"))
            .env("AWS_LAMBDA_FUNCTION_NAME", "_")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "2048")
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut function = command.spawn().expect("start the function");
        let mut lines = BufReader::new(function.stdout.take().unwrap()).lines();
        let mut init_log = Vec::new();
        loop {
            let line = lines
                .next()
                .and_then(Result::ok)
                .unwrap_or_else(|| panic!("{binary} ended before it was ready: {init_log:?}"));
            let ready = line.contains("ready: serving AWS Lambda invocations");
            init_log.push(line);
            if ready {
                break;
            }
        }
        // Later lines are drained so that the function never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Some(Self {
            _alone: alone,
            emulator,
            function,
            cargo_lambda,
            port,
            init_log,
        })
    }

    /// `path` behind the emulator's Function URL.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/lambda-url/_{path}", self.port)
    }

    /// `host:port` of the emulator's invoke endpoint, for tests that talk TCP.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Invokes the function with `event` through `cargo lambda invoke`; answers its response.
    pub fn invoke(&self, event: &Value) -> Value {
        let dir = temp_dir("lambda-event");
        let file = dir.join("event.json");
        std::fs::write(&file, event.to_string()).unwrap();
        let output = Command::new(&self.cargo_lambda)
            .args([
                "lambda",
                "invoke",
                "--invoke-address",
                "127.0.0.1",
                "--invoke-port",
            ])
            .arg(self.port.to_string())
            .arg("--data-file")
            .arg(&file)
            .args(["--output-format", "json", "_"])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "cargo lambda invoke failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("the invocation's JSON response")
    }
}

impl Drop for LambdaFunction {
    fn drop(&mut self) {
        for child in [&mut self.function, &mut self.emulator] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An API Gateway REST API (payload 1.0) proxy event: `method path` with `body`, base64-encoded
/// when `binary`, under the stage `prod`.
pub fn api_gateway_rest_event(
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
    binary: bool,
) -> Value {
    use base64::Engine;
    let body = if binary {
        base64::engine::general_purpose::STANDARD.encode(body)
    } else {
        String::from_utf8(body.to_vec()).unwrap()
    };
    serde_json::json!({
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": method,
        "headers": {"content-type": content_type},
        "multiValueHeaders": {"content-type": [content_type]},
        "queryStringParameters": null,
        "multiValueQueryStringParameters": null,
        "pathParameters": {"proxy": path.trim_start_matches('/')},
        "stageVariables": null,
        "requestContext": {
            "resourcePath": "/{proxy+}",
            "httpMethod": method,
            "path": format!("/prod{path}"),
            "stage": "prod",
            "requestId": "test-request",
            "accountId": "123456789012",
            "apiId": "test",
            "identity": {"sourceIp": "127.0.0.1"},
        },
        "body": body,
        "isBase64Encoded": binary,
    })
}

/// POSTs `body` to `path` on `address` and answers the `data:` of each event of the Server-Sent
/// Events answer, checking its status and content type.
pub fn sse(address: &str, path: &str, body: &Value) -> Vec<String> {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    let body = body.to_string();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.contains("200"), "{line}");
    let mut saw_event_stream = false;
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let header = line.trim_end().to_ascii_lowercase();
        saw_event_stream |= header.starts_with("content-type: text/event-stream");
        if header.is_empty() {
            break;
        }
    }
    assert!(saw_event_stream, "not an event stream");
    let text = String::from_utf8(dechunk(&mut reader)).unwrap();
    // Only `data:` lines and the blank lines between events: the 0.x `openai` clients take any
    // other non-empty line (an SSE comment, say) for a chunk and fail on it.
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| match l.strip_prefix("data: ") {
            Some(data) => data.to_string(),
            None => panic!("a line that is not data in the stream: {l:?}"),
        })
        .collect()
}

/// The body of a chunked HTTP/1.1 answer.
pub fn dechunk(reader: &mut impl BufRead) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).unwrap();
        let size = usize::from_str_radix(size.trim_end(), 16).unwrap();
        if size == 0 {
            return body;
        }
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk).unwrap();
        body.extend_from_slice(&chunk[..size]);
    }
}

/// Runs tests/playground.py (headless Chromium through Playwright) against `server`'s page for
/// `service`, with `args`; answers what it saw, or `None`, with the reason printed, where
/// `PLAYGROUND_TEST_PYTHON` does not name a Python with Playwright (.ci/run makes one).
pub fn drive_playground(server: &Server, service: &str, args: &[&str]) -> Option<Value> {
    let Ok(python) = std::env::var("PLAYGROUND_TEST_PYTHON") else {
        eprintln!("skipped: PLAYGROUND_TEST_PYTHON is not set (.ci/run sets it to a Python with Playwright)");
        return None;
    };
    let screenshot_dir = temp_dir("playground");
    let screenshot = screenshot_dir.join(format!("{service}.png"));
    let screenshot_arg = screenshot.to_str().expect("a UTF-8 temporary path");
    let mut with_screenshot = args.to_vec();
    with_screenshot.extend(["--screenshot", screenshot_arg]);
    let seen = run_check(&python, "tests/playground.py", server, service, &with_screenshot);
    assert!(
        std::fs::metadata(&screenshot).is_ok_and(|m| m.len() > 10_000),
        "no screenshot"
    );
    Some(seen)
}

/// Runs `python tests/<script> args...`, which must succeed, and answers its last line's JSON
/// (the checks written in Python print what they saw as one JSON line).
pub fn run_python<A: AsRef<std::ffi::OsStr>>(python: &str, script: &str, args: &[A]) -> Value {
    let output = Command::new(python)
        .arg(root().join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.lines().last().expect("a JSON line")).expect("JSON")
}

/// [`run_python`] with `service` and the server's base URL first.
fn run_check(python: &str, script: &str, server: &Server, service: &str, args: &[&str]) -> Value {
    let mut all = vec![service, server.base.as_str()];
    all.extend_from_slice(args);
    run_python(python, script, &all)
}

/// Runs tests/openapi_check.py against `server` (the document validated, then a real answer of
/// every route it describes checked against its schema), or `None`, with the reason printed,
/// where `DEPLOY_TEST_PYTHON` does not name a Python with openapi-spec-validator.
pub fn check_openapi(server: &Server, service: &str, args: &[&str]) -> Option<Value> {
    let Ok(python) = std::env::var("DEPLOY_TEST_PYTHON") else {
        eprintln!("skipped: DEPLOY_TEST_PYTHON is not set (.ci/run sets it to a Python with openapi-spec-validator)");
        return None;
    };
    Some(run_check(
        &python,
        "tests/openapi_check.py",
        server,
        service,
        args,
    ))
}

/// A JSON request of 48 images for the tiny classifier: long enough to still be running when a
/// test acts.
pub fn heavy_classify_request() -> String {
    use base64::Engine;
    let photo = std::fs::read(tiny_model().join("images/synthetic-0-224x224.png")).unwrap();
    let encoded = base64::engine::general_purpose::STANDARD.encode(photo);
    serde_json::json!({"images": vec![encoded; 48]}).to_string()
}

/// POSTs `requests` copies of the JSON `body` to `path` at once and, once all are being
/// answered, sends SIGTERM; answers their answers, the exit status, and how long stopping took.
pub fn stop_with_requests_in_flight(
    server: Server,
    path: &str,
    body: &str,
    requests: i64,
) -> (Vec<Answer>, ExitStatus, Duration) {
    let url = server.url(path);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..requests)
            .map(|_| scope.spawn(|| post(&url, Some("application/json"), body.as_bytes(), &[])))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !has_in_flight(&server, requests) {
            assert!(Instant::now() < deadline, "the requests never arrived");
            std::thread::sleep(Duration::from_millis(5));
        }
        let started = Instant::now();
        let status = server.terminate();
        let took = started.elapsed();
        let answers = handles.into_iter().map(|h| h.join().unwrap()).collect();
        (answers, status, took)
    })
}

/// Asserts that `GET /` answers the playground page, which calls no other site.
pub fn assert_playground_page(server: &Server) {
    let page = get(&server.url("/"));
    assert_eq!(
        (page.status, page.content_type.as_str()),
        (200, "text/html; charset=utf-8")
    );
    assert!(
        !page.text.contains("http://") && !page.text.contains("https://"),
        "the page calls another site"
    );
}

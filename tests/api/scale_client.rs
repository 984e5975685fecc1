//! Scale's official Python client, unchanged, against the real server (both backends), and
//! the `annotask` binary's command line (SPEC §1): `migrate`, `api-keys create`, `serve`,
//! configuration from flags and the environment, the first-start key, and SIGTERM.

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use rand::Rng;
use reqwest::StatusCode;
use serde_json::Value;

use crate::{
    backend_tests,
    helpers::{self, Backend, TestApp, TestDb},
    process::free_port,
};

// ------------------------------------------------------------------ the Python client

/// The interpreter that runs the client check: `ANNOTASK_TEST_PYTHON`, else `python3`.
fn python() -> String {
    std::env::var("ANNOTASK_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Why the Python client cannot run here, if it cannot.
async fn python_client_missing(python: &str) -> Option<String> {
    let probe = tokio::process::Command::new(python)
        .args(["-c", "import scaleapi"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    match probe {
        Err(err) => Some(format!("cannot run {python}: {err}")),
        Ok(output) if !output.status.success() => Some(format!(
            "{python} cannot import scaleapi (pip install scaleapi): {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Ok(_) => None,
    }
}

async fn the_official_scale_python_client_works_unchanged(app: TestApp) {
    let python = python();
    if let Some(reason) = python_client_missing(&python).await {
        helpers::skip(&reason);
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scale_client/check_scaleapi.py");
    // tokio's Command: the server runs on this test's runtime and must keep serving meanwhile.
    let run = tokio::process::Command::new(&python)
        .arg(&script)
        .env("ANNOTASK_URL", format!("{}/v1", app.base_url))
        .env("ANNOTASK_API_KEY", &app.api_key)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        // As `python -O` would: the checks are plain calls, not `assert`s, so they still run.
        .env("PYTHONOPTIMIZE", "2")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .unwrap_or_else(|_| panic!("{} did not finish within 180 s", script.display()))
        .unwrap_or_else(|err| panic!("cannot run {python} {}: {err}", script.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the Scale client check failed ({}) on {:?}:\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status,
        app.backend,
    );
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        summary.ends_with(" passed, 0 failed") && !summary.starts_with("0 "),
        "unexpected summary {summary:?}:\n{stdout}\n{stderr}"
    );
}

backend_tests!(the_official_scale_python_client_works_unchanged);

/// `python -O` (or PYTHONOPTIMIZE, which some CI images set) strips every `assert`: a check
/// written as one would pass without checking. The script fails through `expect()` instead.
#[test]
fn the_python_check_has_no_assert_statements() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scale_client/check_scaleapi.py");
    let source = std::fs::read_to_string(&script).expect("script");
    let asserts: Vec<&str> = source
        .lines()
        .filter(|line| {
            let code = line.trim_start();
            code.starts_with("assert ") || code.starts_with("assert(")
        })
        .collect();
    assert!(
        asserts.is_empty(),
        "use expect(condition, message): {asserts:?}"
    );
    assert!(
        source.contains("def expect(condition, message)") && source.contains("raise CheckFailed(")
    );
}

// ------------------------------------------------------------------ the command line

const BIN: &str = env!("CARGO_BIN_EXE_annotask");
const STARTUP: Duration = Duration::from_secs(10);
const SHUTDOWN: Duration = Duration::from_secs(5);

fn random_hex() -> String {
    let n: u64 = rand::rng().random();
    format!("{n:016x}")
}

/// A directory for one test, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let path = std::env::temp_dir().join(format!("annotask-cli-{}", random_hex()));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// A SQLite URL for a database file in this directory.
    fn sqlite_url(&self, name: &str) -> String {
        format!("sqlite://{}?mode=rwc", self.path(name).display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `annotask ARGS` with a clean configuration environment, run to completion.
fn annotask(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env_remove("ANNOTASK_LISTEN")
        .env_remove("ANNOTASK_DATABASE_URL")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("cannot run {BIN}: {err}"))
}

fn describe(output: &std::process::Output) -> String {
    format!(
        "{}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .unwrap_or_default()
        .trim()
}

/// A key is `live_` or `test_` and at least 128 bits of randomness in URL-safe characters.
fn assert_is_key(key: &str, prefix: &str) {
    let random = key
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("{key:?} does not start with {prefix:?}"));
    assert!(
        random.len() >= 22,
        "{key:?}: too short to carry 128 random bits"
    );
    assert!(
        random
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "{key:?} has characters that do not survive HTTP Basic user names"
    );
}

fn create_key(database_url: &str, account: &str, test: bool) -> String {
    let mut args = vec![
        "api-keys",
        "create",
        "--account",
        account,
        "--database-url",
        database_url,
    ];
    if test {
        args.push("--test");
    }
    let output = annotask(&args);
    assert!(
        output.status.success(),
        "api-keys create failed: {}",
        describe(&output)
    );
    last_line(&String::from_utf8_lossy(&output.stdout)).to_owned()
}

/// Collects everything a child writes to one stream, on a thread of its own.
fn collect(mut stream: impl Read + Send + 'static) -> (Arc<Mutex<String>>, JoinHandle<()>) {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    let reader = std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => sink
                    .lock()
                    .expect("output lock")
                    .push_str(&String::from_utf8_lossy(&buffer[..n])),
            }
        }
    });
    (text, reader)
}

/// A running `annotask serve`; killed when dropped, so a failing test leaves nothing behind.
struct Server {
    child: Child,
    port: u16,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    http: reqwest::Client,
}

impl Server {
    /// Starts `annotask serve` with exactly these flags and configuration variables;
    /// `port` is where it is expected to listen. Logs at debug level, to catch leaked keys.
    fn start(port: u16, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut command = Command::new(BIN);
        command
            .arg("serve")
            .args(args)
            .env_remove("ANNOTASK_LISTEN")
            .env_remove("ANNOTASK_DATABASE_URL")
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {BIN} serve: {err}"));
        let (stdout, out_reader) = collect(child.stdout.take().expect("piped stdout"));
        let (stderr, err_reader) = collect(child.stderr.take().expect("piped stderr"));
        Server {
            child,
            port,
            stdout,
            stderr,
            readers: vec![out_reader, err_reader],
            http: reqwest::Client::new(),
        }
    }

    /// `annotask serve --listen 127.0.0.1:PORT --database-url URL` on a free port.
    fn start_on(database_url: &str) -> Server {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        Server::start(
            port,
            &["--listen", &listen, "--database-url", database_url],
            &[],
        )
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn stdout(&self) -> String {
        self.stdout.lock().expect("output lock").clone()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().expect("output lock").clone()
    }

    fn output(&self) -> String {
        format!(
            "--- stdout\n{}\n--- stderr\n{}",
            self.stdout(),
            self.stderr()
        )
    }

    /// Polls `/healthz` until it answers 200; panics (with the server's output) if the
    /// process exits or `STARTUP` passes first.
    async fn wait_until_healthy(&mut self) {
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("serve exited early with {status}:\n{}", self.output());
            }
            if let Ok(response) = self.http.get(self.url("/healthz")).send().await {
                if response.status() == StatusCode::OK {
                    let body: Value = response.json().await.expect("healthz body is JSON");
                    assert_eq!(body, serde_json::json!({"status": "ok"}));
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "serve not healthy on port {} within {STARTUP:?}:\n{}",
                self.port,
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET /v1/tasks` with `key` as Scale's client sends it (HTTP Basic, empty password).
    async fn list_tasks(&self, key: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(self.url("/v1/tasks"))
            .basic_auth(key, Some(""))
            .send()
            .await
            .expect("GET /v1/tasks");
        let status = response.status();
        let text = response.text().await.expect("body");
        let body =
            serde_json::from_str(&text).unwrap_or_else(|err| panic!("not JSON ({err}): {text}"));
        (status, body)
    }

    async fn assert_key_works(&self, key: &str) {
        let (status, body) = self.list_tasks(key).await;
        assert_eq!(status, StatusCode::OK, "key {key:?} refused: {body}");
        assert!(body["docs"].is_array(), "{body}");
    }

    /// Sends SIGTERM and waits for the exit status (at most `SHUTDOWN`).
    async fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + SHUTDOWN;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // The streams close with the process; let the readers take the rest.
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "serve still running {SHUTDOWN:?} after SIGTERM:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Lines of stdout that look like API keys.
    fn printed_keys(&self) -> Vec<String> {
        self.stdout()
            .lines()
            .map(str::trim)
            .filter(|line| line.starts_with("live_") || line.starts_with("test_"))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn migrate_applies_the_migrations_and_exits_zero_also_when_run_again() {
    let dir = TempDir::new();
    let url = dir.sqlite_url("x.db");
    for run in ["first", "second"] {
        let output = annotask(&["migrate", "--database-url", &url]);
        assert!(
            output.status.success(),
            "{run} migrate: {}",
            describe(&output)
        );
    }
    assert!(
        dir.path("x.db").exists(),
        "migrate did not create the database file"
    );
}

#[test]
fn api_keys_create_prints_a_live_key_and_with_test_a_test_key_as_the_last_line() {
    let dir = TempDir::new();
    let url = dir.sqlite_url("x.db");
    let live = create_key(&url, "acme", false);
    assert_is_key(&live, "live_");
    let test = create_key(&url, "acme", true);
    assert_is_key(&test, "test_");
    let again = create_key(&url, "acme", false);
    assert_is_key(&again, "live_");
    assert_ne!(live, again, "two creations printed the same key");
}

#[test]
fn api_keys_create_stores_only_a_hash_of_the_key() {
    let dir = TempDir::new();
    let key = create_key(&dir.sqlite_url("x.db"), "acme", false);
    let mut bytes = Vec::new();
    for suffix in ["", "-wal"] {
        if let Ok(content) = std::fs::read(format!("{}{suffix}", dir.path("x.db").display())) {
            bytes.extend(content);
        }
    }
    assert!(!bytes.is_empty(), "no database file written");
    let needle = key.as_bytes();
    assert!(
        !bytes.windows(needle.len()).any(|window| window == needle),
        "the plain key is stored in the database"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_an_empty_database_prints_a_working_key_once_and_never_logs_it() {
    let dir = TempDir::new();
    let url = dir.sqlite_url("x.db");

    let mut first = Server::start_on(&url);
    first.wait_until_healthy().await;
    let stdout = first.stdout();
    let key = last_line(&stdout).to_owned();
    assert_is_key(&key, "live_");
    assert_eq!(first.printed_keys(), vec![key.clone()], "stdout:\n{stdout}");
    first.assert_key_works(&key).await;
    let bogus = format!("live_{}{}", random_hex(), random_hex());
    let (status, body) = first.list_tasks(&bogus).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["status_code"], 401, "{body}");
    let (status, _) = first.list_tasks("").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        first.terminate().await.code(),
        Some(0),
        "{}",
        first.output()
    );
    for (what, secret) in [("the printed key", &key), ("a rejected key", &bogus)] {
        assert!(
            !first.stderr().contains(secret.as_str()),
            "{what} appears in the logs:\n{}",
            first.stderr()
        );
    }

    let mut second = Server::start_on(&url);
    second.wait_until_healthy().await;
    second.assert_key_works(&key).await;
    assert!(
        second.printed_keys().is_empty(),
        "a second start printed a key:\n{}",
        second.output()
    );
    assert!(
        !second.stderr().contains(&key),
        "the key appears in the logs"
    );
    assert_eq!(
        second.terminate().await.code(),
        Some(0),
        "{}",
        second.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_prints_no_key_when_api_keys_create_made_the_first_account() {
    let dir = TempDir::new();
    let url = dir.sqlite_url("x.db");
    let key = create_key(&url, "acme", false);
    let test_key = create_key(&url, "acme", true);
    let mut server = Server::start_on(&url);
    server.wait_until_healthy().await;
    assert!(server.printed_keys().is_empty(), "{}", server.output());
    server.assert_key_works(&key).await;
    server.assert_key_works(&test_key).await;
    assert_eq!(
        server.terminate().await.code(),
        Some(0),
        "{}",
        server.output()
    );
    assert!(!server.stderr().contains(&key) && !server.stderr().contains(&test_key));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reads_listen_and_database_url_from_the_environment() {
    let dir = TempDir::new();
    let url = dir.sqlite_url("env.db");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut server = Server::start(
        port,
        &[],
        &[
            ("ANNOTASK_LISTEN", &listen),
            ("ANNOTASK_DATABASE_URL", &url),
        ],
    );
    server.wait_until_healthy().await;
    assert!(
        dir.path("env.db").exists(),
        "ANNOTASK_DATABASE_URL not used"
    );
    let key = last_line(&server.stdout()).to_owned();
    server.assert_key_works(&key).await;
    assert_eq!(
        server.terminate().await.code(),
        Some(0),
        "{}",
        server.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_win_over_the_environment() {
    let dir = TempDir::new();
    let env_url = dir.sqlite_url("env.db");
    let flag_url = dir.sqlite_url("flag.db");
    let (env_port, flag_port) = (free_port(), free_port());
    let (env_listen, flag_listen) = (
        format!("127.0.0.1:{env_port}"),
        format!("127.0.0.1:{flag_port}"),
    );
    let mut server = Server::start(
        flag_port,
        &["--listen", &flag_listen, "--database-url", &flag_url],
        &[
            ("ANNOTASK_LISTEN", &env_listen),
            ("ANNOTASK_DATABASE_URL", &env_url),
        ],
    );
    server.wait_until_healthy().await;
    assert!(dir.path("flag.db").exists(), "--database-url not used");
    assert!(
        !dir.path("env.db").exists(),
        "ANNOTASK_DATABASE_URL won over --database-url"
    );
    let env_health = server
        .http
        .get(format!("http://{env_listen}/healthz"))
        .send()
        .await;
    assert!(
        env_health.is_err(),
        "something answers on ANNOTASK_LISTEN's port too"
    );
    assert_eq!(
        server.terminate().await.code(),
        Some(0),
        "{}",
        server.output()
    );

    // The same for the other commands.
    let output = Command::new(BIN)
        .args(["migrate", "--database-url", &flag_url])
        .env("ANNOTASK_DATABASE_URL", dir.sqlite_url("other.db"))
        .output()
        .expect("run migrate");
    assert!(output.status.success(), "{}", describe(&output));
    assert!(
        !dir.path("other.db").exists(),
        "migrate used ANNOTASK_DATABASE_URL over the flag"
    );
    let output = Command::new(BIN)
        .args(["migrate"])
        .env("ANNOTASK_DATABASE_URL", dir.sqlite_url("other.db"))
        .output()
        .expect("run migrate");
    assert!(output.status.success(), "{}", describe(&output));
    assert!(
        dir.path("other.db").exists(),
        "migrate ignored ANNOTASK_DATABASE_URL"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_makes_serve_exit_zero_promptly_even_with_an_idle_client_connection() {
    let dir = TempDir::new();
    let mut server = Server::start_on(&dir.sqlite_url("x.db"));
    server.wait_until_healthy().await;
    let key = last_line(&server.stdout()).to_owned();
    // The server's own client now holds a pooled keep-alive connection open.
    server.assert_key_works(&key).await;
    let started = Instant::now();
    let status = server.terminate().await;
    assert_eq!(status.code(), Some(0), "{}", server.output());
    assert!(started.elapsed() < SHUTDOWN, "took {:?}", started.elapsed());
    let after = reqwest::Client::new()
        .get(server.url("/healthz"))
        .send()
        .await;
    assert!(after.is_err(), "still answering after exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_works_the_same_on_postgres() {
    let Some((_db, url)) = TestDb::create(Backend::Postgres).await else {
        return;
    };
    let output = annotask(&["migrate", "--database-url", &url]);
    assert!(output.status.success(), "migrate: {}", describe(&output));
    let mut server = Server::start_on(&url);
    server.wait_until_healthy().await;
    let key = last_line(&server.stdout()).to_owned();
    assert_is_key(&key, "live_");
    server.assert_key_works(&key).await;
    let created = create_key(&url, "acme", true);
    assert_is_key(&created, "test_");
    server.assert_key_works(&created).await;
    assert_eq!(
        server.terminate().await.code(),
        Some(0),
        "{}",
        server.output()
    );
    assert!(
        !server.stderr().contains(&key),
        "the key appears in the logs"
    );

    let mut again = Server::start_on(&url);
    again.wait_until_healthy().await;
    assert!(again.printed_keys().is_empty(), "{}", again.output());
    again.assert_key_works(&key).await;
    assert_eq!(
        again.terminate().await.code(),
        Some(0),
        "{}",
        again.output()
    );
}

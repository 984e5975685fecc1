//! Start-up as a newcomer meets it: the real binary, its exit code and what it prints when the
//! database or the port is not usable, host names in --listen, and sizes with units.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use tokio::io::AsyncBufReadExt;

use crate::process::free_port;

/// Runs `annotask serve ARGS`, which must fail; returns its stderr and how long it took.
fn failed_start(args: &[&str]) -> (String, Duration) {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_annotask"))
        .arg("serve")
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .expect("run annotask");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "serve {args:?} should fail: {stderr}"
    );
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    (stderr, took)
}

#[test]
fn a_missing_sqlite_directory_is_named() {
    let dir = std::env::temp_dir().join(format!("annotask-missing-{}", free_port()));
    let url = format!("sqlite://{}/tasks.db?mode=rwc", dir.display());
    let (stderr, _) = failed_start(&[
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--database-url",
        &url,
    ]);
    assert!(
        stderr.contains(&format!("the directory {} does not exist", dir.display())),
        "{stderr}"
    );
}

#[test]
fn a_sqlite_file_that_does_not_exist_without_mode_rwc_says_to_add_it() {
    let path = std::env::temp_dir().join(format!("annotask-absent-{}.db", free_port()));
    let url = format!("sqlite://{}", path.display());
    let (stderr, _) = failed_start(&[
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--database-url",
        &url,
    ]);
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    assert!(stderr.contains("?mode=rwc"), "{stderr}");
    assert!(!path.exists(), "nothing was created");
}

#[test]
fn a_sqlite_path_under_a_file_is_named() {
    let file = std::env::temp_dir().join(format!("annotask-file-{}", free_port()));
    std::fs::write(&file, b"not a directory").expect("write");
    let url = format!("sqlite://{}/x.db?mode=rwc", file.display());
    let (stderr, _) = failed_start(&[
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--database-url",
        &url,
    ]);
    assert!(stderr.contains("is a file, not a directory"), "{stderr}");
    let _ = std::fs::remove_file(file);
}

#[test]
fn a_refused_postgres_is_named_within_seconds() {
    let port = free_port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/annotask");
    let (stderr, took) = failed_start(&[
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--database-url",
        &url,
    ]);
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(
        stderr.contains(&format!("Is PostgreSQL running at 127.0.0.1:{port}?")),
        "{stderr}"
    );
}

#[test]
fn a_port_in_use_is_reported_before_migrations_run() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let db = std::env::temp_dir().join(format!("annotask-port-{}.db", free_port()));
    let url = format!("sqlite://{}?mode=rwc", db.display());
    let (stderr, _) = failed_start(&["--listen", &addr, "--database-url", &url]);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    assert!(stderr.contains("another process is using it"), "{stderr}");
    assert!(
        !stderr.contains("migration"),
        "migrations ran first: {stderr}"
    );
    assert!(!db.exists(), "the database was touched");
}

#[test]
fn a_size_without_a_unit_it_knows_is_refused_by_name() {
    let output = Command::new(env!("CARGO_BIN_EXE_annotask"))
        .args(["serve", "--max-body-bytes", "lots"])
        .output()
        .expect("run annotask");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--max-body-bytes") && stderr.contains("10MiB"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_takes_a_host_name_and_sizes_take_units() {
    let port = free_port();
    let db = std::env::temp_dir().join(format!("annotask-listen-{port}.db"));
    let url = format!("sqlite://{}?mode=rwc", db.display());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_annotask"))
        .args([
            "serve",
            "--listen",
            &format!("localhost:{port}"),
            "--database-url",
            &url,
        ])
        .args(["--max-body-bytes", "1KiB"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let http = reqwest::Client::new();
    let base = format!("http://localhost:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if http
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never became healthy on localhost:{port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The first start prints the new account's key as its second line.
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let _banner = lines.next_line().await.expect("read").expect("banner");
    let key = lines.next_line().await.expect("read").expect("key");
    let response = http
        .post(format!("{base}/v1/task/imageannotation"))
        .basic_auth(&key, Some(""))
        .header("content-type", "application/json")
        .body(vec![b' '; 2048])
        .send()
        .await
        .expect("sent");
    assert_eq!(
        response.status(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "1KiB is 1,024 bytes"
    );
    let _ = child.kill().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
}

/// Even root cannot create files in /proc: the stand-in for a directory that is not writable.
#[test]
fn an_unwritable_sqlite_location_is_named_with_what_to_check() {
    if !std::path::Path::new("/proc/self").exists() {
        crate::helpers::skip("no /proc to stand in for an unwritable directory");
        return;
    }
    let (stderr, _) = failed_start(&[
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--database-url",
        "sqlite:///proc/annotask-unwritable.db?mode=rwc",
    ]);
    assert!(stderr.contains("/proc/annotask-unwritable.db"), "{stderr}");
    assert!(stderr.contains("writable"), "{stderr}");
}

/// An in-memory database lives on one connection: what a request writes, the next one reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_memory_sqlite_database_reads_what_it_wrote() {
    let port = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_annotask"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--database-url",
            "sqlite::memory:",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let _banner = lines.next_line().await.expect("read").expect("banner");
    let key = lines.next_line().await.expect("read").expect("key");
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "never became healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let created = http
        .post(format!("{base}/v1/task/imageannotation"))
        .basic_auth(&key, Some(""))
        .json(&serde_json::json!({"attachment": "https://e.com/a.png", "geometries": {"box": {}}}))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), StatusCode::OK);
    let page: serde_json::Value = http
        .get(format!("{base}/v1/tasks"))
        .basic_auth(&key, Some(""))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(page["total"], 1, "{page}");
    let _ = child.kill().await;
}

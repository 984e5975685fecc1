//! The operator's commands, run as the real binary: `api-keys list` (prefixes, never keys),
//! `api-keys revoke` (refused on REST and gRPC within the documented bound, at once in the
//! revoking process; none / ambiguous prefixes), accounts created by racing processes, and
//! `backup` while a server keeps taking creates.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use annotask::{
    proto::{task_service_client::TaskServiceClient, ListTasksRequest},
    service::{Revocation, KEY_PREFIX_LEN, REVOCATION_DELAY},
};
use rand::Rng;
use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, Database};
use serde_json::{json, Value};

use crate::{
    backend_tests,
    helpers::{grpc_request_as, Backend, TestApp, TestDb},
    process::ServerProcess,
};

/// What one run of the binary printed.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `annotask ARGS --database-url URL` to its end.
async fn annotask(args: &[&str], database_url: &str) -> Run {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_annotask"))
        .args(args)
        .args(["--database-url", database_url])
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("run annotask");
    Run {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn account_name() -> String {
    format!("ops-{:08x}", rand::rng().random::<u32>())
}

/// `api-keys create` through the binary; returns the key (the last line of stdout).
async fn create_key(database_url: &str, account: &str, extra: &[&str]) -> String {
    let mut args = vec!["api-keys", "create", "--account", account];
    args.extend_from_slice(extra);
    let run = annotask(&args, database_url).await;
    assert!(run.ok, "api-keys create failed: {}", run.stderr);
    run.stdout.lines().last().expect("a key").trim().to_owned()
}

/// `api-keys list` through the binary: its lines; nothing may contain a full key.
async fn list_keys(database_url: &str, account: &str, keys: &[&str]) -> Vec<String> {
    let run = annotask(&["api-keys", "list", "--account", account], database_url).await;
    assert!(run.ok, "api-keys list failed: {}", run.stderr);
    for key in keys {
        assert!(
            !run.stdout.contains(key) && !run.stderr.contains(key),
            "a full key was printed"
        );
    }
    run.stdout.lines().map(str::to_owned).collect()
}

async fn revoke(database_url: &str, account: &str, prefix: &str) -> Run {
    annotask(
        &[
            "api-keys",
            "revoke",
            "--account",
            account,
            "--prefix",
            prefix,
        ],
        database_url,
    )
    .await
}

fn prefix(key: &str) -> &str {
    &key[..KEY_PREFIX_LEN]
}

/// The REST status and the gRPC code one key gets from a server.
async fn answers(base_url: &str, key: &str) -> (StatusCode, tonic::Code) {
    let rest = reqwest::Client::new()
        .get(format!("{base_url}/v1/tasks?limit=1"))
        .basic_auth(key, Some(""))
        .send()
        .await
        .expect("REST answers")
        .status();
    let mut grpc = TaskServiceClient::connect(base_url.to_owned())
        .await
        .expect("grpc connect");
    let code = match grpc
        .list_tasks(grpc_request_as(key, ListTasksRequest::default()))
        .await
    {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    };
    (rest, code)
}

const ACCEPTED: (StatusCode, tonic::Code) = (StatusCode::OK, tonic::Code::Ok);
const REFUSED: (StatusCode, tonic::Code) = (StatusCode::UNAUTHORIZED, tonic::Code::Unauthenticated);

async fn keys_are_listed_by_prefix_and_never_in_full(app: TestApp) {
    let account = account_name();
    let admin = create_key(&app.database_url, &account, &[]).await;
    let worker = create_key(
        &app.database_url,
        &account,
        &["--test", "--scope", "worker"],
    )
    .await;
    let lines = list_keys(&app.database_url, &account, &[&admin, &worker]).await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    for (line, key, world, scope) in [
        (&lines[0], &admin, "live", "admin"),
        (&lines[1], &worker, "test", "worker"),
    ] {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields.len(), 4, "{line}");
        assert_eq!(fields[0], prefix(key), "{line}");
        assert_eq!(fields[0].len(), 12);
        assert_eq!((fields[1], fields[2]), (world, scope), "{line}");
        let created = chrono::DateTime::parse_from_rfc3339(fields[3]).expect("RFC 3339");
        assert!(
            (chrono::Utc::now() - created.to_utc()).num_seconds().abs() < 120,
            "{line}"
        );
    }

    let run = annotask(
        &["api-keys", "list", "--account", "no-such-account"],
        &app.database_url,
    )
    .await;
    assert!(!run.ok);
    assert!(
        run.stderr.contains("No account named 'no-such-account'"),
        "{}",
        run.stderr
    );
}

async fn a_revoked_key_is_refused_on_rest_and_grpc_within_the_bound(app: TestApp) {
    let account = account_name();
    let doomed = create_key(&app.database_url, &account, &[]).await;
    let kept = create_key(&app.database_url, &account, &[]).await;
    // Another process serving the same database, beside the test's own server.
    let replica = ServerProcess::start(&app.database_url).await;
    let servers = [app.base_url.clone(), replica.base_url.clone()];
    for server in &servers {
        // Both keys are now in each server's cache of valid keys.
        assert_eq!(answers(server, &doomed).await, ACCEPTED);
        assert_eq!(answers(server, &kept).await, ACCEPTED);
    }

    let run = revoke(&app.database_url, &account, prefix(&doomed)).await;
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stdout
            .contains(&format!("revoked: {}", prefix(&doomed))),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains(&doomed), "the key was printed");
    let revoked_at = Instant::now();

    for server in &servers {
        loop {
            let answer = answers(server, &doomed).await;
            if answer == REFUSED {
                break;
            }
            // REST asks first, gRPC second: the cached key can lapse between the two calls
            // (accepted, then refused), never the other way round (a refused key is not cached).
            let lapsing = (StatusCode::OK, tonic::Code::Unauthenticated);
            assert!(
                answer == ACCEPTED || answer == lapsing,
                "either accepted or refused on both, or lapsing between the calls: {answer:?}"
            );
            assert!(
                revoked_at.elapsed() < REVOCATION_DELAY + Duration::from_secs(1),
                "{server} still accepts the key {:?} after its revocation",
                revoked_at.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            answers(server, &kept).await,
            ACCEPTED,
            "the other key works"
        );
    }
    // Refused for good, not just once.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for server in &servers {
        assert_eq!(answers(server, &doomed).await, REFUSED);
    }
    let (status, body) = app
        .send(app.request_as(&doomed, reqwest::Method::GET, "/v1/tasks"))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["status_code"], 401, "the usual JSON error: {body}");

    let lines = list_keys(&app.database_url, &account, &[&doomed, &kept]).await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with(prefix(&doomed)) && lines[0].contains("  revoked "),
        "{lines:?}"
    );
    let revoked = lines[0].rsplit(' ').next().expect("a time");
    chrono::DateTime::parse_from_rfc3339(revoked).expect("RFC 3339");
    assert!(!lines[1].contains("revoked"), "{lines:?}");

    // Revoking it again changes nothing and says so.
    let again = revoke(&app.database_url, &account, prefix(&doomed)).await;
    assert!(again.ok, "{}", again.stderr);
    assert!(again.stdout.contains("already revoked"), "{}", again.stdout);
}

async fn revoking_needs_exactly_one_matching_key(app: TestApp) {
    let account = account_name();
    let first = create_key(&app.database_url, &account, &[]).await;
    let second = create_key(&app.database_url, &account, &[]).await;

    let ambiguous = revoke(&app.database_url, &account, "live_").await;
    assert!(!ambiguous.ok);
    assert!(
        ambiguous.stderr.contains("ambiguous")
            && ambiguous.stderr.contains("2 active keys")
            && ambiguous.stderr.contains("Nothing was revoked"),
        "{}",
        ambiguous.stderr
    );

    // Key prefixes are hex after the world, so this one matches nothing.
    let none = revoke(&app.database_url, &account, "live_zzzzzzz").await;
    assert!(!none.ok);
    assert!(
        none.stderr.contains(&format!(
            "No key of account '{account}' starts with 'live_zzzzzzz'"
        )),
        "{}",
        none.stderr
    );

    let whole = revoke(&app.database_url, &account, &first).await;
    assert!(!whole.ok);
    assert!(
        whole.stderr.contains("at most 12 characters"),
        "{}",
        whole.stderr
    );
    assert!(!whole.stderr.contains(&first), "the key was echoed");

    let stranger = revoke(&app.database_url, "no-such-account", prefix(&first)).await;
    assert!(!stranger.ok);
    assert!(
        stranger.stderr.contains("No account named"),
        "{}",
        stranger.stderr
    );
    // Another account's key is not found through this one.
    let other = revoke(&app.database_url, &app.account, prefix(&first)).await;
    assert!(!other.ok, "{}", other.stdout);

    for key in [&first, &second] {
        assert_eq!(answers(&app.base_url, key).await, ACCEPTED, "still valid");
    }
    let lines = list_keys(&app.database_url, &account, &[&first, &second]).await;
    assert!(
        lines.iter().all(|line| !line.contains("revoked")),
        "{lines:?}"
    );
}

async fn a_key_revoked_by_a_server_process_is_refused_there_at_once(app: TestApp) {
    let key = app.key_for_same_account(&app.account, false).await;
    assert_eq!(answers(&app.base_url, &key).await, ACCEPTED);
    let revocation = app
        .service
        .revoke_api_key(&app.account, prefix(&key))
        .await
        .expect("revoke");
    let Revocation::Revoked(info) = revocation else {
        panic!("not revoked: {revocation:?}")
    };
    assert_eq!(info.prefix.as_deref(), Some(prefix(&key)));
    assert!(info.revoked_at.is_some());
    assert_eq!(answers(&app.base_url, &key).await, REFUSED, "no delay");
    assert_eq!(answers(&app.base_url, &app.api_key).await, ACCEPTED);
}

async fn racing_processes_create_one_account_with_all_their_keys(app: TestApp) {
    let account = account_name();
    let creates = (0..6).map(|_| {
        let url = app.database_url.clone();
        let account = account.clone();
        tokio::spawn(async move { create_key(&url, &account, &[]).await })
    });
    let mut keys = Vec::new();
    for create in creates {
        keys.push(create.await.expect("joined"));
    }
    let shown: Vec<&str> = keys.iter().map(String::as_str).collect();
    let lines = list_keys(&app.database_url, &account, &shown).await;
    assert_eq!(lines.len(), 6, "every key in the one account: {lines:?}");
    for key in &keys {
        assert_eq!(answers(&app.base_url, key).await, ACCEPTED);
    }
}

async fn old_keys_list_as_unknown_prefix_until_used(app: TestApp) {
    let account = account_name();
    let key = create_key(&app.database_url, &account, &[]).await;
    // As a key made before migration 5 looks: only its hash is stored.
    let db = Database::connect(&app.database_url).await.expect("connect");
    db.execute_unprepared(&format!(
        "UPDATE api_keys SET key_prefix = NULL WHERE account_id = \
         (SELECT id FROM accounts WHERE name = '{account}')"
    ))
    .await
    .expect("forget the prefix");
    db.close().await.expect("close");

    let lines = list_keys(&app.database_url, &account, &[&key]).await;
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0].starts_with("(unknown prefix)  live  admin"),
        "{lines:?}"
    );
    let unfindable = revoke(&app.database_url, &account, prefix(&key)).await;
    assert!(!unfindable.ok, "{}", unfindable.stdout);

    // Presenting the key stores its prefix: it can then be listed and revoked.
    assert_eq!(answers(&app.base_url, &key).await, ACCEPTED);
    let lines = list_keys(&app.database_url, &account, &[&key]).await;
    assert!(lines[0].starts_with(prefix(&key)), "{lines:?}");
    let run = revoke(&app.database_url, &account, prefix(&key)).await;
    assert!(run.ok, "{}", run.stderr);
}

backend_tests!(
    keys_are_listed_by_prefix_and_never_in_full,
    a_revoked_key_is_refused_on_rest_and_grpc_within_the_bound,
    revoking_needs_exactly_one_matching_key,
    a_key_revoked_by_a_server_process_is_refused_there_at_once,
    racing_processes_create_one_account_with_all_their_keys,
    old_keys_list_as_unknown_prefix_until_used,
);

/// A directory of its own, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "annotask-backup-{:016x}",
            rand::rng().random::<u64>()
        ));
        std::fs::create_dir(&path).expect("create temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_taken_while_serving_holds_every_task_acknowledged_before_it() {
    let (_db, url) = TestDb::create(Backend::Sqlite).await.expect("sqlite");
    let account = account_name();
    let key = create_key(&url, &account, &[]).await;
    let server = ServerProcess::start(&url).await;

    // Four clients create tasks without pause, before, during and after the backup.
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let attempts = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let (acknowledged, attempts, failures, stop) = (
                acknowledged.clone(),
                attempts.clone(),
                failures.clone(),
                stop.clone(),
            );
            let (base_url, key) = (server.base_url.clone(), key.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    attempts.fetch_add(1, Ordering::SeqCst);
                    let response = http
                        .post(format!("{base_url}/v1/task/imageannotation"))
                        .basic_auth(&key, Some(""))
                        .json(&json!({
                            "instruction": "Box every car",
                            "attachment": format!("https://example.com/{writer}/{n}.png"),
                            "geometries": {"box": {"objects_to_annotate": ["car"]}},
                            "unique_id": format!("w{writer}-{n}"),
                        }))
                        .send()
                        .await;
                    match response {
                        Ok(response) if response.status() == StatusCode::OK => {
                            let task: Value = response.json().await.expect("task JSON");
                            let id = task["task_id"].as_str().expect("task_id").to_owned();
                            acknowledged.lock().expect("lock").push(id);
                        }
                        Ok(response) => failures
                            .lock()
                            .expect("lock")
                            .push(format!("{}", response.status())),
                        Err(err) => failures.lock().expect("lock").push(err.to_string()),
                    }
                }
            })
        })
        .collect();

    while acknowledged.lock().expect("lock").len() < 300 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dir = TempDir::new();
    let backup = dir.0.join("annotask-backup.db");
    let backup_text = backup.display().to_string();
    // Everything acknowledged so far was committed before the backup began.
    let before: Vec<String> = acknowledged.lock().expect("lock").clone();
    let run = annotask(&["backup", "--to", &backup_text], &url).await;
    let during = acknowledged.lock().expect("lock").len() - before.len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.await.expect("writer");
    }
    assert!(run.ok, "backup failed: {}", run.stderr);
    assert!(
        run.stdout
            .contains(&format!("backup written to {backup_text}")),
        "{}",
        run.stdout
    );
    assert_eq!(
        failures.lock().expect("lock").as_slice(),
        &[] as &[String],
        "the server kept serving"
    );
    let all = acknowledged.lock().expect("lock").len();
    assert!(all > before.len(), "creates went on after the backup");
    eprintln!(
        "backup: {} tasks acknowledged before it, {during} while it ran, {all} in all",
        before.len()
    );
    assert_eq!(
        file_names(&dir.0),
        vec!["annotask-backup.db".to_owned()],
        "no partial file left"
    );

    // A second server on the copy finds every task acknowledged before the backup began.
    let copy_url = format!("sqlite://{backup_text}");
    let restored = ServerProcess::start(&copy_url).await;
    let http = reqwest::Client::new();
    let page: Value = http
        .get(format!("{}/v1/tasks?limit=1", restored.base_url))
        .basic_auth(&key, Some(""))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("JSON");
    let total = page["total"].as_u64().expect("total") as usize;
    assert!(
        total >= before.len() && total <= attempts.load(Ordering::SeqCst),
        "{total} tasks in the copy, {} acknowledged before it",
        before.len()
    );
    let mut seen = HashSet::new();
    let mut next_token: Option<String> = None;
    loop {
        let mut url = format!("{}/v1/tasks?limit=100", restored.base_url);
        if let Some(token) = &next_token {
            url.push_str(&format!("&next_token={token}"));
        }
        let page: Value = http
            .get(url)
            .basic_auth(&key, Some(""))
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("JSON");
        for task in page["docs"].as_array().expect("docs") {
            seen.insert(task["task_id"].as_str().expect("task_id").to_owned());
        }
        match page["next_token"].as_str() {
            Some(token) => next_token = Some(token.to_owned()),
            None => break,
        }
    }
    let missing: Vec<&String> = before.iter().filter(|id| !seen.contains(*id)).collect();
    assert!(missing.is_empty(), "missing from the copy: {missing:?}");
    drop(restored);

    // Never over an existing file, even one that is not a database.
    let before_bytes = std::fs::read(&backup).expect("read copy");
    let again = annotask(&["backup", "--to", &backup_text], &url).await;
    assert!(!again.ok);
    assert!(
        again.stderr.contains("already exists") && again.stderr.contains("never overwrites"),
        "{}",
        again.stderr
    );
    assert_eq!(std::fs::read(&backup).expect("read copy"), before_bytes);

    let nowhere = dir.0.join("no-such-dir").join("copy.db");
    let run = annotask(&["backup", "--to", &nowhere.display().to_string()], &url).await;
    assert!(!run.ok);
    assert!(run.stderr.contains("does not exist"), "{}", run.stderr);

    // A database annotask never migrated is not "backed up" as an empty file.
    let stray = dir.0.join("stray.db");
    let run = annotask(
        &[
            "backup",
            "--to",
            &dir.0.join("stray-copy.db").display().to_string(),
        ],
        &format!("sqlite://{}?mode=rwc", stray.display()),
    )
    .await;
    assert!(!run.ok);
    assert!(run.stderr.contains("no annotask tables"), "{}", run.stderr);
    assert!(!dir.0.join("stray-copy.db").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_backups_are_refused_with_a_pointer_to_pg_dump() {
    let Some((_db, url)) = TestDb::create(Backend::Postgres).await else {
        return;
    };
    let dir = TempDir::new();
    let target = dir.0.join("copy.db");
    let run = annotask(&["backup", "--to", &target.display().to_string()], &url).await;
    assert!(!run.ok);
    assert!(run.stderr.contains("pg_dump"), "{}", run.stderr);
    assert!(!target.exists());
}

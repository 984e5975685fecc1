//! `annotask-bench`: load against a real `annotask serve` (a child process, so its memory is
//! its own), side by side with the database doing the same work alone, in one run.
//!
//! Each scenario runs `--concurrency` workers for a warm-up, then for `--duration`, and reports
//! throughput and p50/p99/max latency; each has a baseline (the same statement straight to the
//! same database, with the same durability and concurrency) and prints the ratio to it.

use std::{
    fmt::Write as _,
    future::Future,
    marker::PhantomData,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use annotask::proto::{CreateTaskRequest, GetTaskRequest, ListTasksRequest};
use axum::body::Bytes;
use clap::Parser;
use prost::bytes::Buf;
use sea_orm::{
    sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous},
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement,
};
use serde_json::{json, Value};
use tonic::{
    codec::{Codec, DecodeBuf, Decoder},
    codegen::http::uri::PathAndQuery,
    transport::Channel,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Parser)]
#[command(about = "Benchmark annotask against its database's own limit")]
struct Args {
    /// PostgreSQL to benchmark on (a scratch database is created and dropped); omit to skip.
    #[arg(long, env = "ANNOTASK_BENCH_POSTGRES_URL")]
    postgres_url: Option<String>,
    /// Skip the SQLite run.
    #[arg(long)]
    no_sqlite: bool,
    /// Workers per scenario.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Measured time per scenario (5 s is thousands of samples even for the slowest scenario,
    /// and keeps the whole default run near 10 minutes).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured time before each scenario.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Tasks loaded in bulk (straight into the database) before the list scenarios.
    #[arg(long, default_value_t = 100_000)]
    preload: u64,
    /// Tasks in the bulk import scenario (one NDJSON upload into an empty account, each with a
    /// unique_id), which the export scenario then reads back.
    #[arg(long, default_value_t = 1_000_000)]
    import_tasks: u64,
    /// After the scenarios: the mixed load over 256 connections for this long, the server's
    /// RSS sampled every tenth of it (0: skip).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    soak: Duration,
    /// Run only the scenarios whose name contains one of these (repeatable); all by default.
    #[arg(long)]
    only: Vec<String>,
    /// Where to write the report (Markdown).
    #[arg(long, default_value = "BENCHMARKS.md")]
    output: PathBuf,
    /// Exit non-zero if any request failed (for CI's smoke run).
    #[arg(long)]
    fail_on_errors: bool,
}

/// What one scenario measured.
struct Measured {
    operations: u64,
    errors: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.operations as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let index = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[index.min(self.latencies.len() - 1)]
    }
}

/// Runs `op(worker, n)` on `concurrency` workers: `warmup` unmeasured, then `duration`.
async fn run<F, Fut>(concurrency: usize, warmup: Duration, duration: Duration, op: F) -> Measured
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let measure_from = started + warmup;
    let stop_at = measure_from + duration;
    let errors = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let (op, errors) = (op.clone(), errors.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = 0u64;
                loop {
                    let begun = Instant::now();
                    if begun >= stop_at {
                        return latencies;
                    }
                    let result = op(worker, n).await;
                    n += 1;
                    if begun >= measure_from {
                        match result {
                            Ok(()) => latencies.push(begun.elapsed()),
                            Err(err) => {
                                if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                                    eprintln!("  first error: {err}");
                                }
                            }
                        }
                    }
                }
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await.unwrap_or_default());
    }
    latencies.sort_unstable();
    Measured {
        operations: latencies.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        elapsed: duration,
        latencies,
    }
}

fn image_task(n: u64) -> Value {
    // A Scale-shaped imageannotation task, about 600 bytes of params.
    json!({
        "instruction": "Draw a tight box around every car, bus and truck; ignore parked bicycles.",
        "attachment": format!("https://storage.example.com/datasets/drive-2026-11/frames/{n:012}.jpg"),
        "attachment_type": "image",
        "geometries": {
            "box": {"objects_to_annotate": ["car", "bus", "truck"], "min_height": 10, "min_width": 10},
            "polygon": {"objects_to_annotate": ["road"]}
        },
        "annotation_attributes": {"occluded": {"description": "Is the object occluded?", "choices": ["yes", "no"]}},
        "metadata": {"frame": n, "camera": "front-left", "sequence": "seq-0042"},
        "tags": ["bench", if n % 2 == 0 { "even" } else { "odd" }],
    })
}

/// A new admin key for `account` (created if needed), through the CLI.
fn create_key(binary: &PathBuf, database_url: &str, account: &str) -> Result<String, BoxError> {
    let created = Command::new(binary)
        .args([
            "api-keys",
            "create",
            "--account",
            account,
            "--database-url",
            database_url,
        ])
        .env("RUST_LOG", "warn")
        .output()?;
    let key = String::from_utf8_lossy(&created.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    if !created.status.success() || key.is_empty() {
        return Err(format!(
            "api-keys create failed: {}",
            String::from_utf8_lossy(&created.stderr)
        )
        .into());
    }
    Ok(key)
}

/// The body of a successful answer; any other status is an error carrying the body.
async fn checked(method: &str, path: &str, response: reqwest::Response) -> Result<Bytes, BoxError> {
    let status = response.status();
    let body = response.bytes().await?;
    if !status.is_success() {
        return Err(format!(
            "{method} {path}: {status} {}",
            String::from_utf8_lossy(&body)
        )
        .into());
    }
    Ok(body)
}

/// One unary gRPC call whose answer is read but not decoded: like the REST side, the load
/// generator checks the status only, so its own decoding does not take the server's CPU.
async fn grpc_call<T: prost::Message + Send + 'static>(
    channel: Channel,
    method: &'static str,
    request: tonic::Request<T>,
) -> Result<(), BoxError> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    grpc.unary(
        request,
        PathAndQuery::from_static(method),
        UndecodedCodec::<T>(PhantomData),
    )
    .await?;
    Ok(())
}

struct UndecodedCodec<T>(PhantomData<T>);

impl<T: prost::Message + Send + 'static> Codec for UndecodedCodec<T> {
    type Encode = T;
    type Decode = ();
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = Undecoded;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        Undecoded
    }
}

struct Undecoded;

impl Decoder for Undecoded {
    type Item = ();
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        buf.advance(buf.remaining());
        Ok(Some(()))
    }
}

/// The server under test, as a child process.
struct Server {
    child: Child,
    base_url: String,
    key: String,
    http: reqwest::Client,
}

impl Server {
    async fn start(binary: &PathBuf, database_url: &str) -> Result<Server, BoxError> {
        let key = create_key(binary, database_url, "bench")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(binary)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--database-url",
                database_url,
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?;
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()?;
        let base_url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !http
            .get(format!("{base_url}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            if Instant::now() > deadline {
                return Err("the server did not become healthy".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Server {
            child,
            base_url,
            key,
            http,
        })
    }

    fn peak_rss_mib(&self) -> Option<f64> {
        self.memory_mib("VmHWM:")
    }

    fn rss_mib(&self) -> Option<f64> {
        self.memory_mib("VmRSS:")
    }

    fn memory_mib(&self, field: &str) -> Option<f64> {
        let pid = self.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|line| line.starts_with(field))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    }

    /// The answer's bytes, unparsed: like wrk, the load generator only checks the status, so
    /// on 2 shared cores its own JSON parsing does not take CPU from the server and database.
    async fn post(&self, path: &str, body: &Value, key: Option<String>) -> Result<Bytes, BoxError> {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base_url))
            .basic_auth(&self.key, Some(""));
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request
            .header("content-type", "application/json")
            .body(serde_json::to_vec(body)?)
            .send()
            .await?;
        checked("POST", path, response).await
    }

    async fn post_json(&self, path: &str, body: &Value) -> Result<Value, BoxError> {
        Ok(serde_json::from_slice(&self.post(path, body, None).await?)?)
    }

    async fn get(&self, path: &str) -> Result<Bytes, BoxError> {
        let response = self
            .http
            .get(format!("{}{path}", self.base_url))
            .basic_auth(&self.key, Some(""))
            .send()
            .await?;
        checked("GET", path, response).await
    }

    async fn grpc(&self, connections: usize) -> Result<Vec<Channel>, BoxError> {
        let mut channels = Vec::new();
        for _ in 0..connections {
            channels.push(
                Channel::from_shared(self.base_url.clone())?
                    .connect()
                    .await?,
            );
        }
        Ok(channels)
    }

    fn grpc_request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Ok(value) = format!("Bearer {}", self.key).parse() {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The same database, opened the way the server opens it (same durability settings).
async fn direct(database_url: &str) -> Result<DatabaseConnection, BoxError> {
    let mut options = ConnectOptions::new(database_url.to_owned());
    options.sqlx_logging(false);
    if database_url.starts_with("sqlite:") {
        options.max_connections(1).map_sqlx_sqlite_opts(|sqlite| {
            sqlite
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(30))
        });
    } else {
        options.max_connections(32);
    }
    Ok(Database::connect(options).await?)
}

/// A value bound to a baseline statement.
enum Bind {
    Int(i64),
    Text(String),
}

/// Baseline connections straight to the database, without a pool: sqlx's pool pings a
/// connection when it goes back (and, by default, before it is handed out), round trips the
/// database alone would not make (pgbench makes none).
enum DirectConnection {
    Postgres(sea_orm::sqlx::PgConnection),
    Sqlite(sea_orm::sqlx::SqliteConnection),
}

impl DirectConnection {
    async fn open(database_url: &str) -> Result<Self, BoxError> {
        use sea_orm::sqlx::{
            postgres::PgConnectOptions, sqlite::SqliteConnectOptions, ConnectOptions as _,
        };
        Ok(if database_url.starts_with("sqlite:") {
            let options = database_url
                .parse::<SqliteConnectOptions>()?
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(30));
            DirectConnection::Sqlite(options.connect().await?)
        } else {
            DirectConnection::Postgres(database_url.parse::<PgConnectOptions>()?.connect().await?)
        })
    }

    /// Runs `sql` (PostgreSQL's `$N` placeholders) and reads every row it returns.
    async fn run(&mut self, sql: &str, values: &[Bind]) -> Result<(), BoxError> {
        macro_rules! bound {
            ($sql:expr) => {{
                let mut query = sea_orm::sqlx::query($sql);
                for value in values {
                    query = match value {
                        Bind::Int(n) => query.bind(*n),
                        Bind::Text(text) => query.bind(text.as_str()),
                    };
                }
                query
            }};
        }
        match self {
            DirectConnection::Postgres(connection) => {
                bound!(sql).fetch_all(&mut *connection).await?;
            }
            DirectConnection::Sqlite(connection) => {
                let sql = question_marks(sql);
                bound!(&sql).fetch_all(&mut *connection).await?;
            }
        }
        Ok(())
    }
}

/// `connections` direct connections shared by the workers (worker `w` uses `w % connections`).
struct Direct(Vec<tokio::sync::Mutex<DirectConnection>>);

impl Direct {
    async fn open(database_url: &str, connections: usize) -> Result<Arc<Self>, BoxError> {
        let mut opened = Vec::new();
        for _ in 0..connections.max(1) {
            opened.push(tokio::sync::Mutex::new(
                DirectConnection::open(database_url).await?,
            ));
        }
        Ok(Arc::new(Direct(opened)))
    }

    /// Says goodbye to the database (a dropped connection would be logged as a lost client).
    async fn close(self: Arc<Self>) -> Result<(), BoxError> {
        use sea_orm::sqlx::Connection as _;
        let Ok(direct) = Arc::try_unwrap(self) else {
            return Ok(());
        };
        for connection in direct.0 {
            match connection.into_inner() {
                DirectConnection::Postgres(connection) => connection.close().await?,
                DirectConnection::Sqlite(connection) => connection.close().await?,
            }
        }
        Ok(())
    }

    async fn run(&self, worker: usize, sql: &str, values: &[Bind]) -> Result<(), BoxError> {
        self.0[worker % self.0.len()]
            .lock()
            .await
            .run(sql, values)
            .await
    }
}

/// PostgreSQL's `$N` placeholders, each used once and in order, as SQLite's `?`.
fn question_marks(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
            while chars.peek().is_some_and(char::is_ascii_digit) {
                chars.next();
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A statement written with PostgreSQL's `$N` placeholders, each used once and in order;
/// SQLite gets `?` in their place.
fn statement(db: &DatabaseConnection, sql: &str, values: Vec<sea_orm::Value>) -> Statement {
    let backend = db.get_database_backend();
    let sql = if backend == DbBackend::Sqlite {
        question_marks(sql)
    } else {
        sql.to_owned()
    };
    Statement::from_sql_and_values(backend, sql, values)
}

/// Bulk-loads `count` tasks for the account straight into the tables (and their counters).
/// Preloaded task i was last updated (and, every fourth, completed) at this plus i seconds:
/// its update times span days, so an update window covers whole hours of counters.
const PRELOAD_UPDATED_FROM: i64 = 1_700_100_000_000;

async fn preload(db: &DatabaseConnection, account_id: i64, count: u64) -> Result<(), BoxError> {
    if count == 0 {
        return Ok(());
    }
    let backend = db.get_database_backend();
    let series = if backend == DbBackend::Postgres {
        format!("SELECT i FROM generate_series(1, {count}) AS s(i)")
    } else {
        format!("WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {count}) SELECT i FROM s")
    };
    let hex = if backend == DbBackend::Postgres {
        "lpad(to_hex(i), 24, '0')"
    } else {
        "printf('%024x', i)"
    };
    let sql = format!(
        "INSERT INTO tasks (task_id, account_id, is_test, task_type, status, instruction, params, callback_url, metadata, \
         unique_id, tags, project, batch, response, callback_succeeded, audits, customer_review_status, \
         clear_unique_id_on_error, created_at, updated_at, completed_at, updated_hour) \
         SELECT {hex}, {account_id}, false, 'imageannotation', CASE WHEN i % 4 = 0 THEN 'completed' ELSE 'pending' END, \
         'Box', '{{\"attachment\":\"https://e.com/x.png\",\"geometries\":{{\"box\":{{}}}}}}', NULL, '{{}}', NULL, NULL, NULL, NULL, NULL, NULL, '[]', NULL, false, \
         1700000000000 + i, {PRELOAD_UPDATED_FROM} + i * 1000, \
         CASE WHEN i % 4 = 0 THEN {PRELOAD_UPDATED_FROM} + i * 1000 END, \
         ({PRELOAD_UPDATED_FROM} + i * 1000) / 3600000 FROM ({series}) AS series"
    );
    db.execute_unprepared(&sql).await?;
    // The hourly counters behind windowed totals, as migrations 6 and 10 fill them.
    let key = "account_id, is_test, '', '', task_type, status";
    let groups = "account_id, is_test, task_type, status";
    // The preloaded tasks only: the account also holds tasks created through the API.
    let scope = format!(
        "account_id = {account_id} AND created_at BETWEEN 1700000000001 AND {}",
        1_700_000_000_000 + count
    );
    for fill in [
        format!(
            "INSERT INTO task_hour_counts (account_id, is_test, project, batch, task_type, status, \
             created_hour, total) SELECT {key}, created_at / 3600000, COUNT(*) FROM tasks \
             WHERE {scope} GROUP BY {groups}, created_at / 3600000"
        ),
        format!(
            "INSERT INTO task_event_hour_counts (account_id, is_test, project, batch, task_type, \
             status, event, hour, total) SELECT {key}, 'completed', completed_at / 3600000, \
             COUNT(*) FROM tasks WHERE {scope} AND completed_at IS NOT NULL \
             GROUP BY {groups}, completed_at / 3600000"
        ),
        format!(
            "INSERT INTO task_event_hour_counts (account_id, is_test, project, batch, task_type, \
             status, event, hour, total) SELECT {key}, 'updated', hour, SUM(delta) FROM (\
             SELECT {groups}, updated_at / 3600000 AS hour, 1 AS delta FROM tasks WHERE {scope} \
             UNION ALL \
             SELECT {groups}, created_at / 3600000 AS hour, -1 AS delta FROM tasks WHERE {scope}) \
             AS shifts GROUP BY {groups}, hour HAVING SUM(delta) <> 0"
        ),
    ] {
        db.execute_unprepared(&fill).await?;
    }
    let counts = format!(
        "INSERT INTO task_counts (account_id, is_test, project, batch, task_type, status, total) \
         SELECT {account_id}, false, '', '', 'imageannotation', status, COUNT(*) FROM tasks \
         WHERE {scope} GROUP BY status \
         ON CONFLICT (account_id, is_test, project, batch, task_type, status, shard) DO UPDATE SET total = task_counts.total + excluded.total"
    );
    db.execute_unprepared(&counts).await?;
    Ok(())
}

struct Row {
    name: &'static str,
    measured: Measured,
    baseline: Option<(&'static str, f64)>,
}

async fn bench_database(
    args: &Args,
    binary: &PathBuf,
    label: &str,
    database_url: &str,
) -> Result<(String, u64), BoxError> {
    eprintln!("== {label}");
    let server = Arc::new(Server::start(binary, database_url).await?);
    let db = direct(database_url).await?;
    let account_id: i64 = {
        let row = db
            .query_one(statement(
                &db,
                "SELECT id FROM accounts WHERE name = $1",
                vec!["bench".into()],
            ))
            .await?
            .ok_or("no bench account")?;
        row.try_get("", "id")?
    };
    let (concurrency, warmup, duration) = (args.concurrency, args.warmup, args.duration);
    let mut rows: Vec<Row> = Vec::new();

    // Baselines first, with the server idle: the database alone.
    db.execute_unprepared("CREATE TABLE bench_baseline AS SELECT * FROM tasks WHERE 1 = 0")
        .await?;
    let insert_sql = "INSERT INTO bench_baseline (task_id, account_id, is_test, task_type, status, instruction, params, metadata, audits, clear_unique_id_on_error, created_at, updated_at) VALUES ($1, $2, false, 'imageannotation', 'pending', $3, $4, '{}', '[]', false, $5, $6)";
    let params_text = image_task(0).to_string();
    let db = Arc::new(db);
    let counter = Arc::new(AtomicU64::new(0));
    // One connection per worker, as pgbench's clients; SQLite's writes all go through one (its
    // single writer), its reads through one per worker (WAL readers run side by side).
    let sqlite = database_url.starts_with("sqlite:");
    let writers = Direct::open(database_url, if sqlite { 1 } else { concurrency }).await?;
    let readers = if sqlite {
        Direct::open(database_url, concurrency).await?
    } else {
        writers.clone()
    };
    eprintln!("  baseline: one insert per transaction");
    let insert_base = {
        let (writers, counter, params_text) =
            (writers.clone(), counter.clone(), params_text.clone());
        run(concurrency, warmup, duration, move |w, _| {
            let (writers, params_text) = (writers.clone(), params_text.clone());
            let n = counter.fetch_add(1, Ordering::Relaxed);
            async move {
                let at = n as i64;
                writers
                    .run(
                        w,
                        insert_sql,
                        &[
                            Bind::Text(format!("{n:024x}")),
                            Bind::Int(account_id),
                            Bind::Text("Box".to_owned()),
                            Bind::Text(params_text),
                            Bind::Int(at),
                            Bind::Int(at),
                        ],
                    )
                    .await?;
                Ok(())
            }
        })
        .await
        .rate()
    };

    let bulk = bench_bulk(args, binary, database_url, &server, &db, account_id).await?;

    // Tasks to read and mutate, created through the API, then the bulk load.
    let mut ids = Vec::new();
    for n in 0..200u64 {
        let task = server
            .post_json("/v1/task/imageannotation", &image_task(n))
            .await?;
        ids.push(task["task_id"].as_str().unwrap_or_default().to_owned());
    }
    let ids = Arc::new(ids);
    eprintln!("  preloading {} tasks", args.preload);
    preload(&db, account_id, args.preload).await?;
    db.execute_unprepared("ANALYZE").await.ok();

    eprintln!("  baseline: primary-key select");
    let select_base = {
        let (readers, ids) = (readers.clone(), ids.clone());
        run(concurrency, warmup, duration, move |w, n| {
            let (readers, id) = (
                readers.clone(),
                ids[(w * 7 + n as usize) % ids.len()].clone(),
            );
            async move {
                readers
                    .run(
                        w,
                        "SELECT * FROM tasks WHERE task_id = $1 AND account_id = $2",
                        &[Bind::Text(id), Bind::Int(account_id)],
                    )
                    .await?;
                Ok(())
            }
        })
        .await
        .rate()
    };
    eprintln!("  baseline: keyset page of 100");
    let page_base = {
        let readers = readers.clone();
        run(concurrency, warmup, duration, move |w, _| {
            let readers = readers.clone();
            async move {
                readers.run(w, "SELECT * FROM tasks WHERE account_id = $1 AND is_test = false ORDER BY created_at DESC, task_id DESC LIMIT 101", &[Bind::Int(account_id)]).await?;
                Ok(())
            }
        })
        .await
        .rate()
    };
    // Closed before the scenarios, so the server has the database to itself.
    readers.close().await?;
    writers.close().await?;

    macro_rules! scenario {
        ($name:expr, $baseline:expr, $op:expr) => {{
            let name: &'static str = $name;
            if args.only.is_empty() || args.only.iter().any(|part| name.contains(part.as_str())) {
                eprintln!("  {name}");
                let measured = run(concurrency, warmup, duration, $op).await;
                rows.push(Row {
                    name,
                    measured,
                    baseline: $baseline,
                });
            }
        }};
    }
    let seq = Arc::new(AtomicU64::new(1_000_000));
    // Each gRPC scenario runs right after its REST twin, so the two are compared on the same
    // database state and the same moment of this shared machine.
    let clients = Arc::new(server.grpc(4).await?);
    let s = server.clone();
    scenario!(
        "create (REST)",
        Some(("insert/txn", insert_base)),
        move |_, _| {
            let s = s.clone();
            async move {
                s.post("/v1/task/imageannotation", &image_task(7), None)
                    .await
                    .map(drop)
            }
        }
    );
    let (s, c) = (server.clone(), clients.clone());
    scenario!(
        "create (gRPC)",
        Some(("insert/txn", insert_base)),
        move |w, _| {
            let (s, channel) = (s.clone(), c[w % c.len()].clone());
            async move {
                let fields = image_task(3);
                let params = annotask::proto::struct_from_json(fields.as_object().ok_or("object")?);
                let request = CreateTaskRequest {
                    r#type: "imageannotation".into(),
                    params: Some(params),
                    ..Default::default()
                };
                grpc_call(
                    channel,
                    "/annotask.v1.TaskService/CreateTask",
                    s.grpc_request(request),
                )
                .await
            }
        }
    );
    let (s, q) = (server.clone(), seq.clone());
    scenario!(
        "create with unique_id",
        Some(("insert/txn", insert_base)),
        move |_, _| {
            let (s, n) = (s.clone(), q.fetch_add(1, Ordering::Relaxed));
            async move {
                let mut body = image_task(n);
                body["unique_id"] = json!(format!("bench-{n}"));
                s.post("/v1/task/imageannotation", &body, None)
                    .await
                    .map(drop)
            }
        }
    );
    let (s, q) = (server.clone(), seq.clone());
    scenario!(
        "create with Idempotency-Key",
        Some(("insert/txn", insert_base)),
        move |_, _| {
            let (s, n) = (s.clone(), q.fetch_add(1, Ordering::Relaxed));
            async move {
                s.post(
                    "/v1/task/imageannotation",
                    &image_task(n),
                    Some(format!("bench-key-{n}")),
                )
                .await
                .map(drop)
            }
        }
    );
    let (s, i) = (server.clone(), ids.clone());
    scenario!(
        "get (REST)",
        Some(("PK select", select_base)),
        move |w, n| {
            let (s, id) = (s.clone(), i[(w * 7 + n as usize) % i.len()].clone());
            async move { s.get(&format!("/v1/task/{id}")).await.map(drop) }
        }
    );
    let (s, c, i) = (server.clone(), clients.clone(), ids.clone());
    scenario!(
        "get (gRPC)",
        Some(("PK select", select_base)),
        move |w, n| {
            let (s, channel, id) = (
                s.clone(),
                c[w % c.len()].clone(),
                i[(w * 7 + n as usize) % i.len()].clone(),
            );
            async move {
                grpc_call(
                    channel,
                    "/annotask.v1.TaskService/GetTask",
                    s.grpc_request(GetTaskRequest { task_id: id }),
                )
                .await
            }
        }
    );
    let s = server.clone();
    scenario!(
        "list, first page of 100",
        Some(("keyset page", page_base)),
        move |_, _| {
            let s = s.clone();
            async move { s.get("/v1/tasks?limit=100").await.map(drop) }
        }
    );
    let (s, c) = (server.clone(), clients.clone());
    scenario!(
        "list, first page of 100 (gRPC)",
        Some(("keyset page", page_base)),
        move |w, _| {
            let (s, channel) = (s.clone(), c[w % c.len()].clone());
            async move {
                grpc_call(
                    channel,
                    "/annotask.v1.TaskService/ListTasks",
                    s.grpc_request(ListTasksRequest {
                        limit: 100,
                        ..Default::default()
                    }),
                )
                .await
            }
        }
    );
    let s = server.clone();
    let deep_token = {
        // Halfway down the preloaded tasks, as a client paging by next_token would get there.
        let middle = args.preload / 2;
        let created_at = chrono::DateTime::from_timestamp_millis(1_700_000_000_000 + middle as i64)
            .unwrap_or_default()
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string();
        let token =
            json!({"task_id": format!("{middle:024x}"), "created_at": created_at}).to_string();
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, token)
    };
    scenario!(
        "list, page at depth",
        Some(("keyset page", page_base)),
        move |_, _| {
            let (s, token) = (s.clone(), deep_token.clone());
            async move {
                s.get(&format!("/v1/tasks?limit=100&next_token={token}"))
                    .await
                    .map(drop)
            }
        }
    );
    let s = server.clone();
    scenario!(
        "list, status + tag filter",
        Some(("keyset page", page_base)),
        move |_, _| {
            let s = s.clone();
            async move {
                s.get("/v1/tasks?limit=100&status=pending&tags=even")
                    .await
                    .map(drop)
            }
        }
    );
    let s = server.clone();
    let updated_after = {
        // Tasks updated after the middle preloaded task's update, 40 minutes into an hour: the
        // newer half, whose total is half a million tasks at the default preload.
        let middle = PRELOAD_UPDATED_FROM + (args.preload / 2) as i64 * 1000;
        chrono::DateTime::from_timestamp_millis(middle - middle % 3_600_000 + 40 * 60_000)
            .unwrap_or_default()
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string()
    };
    scenario!(
        "list, update window",
        Some(("keyset page", page_base)),
        move |_, _| {
            let (s, after) = (s.clone(), updated_after.clone());
            async move {
                s.get(&format!("/v1/tasks?limit=100&updated_after={after}"))
                    .await
                    .map(drop)
            }
        }
    );
    let (s, i) = (server.clone(), ids.clone());
    scenario!(
        "set metadata",
        Some(("insert/txn", insert_base)),
        move |w, n| {
            let (s, id) = (s.clone(), i[(w * 7 + n as usize) % i.len()].clone());
            async move {
                s.post(
                    &format!("/v1/task/{id}/setMetadata"),
                    &json!({"n": n}),
                    None,
                )
                .await
                .map(drop)
            }
        }
    );
    let (s, quarter) = (server.clone(), (args.preload / 4).max(1));
    scenario!("cancel", Some(("insert/txn", insert_base)), move |w, n| {
        let s = s.clone();
        // Preloaded task i is pending when i % 4 != 0; a repeat cancel is an idempotent 200.
        let i = 4 * ((((w as u64) << 40) | n) % quarter) + 2;
        async move {
            s.post(&format!("/v1/task/{i:024x}/cancel"), &json!({}), None)
                .await
                .map(drop)
        }
    });
    let s = server.clone();
    scenario!(
        "claim + complete",
        Some(("insert/txn", insert_base)),
        move |_, _| {
            let s = s.clone();
            async move {
                let claimed = s
                    .post_json("/v1/work/claim", &json!({"lease_seconds": 60}))
                    .await?;
                let Some(lease) = claimed["leases"].get(0) else {
                    return Err("queue empty".into());
                };
                let id = lease["task"]["task_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                s.post(
                    &format!("/v1/task/{id}/complete"),
                    &json!({"lease_token": lease["lease_token"], "response": {"ok": true}}),
                    None,
                )
                .await
                .map(drop)
            }
        }
    );
    let (s, i) = (server.clone(), ids.clone());
    scenario!(
        "mixed (70% get, 20% list, 10% create)",
        None,
        move |w, n| {
            let (s, id) = (s.clone(), i[(w * 7 + n as usize) % i.len()].clone());
            async move { mixed_request(&s, &id, n).await }
        }
    );

    let rss = server.peak_rss_mib();
    let soak = soak(args, &server, &ids).await;
    db.execute_unprepared("DROP TABLE bench_baseline")
        .await
        .ok();
    let mut table = format!(
        "### {label}\n\n| scenario | ops/s | p50 ms | p99 ms | max ms | errors | baseline | baseline ops/s | ratio |\n|---|---|---|---|---|---|---|---|---|\n"
    );
    for row in &rows {
        let m = &row.measured;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let (base_name, base_rate, ratio) = match row.baseline {
            Some((name, rate)) => (
                name,
                format!("{rate:.0}"),
                format!("{:.2}×", m.rate() / rate),
            ),
            None => ("—", "—".to_owned(), "—".to_owned()),
        };
        let _ = writeln!(
            table,
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} |",
            row.name,
            m.rate(),
            ms(m.percentile(0.5)),
            ms(m.percentile(0.99)),
            ms(m.latencies.last().copied().unwrap_or_default()),
            m.errors,
            base_name,
            base_rate,
            ratio
        );
    }
    let _ = writeln!(
        table,
        "\nServer peak RSS: {}.\n",
        rss.map_or("unknown".to_owned(), |mib| format!("{mib:.1} MiB"))
    );
    table.push_str(&bulk);
    table.push_str(&soak);
    eprintln!("{table}");
    let errors = rows.iter().map(|row| row.measured.errors).sum();
    Ok((table, errors))
}

/// One request of the mixed load: 70% get, 20% list (first page of 100), 10% create.
async fn mixed_request(server: &Server, id: &str, n: u64) -> Result<(), BoxError> {
    match n % 10 {
        0 => server
            .post("/v1/task/imageannotation", &image_task(n), None)
            .await
            .map(drop),
        1 | 2 => server.get("/v1/tasks?limit=100").await.map(drop),
        _ => server.get(&format!("/v1/task/{id}")).await.map(drop),
    }
}

/// `--soak`: the mixed load from 256 connections (one per worker), RSS sampled ten times.
async fn soak(args: &Args, server: &Arc<Server>, ids: &Arc<Vec<String>>) -> String {
    const CONNECTIONS: usize = 256;
    if args.soak.is_zero() {
        return String::new();
    }
    eprintln!(
        "  soak: mixed load from {CONNECTIONS} connections for {:?}",
        args.soak
    );
    let before = server.rss_mib();
    let slice = args.soak / 10;
    let mut samples = Vec::new();
    let load = {
        let (s, i) = (server.clone(), ids.clone());
        tokio::spawn(run(CONNECTIONS, Duration::ZERO, args.soak, move |w, n| {
            let (s, id) = (s.clone(), i[(w * 7 + n as usize) % i.len()].clone());
            async move { mixed_request(&s, &id, n).await }
        }))
    };
    for _ in 0..10 {
        tokio::time::sleep(slice).await;
        samples.push(server.rss_mib().unwrap_or(0.0));
    }
    let measured = load.await.ok();
    let mib = |value: Option<f64>| value.map_or("unknown".to_owned(), |v| format!("{v:.1} MiB"));
    let section = format!(
        "Soak: the mixed load from {CONNECTIONS} connections for {:?}: {} requests/s, {} errors; \
         RSS before {}, then every {:?}: {} (peak {}).\n\n",
        args.soak,
        measured.as_ref().map_or(0.0, Measured::rate).round(),
        measured.as_ref().map_or(0, |m| m.errors),
        mib(before),
        slice,
        samples
            .iter()
            .map(|v| format!("{v:.1}"))
            .collect::<Vec<_>>()
            .join(", "),
        mib(server.peak_rss_mib()),
    );
    eprintln!("{section}");
    section
}

/// One NDJSON import of `--import-tasks` tasks (each with a unique_id) into an empty account,
/// then one export of them, against the database doing the same writes and reads alone:
/// multi-row INSERTs of 500 rows per transaction, and keyset pages of 500.
async fn bench_bulk(
    args: &Args,
    binary: &PathBuf,
    database_url: &str,
    server: &Server,
    db: &DatabaseConnection,
    scratch_account_id: i64,
) -> Result<String, BoxError> {
    const CHUNK: u64 = 500;
    let count = args.import_tasks;
    if count == 0 {
        return Ok(String::new());
    }
    let key = create_key(binary, database_url, "bulk")?;
    // Into the tasks table itself (the bench account's test world, which no scenario reads),
    // so the baseline maintains the same indexes the import does.
    eprintln!("  baseline: multi-row inserts, {CHUNK} rows per transaction");
    let baseline_rows = count.min(200_000);
    let params_text = image_task(0).to_string().replace('\'', "''");
    let started = Instant::now();
    let mut n = 0;
    while n < baseline_rows {
        let rows: Vec<String> = (n..(n + CHUNK).min(baseline_rows))
            .map(|i| {
                format!(
                    "('{:024x}', {scratch_account_id}, true, 'imageannotation', 'pending', 'Box', '{params_text}', '{{}}', '[]', false, {i}, {i}, 'bulk-{i}')",
                    (1u64 << 60) + i
                )
            })
            .collect();
        db.execute_unprepared(&format!(
            "INSERT INTO tasks (task_id, account_id, is_test, task_type, status, instruction, params, metadata, audits, clear_unique_id_on_error, created_at, updated_at, unique_id) VALUES {}",
            rows.join(", ")
        ))
        .await?;
        n += CHUNK;
    }
    let insert_rate = baseline_rows as f64 / started.elapsed().as_secs_f64();

    eprintln!("  import: {count} tasks in one NDJSON upload");
    let lines = futures_util::stream::iter((0..count).step_by(1000).map(move |from| {
        let mut chunk = String::new();
        for n in from..(from + 1000).min(count) {
            let mut task = image_task(n);
            task["type"] = json!("imageannotation");
            task["unique_id"] = json!(format!("bulk-{n}"));
            chunk.push_str(&task.to_string());
            chunk.push('\n');
        }
        Ok::<_, std::io::Error>(chunk)
    }));
    let started = Instant::now();
    let mut response = server
        .http
        .post(format!("{}/v1/tasks/import", server.base_url))
        .basic_auth(&key, Some(""))
        .header("content-type", "application/x-ndjson")
        .body(reqwest::Body::wrap_stream(lines))
        .send()
        .await?;
    let mut tail = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        tail.extend_from_slice(&chunk);
        if tail.len() > 4096 {
            tail.drain(..tail.len() - 4096);
        }
    }
    let import_elapsed = started.elapsed();
    let import_rss = server.peak_rss_mib();
    let summary = String::from_utf8_lossy(&tail)
        .lines()
        .last()
        .and_then(|line| serde_json::from_str::<Value>(line).ok())
        .and_then(|line| line.get("summary").cloned())
        .ok_or("the import ended without a summary")?;
    if summary["created"].as_u64() != Some(count) {
        return Err(format!("the import created {} of {count}", summary["created"]).into());
    }
    let import_rate = count as f64 / import_elapsed.as_secs_f64();

    eprintln!("  export: the same tasks");
    let started = Instant::now();
    let mut response = server
        .http
        .get(format!("{}/v1/tasks/export", server.base_url))
        .basic_auth(&key, Some(""))
        .send()
        .await?;
    let mut exported = 0u64;
    while let Some(chunk) = response.chunk().await? {
        exported += chunk.iter().filter(|&&byte| byte == b'\n').count() as u64;
    }
    let export_rate = exported as f64 / started.elapsed().as_secs_f64();
    if exported != count {
        return Err(format!("the export gave {exported} of {count} tasks").into());
    }
    eprintln!("  baseline: keyset pages of {CHUNK}");
    db.execute_unprepared("ANALYZE").await.ok();
    let account_id: i64 = db
        .query_one(statement(
            db,
            "SELECT id FROM accounts WHERE name = $1",
            vec!["bulk".into()],
        ))
        .await?
        .ok_or("no bulk account")?
        .try_get("", "id")?;
    let started = Instant::now();
    let mut read = 0u64;
    let mut after: Option<(i64, String)> = None;
    loop {
        let rows = match &after {
            None => db.query_all(statement(db, &format!("SELECT * FROM tasks WHERE account_id = $1 AND is_test = false ORDER BY created_at DESC, task_id DESC LIMIT {CHUNK}"), vec![account_id.into()])).await?,
            Some((at, id)) => db.query_all(statement(db, &format!("SELECT * FROM tasks WHERE account_id = $1 AND is_test = false AND (created_at, task_id) < ($2, $3) ORDER BY created_at DESC, task_id DESC LIMIT {CHUNK}"), vec![account_id.into(), (*at).into(), id.clone().into()])).await?,
        };
        read += rows.len() as u64;
        let Some(last) = rows.last() else { break };
        after = Some((
            last.try_get("", "created_at")?,
            last.try_get("", "task_id")?,
        ));
        if (rows.len() as u64) < CHUNK {
            break;
        }
    }
    let page_rate = read as f64 / started.elapsed().as_secs_f64();

    let section = format!(
        "Bulk, {count} tasks with unique_ids into an empty account (one client):\n\n\
         | scenario | tasks/s | baseline | baseline rows/s | ratio |\n|---|---|---|---|---|\n\
         | import (NDJSON, {:.1} s) | {import_rate:.0} | multi-row INSERT, {CHUNK} rows/txn ({baseline_rows} rows) | {insert_rate:.0} | {:.2}× |\n\
         | export (NDJSON) | {export_rate:.0} | keyset pages of {CHUNK} | {page_rate:.0} | {:.2}× |\n\n\
         Server peak RSS after the import: {}.\n\n",
        import_elapsed.as_secs_f64(),
        import_rate / insert_rate,
        export_rate / page_rate,
        import_rss.map_or("unknown".to_owned(), |mib| format!("{mib:.1} MiB")),
    );
    eprintln!("{section}");
    Ok(section)
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    format!("{cpus} cores ({model})")
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let binary = std::env::current_exe()?
        .parent()
        .ok_or("no directory beside the benchmark binary")?
        .join("annotask");
    if !binary.exists() {
        return Err(format!(
            "{} not found: build it first (cargo build --release)",
            binary.display()
        )
        .into());
    }
    let mut report = String::new();
    let mut total_errors = 0;
    if !args.no_sqlite {
        let path = std::env::temp_dir().join(format!("annotask-bench-{}.db", std::process::id()));
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let result = bench_database(&args, &binary, "SQLite (WAL, synchronous=FULL)", &url).await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        let (table, errors) = result?;
        report.push_str(&table);
        total_errors += errors;
    }
    if let Some(admin_url) = &args.postgres_url {
        let name = format!("annotask_bench_{}", std::process::id());
        let admin = Database::connect(admin_url.as_str()).await?;
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await?;
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(base, _)| base);
        let result = bench_database(&args, &binary, "PostgreSQL", &format!("{base}/{name}")).await;
        admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .ok();
        let (table, errors) = result?;
        report.push_str(&table);
        total_errors += errors;
    }
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default();
    let header = format!(
        "# Benchmarks\n\nMachine: {}. Date: {}. Commit: {}. Concurrency {}, warm-up {:?}, {:?} per scenario, {} tasks preloaded.\nServer, load generator and database share the machine. Baselines are the same statements sent straight to the same database with the same durability and concurrency; ratio = annotask / baseline.\n\n",
        machine(),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        commit,
        args.concurrency,
        args.warmup,
        args.duration,
        args.preload
    );
    std::fs::write(&args.output, format!("{header}{report}"))?;
    eprintln!("wrote {}", args.output.display());
    if args.fail_on_errors && total_errors > 0 {
        return Err(format!("{total_errors} requests failed").into());
    }
    Ok(())
}

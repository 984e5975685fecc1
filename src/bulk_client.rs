//! `annotask import FILE` and `annotask export`: bulk transfers against a running server's REST
//! API, for people at a terminal (a progress bar on stderr, a summary at the end).

use std::{io::Write, path::PathBuf, time::Duration};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;

use crate::server::BoxError;

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The annotask server's base URL.
    #[arg(long, env = "ANNOTASK_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The API key to act as (sent as HTTP Basic user name, as Scale's clients do).
    #[arg(long, env = "ANNOTASK_API_KEY", hide_env_values = true)]
    pub api_key: String,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// NDJSON file: one task per line, each the body of `POST /v1/task/{type}` plus `"type"`.
    pub file: PathBuf,
    #[command(flatten)]
    pub server: ServerArgs,
    /// Makes a retry of the whole import replay its summary instead of importing again.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Also write every line's answer (NDJSON) to this file.
    #[arg(long)]
    pub answers: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Where to write the tasks (NDJSON); `-` for stdout.
    #[arg(long, short, default_value = "-")]
    pub output: String,
    /// The list's filters, as `key=value` query parameters (repeatable): `status=completed`,
    /// `project=p`, `tags=a`, `start_time=2026-01-01`, `next_token=<last task_id>`.
    #[arg(long = "filter", value_name = "KEY=VALUE")]
    pub filters: Vec<String>,
}

fn bar(total: u64, unit: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    let template = format!(
        "{{elapsed_precise}} [{{bar:40}}] {{pos}}/{{len}} {unit} ({{per_sec}}, eta {{eta}})"
    );
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// What the server said when it refused the whole request.
async fn refusal(response: reqwest::Response) -> BoxError {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|json| json["error"].as_str().map(str::to_owned))
        .unwrap_or(body);
    format!("the server answered {status}: {message}").into()
}

pub async fn import(args: ImportArgs) -> Result<(), BoxError> {
    let lines = count_lines(&args.file).await?;
    let file = tokio::fs::File::open(&args.file)
        .await
        .map_err(|err| format!("cannot read {}: {err}", args.file.display()))?;
    let mut request = reqwest::Client::new()
        .post(format!(
            "{}/v1/tasks/import",
            args.server.url.trim_end_matches('/')
        ))
        .basic_auth(&args.server.api_key, Some(""))
        .header("content-type", "application/x-ndjson")
        .body(reqwest::Body::wrap_stream(ReaderStream::new(file)));
    if let Some(key) = &args.idempotency_key {
        request = request.header("Idempotency-Key", key);
    }
    let mut response = request.send().await?;
    if !response.status().is_success() {
        return Err(refusal(response).await);
    }
    let mut answers = match &args.answers {
        Some(path) => Some(tokio::fs::File::create(path).await?),
        None => None,
    };
    let progress = bar(lines, "lines");
    let mut pending = Vec::new();
    let mut last = Value::Null;
    let mut errors = 0_u64;
    while let Some(chunk) = response.chunk().await? {
        if let Some(answers) = &mut answers {
            answers.write_all(&chunk).await?;
        }
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|&byte| byte == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let Ok(answer) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            if answer["result"] == "error" {
                errors += 1;
                if errors <= 20 {
                    // `suspend`, not `println`: a hidden bar (stderr not a terminal) drops printlns.
                    progress.suspend(|| {
                        eprintln!(
                            "line {}: {} {}",
                            answer["line"], answer["status_code"], answer["error"]
                        );
                    });
                }
            }
            if answer.get("line").is_some() {
                progress.inc(1);
            }
            last = answer;
        }
    }
    progress.finish_and_clear();
    if let Some(mut answers) = answers {
        answers.flush().await?;
    }
    if errors > 20 {
        eprintln!("… and {} more error lines", errors - 20);
    }
    match last.get("summary") {
        Some(summary) => {
            println!(
                "imported {}: {} lines, {} created, {} duplicate, {} error",
                args.file.display(),
                summary["lines"],
                summary["created"],
                summary["duplicate"],
                summary["error"]
            );
            Ok(())
        }
        // The import broke off: what was answered is stored; running it again completes it.
        None => Err(format!(
            "the import stopped before its end ({}); lines answered so far are stored, and \
             running the same import again adds only what is missing (lines with a unique_id)",
            last["error"].as_str().unwrap_or("the connection closed")
        )
        .into()),
    }
}

async fn count_lines(path: &PathBuf) -> Result<u64, BoxError> {
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    let mut buffer = vec![0u8; 1 << 16];
    let mut lines = 0;
    let mut last = b'\n';
    loop {
        let read = file.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        lines += buffer[..read].iter().filter(|&&byte| byte == b'\n').count() as u64;
        last = buffer[read - 1];
    }
    Ok(lines + u64::from(last != b'\n'))
}

pub async fn export(args: ExportArgs) -> Result<(), BoxError> {
    let base = args.server.url.trim_end_matches('/');
    let mut query = Vec::new();
    for filter in &args.filters {
        let (key, value) = filter
            .split_once('=')
            .ok_or_else(|| format!("--filter '{filter}' is not KEY=VALUE"))?;
        query.push((key.to_owned(), value.to_owned()));
    }
    let client = reqwest::Client::new();
    // The list's total (same filters) sizes the progress bar.
    let mut count_query: Vec<_> = query
        .iter()
        .filter(|(key, _)| key != "next_token")
        .cloned()
        .collect();
    count_query.push(("limit".to_owned(), "1".to_owned()));
    let total = client
        .get(format!("{base}/v1/tasks"))
        .basic_auth(&args.server.api_key, Some(""))
        .query(&count_query)
        .send()
        .await?
        .bytes()
        .await
        .ok()
        .and_then(|body| serde_json::from_slice::<Value>(&body).ok())
        .and_then(|page| page["total"].as_u64())
        .unwrap_or(0);
    let mut response = client
        .get(format!("{base}/v1/tasks/export"))
        .basic_auth(&args.server.api_key, Some(""))
        .query(&query)
        .send()
        .await?;
    if !response.status().is_success() {
        return Err(refusal(response).await);
    }
    let mut output: Box<dyn Write + Send> = if args.output == "-" {
        Box::new(std::io::BufWriter::new(std::io::stdout()))
    } else {
        Box::new(std::io::BufWriter::new(std::fs::File::create(
            &args.output,
        )?))
    };
    let progress = bar(total, "tasks");
    let mut tasks = 0_u64;
    let mut last_line = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        output.write_all(&chunk)?;
        let lines = chunk.iter().filter(|&&byte| byte == b'\n').count() as u64;
        tasks += lines;
        progress.inc(lines);
        if let Some(start) = chunk[..chunk.len().saturating_sub(1)]
            .iter()
            .rposition(|&byte| byte == b'\n')
        {
            last_line.clear();
            last_line.extend_from_slice(&chunk[start + 1..]);
        } else {
            last_line.extend_from_slice(&chunk);
        }
    }
    output.flush()?;
    progress.finish_and_clear();
    // A failure after the first task ends the stream with an error line instead of a task.
    if let Ok(last) = serde_json::from_slice::<Value>(&last_line) {
        if last.get("task_id").is_none() && last.get("error").is_some() {
            return Err(format!(
                "the export stopped early: {}; resume with --filter next_token=<last task_id>",
                last["error"]
            )
            .into());
        }
    }
    eprintln!("exported {tasks} tasks");
    Ok(())
}

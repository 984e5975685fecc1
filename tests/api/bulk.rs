//! Bulk import and export (SPEC §12) over REST and gRPC, on both backends: per-line outcomes
//! in order, re-imports that create nothing, Idempotency-Key replays, a client that uploads
//! everything before reading, a crash mid-import, and exports equal to what GET returns.

use std::{
    collections::HashMap,
    io::{Read, Write},
    time::Duration,
};

use annotask::proto::{self, import_tasks_response::Answer, CreateTaskRequest};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::{
    backend_tests,
    grpc::{assert_same_task, image_params, to_struct},
    helpers::{Backend, TestApp},
    process::ServerProcess,
};

fn image_line(n: usize, unique_id: Option<&str>) -> Value {
    let mut line = json!({
        "type": "imageannotation",
        "instruction": "Draw a box around each car",
        "attachment": format!("https://example.com/{n}.png"),
        "geometries": {"box": {"objects_to_annotate": ["car"]}},
        "metadata": {"n": n},
        "tags": ["bulk", format!("t{}", n % 3)],
    });
    if let Some(unique_id) = unique_id {
        line["unique_id"] = json!(unique_id);
    }
    line
}

fn ndjson(lines: &[String]) -> String {
    lines.join("\n") + "\n"
}

/// Posts an NDJSON import; returns the status, headers' replay mark and the answer lines.
async fn import_as(
    app: &TestApp,
    base_url: &str,
    body: String,
    key: Option<&str>,
) -> (StatusCode, bool, Vec<Value>) {
    let mut request = app
        .http
        .post(format!("{base_url}/v1/tasks/import"))
        .basic_auth(&app.api_key, Some(""))
        .header("content-type", "application/x-ndjson")
        .body(body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.expect("import sent");
    let status = response.status();
    let replayed = response.headers().contains_key("idempotent-replayed");
    let text = response.text().await.expect("import answer read");
    let lines = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}")))
        .collect();
    (status, replayed, lines)
}

async fn import(app: &TestApp, body: String) -> Vec<Value> {
    let (status, _, lines) = import_as(app, &app.base_url, body, None).await;
    assert_eq!(status, StatusCode::OK);
    lines
}

async fn export(app: &TestApp, query: &str) -> Vec<Value> {
    let response = app
        .request(Method::GET, &format!("/v1/tasks/export{query}"))
        .send()
        .await
        .expect("export sent");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let text = response.text().await.expect("export read");
    text.lines()
        .map(|line| serde_json::from_str(line).expect("export line is JSON"))
        .collect()
}

backend_tests!(
    an_import_answers_every_line_in_order_and_a_reimport_creates_nothing,
    an_import_key_replays_the_summary_and_refuses_another_file,
    an_import_into_a_batch_inherits_the_project_and_counts_in_the_batch,
    a_client_that_uploads_everything_before_reading_still_gets_every_answer,
    an_export_yields_every_task_as_get_returns_it_and_resumes_after_a_task,
    grpc_import_and_export_give_the_same_answers_as_rest,
    a_slow_senders_lines_are_answered_before_the_input_ends,
    a_unique_id_repeated_across_chunks_is_a_duplicate_of_the_earlier_line,
);

async fn an_import_answers_every_line_in_order_and_a_reimport_creates_nothing(app: TestApp) {
    let mut lines: Vec<String> = (1..=300)
        .map(|n| image_line(n, Some(&format!("u-{}", n % 250))).to_string())
        .collect();
    // Line numbers count every physical line, blank ones included.
    lines.insert(4, "this is not json".to_owned());
    lines.insert(9, String::new());
    lines.insert(14, json!({"instruction": "no type"}).to_string());
    lines.insert(
        19,
        json!({"type": "imageannotation", "instruction": "x"}).to_string(),
    );
    lines.insert(
        24,
        json!({"type": "nosuchtype", "instruction": "x"}).to_string(),
    );
    lines.insert(29, image_line(999, None).to_string());
    let first = import(&app, ndjson(&lines)).await;

    let (results, summary) = first.split_at(first.len() - 1);
    assert_eq!(
        summary[0]["summary"],
        json!({"lines": 305, "created": 251, "duplicate": 50, "error": 4})
    );
    let numbers: Vec<u64> = results
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (1..=306).filter(|&n| n != 10).collect();
    assert_eq!(
        numbers, expected,
        "one answer per non-blank line, in input order"
    );
    let by_line: HashMap<u64, &Value> = results
        .iter()
        .map(|r| (r["line"].as_u64().unwrap(), r))
        .collect();
    for (line, message) in [
        (5, "not valid JSON"),
        (15, "Missing required parameter: 'type'"),
        (20, "attachment"),
        (25, "Unknown task type"),
    ] {
        let answer = by_line[&line];
        assert_eq!(answer["result"], "error", "{answer}");
        assert_eq!(answer["status_code"], 400, "{answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(message),
            "line {line}: {answer}"
        );
    }
    // What a single create answers for the same body.
    let (status, single) = app
        .post("/v1/task/imageannotation", &json!({"instruction": "x"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(by_line[&20]["error"], single["error"]);

    // Every `created` line names a stored task with the line's content; every `duplicate`
    // names the task created for the same unique_id earlier in the file.
    let mut holder_of: HashMap<String, String> = HashMap::new();
    for (index, answer) in results.iter().enumerate() {
        let line_number = answer["line"].as_u64().unwrap() as usize;
        let sent: Value = match serde_json::from_str(&lines[line_number - 1]) {
            Ok(sent) => sent,
            Err(_) => continue,
        };
        match answer["result"].as_str().unwrap() {
            "created" => {
                let id = answer["task_id"].as_str().unwrap();
                let (status, task) = app.get(&format!("/v1/task/{id}")).await;
                assert_eq!(status, StatusCode::OK);
                assert_eq!(task["params"]["attachment"], sent["attachment"]);
                assert_eq!(task["metadata"], sent["metadata"]);
                assert_eq!(task["tags"], sent["tags"]);
                if let Some(unique_id) = sent["unique_id"].as_str() {
                    holder_of.insert(unique_id.to_owned(), id.to_owned());
                }
            }
            "duplicate" => {
                let unique_id = sent["unique_id"].as_str().unwrap();
                assert_eq!(
                    answer["task_id"].as_str(),
                    holder_of.get(unique_id).map(String::as_str),
                    "answer {index}"
                );
            }
            "error" => {}
            other => panic!("unexpected result {other}"),
        }
    }

    // The same file again: nothing new, except the one line without a unique_id.
    let second = import(&app, ndjson(&lines)).await;
    assert_eq!(
        second.last().unwrap()["summary"],
        json!({"lines": 305, "created": 1, "duplicate": 300, "error": 4})
    );
    for answer in &second[..second.len() - 1] {
        if answer["result"] == "duplicate" {
            let line_number = answer["line"].as_u64().unwrap() as usize;
            let sent: Value = serde_json::from_str(&lines[line_number - 1]).unwrap();
            let unique_id = sent["unique_id"].as_str().unwrap();
            assert_eq!(
                answer["task_id"].as_str(),
                holder_of.get(unique_id).map(String::as_str)
            );
        }
    }
    let (_, page) = app.get("/v1/tasks?limit=1").await;
    assert_eq!(
        page["total"], 252,
        "250 unique ids and the id-less line twice"
    );
    let (_, tagged) = app.get("/v1/tasks?limit=1&tags=t0").await;
    assert_eq!(
        tagged["total"], 85,
        "tag rows were written for imported tasks"
    );
}

async fn an_import_key_replays_the_summary_and_refuses_another_file(app: TestApp) {
    let lines: Vec<String> = (1..=20).map(|n| image_line(n, None).to_string()).collect();
    let body = ndjson(&lines);
    let (status, replayed, first) =
        import_as(&app, &app.base_url, body.clone(), Some("imp-1")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!replayed);
    assert_eq!(first.len(), 21);
    let summary = first.last().unwrap().clone();
    assert_eq!(summary["summary"]["created"], 20);

    // Lines without unique_id would be created again: the key is what stops that.
    let (status, replayed, again) =
        import_as(&app, &app.base_url, body.clone(), Some("imp-1")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(replayed);
    assert_eq!(again, vec![summary]);
    let (_, page) = app.get("/v1/tasks?limit=1").await;
    assert_eq!(page["total"], 20, "{page}");

    let other = ndjson(&lines[..10]);
    let (status, _, refused) = import_as(&app, &app.base_url, other, Some("imp-1")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused:?}");
    assert!(refused[0]["error"]
        .as_str()
        .unwrap()
        .contains("different import"));

    // Another account's key cannot replay (or learn about) this import.
    let stranger = app.new_account_key(false).await;
    let response = app
        .http
        .post(app.url("/v1/tasks/import"))
        .basic_auth(&stranger, Some(""))
        .header("Idempotency-Key", "imp-1")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CONFLICT);
}

async fn an_import_into_a_batch_inherits_the_project_and_counts_in_the_batch(app: TestApp) {
    app.create_project("bulkproj", "imageannotation").await;
    app.create_batch("bulkbatch", "bulkproj", json!({})).await;
    let lines: Vec<String> = (1..=30)
        .map(|n| {
            let mut line = image_line(n, Some(&format!("b-{n}")));
            line["batch"] = json!("bulkbatch");
            line.to_string()
        })
        .chain([
            json!({"type": "imageannotation", "batch": "nosuchbatch", "instruction": "x",
                       "attachment": "https://e.com/x.png"})
            .to_string(),
        ])
        .collect();
    let answers = import(&app, ndjson(&lines)).await;
    assert_eq!(
        answers.last().unwrap()["summary"],
        json!({"lines": 31, "created": 30, "duplicate": 0, "error": 1})
    );
    assert!(answers[30]["error"]
        .as_str()
        .unwrap()
        .contains("nosuchbatch"));
    let id = answers[0]["task_id"].as_str().unwrap();
    let (_, task) = app.get(&format!("/v1/task/{id}")).await;
    assert_eq!(task["project"], "bulkproj");
    assert_eq!(task["batch"], "bulkbatch");
    let (_, page) = app.get("/v1/tasks?limit=1&batch=bulkbatch").await;
    assert_eq!(page["total"], 30);
    let (status, batch_status) = app.get("/v1/batches/bulkbatch/status").await;
    assert_eq!(status, StatusCode::OK, "{batch_status}");
    assert_eq!(batch_status["pending"], 30, "{batch_status}");
}

/// A sender that trickles its lines gets each answered (and committed) while it still holds
/// the rest back: chunks fill up under load, but no line waits for a full chunk.
async fn a_slow_senders_lines_are_answered_before_the_input_ends(app: TestApp) {
    let (lines, receiver) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(8);
    let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(receiver));
    for n in 1..=3 {
        lines
            .send(Ok(
                image_line(n, Some(&format!("slow-{n}"))).to_string() + "\n"
            ))
            .await
            .expect("line queued");
    }
    let mut response = app
        .http
        .post(format!("{}/v1/tasks/import", app.base_url))
        .basic_auth(&app.api_key, Some(""))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .expect("import started");
    assert_eq!(response.status(), StatusCode::OK);
    let mut received = Vec::new();
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        while received.iter().filter(|&&byte| byte == b'\n').count() < 3 {
            match response.chunk().await {
                Ok(Some(chunk)) => received.extend_from_slice(&chunk),
                other => panic!("the answer ended early: {other:?}"),
            }
        }
    })
    .await;
    assert!(
        answered.is_ok(),
        "three lines sent, the input still open: answered so far {:?}",
        String::from_utf8_lossy(&received)
    );
    let first: Vec<Value> = String::from_utf8_lossy(&received)
        .lines()
        .map(|line| serde_json::from_str(line).expect("answer line is JSON"))
        .collect();
    for answer in &first {
        assert_eq!(answer["result"], "created", "{answer}");
        let (status, _) = app
            .get(&format!("/v1/task/{}", answer["task_id"].as_str().unwrap()))
            .await;
        assert_eq!(status, StatusCode::OK, "an answered line is stored");
    }
    lines
        .send(Ok(image_line(4, Some("slow-1")).to_string() + "\n"))
        .await
        .expect("line queued");
    drop(lines);
    let rest = response.text().await.expect("answer read");
    let rest: Vec<Value> = rest
        .lines()
        .map(|line| serde_json::from_str(line).expect("answer line is JSON"))
        .collect();
    assert_eq!(rest[0]["line"], 4);
    assert_eq!(rest[0]["result"], "duplicate");
    assert_eq!(rest[0]["task_id"], first[0]["task_id"]);
    assert_eq!(
        rest[1]["summary"],
        json!({"lines": 4, "created": 3, "duplicate": 1, "error": 0})
    );
}

/// Lines are written a chunk at a time, the next chunk read while the last one is written: a
/// unique_id that comes back in a later chunk still names the task of its first line.
async fn a_unique_id_repeated_across_chunks_is_a_duplicate_of_the_earlier_line(app: TestApp) {
    const FIRST: usize = 700;
    let lines: Vec<String> = (1..=2 * FIRST)
        .map(|n| image_line(n, Some(&format!("r-{}", (n - 1) % FIRST))).to_string())
        .collect();
    let answers = import(&app, ndjson(&lines)).await;
    let (results, summary) = answers.split_at(answers.len() - 1);
    assert_eq!(
        summary[0]["summary"],
        json!({"lines": 2 * FIRST, "created": FIRST, "duplicate": FIRST, "error": 0})
    );
    for (earlier, later) in results[..FIRST].iter().zip(&results[FIRST..]) {
        assert_eq!(earlier["result"], "created", "{earlier}");
        assert_eq!(later["result"], "duplicate", "{later}");
        assert_eq!(later["task_id"], earlier["task_id"], "{later}");
    }
    let (_, page) = app.get("/v1/tasks?limit=1").await;
    assert_eq!(page["total"], FIRST as u64);
}

/// Most HTTP clients send the whole body before reading any answer. With 20,000 lines the
/// answers (~1.3 MB) outgrow every socket buffer, so the import must not wait for the reader.
async fn a_client_that_uploads_everything_before_reading_still_gets_every_answer(app: TestApp) {
    const LINES: usize = 20_000;
    let body: String = (1..=LINES)
        .map(|n| {
            json!({"type": "categorization", "instruction": "Pick one",
                   "attachment": format!("https://e.com/{n}.png"), "attachment_type": "image",
                   "categories": ["a", "b"], "unique_id": format!("c-{n}")})
            .to_string()
                + "\n"
        })
        .collect();
    let addr = app.addr;
    let credentials = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("{}:", app.api_key))
    };
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .expect("timeout");
        let head = format!(
            "POST /v1/tasks/import HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic {credentials}\r\n\
             Content-Type: application/x-ndjson\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).expect("head");
        stream.write_all(body.as_bytes()).expect("the whole body is sent before reading");
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).expect("answer");
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
    .expect("client thread");
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{}",
        &answer[..200.min(answer.len())]
    );
    assert!(
        answer.contains(&format!(
            r#"{{"summary":{{"created":{LINES},"duplicate":0,"error":0,"lines":{LINES}}}}}"#
        )),
        "the summary arrives last: {}",
        &answer[answer.len().saturating_sub(300)..]
    );
    let (_, page) = app.get("/v1/tasks?limit=1").await;
    assert_eq!(page["total"], LINES as u64);
}

async fn an_export_yields_every_task_as_get_returns_it_and_resumes_after_a_task(app: TestApp) {
    let lines: Vec<String> = (1..=1_234)
        .map(|n| image_line(n, Some(&format!("e-{n}"))).to_string())
        .collect();
    import(&app, ndjson(&lines)).await;
    for n in 0..3 {
        let (status, _) = app
            .create_image_task(json!({"unique_id": format!("single-{n}")}))
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, canceled) = app.create_image_task(json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let canceled_id = canceled["task_id"].as_str().unwrap().to_owned();
    app.post(&format!("/v1/task/{canceled_id}/cancel"), &json!({}))
        .await;

    let all = export(&app, "").await;
    assert_eq!(all.len(), 1_238);
    // Newest first, each exactly what GET answers.
    let keys: Vec<(String, String)> = all
        .iter()
        .map(|task| {
            (
                task["created_at"].as_str().unwrap().to_owned(),
                task["task_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        keys.windows(2).all(|pair| pair[0] > pair[1]),
        "strictly newest first"
    );
    for task in &all {
        let id = task["task_id"].as_str().unwrap();
        let (_, got) = app.get(&format!("/v1/task/{id}")).await;
        assert_eq!(task, &got);
    }
    let ids: std::collections::HashSet<_> = keys.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(ids.len(), all.len(), "no task twice");

    // Filters as in the list.
    let canceled_only = export(&app, "?status=canceled").await;
    assert_eq!(canceled_only.len(), 1);
    assert_eq!(canceled_only[0]["task_id"], canceled_id.as_str());
    assert_eq!(export(&app, "?tags=t1").await.len(), 412);

    // Resume after the 500th task, by its id or by a list token.
    let after = all[499]["task_id"].as_str().unwrap();
    let rest = export(&app, &format!("?next_token={after}")).await;
    assert_eq!(rest, all[500..].to_vec());
    let (_, page) = app.get("/v1/tasks?limit=100").await;
    let token = page["next_token"].as_str().unwrap();
    let rest = export(&app, &format!("?next_token={token}")).await;
    assert_eq!(rest, all[100..].to_vec());

    // A bad filter answers with its own status, like the list.
    let (status, body) = app.get("/v1/tasks/export?status=bogus").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = app
        .get("/v1/tasks/export?next_token=ffffffffffffffffffffffff")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // Another account sees none of it.
    let stranger = app.new_account_key(false).await;
    let response = app
        .request_as(&stranger, Method::GET, "/v1/tasks/export")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "");
}

async fn grpc_import_and_export_give_the_same_answers_as_rest(app: TestApp) {
    let mut client = app.grpc().await;
    let task = |n: usize| CreateTaskRequest {
        r#type: "imageannotation".to_owned(),
        params: Some(to_struct(image_params())),
        instruction: Some("Draw".to_owned()),
        unique_id: Some(format!("g-{}", n % 40)),
        ..Default::default()
    };
    let mut requests: Vec<proto::ImportTasksRequest> = (1..=50)
        .map(|n| proto::ImportTasksRequest {
            task: Some(task(n)),
        })
        .collect();
    requests.insert(2, proto::ImportTasksRequest { task: None });
    requests.insert(
        3,
        proto::ImportTasksRequest {
            task: Some(CreateTaskRequest {
                r#type: "imageannotation".to_owned(),
                ..Default::default()
            }),
        },
    );
    let stream = client
        .import_tasks(app.grpc_request(tokio_stream::iter(requests.clone())))
        .await
        .expect("import accepted")
        .into_inner();
    let answers: Vec<Answer> = futures::StreamExt::collect::<Vec<_>>(stream)
        .await
        .into_iter()
        .map(|answer| answer.expect("answer").answer.expect("oneof set"))
        .collect();
    let Some(Answer::Summary(summary)) = answers.last() else {
        panic!("the last answer is the summary");
    };
    assert_eq!(
        (
            summary.lines,
            summary.created,
            summary.duplicate,
            summary.error
        ),
        (52, 40, 10, 2)
    );
    let lines: Vec<&proto::ImportLineResult> = answers
        .iter()
        .filter_map(|answer| match answer {
            Answer::Line(line) => Some(line),
            Answer::Summary(_) => None,
        })
        .collect();
    assert_eq!(lines.len(), 52);
    assert!(lines
        .iter()
        .enumerate()
        .all(|(i, line)| line.line == i as i64 + 1));
    assert_eq!(lines[2].result(), proto::ImportResult::Error);
    assert_eq!(lines[2].code, i32::from(tonic::Code::InvalidArgument));
    assert_eq!(lines[3].result(), proto::ImportResult::Error);
    assert!(lines[3].error.contains("attachment"), "{}", lines[3].error);
    assert_eq!(lines[0].result(), proto::ImportResult::Created);
    // unique_id g-(n % 40): request 41 is the first to repeat one (request 1's).
    let first_holder = &lines[0].task_id;
    let repeat = lines
        .iter()
        .find(|line| line.result() == proto::ImportResult::Duplicate)
        .expect("a duplicate");
    assert_eq!(&repeat.task_id, first_holder);

    // The export over gRPC is the REST export, task for task.
    let rest = export(&app, "").await;
    let stream = client
        .export_tasks(app.grpc_request(proto::ExportTasksRequest::default()))
        .await
        .expect("export accepted")
        .into_inner();
    let exported: Vec<proto::Task> = futures::StreamExt::collect::<Vec<_>>(stream)
        .await
        .into_iter()
        .map(|task| task.expect("task"))
        .collect();
    assert_eq!(exported.len(), 40);
    assert_eq!(rest.len(), 40);
    for (grpc, rest) in exported.iter().zip(&rest) {
        assert_same_task(grpc, rest);
    }
    let refused = client
        .export_tasks(app.grpc_request(proto::ExportTasksRequest {
            r#type: "nosuchtype".to_owned(),
            ..Default::default()
        }))
        .await
        .expect_err("a bad filter is the call's status");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
}

/// SIGKILL while an import streams in, then the same import again on a new process: exactly
/// one task per line, and every line acknowledged before the crash kept its task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_crash_mid_import_then_a_rerun_yields_exactly_one_task_per_line() {
    a_crash_mid_import_then_a_rerun_yields_exactly_one_task_per_line(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_crash_mid_import_then_a_rerun_yields_exactly_one_task_per_line() {
    a_crash_mid_import_then_a_rerun_yields_exactly_one_task_per_line(Backend::Postgres).await;
}

async fn a_crash_mid_import_then_a_rerun_yields_exactly_one_task_per_line(backend: Backend) {
    const LINES: usize = 30_000;
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let lines: Vec<String> = (1..=LINES)
        .map(|n| image_line(n, Some(&format!("k-{n}"))).to_string())
        .collect();
    let body = ndjson(&lines);
    let doomed = ServerProcess::start(&app.database_url).await;
    let mut response = app
        .http
        .post(format!("{}/v1/tasks/import", doomed.base_url))
        .basic_auth(&app.api_key, Some(""))
        .body(body.clone())
        .send()
        .await
        .expect("import started");
    // Read answers until a few chunks are acknowledged, then kill the server mid-import.
    let mut received = Vec::new();
    while received.iter().filter(|&&byte| byte == b'\n').count() < 1_200 {
        match response.chunk().await {
            Ok(Some(chunk)) => received.extend_from_slice(&chunk),
            _ => break,
        }
    }
    doomed.crash();
    let acknowledged: HashMap<u64, String> = String::from_utf8_lossy(&received)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|answer| answer["result"] == "created")
        .map(|answer| {
            (
                answer["line"].as_u64().unwrap(),
                answer["task_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        acknowledged.len() >= 1_000,
        "{} acknowledged",
        acknowledged.len()
    );
    let (_, page) = app.get("/v1/tasks?limit=1").await;
    let before_rerun = page["total"].as_u64().unwrap();
    assert!(
        before_rerun < LINES as u64,
        "the crash came mid-import ({before_rerun} of {LINES} stored)"
    );

    let survivor = ServerProcess::start(&app.database_url).await;
    let (status, _, answers) = import_as(&app, &survivor.base_url, body, None).await;
    assert_eq!(status, StatusCode::OK);
    let summary = &answers.last().unwrap()["summary"];
    assert_eq!(summary["lines"], LINES as u64);
    assert_eq!(summary["error"], 0);
    assert_eq!(summary["duplicate"].as_u64().unwrap(), before_rerun);
    assert_eq!(
        summary["created"].as_u64().unwrap(),
        LINES as u64 - before_rerun
    );
    for answer in &answers[..answers.len() - 1] {
        if let Some(first_id) = acknowledged.get(&answer["line"].as_u64().unwrap()) {
            assert_eq!(answer["result"], "duplicate");
            assert_eq!(answer["task_id"].as_str(), Some(first_id.as_str()));
        }
    }
    let (_, page) = app.get("/v1/tasks?limit=1").await;
    assert_eq!(page["total"], LINES as u64, "exactly one task per line");
    eprintln!(
        "crash after {} acknowledged lines ({before_rerun} stored); rerun created {}",
        acknowledged.len(),
        summary["created"]
    );
}

/// `annotask import FILE` and `annotask export` against a running server, as at a terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_import_and_export_commands_move_a_file_in_and_out() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("annotask-cli-{}", app.addr.port()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("in.ndjson");
    let mut lines: Vec<String> = (1..=700)
        .map(|n| image_line(n, Some(&format!("cli-{n}"))).to_string())
        .collect();
    lines.push("{broken".to_owned());
    std::fs::write(&input, ndjson(&lines)).unwrap();
    let run = |args: Vec<String>| {
        let binary = env!("CARGO_BIN_EXE_annotask");
        let base_url = app.base_url.clone();
        let key = app.api_key.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(binary)
                .args(args)
                .args(["--url", &base_url])
                .env("ANNOTASK_API_KEY", key)
                .output()
                .expect("run annotask")
        })
    };
    let imported = run(vec!["import".into(), input.display().to_string()])
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&imported.stdout);
    let stderr = String::from_utf8_lossy(&imported.stderr);
    assert!(imported.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("701 lines, 700 created, 0 duplicate, 1 error"),
        "{stdout}"
    );
    assert!(stderr.contains("line 701: 400"), "{stderr}");

    let output = dir.join("out.ndjson");
    let exported = run(vec![
        "export".into(),
        "--output".into(),
        output.display().to_string(),
        "--filter".into(),
        "tags=t2".into(),
    ])
    .await
    .unwrap();
    assert!(
        exported.status.success(),
        "{}",
        String::from_utf8_lossy(&exported.stderr)
    );
    let text = std::fs::read_to_string(&output).unwrap();
    assert_eq!(text.lines().count(), 233, "tasks tagged t2 (n % 3 == 2)");
    for line in text.lines() {
        let task: Value = serde_json::from_str(line).unwrap();
        assert!(task["tags"].as_array().unwrap().contains(&json!("t2")));
    }
    let refused = run(vec![
        "export".into(),
        "--filter".into(),
        "status=nope".into(),
    ])
    .await
    .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("Parameter 'status'"));
    let _ = std::fs::remove_dir_all(&dir);
}

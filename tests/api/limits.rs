//! Limits on every transport: body size (413 / RESOURCE_EXHAUSTED, answered, not reset),
//! header size and read time, time to answer, requests in flight, repeated filter values.

use std::{collections::HashMap, future::Future, time::Duration};

use annotask::proto::{CreateTaskRequest, ListTasksRequest};
use base64::{engine::general_purpose::STANDARD, Engine as _};
use prost::Message;
use reqwest::{Method, StatusCode};
use sea_orm::{ConnectionTrait, TransactionTrait};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};

use crate::{
    backend_tests,
    helpers::{Backend, TestApp},
};

async fn small_limit_app() -> Option<TestApp> {
    TestApp::spawn_with(Backend::Sqlite, |config| {
        config.limits.max_body_bytes = 4096;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_body_over_the_configured_limit_is_413_with_a_json_error() {
    let Some(app) = small_limit_app().await else {
        return;
    };
    let body = json!({
        "attachment": "https://e.com/a.png",
        "geometries": {"box": {}},
        "instruction": "x".repeat(8192),
    });
    let (status, error) = app
        .send(
            app.request(Method::POST, "/v1/task/imageannotation")
                .json(&body),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error["status_code"], 413);
    assert!(error["error"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_message_over_the_configured_limit_is_resource_exhausted() {
    let Some(app) = small_limit_app().await else {
        return;
    };
    let mut client = app.grpc().await;
    let request = CreateTaskRequest {
        r#type: "imageannotation".to_owned(),
        instruction: Some("x".repeat(8192)),
        ..Default::default()
    };
    let status = client
        .create_task(app.grpc_request(request))
        .await
        .expect_err("too large");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
}

// ---- Request limits over real sockets: header size and read time, time to answer,
// requests in flight, repeated filter values, and oversized bodies answered, not reset.

/// A raw HTTP/1.1 exchange: what reqwest would hide (a reset, a dribbled head) is visible.
async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.addr).await.expect("connect")
}

fn basic_auth(app: &TestApp) -> String {
    format!("Basic {}", STANDARD.encode(format!("{}:", app.api_key)))
}

#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl RawResponse {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!(
                "body is not JSON ({err}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// `grpc-status` and `grpc-message` from the headers (trailers-only answer) or from the
    /// grpc-web trailer frame at the end of the body.
    fn grpc_status(&self) -> (i32, String) {
        let mut fields = self.headers.clone();
        let mut rest = self.body.as_slice();
        while rest.len() >= 5 {
            let flag = rest[0];
            let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
            let payload = &rest[5..5 + len];
            if flag & 0x80 != 0 {
                for line in String::from_utf8_lossy(payload).split("\r\n") {
                    if let Some((name, value)) = line.split_once(':') {
                        fields.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
                    }
                }
            }
            rest = &rest[5 + len..];
        }
        let status = fields
            .get("grpc-status")
            .unwrap_or_else(|| panic!("no grpc-status in {self:?}"))
            .parse()
            .expect("numeric grpc-status");
        let message = fields.get("grpc-message").cloned().unwrap_or_default();
        (status, percent_decode(&message))
    }
}

fn percent_decode(text: &str) -> String {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(byte) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).expect("utf-8")
}

/// Reads one response: the head, then a body by Content-Length or chunked encoding.
async fn read_response<R: AsyncRead + Unpin>(reader: R) -> RawResponse {
    let mut reader = BufReader::new(reader);
    let mut status_line = String::new();
    reader
        .read_line(&mut status_line)
        .await
        .expect("status line");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("not an HTTP response: {status_line:?}"))
        .parse()
        .expect("numeric status");
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.expect("header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').expect("header");
        headers.insert(name.to_ascii_lowercase(), value.trim().to_owned());
    }
    let mut body = Vec::new();
    if let Some(length) = headers.get("content-length") {
        body.resize(length.parse().expect("length"), 0);
        reader.read_exact(&mut body).await.expect("body");
    } else if headers
        .get("transfer-encoding")
        .is_some_and(|te| te.contains("chunked"))
    {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).await.expect("chunk size");
            let size = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).await.expect("chunk");
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    RawResponse {
        status,
        headers,
        body,
    }
}

/// Waits at most `within` for `what`; a hang is a failure, not a stuck test run.
async fn bounded<T>(within: Duration, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(within, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing after {within:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_headers_over_the_limit_are_431_and_under_it_are_served() {
    let Some(app) = TestApp::spawn_with(Backend::Sqlite, |config| {
        config.limits.max_header_bytes = 16 * 1024;
    })
    .await
    else {
        return;
    };
    for (padding, expected) in [(4 * 1024, 200), (32 * 1024, 431)] {
        let mut stream = connect(&app).await;
        let head = format!(
            "GET /v1/tasks?limit=1 HTTP/1.1\r\nHost: test\r\nAuthorization: {}\r\nX-Padding: {}\r\n\r\n",
            basic_auth(&app),
            "a".repeat(padding)
        );
        stream.write_all(head.as_bytes()).await.expect("write");
        let response = bounded(
            Duration::from_secs(30),
            "answer",
            read_response(&mut stream),
        )
        .await;
        assert_eq!(response.status, expected, "{padding} bytes of header");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_its_headers_one_byte_at_a_time_is_disconnected() {
    let Some(app) = TestApp::spawn_with(Backend::Sqlite, |config| {
        config.limits.header_read_timeout = Duration::from_secs(1);
    })
    .await
    else {
        return;
    };
    let mut stream = connect(&app).await;
    let head = b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: ".to_vec();
    let dribble = head.into_iter().chain(std::iter::repeat(b'a'));
    // hyper's own default is 30 s: a disconnection well before that is the configured limit.
    let disconnected = tokio::time::timeout(Duration::from_secs(15), async {
        for byte in dribble {
            if stream.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    assert!(
        disconnected.is_ok(),
        "still connected after 15 s of a never-ending head"
    );
    let mut rest = Vec::new();
    // Whatever the server said before closing (a 408 or nothing), the connection is closed.
    let _ = bounded(
        Duration::from_secs(5),
        "closed connection",
        stream.read_to_end(&mut rest),
    )
    .await;
}

/// Sends the head of a request whose body is announced but held back: the server's handler
/// waits on it for as long as the client likes.
async fn start_slow_upload(app: &TestApp, path: &str, content_type: &str) -> TcpStream {
    let mut stream = connect(app).await;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: {}\r\nContent-Type: {content_type}\r\nContent-Length: 1000\r\n\r\n{{",
        basic_auth(app)
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_body_does_not_arrive_in_time_is_408_on_rest_and_deadline_exceeded_on_grpc_web(
) {
    let Some(app) = TestApp::spawn_with(Backend::Sqlite, |config| {
        config.limits.request_timeout = Duration::from_secs(1);
    })
    .await
    else {
        return;
    };
    let mut rest = start_slow_upload(&app, "/v1/task/imageannotation", "application/json").await;
    let response = bounded(
        Duration::from_secs(20),
        "timeout answer",
        read_response(&mut rest),
    )
    .await;
    assert_eq!(response.status, 408, "{response:?}");
    let error = response.json();
    assert_eq!(error["status_code"], 408);
    assert!(
        error["error"].as_str().unwrap().contains("not received"),
        "{error}"
    );

    let mut grpc_web = start_slow_upload(
        &app,
        "/annotask.v1.TaskService/CreateTask",
        "application/grpc-web+proto",
    )
    .await;
    let response = bounded(
        Duration::from_secs(20),
        "timeout answer",
        read_response(&mut grpc_web),
    )
    .await;
    assert_eq!(response.status, 200, "{response:?}");
    let (code, message) = response.grpc_status();
    assert_eq!(code, tonic::Code::DeadlineExceeded as i32, "{message}");
    assert!(message.contains("not received"), "{message}");
}

/// A handler stuck on the database (here, behind a table lock a test transaction holds) is
/// answered when the request timeout passes: 503 with `Retry-After` / `DEADLINE_EXCEEDED`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_stuck_on_the_database_is_503_on_rest_and_deadline_exceeded_on_grpc() {
    let Some(app) = TestApp::spawn_with(Backend::Postgres, |config| {
        config.limits.request_timeout = Duration::from_secs(1);
    })
    .await
    else {
        return;
    };
    let db = sea_orm::Database::connect(&app.database_url)
        .await
        .expect("connect");
    let lock = db.begin().await.expect("begin");
    lock.execute_unprepared("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");

    let response = bounded(
        Duration::from_secs(20),
        "timeout answer",
        app.request(Method::GET, "/v1/tasks?limit=1").send(),
    )
    .await
    .expect("sent");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("1")
    );
    let error: Value = response.json().await.expect("JSON");
    assert_eq!(error["status_code"], 503);
    assert!(
        error["error"].as_str().unwrap().contains("did not finish"),
        "{error}"
    );

    let mut client = app.grpc().await;
    let status = bounded(
        Duration::from_secs(20),
        "timeout answer",
        client.list_tasks(app.grpc_request(ListTasksRequest::default())),
    )
    .await
    .expect_err("stuck");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");

    lock.rollback().await.expect("rollback");
    let (status, _) = app.get("/v1/tasks?limit=1").await;
    assert_eq!(status, StatusCode::OK);
}

/// A replayed import answers only once it has read the whole upload (to compare it with the
/// first), so its answer may start long after the request timeout; imports are exempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_bulk_import_is_not_cut_by_the_request_timeout() {
    let Some(app) = TestApp::spawn_with(Backend::Sqlite, |config| {
        config.limits.request_timeout = Duration::from_secs(1);
    })
    .await
    else {
        return;
    };
    let line = json!({"type": "imageannotation", "attachment": "https://e.com/a.png",
        "geometries": {"box": {}}, "instruction": "slow"})
    .to_string()
        + "\n";
    let first = app
        .request(Method::POST, "/v1/tasks/import")
        .header("idempotency-key", "slow-import")
        .header("content-type", "application/x-ndjson")
        .body(line.clone())
        .send()
        .await
        .expect("first import");
    assert_eq!(first.status(), StatusCode::OK);
    first.text().await.expect("first import's answer");

    let mut stream = connect(&app).await;
    let head = format!(
        "POST /v1/tasks/import HTTP/1.1\r\nHost: test\r\nAuthorization: {}\r\nIdempotency-Key: slow-import\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n",
        basic_auth(&app),
        line.len()
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let (start, end) = line.as_bytes().split_at(10);
    stream.write_all(start).await.expect("write");
    // Longer than the request timeout: an ordinary request would have had its 408 by now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stream.write_all(end).await.expect("write");
    let response = bounded(
        Duration::from_secs(30),
        "import summary",
        read_response(&mut stream),
    )
    .await;
    let text = String::from_utf8_lossy(&response.body).into_owned();
    assert_eq!(response.status, 200, "{text}");
    assert_eq!(
        response
            .headers
            .get("idempotent-replayed")
            .map(String::as_str),
        Some("true"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_in_flight_cap_are_refused_at_once_on_every_transport() {
    let Some(app) = TestApp::spawn_with(Backend::Sqlite, |config| {
        config.limits.max_concurrent_requests = 1;
    })
    .await
    else {
        return;
    };
    let (status, _) = app.get("/v1/tasks?limit=1").await;
    assert_eq!(status, StatusCode::OK, "below the cap");

    let mut holder = start_slow_upload(&app, "/v1/task/imageannotation", "application/json").await;
    // The holder's head is on its way; the cap is reached once the server has taken it in.
    let refused = bounded(Duration::from_secs(10), "a 429", async {
        loop {
            let response = app
                .request(Method::GET, "/v1/tasks?limit=1")
                .send()
                .await
                .expect("sent");
            if response.status() == StatusCode::TOO_MANY_REQUESTS {
                return response;
            }
            // A GET that reached the server before the holder's head took the one slot, and
            // the holder was refused: it must have been told so (429), then it starts again.
            let mut byte = [0_u8; 1];
            let answered = tokio::time::timeout(Duration::from_millis(20), holder.peek(&mut byte))
                .await
                .is_ok_and(|peeked| peeked.is_ok_and(|n| n > 0));
            if answered {
                assert_eq!(read_response(&mut holder).await.status, 429);
                holder =
                    start_slow_upload(&app, "/v1/task/imageannotation", "application/json").await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("1")
    );
    let error: Value = refused.json().await.expect("JSON");
    assert_eq!(error["status_code"], 429);
    assert!(
        error["error"].as_str().unwrap().contains("retry"),
        "{error}"
    );

    let mut client = app.grpc().await;
    let status = client
        .list_tasks(app.grpc_request(ListTasksRequest::default()))
        .await
        .expect_err("over the cap");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");

    // Health checks still answer, so an orchestrator does not kill a busy server.
    let health = app
        .http
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("sent");
    assert_eq!(health.status(), StatusCode::OK);

    // A large upload refused for load is still answered, not reset mid-upload.
    let big = json!({"instruction": "x".repeat(24 * 1024 * 1024)});
    let response = send_oversized(
        &app,
        "/v1/task/imageannotation",
        "application/json",
        serde_json::to_vec(&big).unwrap(),
    )
    .await;
    assert_eq!(response.status, 429, "{response:?}");

    // The holder finishes (a bad body: 400); its slot frees and requests pass again.
    holder
        .write_all(&[b' '; 999])
        .await
        .expect("rest of the body");
    let answer = bounded(
        Duration::from_secs(20),
        "holder's answer",
        read_response(&mut holder),
    )
    .await;
    assert_eq!(answer.status, 400);
    drop(holder);
    bounded(Duration::from_secs(10), "a 200 again", async {
        loop {
            let (status, _) = app.get("/v1/tasks?limit=1").await;
            if status == StatusCode::OK {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// The client writes the whole oversized body while reading; it must get the answer and no
/// reset before it has finished sending, as a browser needs.
async fn send_oversized(
    app: &TestApp,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> RawResponse {
    let stream = connect(app).await;
    let (reader, mut writer) = stream.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        basic_auth(app),
        body.len()
    );
    let sending = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        writer.write_all(&body).await?;
        writer.flush().await?;
        Ok::<_, std::io::Error>(writer)
    });
    let response = bounded(Duration::from_secs(60), "answer", read_response(reader)).await;
    let sent = bounded(Duration::from_secs(60), "upload", sending)
        .await
        .expect("writer task");
    assert!(
        sent.is_ok(),
        "the upload failed (connection reset?): {sent:?}"
    );
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_11_mib_grpc_web_request_is_answered_resource_exhausted_not_reset() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let request = CreateTaskRequest {
        r#type: "imageannotation".to_owned(),
        instruction: Some("x".repeat(11 * 1024 * 1024)),
        ..Default::default()
    };
    let message = request.encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(&message);
    let response = send_oversized(
        &app,
        "/annotask.v1.TaskService/CreateTask",
        "application/grpc-web+proto",
        framed,
    )
    .await;
    assert_eq!(response.status, 200, "{response:?}");
    let (code, message) = response.grpc_status();
    assert_eq!(code, tonic::Code::ResourceExhausted as i32, "{message}");
    // The same words as REST's 413 body.
    assert_eq!(message, "The request body is too large.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_24_mib_rest_request_is_answered_413_not_reset() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    // The JSON reader stops at 10 MiB; the other 14 MiB outgrow what socket buffers hold.
    let body = json!({"attachment": "https://e.com/a.png", "geometries": {"box": {}},
        "instruction": "x".repeat(24 * 1024 * 1024)});
    let response = send_oversized(
        &app,
        "/v1/task/imageannotation",
        "application/json",
        serde_json::to_vec(&body).unwrap(),
    )
    .await;
    assert_eq!(response.status, 413, "{response:?}");
    assert_eq!(response.json()["status_code"], 413);
}

fn values(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}{i}")).collect()
}

fn repeated_query(name: &str, values: &[String]) -> String {
    values
        .iter()
        .map(|value| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("&")
}

async fn repeated_filter_values_are_capped_on_rest_and_grpc(app: TestApp) {
    let max = annotask::config::Limits::default().max_filter_values;
    for name in ["unique_id", "tags"] {
        let (status, page) = app
            .get(&format!(
                "/v1/tasks?{}",
                repeated_query(name, &values("v", max))
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{max} {name} values: {page}");
        let (status, error) = app
            .get(&format!(
                "/v1/tasks?{}",
                repeated_query(name, &values("v", max + 1))
            ))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
        assert_eq!(error["status_code"], 400);
        let text = error["error"].as_str().unwrap();
        assert!(
            text.contains(name) && text.contains(&max.to_string()),
            "{text}"
        );
        let (status, error) = app
            .get(&format!(
                "/v1/tasks/export?{}",
                repeated_query(name, &values("v", max + 1))
            ))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "export: {error}");
    }

    let mut client = app.grpc().await;
    client
        .list_tasks(app.grpc_request(ListTasksRequest {
            unique_id: values("v", max),
            tags: values("t", max),
            ..Default::default()
        }))
        .await
        .expect("at the cap");
    for request in [
        ListTasksRequest {
            unique_id: values("v", max + 1),
            ..Default::default()
        },
        ListTasksRequest {
            tags: values("t", max + 1),
            ..Default::default()
        },
    ] {
        let status = client
            .list_tasks(app.grpc_request(request))
            .await
            .expect_err("over the cap");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }
}

backend_tests!(repeated_filter_values_are_capped_on_rest_and_grpc);

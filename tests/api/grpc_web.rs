//! grpc-web (binary and text) over HTTP/1.1 with a plain HTTP client: framing, status in
//! trailers, authentication, and the CORS a browser needs.

use std::collections::HashMap;

use annotask::proto::{self, CreateTaskRequest, GetTaskRequest, ListTasksRequest};
use base64::{
    engine::general_purpose::{STANDARD, STANDARD_NO_PAD},
    Engine as _,
};
use prost::Message;
use reqwest::{header::HeaderMap, Method, StatusCode, Version};
use serde_json::json;
use tonic_types::RpcStatusExt as _;

use crate::{
    backend_tests,
    grpc::{assert_same_task, from_struct, image_params, image_task_request, to_struct},
    helpers::TestApp,
};

const ORIGIN: &str = "https://app.example.com";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `application/grpc-web+proto`: frames as raw bytes.
    Binary,
    /// `application/grpc-web-text`: frames as base64.
    Text,
}

impl Mode {
    fn content_type(self) -> &'static str {
        match self {
            Mode::Binary => "application/grpc-web+proto",
            Mode::Text => "application/grpc-web-text",
        }
    }
}

/// One grpc-web data frame: flag 0, big-endian length, the encoded message.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(5 + payload.len());
    framed.push(0x00);
    framed.extend_from_slice(&u32::try_from(payload.len()).expect("small").to_be_bytes());
    framed.extend_from_slice(payload);
    framed
}

/// Base64 that may be several padded chunks one after another (each a multiple of 4 chars).
fn decode_text_body(body: &[u8]) -> Vec<u8> {
    let compact: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    assert_eq!(
        compact.len() % 4,
        0,
        "grpc-web-text body is whole base64 quanta"
    );
    compact
        .chunks(4)
        .flat_map(|quantum| {
            STANDARD.decode(quantum).unwrap_or_else(|err| {
                panic!("not base64 ({err}): {}", String::from_utf8_lossy(body))
            })
        })
        .collect()
}

/// `%XX` escapes as gRPC uses them in `grpc-message`.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
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
    String::from_utf8(out).expect("utf-8 message")
}

#[derive(Debug)]
struct Reply {
    http_status: StatusCode,
    headers: HeaderMap,
    messages: Vec<Vec<u8>>,
    trailers: HashMap<String, String>,
}

impl Reply {
    /// A gRPC status field from the trailer frame, or from the headers (trailers-only reply).
    fn field(&self, name: &str) -> Option<String> {
        self.trailers.get(name).cloned().or_else(|| {
            self.headers
                .get(name)
                .map(|value| value.to_str().expect("ascii header").to_owned())
        })
    }

    fn grpc_status(&self) -> i32 {
        self.field("grpc-status")
            .unwrap_or_else(|| panic!("no grpc-status in {self:?}"))
            .trim()
            .parse()
            .expect("numeric grpc-status")
    }

    fn grpc_message(&self) -> String {
        percent_decode(&self.field("grpc-message").unwrap_or_default())
    }

    /// The one response message, after checking the call succeeded.
    fn message<M: Message + Default>(&self) -> M {
        assert_eq!(
            self.grpc_status(),
            0,
            "grpc-message: {}; {self:?}",
            self.grpc_message()
        );
        assert_eq!(self.messages.len(), 1, "{self:?}");
        M::decode(self.messages[0].as_slice()).expect("a well-formed message")
    }

    /// `grpc-status-details-bin` decoded as `google.rpc.Status`.
    fn status_details(&self) -> tonic_types::pb::Status {
        let encoded = self
            .field("grpc-status-details-bin")
            .unwrap_or_else(|| panic!("no grpc-status-details-bin in {self:?}"));
        let bytes = STANDARD_NO_PAD
            .decode(encoded.trim().trim_end_matches('='))
            .expect("base64 details");
        tonic_types::pb::Status::decode(bytes.as_slice()).expect("google.rpc.Status")
    }
}

/// Splits a grpc-web body into data-frame payloads and the trailer frame's fields.
fn parse_frames(mut body: &[u8]) -> (Vec<Vec<u8>>, HashMap<String, String>) {
    let mut messages = Vec::new();
    let mut trailers = HashMap::new();
    while !body.is_empty() {
        assert!(body.len() >= 5, "truncated frame header: {body:?}");
        let flag = body[0];
        let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        assert!(body.len() >= 5 + length, "truncated frame");
        let payload = &body[5..5 + length];
        if flag & 0x80 != 0 {
            let text = std::str::from_utf8(payload).expect("trailers are text");
            for line in text.split("\r\n").filter(|line| !line.is_empty()) {
                let (name, value) = line
                    .split_once(':')
                    .unwrap_or_else(|| panic!("trailer line without a colon: {line:?}"));
                trailers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
            }
        } else {
            assert_eq!(flag, 0x00, "uncompressed data frame");
            assert!(trailers.is_empty(), "a data frame after the trailers");
            messages.push(payload.to_vec());
        }
        body = &body[5 + length..];
    }
    (messages, trailers)
}

fn http1_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http1_only()
        .build()
        .expect("http client")
}

struct Call<'a> {
    app: &'a TestApp,
    method: &'a str,
    mode: Mode,
    authorization: Option<String>,
    origin: Option<&'a str>,
}

impl<'a> Call<'a> {
    fn new(app: &'a TestApp, method: &'a str, mode: Mode) -> Self {
        Call {
            app,
            method,
            mode,
            authorization: Some(format!("Bearer {}", app.api_key)),
            origin: None,
        }
    }

    fn authorization(mut self, value: Option<String>) -> Self {
        self.authorization = value;
        self
    }

    fn origin(mut self, origin: &'a str) -> Self {
        self.origin = Some(origin);
        self
    }

    async fn send(self, message: &impl Message) -> Reply {
        self.send_encoded(&message.encode_to_vec()).await
    }

    /// Sends an already encoded request message.
    async fn send_encoded(self, message: &[u8]) -> Reply {
        let framed = frame(message);
        let body = match self.mode {
            Mode::Binary => framed,
            Mode::Text => STANDARD.encode(framed).into_bytes(),
        };
        let mut request = http1_client()
            .post(
                self.app
                    .url(&format!("/annotask.v1.TaskService/{}", self.method)),
            )
            .header("content-type", self.mode.content_type())
            .header("accept", self.mode.content_type())
            .header("x-grpc-web", "1")
            .header("x-user-agent", "grpc-web-javascript/0.1")
            .body(body);
        if let Some(authorization) = self.authorization {
            request = request.header("authorization", authorization);
        }
        if let Some(origin) = self.origin {
            request = request.header("origin", origin);
        }
        let response = request.send().await.expect("grpc-web request sent");
        assert_eq!(
            response.version(),
            Version::HTTP_11,
            "grpc-web over HTTP/1.1"
        );
        let http_status = response.status();
        let headers = response.headers().clone();
        let raw = response.bytes().await.expect("body read");
        let content_type = headers
            .get("content-type")
            .map(|value| value.to_str().expect("ascii").to_owned())
            .unwrap_or_default();
        // `application/grpc-web` and `application/grpc-web+proto` are the same binary format.
        assert!(
            content_type.starts_with(self.mode.content_type().trim_end_matches("+proto")),
            "response content-type {content_type:?} for a {:?} request",
            self.mode
        );
        let bytes = match self.mode {
            Mode::Binary => raw.to_vec(),
            Mode::Text => decode_text_body(&raw),
        };
        let (messages, trailers) = parse_frames(&bytes);
        Reply {
            http_status,
            headers,
            messages,
            trailers,
        }
    }
}

fn header_list(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|value| value.to_str().expect("ascii").split(','))
        .map(|item| item.trim().to_ascii_lowercase())
        .filter(|item| !item.is_empty())
        .collect()
}

// ---------------------------------------------------------------------------------------------

async fn create_and_get_task_succeed_over_grpc_web_binary(app: TestApp) {
    create_and_get_task_succeed(&app, Mode::Binary).await;
}

async fn create_and_get_task_succeed_over_grpc_web_text(app: TestApp) {
    create_and_get_task_succeed(&app, Mode::Text).await;
}

async fn create_and_get_task_succeed(app: &TestApp, mode: Mode) {
    let request = CreateTaskRequest {
        metadata: Some(to_struct(json!({"from": "browser", "n": 3}))),
        unique_id: Some(format!("web-{mode:?}")),
        tags: vec!["web".to_owned()],
        ..image_task_request()
    };
    let reply = Call::new(app, "CreateTask", mode).send(&request).await;
    assert_eq!(reply.http_status, StatusCode::OK);
    let created: proto::Task = reply.message();
    assert_eq!(created.task_id.len(), 24);
    assert_eq!(created.status(), proto::TaskStatus::Pending);
    assert_eq!(
        from_struct(created.params.as_ref().expect("params")),
        image_params()
    );
    assert_eq!(
        from_struct(created.metadata.as_ref().expect("metadata")),
        json!({"from": "browser", "n": 3})
    );
    assert_eq!(created.unique_id, Some(format!("web-{mode:?}")));
    assert_eq!(created.tags, ["web"]);

    let reply = Call::new(app, "GetTask", mode)
        .send(&GetTaskRequest {
            task_id: created.task_id.clone(),
        })
        .await;
    assert_eq!(reply.http_status, StatusCode::OK);
    let fetched: proto::Task = reply.message();
    assert_eq!(fetched, created);

    // The same task over gRPC and over REST.
    let mut client = app.grpc().await;
    let over_grpc = client
        .get_task(app.grpc_request(GetTaskRequest {
            task_id: created.task_id.clone(),
        }))
        .await
        .expect("GetTask over gRPC")
        .into_inner();
    assert_eq!(over_grpc, created);
    let (status, rest) = app.get(&format!("/v1/task/{}", created.task_id)).await;
    assert_eq!(status, StatusCode::OK, "{rest}");
    assert_same_task(&created, &rest);

    let reply = Call::new(app, "ListTasks", mode)
        .send(&ListTasksRequest::default())
        .await;
    let page: proto::ListTasksResponse = reply.message();
    assert_eq!(page.total, 1);
    assert_eq!(page.docs, [created]);
}

async fn an_unknown_task_over_grpc_web_is_status_5_with_the_rest_message(app: TestApp) {
    let task_id = format!("{:08x}{}", 1_700_000_000u32, "ab".repeat(8));
    let (status, rest) = app.get(&format!("/v1/task/{task_id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let rest_message = rest["error"].as_str().expect("error").to_owned();
    for mode in [Mode::Binary, Mode::Text] {
        for id in [task_id.as_str(), "not-a-task-id"] {
            let reply = Call::new(&app, "GetTask", mode)
                .send(&GetTaskRequest {
                    task_id: id.to_owned(),
                })
                .await;
            assert_eq!(
                reply.http_status,
                StatusCode::OK,
                "grpc-web errors ride on HTTP 200"
            );
            assert_eq!(reply.grpc_status(), 5, "{mode:?} {id}: {reply:?}");
            assert_eq!(reply.grpc_message(), rest_message, "{mode:?} {id}");
            assert!(reply.messages.is_empty(), "no data frame on an error");
        }
    }
}

async fn a_grpc_web_call_without_a_valid_key_is_status_16(app: TestApp) {
    let bogus = format!("Bearer live_{}", "0".repeat(40));
    for mode in [Mode::Binary, Mode::Text] {
        for authorization in [None, Some(bogus.clone()), Some("Bearer".to_owned())] {
            for (method, message) in [
                ("CreateTask", image_task_request().encode_to_vec()),
                ("ListTasks", ListTasksRequest::default().encode_to_vec()),
            ] {
                let reply = Call::new(&app, method, mode)
                    .authorization(authorization.clone())
                    .send_encoded(&message)
                    .await;
                assert_eq!(
                    reply.grpc_status(),
                    16,
                    "{mode:?} {method} with {authorization:?}: {reply:?}"
                );
                assert!(!reply.grpc_message().is_empty());
                assert!(reply.messages.is_empty());
            }
        }
    }
    let page: proto::ListTasksResponse = Call::new(&app, "ListTasks", Mode::Binary)
        .send(&ListTasksRequest::default())
        .await
        .message();
    assert_eq!(page.total, 0, "no unauthenticated CreateTask went through");
}

async fn basic_authorization_is_accepted_over_grpc_web(app: TestApp) {
    let basic = format!("Basic {}", STANDARD.encode(format!("{}:", app.api_key)));
    let reply = Call::new(&app, "CreateTask", Mode::Binary)
        .authorization(Some(basic))
        .send(&image_task_request())
        .await;
    let task: proto::Task = reply.message();
    assert_eq!(task.status(), proto::TaskStatus::Pending);
}

async fn a_unique_id_conflict_over_grpc_web_carries_error_info_in_status_details(app: TestApp) {
    let request = CreateTaskRequest {
        unique_id: Some("web-dup".to_owned()),
        ..image_task_request()
    };
    let holder: proto::Task = Call::new(&app, "CreateTask", Mode::Binary)
        .send(&request)
        .await
        .message();
    for mode in [Mode::Binary, Mode::Text] {
        let reply = Call::new(&app, "CreateTask", mode).send(&request).await;
        assert_eq!(reply.grpc_status(), 6, "ALREADY_EXISTS: {reply:?}");
        assert_eq!(
            reply.grpc_message(),
            format!(
                "The unique_id (\"web-dup\") is already used for a different task ({}).",
                holder.task_id
            )
        );
        let details = reply.status_details();
        assert_eq!(details.code, 6);
        let info = details.get_details_error_info().expect("ErrorInfo detail");
        assert_eq!(info.reason, "UNIQUE_ID_CONFLICT");
        assert_eq!(
            info.metadata.get("conflicting_task_id"),
            Some(&holder.task_id)
        );
    }
}

async fn a_cors_preflight_for_grpc_web_is_allowed(app: TestApp) {
    let response = http1_client()
        .request(Method::OPTIONS, app.url("/annotask.v1.TaskService/GetTask"))
        .header("origin", ORIGIN)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,x-grpc-web,authorization",
        )
        .send()
        .await
        .expect("preflight sent");
    assert!(response.status().is_success(), "{response:?}");
    let headers = response.headers();
    let allow_origin = headers
        .get("access-control-allow-origin")
        .expect("access-control-allow-origin")
        .to_str()
        .expect("ascii");
    assert!(
        allow_origin == "*" || allow_origin == ORIGIN,
        "{allow_origin}"
    );
    let methods = header_list(headers, "access-control-allow-methods");
    assert!(
        methods
            .iter()
            .any(|method| method == "*" || method == "post"),
        "POST allowed: {methods:?}"
    );
    let allowed = header_list(headers, "access-control-allow-headers");
    for wanted in ["content-type", "x-grpc-web"] {
        assert!(
            allowed.iter().any(|name| name == "*" || name == wanted),
            "{wanted} allowed: {allowed:?}"
        );
    }
}

/// Browsers never let `*` cover `Authorization` (Fetch: it is a "CORS non-wildcard
/// request-header name"), so a preflight must name it for a browser to send its key.
async fn a_cors_preflight_names_the_authorization_header_explicitly(app: TestApp) {
    let response = http1_client()
        .request(
            Method::OPTIONS,
            app.url("/annotask.v1.TaskService/CreateTask"),
        )
        .header("origin", ORIGIN)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,x-grpc-web,authorization",
        )
        .send()
        .await
        .expect("preflight sent");
    assert!(response.status().is_success(), "{response:?}");
    let allowed = header_list(response.headers(), "access-control-allow-headers");
    assert!(
        allowed.iter().any(|name| name == "authorization"),
        "access-control-allow-headers must list authorization, not only '*': {allowed:?}"
    );
}

async fn grpc_web_responses_to_a_cross_origin_request_expose_the_grpc_status_headers(app: TestApp) {
    let created = Call::new(&app, "CreateTask", Mode::Binary)
        .origin(ORIGIN)
        .send(&image_task_request())
        .await;
    let unknown = Call::new(&app, "GetTask", Mode::Text)
        .origin(ORIGIN)
        .send(&GetTaskRequest {
            task_id: "not-a-task-id".to_owned(),
        })
        .await;
    assert_eq!(created.grpc_status(), 0);
    assert_eq!(unknown.grpc_status(), 5);
    for reply in [created, unknown] {
        let allow_origin = reply
            .headers
            .get("access-control-allow-origin")
            .unwrap_or_else(|| panic!("access-control-allow-origin in {:?}", reply.headers))
            .to_str()
            .expect("ascii")
            .to_owned();
        assert!(
            allow_origin == "*" || allow_origin == ORIGIN,
            "{allow_origin}"
        );
        let exposed = header_list(&reply.headers, "access-control-expose-headers");
        for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
            assert!(
                exposed.iter().any(|item| item == name),
                "{name} exposed: {exposed:?}"
            );
        }
    }
}

backend_tests!(
    create_and_get_task_succeed_over_grpc_web_binary,
    create_and_get_task_succeed_over_grpc_web_text,
    an_unknown_task_over_grpc_web_is_status_5_with_the_rest_message,
    a_grpc_web_call_without_a_valid_key_is_status_16,
    basic_authorization_is_accepted_over_grpc_web,
    a_unique_id_conflict_over_grpc_web_carries_error_info_in_status_details,
    a_cors_preflight_for_grpc_web_is_allowed,
    a_cors_preflight_names_the_authorization_header_explicitly,
    grpc_web_responses_to_a_cross_origin_request_expose_the_grpc_status_headers,
);

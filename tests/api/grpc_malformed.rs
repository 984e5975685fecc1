//! Bytes that are not the method's protobuf message → `INVALID_ARGUMENT`, on native gRPC
//! (HTTP/2), never `INTERNAL` and never a dropped connection.

use reqwest::StatusCode;

use crate::helpers::{Backend, TestApp};

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut framed = vec![0x00];
    framed.extend_from_slice(&u32::try_from(payload.len()).expect("small").to_be_bytes());
    framed.extend_from_slice(payload);
    framed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_protobuf_is_invalid_argument() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let http2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let payloads: [&[u8]; 3] = [
        // Wire type 7 does not exist.
        &[0xff; 8],
        // A length-delimited field that claims more bytes than follow.
        &[0x0a, 0x05, b'a'],
        // A string field that is not UTF-8.
        &[0x0a, 0x02, 0xff, 0xfe],
    ];
    for method in [
        "annotask.v1.TaskService/GetTask",
        "annotask.v1.TaskService/CreateTask",
        "annotask.v1.WorkService/ClaimTasks",
    ] {
        for payload in payloads {
            let response = http2
                .post(app.url(&format!("/{method}")))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .header("authorization", format!("Bearer {}", app.api_key))
                .body(frame(payload))
                .send()
                .await
                .expect("sent");
            assert_eq!(response.status(), StatusCode::OK, "{method}");
            // The call fails before any message: a trailers-only answer, status in the headers.
            let status = response
                .headers()
                .get("grpc-status")
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            let message = response
                .headers()
                .get("grpc-message")
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            assert_eq!(
                status.as_deref(),
                Some("3"),
                "{method} {payload:?}: {message}"
            );
        }
    }
}

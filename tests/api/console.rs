//! The embedded browser console: served at `/` without a key, with content types, caching and
//! compression a browser expects, without shadowing the API's JSON 404s; CORS for other origins.

use reqwest::{header, Method, StatusCode};

use crate::helpers::{Backend, TestApp};

async fn app() -> TestApp {
    TestApp::spawn(Backend::Sqlite).await.expect("app")
}

/// The bundle's files, as `web/dist` holds them (the binary embeds that folder).
fn bundle_files() -> Vec<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web/dist");
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("web/dist") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let relative = path.strip_prefix(&root).expect("inside web/dist");
                files.push(relative.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_at_the_root_without_a_key_and_revalidated() {
    let app = app().await;
    let index = app.http.get(app.url("/")).send().await.expect("GET /");
    assert_eq!(index.status(), StatusCode::OK);
    let headers = index.headers().clone();
    assert!(headers[header::CONTENT_TYPE]
        .to_str()
        .expect("ascii")
        .starts_with("text/html"));
    assert_eq!(headers[header::CACHE_CONTROL], "no-cache");
    assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    let body = index.text().await.expect("body");
    let on_disk = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web/dist/index.html"),
    )
    .expect("web/dist/index.html");
    assert_eq!(body, on_disk, "the binary serves the committed bundle");

    // An unchanged file is not sent again.
    let etag = headers[header::ETAG].clone();
    let again = app
        .http
        .get(app.url("/"))
        .header(header::IF_NONE_MATCH, etag)
        .send()
        .await
        .expect("GET / again");
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bundle_file_has_its_type_and_hashed_names_are_cached_for_good() {
    let app = app().await;
    let files = bundle_files();
    assert!(files.iter().any(|file| file == "index.html"), "{files:?}");
    for file in &files {
        let answer = app
            .http
            .get(app.url(&format!("/{file}")))
            .send()
            .await
            .expect("GET file");
        assert_eq!(answer.status(), StatusCode::OK, "{file}");
        let content_type = answer.headers()[header::CONTENT_TYPE]
            .to_str()
            .expect("ascii")
            .to_owned();
        let expected = match file.rsplit('.').next() {
            Some("html") => "text/html",
            Some("js" | "mjs") => "text/javascript",
            Some("css") => "text/css",
            Some("png") => "image/png",
            Some("svg") => "image/svg+xml",
            Some("json") => "application/json",
            _ => "",
        };
        assert!(content_type.starts_with(expected), "{file}: {content_type}");
        let name = file.rsplit('/').next().unwrap_or(file);
        let stem = name.split('.').next().unwrap_or(name);
        let hashed = stem.rsplit_once('-').is_some_and(|(_, hash)| {
            hash.len() >= 8 && hash.chars().all(|c| c.is_ascii_alphanumeric())
        });
        let cache = answer.headers()[header::CACHE_CONTROL]
            .to_str()
            .expect("ascii")
            .to_owned();
        if hashed && name != "index.html" {
            assert_eq!(cache, "public, max-age=31536000, immutable", "{file}");
        } else {
            assert_eq!(cache, "no-cache", "{file}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_compressed_for_browsers_that_accept_it() {
    let app = app().await;
    for (encoding, expected) in [("br", "br"), ("gzip", "gzip")] {
        let answer = app
            .http
            .get(app.url("/"))
            .header(header::ACCEPT_ENCODING, encoding)
            .send()
            .await
            .expect("GET /");
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(answer.headers()[header::CONTENT_ENCODING], expected);
    }
    // API answers are left alone by the console's compression.
    let api = app
        .request(Method::GET, "/v1/tasks?limit=1")
        .header(header::ACCEPT_ENCODING, "gzip")
        .send()
        .await
        .expect("GET /v1/tasks");
    assert_eq!(api.status(), StatusCode::OK);
    assert!(api.headers().get(header::CONTENT_ENCODING).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_stay_json_404s_unless_a_browser_navigates_to_a_console_page() {
    let app = app().await;
    for (method, path, accept) in [
        (Method::GET, "/no/such/thing", "application/json"),
        (Method::GET, "/no/such/thing", "*/*"),
        (Method::POST, "/no/such/thing", "text/html"),
        (Method::GET, "/missing.js", "text/html"),
        (Method::GET, "/v1/no/such/endpoint", "text/html"),
    ] {
        let answer = app
            .http
            .request(method.clone(), app.url(path))
            .header(header::ACCEPT, accept)
            .send()
            .await
            .expect("request");
        assert_eq!(answer.status(), StatusCode::NOT_FOUND, "{method} {path}");
        let body: serde_json::Value = answer.json().await.expect("JSON 404");
        assert_eq!(body["status_code"], 404, "{method} {path}");
    }
    // A console page reloaded in the browser (client-side routing) gets the console.
    let page = app
        .http
        .get(app.url("/tasks/some-task"))
        .header(header::ACCEPT, "text/html,application/xhtml+xml,*/*;q=0.8")
        .send()
        .await
        .expect("GET page");
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers()[header::CONTENT_TYPE]
        .to_str()
        .expect("ascii")
        .starts_with("text/html"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_the_configured_origins_only_and_caches_preflights() {
    let app = TestApp::spawn_with(Backend::Sqlite, |config| {
        config.cors_origins = vec!["https://console.example.com".to_owned()];
    })
    .await
    .expect("app");
    let preflight = |origin: &'static str| {
        app.http
            .request(
                Method::OPTIONS,
                app.url("/annotask.v1.TaskService/ListTasks"),
            )
            .header(header::ORIGIN, origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,x-grpc-web",
            )
            .send()
    };
    let allowed = preflight("https://console.example.com")
        .await
        .expect("preflight");
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://console.example.com"
    );
    assert_eq!(allowed.headers()["access-control-max-age"], "7200");
    let refused = preflight("https://evil.example.net")
        .await
        .expect("preflight");
    assert!(refused
        .headers()
        .get("access-control-allow-origin")
        .is_none());

    // By default any origin may call (keys, not cookies, authenticate).
    let open = TestApp::spawn(Backend::Sqlite).await.expect("app");
    let answer = open
        .http
        .request(Method::OPTIONS, open.url("/v1/tasks"))
        .header(header::ORIGIN, "https://anywhere.example.org")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .expect("preflight");
    assert_eq!(answer.headers()["access-control-allow-origin"], "*");
    assert_eq!(answer.headers()["access-control-max-age"], "7200");
}

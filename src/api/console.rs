//! The browser console: the bundle built from `web/` into `web/dist`, embedded in the binary
//! so a fresh machine serves it with no Node. Static files need no key (the console asks for
//! one and sends it with every RPC).

use axum::{
    body::Body,
    http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    Router,
};
use rust_embed::RustEmbed;
use tower_http::compression::CompressionLayer;

use super::rest;

#[derive(RustEmbed)]
#[folder = "web/dist"]
struct Bundle;

const INDEX: &str = "index.html";
/// A file whose name carries its content hash never changes under that name.
const IMMUTABLE: HeaderValue = HeaderValue::from_static("public, max-age=31536000, immutable");
/// `index.html` names the current hashed files: browsers must revalidate it every time.
const REVALIDATE: HeaderValue = HeaderValue::from_static("no-cache");

/// Everything no other route took: `/` and the bundle's files (compressed, br or gzip, when the
/// browser accepts it), else the API's JSON 404.
pub fn fallback() -> Router {
    Router::new().fallback(file).layer(CompressionLayer::new())
}

/// A file of the bundle; any other path is the API's JSON 404, except that a browser
/// navigating to a console page (it asks for HTML) gets the console, which routes by itself.
async fn file(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return rest::not_found().await.into_response();
    }
    let path = match uri.path().trim_start_matches('/') {
        "" => INDEX,
        path => path,
    };
    if let Some(response) = serve(path, &headers) {
        return response;
    }
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    let is_file_name = path
        .rsplit('/')
        .next()
        .is_some_and(|name| name.contains('.'));
    if wants_html && !is_file_name && !path.starts_with("v1/") {
        if let Some(response) = serve(INDEX, &headers) {
            return response;
        }
    }
    rest::not_found().await.into_response()
}

fn serve(path: &str, headers: &HeaderMap) -> Option<Response> {
    let file = Bundle::get(path)?;
    let etag = format!("\"{}\"", hex::encode(file.metadata.sha256_hash()));
    let cache = if path == INDEX || !has_content_hash(path) {
        REVALIDATE
    } else {
        IMMUTABLE
    };
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|tag| tag.trim() == etag));
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        Response::new(Body::from(file.data.into_owned()))
    };
    let response_headers = response.headers_mut();
    if let Ok(content_type) = HeaderValue::from_str(file.metadata.mimetype()) {
        response_headers.insert(header::CONTENT_TYPE, content_type);
    }
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        response_headers.insert(header::ETAG, etag);
    }
    response_headers.insert(header::CACHE_CONTROL, cache);
    response_headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if path == INDEX {
        // The console is never framed by another site (clickjacking its actions).
        response_headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    Some(response)
}

/// `app-3F7QK2ZL.js`: a bundler's content hash (8 or more letters and digits) before the
/// extension.
fn has_content_hash(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    let stem = name.split('.').next().unwrap_or(name);
    stem.rsplit_once('-')
        .is_some_and(|(_, hash)| hash.len() >= 8 && hash.chars().all(|c| c.is_ascii_alphanumeric()))
}

#[cfg(test)]
mod tests {
    use super::has_content_hash;

    #[test]
    fn only_names_with_a_content_hash_are_immutable() {
        assert!(has_content_hash("assets/app-3F7QK2ZL.js"));
        assert!(has_content_hash("main-ABCDEFGH12.css"));
        assert!(!has_content_hash("index.html"));
        assert!(!has_content_hash("favicon.ico"));
        assert!(!has_content_hash("my-app.js"));
    }
}

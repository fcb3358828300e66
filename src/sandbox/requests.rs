//! The request shapes the sandbox answers, as real vendors take them: the key
//! in the path (`GET /v1/people/{key}`), in the query (`GET /v1/lookup?id=`,
//! as Hunter and Google's APIs take theirs), or in a JSON body
//! (`POST|PUT|PATCH /v1/people`, `{"id": …}`, as People Data Labs and Apollo
//! do). Each becomes the same call, served by `serve_call`; with
//! `--record-headers` each is kept as a [`Seen`] for tests.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::{SandboxOptions, Vendor, serve_call, status};

/// One call as the sandbox received it.
#[derive(Clone, Debug, PartialEq)]
pub struct Seen {
    pub method: String,
    /// The path and query, as sent.
    pub target: String,
    /// The JSON body, if one came.
    pub body: Option<serde_json::Value>,
}

/// What a call carried besides its headers: the record's key and, when
/// `--key-param` names a query parameter, the API key it sent there.
pub(super) struct Asked {
    pub key: String,
    pub query_key: Option<String>,
}

pub(super) async fn by_path(
    State(vendor): State<Arc<Vendor>>,
    method: Method,
    uri: Uri,
    Path(key): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let asked = asked(&vendor, key, &query);
    spawn(vendor, asked, headers, seen(&method, &uri, None)).await
}

pub(super) async fn by_query(
    State(vendor): State<Arc<Vendor>>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let Some(key) = query.get("id").cloned() else {
        return status(StatusCode::BAD_REQUEST, "missing query parameter `id`");
    };
    let asked = asked(&vendor, key, &query);
    spawn(vendor, asked, headers, seen(&method, &uri, None)).await
}

pub(super) async fn by_body(
    State(vendor): State<Arc<Vendor>>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return status(StatusCode::BAD_REQUEST, "the body is not JSON");
    };
    let key = match json.get("id") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(n @ serde_json::Value::Number(_)) => n.to_string(),
        _ => return status(StatusCode::UNPROCESSABLE_ENTITY, "the body has no `id`"),
    };
    let asked = asked(&vendor, key, &query);
    spawn(vendor, asked, headers, seen(&method, &uri, Some(json))).await
}

fn asked(vendor: &Vendor, key: String, query: &HashMap<String, String>) -> Asked {
    let query_key = vendor
        .opts
        .key_param
        .as_ref()
        .and_then(|name| query.get(name).cloned());
    Asked { key, query_key }
}

fn seen(method: &Method, uri: &Uri, body: Option<serde_json::Value>) -> Seen {
    Seen {
        method: method.to_string(),
        target: uri
            .path_and_query()
            .map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned()),
        body,
    }
}

/// Serves the call in a task of its own: like a real vendor, the sandbox
/// finishes and bills a call it has received even when the client goes away
/// before the answer (killed, or timed out), so a crash's calls in flight are
/// billed and the kill storm holds the ledger against a true bill.
async fn spawn(vendor: Arc<Vendor>, asked: Asked, headers: HeaderMap, seen: Seen) -> Response {
    if vendor.opts.record_headers {
        vendor
            .state
            .lock()
            .expect("sandbox lock")
            .requests_seen
            .push(seen);
    }
    if let Some(queued) = queued(&vendor, &asked.key) {
        return queued;
    }
    let answer = tokio::spawn(serve_call(vendor.clone(), asked, headers))
        .await
        .unwrap_or_else(|e| status(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()));
    dialect(&vendor.opts, answer)
}

/// `--queued`: the first calls of a key answered 202, unbilled.
fn queued(vendor: &Vendor, key: &str) -> Option<Response> {
    if vendor.opts.queued == 0 {
        return None;
    }
    let mut c = vendor.state.lock().expect("sandbox lock");
    let seen = c.queued_calls.entry(key.to_owned()).or_default();
    *seen += 1;
    if *seen > vendor.opts.queued {
        return None;
    }
    c.stats.requests += 1;
    c.stats.queued += 1;
    let body = serde_json::json!({"status": "queued", "message": "try again later"});
    Some((StatusCode::ACCEPTED, axum::Json(body)).into_response())
}

/// The statuses a vendor gives its own meanings (`--throttle-status`,
/// `--no-credits-status`): a 429 or 402 answer rewritten as Hunter's.
fn dialect(opts: &SandboxOptions, answer: Response) -> Response {
    let hunter = |code: StatusCode, id: &str, keep: Option<HeaderValue>| {
        let body = serde_json::json!({"errors": [{"id": id, "code": code.as_u16()}]});
        let mut r = (code, axum::Json(body)).into_response();
        if let Some(wait) = keep {
            r.headers_mut().insert(header::RETRY_AFTER, wait);
        }
        r
    };
    match answer.status() {
        StatusCode::TOO_MANY_REQUESTS if opts.throttle_status == 403 => {
            let wait = answer.headers().get(header::RETRY_AFTER).cloned();
            hunter(StatusCode::FORBIDDEN, "too_many_requests", wait)
        }
        StatusCode::PAYMENT_REQUIRED if opts.no_credits_status == 429 => {
            hunter(StatusCode::TOO_MANY_REQUESTS, "usage_exceeded", None)
        }
        _ => answer,
    }
}

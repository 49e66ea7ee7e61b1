//! The admin API, on its own listener.
//!
//! Endpoints:
//! - `GET  /api/v1/status`: this node's view of the pair (JSON, see [`StatusReport`]).
//! - `GET  /api/v1/pair`: both nodes' own reports side by side, the peer's fetched over the
//!   peer link, with front ends, store and the last minutes (see [`pair::PairReport`]).
//! - `GET  /metrics`: Prometheus text exposition (see `telemetry`).
//! - `GET  /`: the status page (self-contained HTML that polls the status).
//! - `POST /api/v1/switchover`: hand the active role to the peer (R11). Token required.
//! - `POST /api/v1/maintenance` with `{"on": true|false}`: maintenance on/off (R12). Token required.
//! - `GET|PUT|DELETE /api/v1/config/{key}`: one key of the replicated store (PUT's body is the
//!   JSON value); `GET /api/v1/config?prefix=P`: every key under a prefix;
//!   `GET|DELETE /api/v1/conflicts`: the conflict list, and clearing it. Token required.
//!
//! Mutating calls need `Authorization: Bearer <token>`, compared in constant time; without a
//! configured token they are refused. Every error is JSON `{"error": "..."}` with a status code.
//! The API never touches the engine: it sends requests to the node's engine task.

pub mod client;
pub mod pair;
pub mod serve;

use crate::store::api::{StoreError, StoreHandle};
use axum::extract::State;
use axum::extract::{Path as UrlPath, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// What the API asks of the engine task.
#[derive(Debug)]
pub enum AdminRequest {
    /// A fresh status report.
    Status(oneshot::Sender<StatusReport>),
    /// Start a switchover, to the named node if any; the answer says whether it started.
    Switchover(Option<String>, oneshot::Sender<Result<(), String>>),
    /// Maintenance on or off.
    Maintenance(bool, oneshot::Sender<Result<(), String>>),
}

/// `GET /api/v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// This node's id.
    pub node: String,
    /// This node's role.
    pub role: String,
    /// Highest term known.
    pub term: u64,
    /// The active node as far as this node knows.
    pub active_node: Option<String>,
    /// Active without a functioning standby.
    pub no_standby: bool,
    /// Whether this node may become active (registrar, health, maintenance).
    pub eligible: bool,
    /// Active although the registrar is unreachable, with no peer that reaches it (R7b).
    #[serde(default)]
    pub active_without_registrar: bool,
    /// The admin API takes a token on a non-loopback address without TLS.
    #[serde(default)]
    pub admin_token_in_clear: bool,
    /// Why the store's disk failed, while it waits to be reopened (the node is `failed`
    /// meanwhile, reason `store_failed`).
    #[serde(default)]
    pub store_error: Option<String>,
    /// The floating addresses (`[[vip]]`): whether this node holds each, and its last error.
    #[serde(default)]
    pub vips: Vec<crate::vip::VipStatus>,
    /// Whether writes are accepted (active, no hand-over in progress).
    pub accepting_writes: bool,
    /// A switchover or maintenance hand-over is in progress.
    pub handover_pending: bool,
    /// The peer, if one is configured.
    pub peer: Option<PeerReport>,
    /// The registrar check (the election precondition).
    pub registrar: RegistrarReport,
    /// The local service health check.
    pub service: ServiceReport,
    /// The newest role changes of this node, newest first.
    #[serde(default)]
    pub transitions: Vec<TransitionReport>,
    /// This node's store log position (a standby reports it only while it follows the
    /// active node's log; 0 before).
    #[serde(default)]
    pub store_position: u64,
    /// Cluster mode: the cluster as this node sees it (`None` in a pair).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterReport>,
}

/// The cluster as one member sees it (cluster mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterReport {
    /// The cluster's name.
    pub name: String,
    /// `member` roles as published (`active`, `standby`, `front`).
    pub member_role: String,
    /// Who holds the leader key.
    pub leader: Option<String>,
    /// This node's lease, once granted (hexadecimal, as etcdctl shows it).
    pub lease: Option<String>,
    /// While active: how long it may still act as such without a renewal.
    pub acting_for_ms: Option<u64>,
    /// Why etcd could not be read, if it could not.
    pub etcd_error: Option<String>,
    /// `demote` or `keep-if-peers-confirm`.
    #[serde(default)]
    pub on_store_loss: String,
    /// Acting as active past the lease, on every other member's confirmation (etcd cannot
    /// renew the lease now).
    #[serde(default)]
    pub on_confirmations: bool,
    /// Every member that published its state.
    pub members: Vec<ClusterMemberReport>,
}

/// One member as it published itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMemberReport {
    /// Its node id.
    pub node: String,
    /// Its role.
    pub role: String,
    /// Whether it may become active.
    pub eligible: bool,
    /// Its address.
    pub address: String,
    /// The highest term it knows.
    pub term: u64,
    /// Its `node.priority` is primary.
    #[serde(default)]
    pub primary: bool,
}

/// One role change, for the status page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionReport {
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// Role before.
    pub from: String,
    /// Role after.
    pub to: String,
    /// Term after.
    pub term: u64,
    /// Why (the rule).
    pub reason: String,
}

/// The peer as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerReport {
    /// The peer's id.
    pub id: String,
    /// Heard within `peer_dead_after`.
    pub contact: bool,
    /// The peer's role, once heard.
    pub role: Option<String>,
    /// Milliseconds since the last heartbeat, once heard.
    pub last_seen_ms: Option<u64>,
    /// The peer's protocol version, once heard.
    pub version: Option<String>,
    /// Different protocol major version (R13).
    pub version_mismatch: bool,
    /// Whether the peer reports itself eligible.
    pub eligible: Option<bool>,
    /// The peer's store log position, once heard.
    #[serde(default)]
    pub store_position: Option<u64>,
}

/// The registrar check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegistrarReport {
    /// Whether a registrar is configured.
    pub configured: bool,
    /// Reachable, once probed.
    pub reachable: Option<bool>,
    /// The target being probed.
    pub target: Option<String>,
    /// Round-trip time of the last probe.
    pub rtt_ms: Option<f64>,
    /// Why the last probe failed, if it did.
    pub last_error: Option<String>,
    /// Each configured registrar.
    #[serde(default)]
    pub targets: Vec<RegistrarTargetReport>,
}

/// One configured registrar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegistrarTargetReport {
    /// The configured URI.
    pub uri: String,
    /// After thresholds, once decided.
    pub reachable: Option<bool>,
    /// Transport and address of the last answer or attempt.
    pub target: Option<String>,
    /// Round trip of the last answer.
    pub rtt_ms: Option<f64>,
    /// Status code of the last answer.
    pub last_code: Option<u16>,
    /// Why the last probe failed.
    pub last_error: Option<String>,
}

/// The local service health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceReport {
    /// Whether a health check is configured.
    pub configured: bool,
    /// Healthy, once checked.
    pub healthy: Option<bool>,
}

/// `POST /api/v1/maintenance` body.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct MaintenanceRequest {
    /// On or off.
    pub on: bool,
}

/// Shared by the handlers.
struct AdminState {
    engine: mpsc::Sender<AdminRequest>,
    store: StoreHandle,
    token: Option<Vec<u8>>,
    metrics: PrometheusHandle,
    pair: pair::PairSources,
}

/// The router; `token` is what mutating calls (and the store) must present; `pair` makes
/// both nodes' reports.
pub fn router(
    engine: mpsc::Sender<AdminRequest>,
    store: StoreHandle,
    token: Option<String>,
    metrics: PrometheusHandle,
    pair: pair::PairSources,
) -> Router {
    let state = Arc::new(AdminState {
        engine,
        store,
        token: token.map(|t| t.trim().as_bytes().to_vec()),
        metrics,
        pair,
    });
    // Changes and the store: every route here needs the token.
    let guarded = Router::new()
        .route("/api/v1/switchover", post(switchover))
        .route("/api/v1/maintenance", post(maintenance))
        .route("/api/v1/config", get(config_list))
        .route(
            "/api/v1/config/{*key}",
            get(config_get).put(config_put).delete(config_delete),
        )
        .route("/api/v1/conflicts", get(conflicts).delete(conflicts_clear))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    Router::new()
        .route("/", get(page))
        .route("/metrics", get(render_metrics))
        .route("/api/v1/status", get(status))
        .route("/api/v1/pair", get(pair_report))
        .merge(guarded)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(axum::middleware::from_fn(count_requests))
        .with_state(state)
}

/// Refuses a call without the right token before its handler runs.
async fn require_token(
    State(state): State<Arc<AdminState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match authorize(&state, request.headers()) {
        Ok(()) => next.run(request).await,
        Err((code, reason)) => error(code, reason),
    }
}

/// Counts every answer by status code (`standby_admin_requests_total`).
async fn count_requests(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let response = next.run(request).await;
    crate::telemetry::admin_request(response.status().as_u16());
    response
}

fn error(code: StatusCode, message: &str) -> Response {
    (code, Json(serde_json::json!({ "error": message }))).into_response()
}

/// A store error as JSON with its status code: where the active node is for a write to the
/// standby, 400 for a bad key or value, 503 while paused or unconfirmed.
fn store_error(error: StoreError) -> Response {
    let code = match &error {
        StoreError::NotActive { .. } => StatusCode::CONFLICT,
        StoreError::Invalid(_) => StatusCode::BAD_REQUEST,
        StoreError::Paused | StoreError::Unconfirmed | StoreError::Closed => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        StoreError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut body = serde_json::json!({ "error": error.to_string() });
    if let StoreError::NotActive { active_node } = &error {
        body["active_node"] = serde_json::json!(active_node);
    }
    let mut response = (code, Json(body)).into_response();
    if matches!(error, StoreError::Paused | StoreError::Unconfirmed) {
        response.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("1"),
        );
    }
    response
}

/// A key's version as the API shows it.
fn version_json(key: &str, versioned: &crate::store::replica::Versioned) -> serde_json::Value {
    serde_json::json!({
        "key": key,
        "value": versioned.value,
        "revision": versioned.revision,
        "id": versioned.id.to_string(),
    })
}

/// `GET /api/v1/config/{key}`.
async fn config_get(
    State(state): State<Arc<AdminState>>,
    UrlPath(key): UrlPath<String>,
) -> Response {
    match state.store.get(&key).await {
        Ok(Some(versioned)) => Json(version_json(&key, &versioned)).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, &format!("no key {key:?}")),
        Err(e) => store_error(e),
    }
}

/// `PUT /api/v1/config/{key}` with the JSON value as the body.
async fn config_put(
    State(state): State<Arc<AdminState>>,
    UrlPath(key): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    let value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("the body must be a JSON value: {e}"),
            )
        }
    };
    match state.store.write(&key, Some(value)).await {
        Ok(ack) => Json(ack).into_response(),
        Err(e) => store_error(e),
    }
}

/// `DELETE /api/v1/config/{key}`.
async fn config_delete(
    State(state): State<Arc<AdminState>>,
    UrlPath(key): UrlPath<String>,
) -> Response {
    match state.store.write(&key, None).await {
        Ok(ack) => Json(ack).into_response(),
        Err(e) => store_error(e),
    }
}

/// `GET /api/v1/config?prefix=P`.
#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(default)]
    prefix: String,
}

async fn config_list(
    State(state): State<Arc<AdminState>>,
    Query(query): Query<ListQuery>,
) -> Response {
    match state.store.list(&query.prefix).await {
        Ok(list) => {
            let entries: Vec<_> = list
                .into_iter()
                .map(|(key, versioned)| version_json(&key, &versioned))
                .collect();
            Json(serde_json::json!({ "entries": entries })).into_response()
        }
        Err(e) => store_error(e),
    }
}

/// `GET /api/v1/conflicts`.
async fn conflicts(State(state): State<Arc<AdminState>>) -> Response {
    match state.store.conflicts().await {
        Ok(list) => {
            let conflicts: Vec<_> = list
                .into_iter()
                .map(|c| {
                    serde_json::json!({
                        "key": c.key,
                        "value": c.value,
                        "lost": c.lost.to_string(),
                        "won": c.won.to_string(),
                    })
                })
                .collect();
            Json(serde_json::json!({ "conflicts": conflicts })).into_response()
        }
        Err(e) => store_error(e),
    }
}

/// `DELETE /api/v1/conflicts`: clear the list (on the active node, replicated).
async fn conflicts_clear(State(state): State<Arc<AdminState>>) -> Response {
    match state.store.clear_conflicts().await {
        Ok(ack) => Json(ack).into_response(),
        Err(e) => store_error(e),
    }
}

/// Equal length and contents, in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A refused call: its status code and the reason shown to the caller.
type Refusal = (StatusCode, &'static str);

fn authorize(state: &AdminState, headers: &HeaderMap) -> Result<(), Refusal> {
    let Some(expected) = &state.token else {
        return Err((
            StatusCode::FORBIDDEN,
            "changes are disabled: no admin.token_file is configured on this node",
        ));
    };
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(token) if constant_time_eq(token.as_bytes(), expected) => Ok(()),
        Some(_) => Err((StatusCode::UNAUTHORIZED, "wrong token")),
        None => Err((
            StatusCode::UNAUTHORIZED,
            "missing token: send Authorization: Bearer <token>",
        )),
    }
}

async fn ask<T>(
    state: &AdminState,
    request: impl FnOnce(oneshot::Sender<T>) -> AdminRequest,
) -> Result<T, Refusal> {
    let (reply, answer) = oneshot::channel();
    let unavailable = || (StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down");
    state
        .engine
        .send(request(reply))
        .await
        .map_err(|_| unavailable())?;
    answer.await.map_err(|_| unavailable())
}

/// The status page: one self-contained document that polls `/api/v1/status`.
async fn page() -> Response {
    (
        [
            (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (axum::http::header::CACHE_CONTROL, "no-store"),
        ],
        include_str!("status.html"),
    )
        .into_response()
}

async fn render_metrics(State(state): State<Arc<AdminState>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::telemetry::render(&state.metrics),
    )
        .into_response()
}

async fn status(State(state): State<Arc<AdminState>>) -> Response {
    match ask(&state, AdminRequest::Status).await {
        Ok(report) => Json(report).into_response(),
        Err((code, reason)) => error(code, reason),
    }
}

async fn pair_report(State(state): State<Arc<AdminState>>) -> Response {
    match state.pair.report().await {
        Some(report) => Json(report).into_response(),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down"),
    }
}

/// `POST /api/v1/switchover` with no body, or `{"to": "NODE"}`.
#[derive(Debug, Deserialize)]
struct SwitchoverRequest {
    to: Option<String>,
}

async fn switchover(State(state): State<Arc<AdminState>>, body: axum::body::Bytes) -> Response {
    let to = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match serde_json::from_slice::<SwitchoverRequest>(&body) {
            Ok(request) => request.to,
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "expected no body, or a JSON body {\"to\": \"NODE\"}",
                )
            }
        }
    };
    match ask(&state, |reply| AdminRequest::Switchover(to, reply)).await {
        Ok(Ok(())) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "switchover": "started" })),
        )
            .into_response(),
        Ok(Err(reason)) => error(StatusCode::CONFLICT, &reason),
        Err((code, reason)) => error(code, reason),
    }
}

async fn maintenance(State(state): State<Arc<AdminState>>, body: axum::body::Bytes) -> Response {
    let Ok(request) = serde_json::from_slice::<MaintenanceRequest>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected a JSON body {\"on\": true} or {\"on\": false}",
        );
    };
    match ask(&state, |reply| AdminRequest::Maintenance(request.on, reply)).await {
        Ok(Ok(())) => Json(serde_json::json!({ "maintenance": request.on })).into_response(),
        Ok(Err(reason)) => error(StatusCode::CONFLICT, &reason),
        Err((code, reason)) => error(code, reason),
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}

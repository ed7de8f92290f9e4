//! The HTTP probe surface (hyper 1.x, HTTP/1 only). Handlers only read the leadership
//! snapshot; nothing here can change the election.
//!
//! Routes:
//! * `GET|HEAD /leader`: 200 on the leader, 503 elsewhere, with the leader document (JSON).
//!   The readiness probe of the pod, so a Service routes only to the leader.
//! * `GET|HEAD /`: `{"name": "<leader id or empty>"}`, as the kubernetes/contrib
//!   `leader-elector` sidecar answers, so its users can switch.
//! * `GET|HEAD /healthz`: 200 while the election loop runs (liveness); never depends on etcd.
//! * `GET|HEAD /status`: state, lease, times, transitions, last etcd error, version (JSON).
//! * `GET|HEAD /metrics`: Prometheus / OpenMetrics text.
//!
//! * `GET /leader/events`: Server-Sent Events; the `/leader` document now and on every change,
//!   a comment heartbeat every 15 s. A slow reader only ever gets the latest document: the
//!   stream reads a `watch` channel, so nobody waits for it.
//!
//! Any other path is 404; another method on a known path is 405 with `Allow`.
//!
//! The admin listener (pod-local, loopback by default) serves only `POST /resign`: give up
//! leadership now (200), or 409 when not the leader. Under `etcd-elector run` it always
//! answers 409 ([`Resign::Refused`]): a resign revokes the lease at once, while the command
//! may still run for its grace period, so the next holder could start beside it. Admin
//! routes are never on the public port.
//!
//! The port must keep answering probes whatever clients do: each connection runs in its own
//! task, headers must arrive within [`HEADER_READ_TIMEOUT`] and fit in [`MAX_BUF_SIZE`], and
//! at most [`MAX_CONNECTIONS`] connections are served at once (more wait to be accepted).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::election::ElectionHandle;
use crate::leadership::{Receiver, Snapshot};
use crate::metrics::Metrics;

/// A client must send its request headers within this time or be disconnected.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head accepted (hyper's minimum is 8 KiB); larger heads get 431.
pub const MAX_BUF_SIZE: usize = 16 * 1024;
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 4096;
/// How long open connections get to finish when the server stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Heartbeat period of the event stream, so proxies and clients see a live connection.
const SSE_HEARTBEAT: Duration = Duration::from_secs(15);

const JSON: &str = "application/json";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the handlers read.
#[derive(Clone)]
pub struct AppState {
    pub leadership: Receiver,
    pub metrics: Metrics,
}

/// Response body: a whole buffer, or the event stream.
pub type Body = BoxBody<Bytes, Infallible>;

/// Serve the public routes on `listener` until `stop` fires.
pub async fn serve(listener: TcpListener, state: AppState, stop: CancellationToken) {
    let state = Arc::new(state);
    serve_with(listener, stop, move |req| {
        let state = state.clone();
        async move { route(&req, &state) }
    })
    .await;
}

/// What `POST /resign` may do on an admin listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resign {
    /// Give leadership up through the election (the sidecar).
    Allowed,
    /// Always 409 with this reason (`run`, whose lock may only go after its command's group).
    Refused(&'static str),
}

/// Serve the admin routes on `listener` until `stop` fires.
pub async fn serve_admin(
    listener: TcpListener,
    election: ElectionHandle,
    resign: Resign,
    stop: CancellationToken,
) {
    serve_with(listener, stop, move |req| {
        let election = election.clone();
        async move { admin_route(req.method(), req.uri().path(), &election, resign).await }
    })
    .await;
}

/// The accept loop shared by both listeners: hardened HTTP/1, one task per connection, a cap
/// on connections, and a bounded drain when `stop` fires.
async fn serve_with<H, F>(listener: TcpListener, stop: CancellationToken, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_BUF_SIZE)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            permit = limit.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Usually EMFILE: back off briefly instead of spinning or giving up.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = hyper::service::service_fn(move |req| {
            let response = handler(req);
            async move { Ok::<_, Infallible>(response.await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(DRAIN_TIMEOUT) => {
            tracing::debug!("open HTTP connections did not finish in time");
        }
    }
}

/// Answer one request from the current snapshot.
pub fn route(req: &Request<Incoming>, state: &AppState) -> Response<Body> {
    route_parts(req.method(), req.uri().path(), state)
}

fn route_parts(method: &Method, path: &str, state: &AppState) -> Response<Body> {
    let read = |answer: fn(&AppState, &Snapshot, Instant) -> Response<Body>| {
        if method != Method::GET && method != Method::HEAD {
            return method_not_allowed("GET, HEAD");
        }
        // Read the clock after taking the snapshot, so the claim deadline is checked against
        // the moment of answering, never an earlier one.
        let snapshot = state.leadership.borrow().clone();
        answer(state, &snapshot, Instant::now())
    };
    match path {
        "/leader" => read(|_, snapshot, now| {
            let doc = snapshot.leader_doc(now);
            let status = if doc.is_leader {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(status, &doc)
        }),
        "/" => read(|_, snapshot, now| {
            json(
                StatusCode::OK,
                &serde_json::json!({ "name": snapshot.leader_at(now).unwrap_or("") }),
            )
        }),
        "/healthz" => read(|state, _, _| {
            // The election task owns the sender; once it is gone the loop is dead.
            if state.leadership.has_changed().is_ok() {
                text(StatusCode::OK, "ok\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "election loop stopped\n")
            }
        }),
        "/status" => read(|_, snapshot, now| json(StatusCode::OK, &snapshot.status_doc(now))),
        "/leader/events" => read(|state, _, _| leader_events(state.leadership.clone())),
        "/metrics" => read(metrics),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `/metrics`. The leader gauge and the lease figures depend on the clock, so they are
/// computed at scrape time.
fn metrics(state: &AppState, snapshot: &Snapshot, now: Instant) -> Response<Body> {
    state
        .metrics
        .is_leader
        .set(i64::from(snapshot.is_leader_at(now)));
    state.metrics.lease_ttl_seconds.set(
        snapshot
            .view
            .lease_ttl
            .map_or(0, |ttl| i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)),
    );
    state
        .metrics
        .app_healthy
        .set(i64::from(snapshot.view.app_healthy.unwrap_or(true)));
    state
        .metrics
        .no_healthy_successor
        .set(i64::from(snapshot.view.no_healthy_successor));
    state.metrics.lease_remaining_seconds.set(
        snapshot
            .view
            .lease_expires_at
            .map_or(0.0, |t| t.saturating_duration_since(now).as_secs_f64()),
    );
    match state.metrics.encode() {
        Ok(body) => with_type(StatusCode::OK, OPENMETRICS, body),
        Err(e) => {
            tracing::error!(error = %e, "encoding metrics failed");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "metrics encoding failed\n",
            )
        }
    }
}

/// 405 with the methods the path takes.
fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    resp.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    resp
}

/// `POST /resign` and nothing else.
async fn admin_route(
    method: &Method,
    path: &str,
    election: &ElectionHandle,
    resign: Resign,
) -> Response<Body> {
    if path != "/resign" {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if method != Method::POST {
        return method_not_allowed("POST");
    }
    if let Resign::Refused(reason) = resign {
        tracing::info!(reason, "resign refused");
        return json(
            StatusCode::CONFLICT,
            &serde_json::json!({ "resigned": false, "error": reason }),
        );
    }
    if election.resign().await {
        tracing::info!("resigned on request");
        json(StatusCode::OK, &serde_json::json!({ "resigned": true }))
    } else {
        json(
            StatusCode::CONFLICT,
            &serde_json::json!({ "resigned": false, "error": "not the leader" }),
        )
    }
}

/// The event stream: the current document first, then each change, heartbeats between.
fn leader_events(leadership: Receiver) -> Response<Body> {
    struct Stream {
        leadership: Receiver,
        last: Option<String>,
        heartbeat: tokio::time::Interval,
    }
    let start = Stream {
        leadership,
        last: None,
        heartbeat: tokio::time::interval_at(Instant::now() + SSE_HEARTBEAT, SSE_HEARTBEAT),
    };
    let events = futures_util::stream::unfold(start, |mut st| async move {
        loop {
            let snapshot = st.leadership.borrow_and_update().clone();
            let doc = serde_json::to_string(&snapshot.leader_doc(Instant::now())).ok()?;
            if st.last.as_ref() != Some(&doc) {
                let event = format!("event: leader\ndata: {doc}\n\n");
                st.last = Some(doc);
                return Some((Ok(Frame::data(Bytes::from(event))), st));
            }
            tokio::select! {
                changed = st.leadership.changed() => {
                    // The election has stopped: end the stream so the client reconnects.
                    changed.ok()?;
                }
                _ = st.heartbeat.tick() => {
                    return Some((Ok(Frame::data(Bytes::from_static(b": heartbeat\n\n"))), st));
                }
            }
        }
    });
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(events)));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    match serde_json::to_string(value) {
        Ok(mut body) => {
            body.push('\n');
            with_type(status, JSON, body)
        }
        Err(e) => {
            tracing::error!(error = %e, "encoding JSON failed");
            text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n")
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    with_type(status, "text/plain; charset=utf-8", body.to_string())
}

fn with_type(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Accept-queue length asked of the kernel (capped by `net.core.somaxconn`). The default of
/// 128 overflows under a burst of connections, and a probe whose SYN is dropped is retried
/// only after a second: the kubelet's default probe timeout.
const LISTEN_BACKLOG: u32 = 4096;

/// Bind the listener; the real address (port 0 resolved) is logged by the caller.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std and tokio do: a restarted sidecar can bind again while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::election::machine::{Role, View};
    use crate::leadership::{Publisher, Snapshot};

    fn state(view: View) -> (AppState, Publisher) {
        let (publisher, leadership) =
            Publisher::new(Snapshot::initial("me".into(), "/k".into(), view));
        (
            AppState {
                leadership,
                metrics: Metrics::new(),
            },
            publisher,
        )
    }

    fn leader_view() -> View {
        let now = Instant::now();
        View {
            role: Role::Leader,
            leader: Some("me".into()),
            holder_lease: None,
            fencing_token: Some(9),
            claim_until: Some(now + Duration::from_secs(30)),
            leader_since: Some(now),
            lease_id: Some(1),
            lease_expires_at: Some(now + Duration::from_secs(31)),
            lease_ttl: Some(Duration::from_secs(7)),
            app_healthy: None,
            no_healthy_successor: false,
        }
    }

    fn follower_view() -> View {
        View {
            role: Role::Follower,
            leader: Some("other".into()),
            holder_lease: Some(77),
            fencing_token: Some(3),
            claim_until: None,
            leader_since: None,
            lease_id: Some(2),
            lease_expires_at: None,
            lease_ttl: None,
            app_healthy: None,
            no_healthy_successor: false,
        }
    }

    async fn body(resp: Response<Body>) -> String {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn leader_answers_200_with_its_document() {
        let (state, _p) = state(leader_view());
        let resp = route_parts(&Method::GET, "/leader", &state);
        assert_eq!(resp.status(), StatusCode::OK);
        let doc: serde_json::Value = serde_json::from_str(&body(resp).await).unwrap();
        assert_eq!(
            doc,
            serde_json::json!({"is_leader": true, "identity": "me", "leader": "me", "fencing_token": 9, "key": "/k"})
        );
    }

    #[tokio::test]
    async fn follower_answers_503_and_names_the_leader() {
        let (state, _p) = state(follower_view());
        let resp = route_parts(&Method::GET, "/leader", &state);
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        let doc: serde_json::Value = serde_json::from_str(&body(resp).await).unwrap();
        assert_eq!(doc["leader"], "other");
        assert_eq!(doc["is_leader"], false);
        let resp = route_parts(&Method::GET, "/", &state);
        assert_eq!(body(resp).await.trim(), r#"{"name":"other"}"#);
    }

    #[tokio::test]
    async fn unknown_path_is_404_and_wrong_method_is_405_with_allow() {
        let (state, _p) = state(follower_view());
        assert_eq!(
            route_parts(&Method::GET, "/nope", &state).status(),
            StatusCode::NOT_FOUND
        );
        let resp = route_parts(&Method::POST, "/leader", &state);
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(resp.headers()[ALLOW], "GET, HEAD");
    }

    #[tokio::test]
    async fn healthz_fails_once_the_election_loop_is_gone() {
        let (state, publisher) = state(follower_view());
        assert_eq!(
            route_parts(&Method::GET, "/healthz", &state).status(),
            StatusCode::OK
        );
        drop(publisher);
        assert_eq!(
            route_parts(&Method::GET, "/healthz", &state).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[tokio::test]
    async fn metrics_report_leadership_at_scrape_time() {
        let (state, _p) = state(leader_view());
        let resp = route_parts(&Method::GET, "/metrics", &state);
        assert_eq!(resp.status(), StatusCode::OK);
        let text = body(resp).await;
        assert!(text.contains("elector_is_leader 1"));
        // As granted by etcd (the view's), not as asked.
        assert!(text.contains("elector_lease_ttl_seconds 7"), "{text}");
    }
}

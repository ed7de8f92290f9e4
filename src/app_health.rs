//! `--app-health URL`: the application's own health, so that a leader whose application is
//! broken does not keep the lock while healthy standbys wait.
//!
//! Every [`PERIOD`] this asks the URL (typically the application's readiness endpoint on
//! localhost) with a GET; a 2xx answer within the period is healthy, anything else (another
//! status, a refused connection, no answer in time) is not. Only changes are reported to the
//! election, whose machine decides what they mean (see `Machine::with_app_health`).

use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::{interval, timeout, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::election::ElectionHandle;

/// How often the application is asked: the kubelet's own probe period at its finest.
pub const PERIOD: Duration = Duration::from_secs(1);

/// Ask `url` every [`PERIOD`] and report each change of the answer until `stop` fires.
pub async fn watch(url: Uri, election: ElectionHandle, stop: CancellationToken) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut ticks = interval(PERIOD);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last: Option<bool> = None;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.cancelled() => return,
        }
        let answer = timeout(PERIOD, client.get(url.clone())).await;
        let (healthy, why) = match answer {
            Ok(Ok(resp)) if resp.status().is_success() => (true, resp.status().to_string()),
            Ok(Ok(resp)) => (false, resp.status().to_string()),
            Ok(Err(e)) => (false, e.to_string()),
            Err(_) => (false, format!("no answer within {PERIOD:?}")),
        };
        if last != Some(healthy) {
            if healthy {
                tracing::info!(url = %url, answer = why.as_str(), event = "app_healthy", "the application is healthy");
            } else {
                tracing::warn!(url = %url, answer = why.as_str(), event = "app_unhealthy", "the application is unhealthy");
            }
            election.app_health(healthy).await;
            last = Some(healthy);
        }
    }
}

//! Prometheus metrics: one registry, its handles, and the text encoding for `/metrics`.
//!
//! Handles are cheap clones of atomics: the election task updates counters, and the leader
//! gauge is computed from the snapshot at scrape time so it can never disagree with
//! `/leader`.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// Labels of `elector_etcd_errors_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

/// The metric handles.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub is_leader: Gauge,
    pub leader_transitions: Counter,
    pub campaigns: Counter,
    pub etcd_errors: Family<OpLabel, Counter>,
    pub lease_ttl_seconds: Gauge,
    pub lease_remaining_seconds: Gauge<f64, AtomicU64>,
    pub keepalive_rtt_seconds: Histogram,
    pub app_healthy: Gauge,
    pub no_healthy_successor: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric under the `elector` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("elector");
        let is_leader = Gauge::default();
        let leader_transitions = Counter::default();
        let campaigns = Counter::default();
        let etcd_errors = Family::<OpLabel, Counter>::default();
        // Every operation shows from the start, at 0, so rates and alerts work before the
        // first failure.
        for op in crate::election::etcd::Op::ALL {
            let _ = etcd_errors.get_or_create(&OpLabel { op: op.as_str() });
        }
        let lease_ttl_seconds = Gauge::default();
        let lease_remaining_seconds = Gauge::<f64, AtomicU64>::default();
        // Loopback round trips are sub-millisecond; a slow etcd is tens to hundreds of ms.
        let keepalive_rtt_seconds = Histogram::new([
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ]);
        registry.register(
            "is_leader",
            "1 while this replica may claim leadership, else 0",
            is_leader.clone(),
        );
        registry.register(
            "leader_transitions",
            "Times this replica became leader or stepped down",
            leader_transitions.clone(),
        );
        registry.register("campaigns", "Campaign transactions sent", campaigns.clone());
        registry.register(
            "etcd_errors",
            "Failed etcd requests by operation",
            etcd_errors.clone(),
        );
        registry.register(
            "lease_ttl_seconds",
            "TTL of the current lease as granted or last returned by etcd",
            lease_ttl_seconds.clone(),
        );
        registry.register(
            "lease_remaining_seconds",
            "Seconds until etcd may expire the current lease, at the earliest",
            lease_remaining_seconds.clone(),
        );
        registry.register(
            "keepalive_rtt_seconds",
            "Round trip of lease keep-alive requests",
            keepalive_rtt_seconds.clone(),
        );
        let app_healthy = Gauge::default();
        registry.register(
            "app_healthy",
            "1 while the application answers its health URL with 2xx (always 1 without --app-health)",
            app_healthy.clone(),
        );
        let no_healthy_successor = Gauge::default();
        registry.register(
            "no_healthy_successor",
            "1 while leading with an unhealthy application because no replica with a healthy one is registered",
            no_healthy_successor.clone(),
        );
        registry.register(
            "build",
            "Build information",
            Info::new(VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        Metrics {
            registry: Arc::new(registry),
            is_leader,
            leader_transitions,
            campaigns,
            etcd_errors,
            lease_ttl_seconds,
            lease_remaining_seconds,
            keepalive_rtt_seconds,
            app_healthy,
            no_healthy_successor,
        }
    }

    /// Count one failed etcd request.
    pub fn etcd_error(&self, op: &'static str) {
        self.etcd_errors.get_or_create(&OpLabel { op }).inc();
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_every_metric_name() {
        let m = Metrics::new();
        m.etcd_error("grant");
        let text = m.encode().unwrap();
        for name in [
            "elector_is_leader",
            "elector_leader_transitions_total",
            "elector_campaigns_total",
            "elector_etcd_errors_total{op=\"grant\"} 1",
            "elector_lease_ttl_seconds",
            "elector_lease_remaining_seconds",
            "elector_keepalive_rtt_seconds_bucket",
            "elector_build_info{version=",
            "elector_app_healthy",
            "elector_no_healthy_successor",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}

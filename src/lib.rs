//! etcd-elector: a leader-election sidecar on an etcd lease.
//!
//! See `ARCHITECTURE.md` for how the modules fit: [`config`] builds the settings,
//! [`election`] runs the election (the pure rules in [`election::machine`], the etcd calls in
//! [`election::etcd`]), [`leadership`] carries its state to readers, [`http`] and [`metrics`]
//! serve it, and [`shutdown`] turns signals into a cancellation.

pub mod app;
pub mod config;
pub mod election;
pub mod http;
pub mod leadership;
pub mod metrics;
pub mod shutdown;

//! etcd-elector: a leader-election sidecar on an etcd lease.
//!
//! See `ARCHITECTURE.md` for how the modules fit: [`config`] builds the settings,
//! [`election`] runs the election (the pure rules in [`election::machine`], the etcd calls in
//! [`election::etcd`]), [`leadership`] carries its state to readers, [`http`] and [`metrics`]
//! serve it, and [`shutdown`] turns signals into a cancellation. [`run`] supervises a command
//! under the lock, with [`process`] for its process group and [`shim`] between them, so the
//! group dies with `run`.

pub mod app;
pub mod app_health;
pub mod backoff;
pub mod config;
pub mod election;
pub mod http;
pub mod leader_file;
pub mod leadership;
pub mod metrics;
pub mod process;
pub mod run;
pub mod shim;
pub mod shutdown;
pub mod status;

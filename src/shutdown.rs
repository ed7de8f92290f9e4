//! Signals to one cancellation token.
//!
//! SIGTERM is how Kubernetes (and a container runtime, with us as PID 1) asks us to stop;
//! SIGINT is Ctrl-C in a terminal. The first starts the ordered handoff: stop claiming, revoke
//! the lease, exit. A second one cancels the abort token: the sidecar then exits at once, and
//! `run` SIGKILLs its command's process group and exits at once (the revoke gets at most
//! 0.5 s), so an operator is never stuck behind a slow etcd. As PID 1 the kernel applies no default action to these signals, which is why the
//! handlers are installed before anything else happens.

use futures_util::StreamExt;
use signal_hook::consts::signal::{SIGINT, SIGTERM};
use signal_hook_tokio::{Handle, Signals};
use tokio_util::sync::CancellationToken;

/// Installed signal handlers; [`Shutdown::spawn`] starts listening.
pub struct Shutdown {
    signals: Signals,
    token: CancellationToken,
    abort: CancellationToken,
}

impl Shutdown {
    /// Install the handlers now, so a signal that arrives while we start is not lost.
    pub fn install() -> std::io::Result<Self> {
        let signals = Signals::new([SIGTERM, SIGINT])?;
        Ok(Shutdown {
            signals,
            token: CancellationToken::new(),
            abort: CancellationToken::new(),
        })
    }

    /// The token cancelled by the first signal.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// The token cancelled by the second signal.
    pub fn abort_token(&self) -> CancellationToken {
        self.abort.clone()
    }

    /// Listen in the background. The returned handle stops the listener.
    pub fn spawn(self) -> Handle {
        let handle = self.signals.handle();
        let Shutdown {
            mut signals,
            token,
            abort,
        } = self;
        tokio::spawn(async move {
            let mut seen = 0u32;
            while let Some(signal) = signals.next().await {
                seen += 1;
                let name = if signal == SIGTERM {
                    "SIGTERM"
                } else {
                    "SIGINT"
                };
                if seen == 1 {
                    tracing::info!(signal = name, "shutting down: giving up leadership");
                    token.cancel();
                } else {
                    tracing::warn!(signal = name, "second signal: stopping now");
                    abort.cancel();
                }
            }
        });
        handle
    }
}

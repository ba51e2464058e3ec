//! SIGINT and SIGTERM during a long operation: the first cancels it (the engine rolls back, or
//! finishes past the commit point, and the command prints its usual result); a second exits at
//! once. A cancelled CI job sends exactly this SIGTERM.

use tokio_util::sync::CancellationToken;

use crate::output::errln;

/// A token cancelled by the first SIGINT or SIGTERM; the second signal exits the process at
/// once (130 for SIGINT, 143 for SIGTERM). The handlers are in place when this returns: a
/// signal from then on is never the default one (death with nothing said).
pub(crate) fn interrupt_token() -> CancellationToken {
    let token = CancellationToken::new();
    let first = token.clone();
    let mut signals = Signals::new();
    tokio::spawn(async move {
        let mut seen = false;
        loop {
            let code = signals.next().await;
            if seen {
                errln!("interrupted again: exiting now");
                std::process::exit(code);
            }
            seen = true;
            errln!(
                "interrupted: stopping the operation safely (press Ctrl-C again to exit at once)"
            );
            first.cancel();
        }
    });
    token
}

/// Wait for the first SIGINT or SIGTERM (a server's stop).
pub(crate) async fn wait_for_signal() {
    Signals::new().next().await;
}

/// SIGINT and SIGTERM, listened to from creation on: one listener for the life of the
/// operation, so a second signal that comes right after the first is not missed.
struct Signals {
    #[cfg(unix)]
    unix: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                unix: signal(SignalKind::interrupt())
                    .and_then(|int| Ok((int, signal(SignalKind::terminate())?)))
                    .ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// The next SIGINT (→ 130) or SIGTERM (→ 143).
    async fn next(&mut self) -> i32 {
        #[cfg(unix)]
        if let Some((int, term)) = &mut self.unix {
            return tokio::select! {
                _ = int.recv() => 130,
                _ = term.recv() => 143,
            };
        }
        let _ = tokio::signal::ctrl_c().await;
        130
    }
}

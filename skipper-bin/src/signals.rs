//! SIGINT and SIGTERM during a long operation: the first cancels it (the engine rolls back, or
//! finishes past the commit point, and the command prints its usual result); a second exits at
//! once. A cancelled CI job sends exactly this SIGTERM.

use tokio_util::sync::CancellationToken;

use crate::output::errln;

/// A token cancelled by the first SIGINT or SIGTERM; the second signal exits the process at
/// once (130 for SIGINT, 143 for SIGTERM).
pub(crate) fn interrupt_token() -> CancellationToken {
    let token = CancellationToken::new();
    let first = token.clone();
    tokio::spawn(async move {
        let mut seen = false;
        loop {
            let code = next_signal().await;
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
    next_signal().await;
}

/// Wait for SIGINT (→ 130) or SIGTERM (→ 143).
async fn next_signal() -> i32 {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            return tokio::select! {
                _ = tokio::signal::ctrl_c() => 130,
                _ = term.recv() => 143,
            };
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    130
}

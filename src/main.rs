//! The `freshen` binary: parse the command line, build the runtime, wire the
//! signals, call the library, map the outcome to an exit code.

use freshen::{Exit, cli::Cli, error::exit_of};
use tokio_util::sync::CancellationToken;

fn main() {
    let cli = Cli::from_args();
    let runtime = tokio::runtime::Runtime::new().expect("cannot start the tokio runtime");
    let code = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(signals(shutdown.clone()));
        match freshen::run(cli, shutdown).await {
            Ok(exit) => exit.code(),
            Err(err) => {
                eprintln!("error: {err:#}");
                exit_of(&err).0.code()
            }
        }
    });
    // Do not wait for tasks still parked on the network: everything that matters
    // has been checkpointed by now.
    runtime.shutdown_background();
    std::process::exit(code);
}

/// First SIGINT, SIGTERM or SIGHUP: stop taking work, drain, checkpoint. Second:
/// exit now; the run lock dies with the process (an OS file lock, a database
/// session), so nothing is left that blocks the next run.
///
/// SIGHUP too: a terminal closed or an ssh session dropped under a run would
/// otherwise kill it without a checkpoint, losing answers already paid for.
async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        eprintln!(
            "warning: cannot listen for SIGINT/SIGTERM/SIGHUP; an interrupt will not checkpoint"
        );
        return;
    };
    for first in [true, false] {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
            _ = hup.recv() => {}
        }
        // After a SIGHUP the terminal may be gone: a failed write must not stop
        // the shutdown (eprintln! would panic), so cancel first and ignore it.
        use std::io::Write;
        if first {
            shutdown.cancel();
            let _ = writeln!(
                std::io::stderr(),
                "stopping: finishing calls in flight and checkpointing (again to exit at once)"
            );
        } else {
            let _ = writeln!(std::io::stderr(), "exiting at once");
            std::process::exit(Exit::Interrupted.code());
        }
    }
}

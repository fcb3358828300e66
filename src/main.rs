//! The `freshen` binary: parse the command line, build the runtime, wire the
//! signals, call the library, map the outcome to an exit code.

use clap::Parser;
use freshen::{Exit, cli::Cli, error::is_usage};
use tokio_util::sync::CancellationToken;

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("cannot start the tokio runtime");
    let code = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(signals(shutdown.clone()));
        match freshen::run(cli, shutdown).await {
            Ok(exit) => exit.code(),
            Err(err) => {
                eprintln!("error: {err:#}");
                if is_usage(&err) {
                    Exit::Usage.code()
                } else {
                    Exit::Error.code()
                }
            }
        }
    });
    // Do not wait for tasks still parked on the network: everything that matters
    // has been checkpointed by now.
    runtime.shutdown_background();
    std::process::exit(code);
}

/// First SIGINT or SIGTERM: stop taking work, drain, checkpoint. Second: exit now.
async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        eprintln!("warning: cannot listen for SIGINT/SIGTERM; an interrupt will not checkpoint");
        return;
    };
    for first in [true, false] {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        if first {
            eprintln!(
                "stopping: finishing calls in flight and checkpointing (again to exit at once)"
            );
            shutdown.cancel();
        } else {
            eprintln!("exiting at once");
            std::process::exit(Exit::Interrupted.code());
        }
    }
}

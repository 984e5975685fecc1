use std::process::ExitCode;

use clap::Parser;

// glibc's malloc spent a third of the server's CPU on list pages (perf, BENCHMARKS.md);
// mimalloc's per-thread heaps avoid its arena locks and consolidation.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    annotask::telemetry::init_tracing();
    let cli = annotask::cli::Cli::parse();
    match annotask::cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("annotask: {err}");
            ExitCode::FAILURE
        }
    }
}

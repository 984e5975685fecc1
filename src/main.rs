use std::process::ExitCode;

use clap::Parser;

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

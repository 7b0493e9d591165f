//! `kiln-enroll`: parses the command line, sets up logging on stderr and runs the command
//! (all logic lives in the library).

use clap::Parser;

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // journald and log files get plain text; colours only on a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = kiln_enroll::cli::Cli::parse();
    if let Err(e) = kiln_enroll::cli::run(cli) {
        eprintln!("kiln-enroll: {e:#}");
        std::process::exit(1);
    }
}

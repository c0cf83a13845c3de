use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tally_admin::run(tally_admin::Cli::parse()).await
}

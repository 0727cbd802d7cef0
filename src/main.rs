//! Thin: parse arguments, run, map the result to an exit code.

use clap::Parser;

fn main() {
    let cli = kiln::cli::Cli::parse();
    let code = match kiln::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            // Spec errors carry their own file:line:col rendering; others show their chain.
            if let Some(spec) = e.downcast_ref::<kiln::error::SpecErrors>() {
                eprintln!("error: {spec}");
            } else {
                eprintln!("error: {e:#}");
            }
            1
        }
    };
    std::process::exit(code);
}

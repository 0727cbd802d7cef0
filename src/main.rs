//! Thin: parse arguments, run, map the result to an exit code.

use clap::Parser;

fn main() {
    // `kiln plan lab | head`: when the reader goes away, end quietly as Unix tools do
    // (killed by SIGPIPE) instead of panicking on the failed write. Rust ignores SIGPIPE
    // by default; restore the default action before anything is printed.
    // SAFETY: called first, single-threaded, with a valid signal and handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Usage errors exit 1, never 2: 2 means "changes/drift" to every CI script.
    let cli = match kiln::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let code = match kiln::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            // Spec errors carry their own file:line:col rendering; others show their chain.
            if let Some(spec) = e.downcast_ref::<kiln::spec::error::SpecErrors>() {
                eprintln!("error: {spec}");
            } else {
                eprintln!("error: {e:#}");
            }
            1
        }
    };
    std::process::exit(code);
}

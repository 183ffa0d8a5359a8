//! `bams`: the one binary. Thin: parses arguments, opens the repository, calls the crates.

mod agent;
mod cli;
mod commands;
mod flash_cmd;
mod install_cmds;
mod mount;
mod output;
mod server_cmds;
mod session;
mod tape_cmds;

use std::process::ExitCode;

use clap::Parser;

/// Exit codes of docs/design.md §4.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Error.
    pub const ERROR: u8 = 1;
    /// Partial: some files unreadable or unrestorable; the rest succeeded.
    pub const PARTIAL: u8 = 3;
}

/// glibc gives every thread that allocates its own arena, and freed multi-MiB buffers linger in
/// them; the pipeline's and the restorer's threads would each keep tens of MiB resident. Two
/// arenas cost nothing measurable in speed and cut peak RSS by ~20% (bench/README.md).
/// glibc also raises its mmap threshold to the size of each large buffer freed (up to 32 MiB),
/// after which 16 MiB packs come from the arenas and stay resident once freed; a fixed 4 MiB
/// threshold returns every pack-sized buffer to the kernel (first tree backup 155 -> 114 MiB
/// peak, restore 173 -> 137 MiB, same speed).
#[allow(unsafe_code)]
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: called first thing in main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = cli::Cli::parse();
    let level = match cli.global.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    // The server sets up its own logging (text or JSON, with timestamps) from its config.
    if !matches!(cli.command, cli::Command::Server(_)) {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("BAMS_LOG").unwrap_or_else(|_| level.into()))
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .without_time()
            .with_target(false)
            .init();
    }
    match commands::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit::ERROR)
        }
    }
}

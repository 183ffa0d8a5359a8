//! The one door to the operating system. Every command the appliance runs (mkfs, mount, mtx,
//! tgtadm, bacula-sd, journalctl…) is a [`Cmd`]: a program and an argument vector (never a
//! shell string), a timeout, and optional standard input. [`SystemRunner`] runs it and logs
//! what ran, how it ended and how long it took; [`ScriptedRunner`] stands in for machines
//! without the real device, answering with recorded outputs and checking the exact vectors.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

/// A command to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd {
    /// Program name or path.
    pub program: String,
    /// Arguments, one element each.
    pub args: Vec<String>,
    /// Killed after this long.
    pub timeout: Duration,
    /// Bytes fed to standard input.
    pub stdin: Option<Vec<u8>>,
    /// Indexes into `args` of secrets (passwords): shown as `***` in logs and errors.
    pub secret_args: Vec<usize>,
}

impl Cmd {
    /// `program args…` with the default 60 s timeout.
    pub fn new<I, S>(program: &str, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            program: program.to_string(),
            args: args.into_iter().map(Into::into).collect(),
            timeout: Duration::from_secs(60),
            stdin: None,
            secret_args: Vec::new(),
        }
    }

    /// Append a secret argument (a password): it runs as given but is never logged.
    pub fn secret_arg(mut self, value: impl Into<String>) -> Self {
        self.secret_args.push(self.args.len());
        self.args.push(value.into());
        self
    }

    /// Another timeout.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Feed `data` on standard input.
    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(data.into());
        self
    }

    /// The vector as one list (program first), for logs and expectations.
    pub fn argv(&self) -> Vec<String> {
        std::iter::once(self.program.clone()).chain(self.args.iter().cloned()).collect()
    }
}

impl std::fmt::Display for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Quoted per argument so a log line shows exactly where each argument ends; secrets
        // never reach a log line or an error message.
        let args = self.args.iter().enumerate().map(|(i, a)| if self.secret_args.contains(&i) { "***" } else { a });
        let parts: Vec<String> = std::iter::once(self.program.as_str()).chain(args).map(|a| format!("{a:?}")).collect();
        f.write_str(&parts.join(" "))
    }
}

/// How a command ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CmdOutput {
    /// Exit code (`None` when killed by a signal).
    pub status: Option<i32>,
    /// Standard output (lossy UTF-8).
    pub stdout: String,
    /// Standard error (lossy UTF-8).
    pub stderr: String,
}

impl CmdOutput {
    /// A successful run printing `stdout`.
    pub fn ok(stdout: &str) -> Self {
        Self { status: Some(0), stdout: stdout.to_string(), stderr: String::new() }
    }

    /// A failed run with `code` and `stderr`.
    pub fn failed(code: i32, stderr: &str) -> Self {
        Self { status: Some(code), stdout: String::new(), stderr: stderr.to_string() }
    }
}

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The program is not installed.
    #[error("{program} is not installed (or not in PATH)")]
    NotInstalled {
        /// The program.
        program: String,
    },
    /// It ran longer than its timeout and was killed.
    #[error("{cmd} did not finish within {secs} s and was stopped")]
    Timeout {
        /// The command line.
        cmd: String,
        /// The timeout.
        secs: u64,
    },
    /// It exited non-zero; `stderr` says why (its standard output when standard error was
    /// empty; the API passes it on in `details`).
    #[error("{cmd} failed (exit {status:?}): {stderr}")]
    Failed {
        /// The command line.
        cmd: String,
        /// Exit code.
        status: Option<i32>,
        /// What it printed on standard error.
        stderr: String,
    },
    /// Starting or talking to it failed.
    #[error("running {cmd}: {source}")]
    Io {
        /// The command line.
        cmd: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A scripted runner got a command it did not expect (a test failure).
    #[error("unexpected command {0}")]
    Unexpected(String),
}

/// Runs commands.
#[async_trait]
pub trait CommandRunner: Send + Sync {
    /// Run `cmd` to completion (or its timeout) and return what it printed, whatever its exit
    /// code; only a missing program, a timeout or an I/O failure is an error.
    async fn output(&self, cmd: &Cmd) -> Result<CmdOutput, RunError>;

    /// Start `cmd` (no timeout) and hand over its standard output line by line until it exits;
    /// dropping the receiver stops it. For followers such as `journalctl --follow`.
    async fn lines(&self, cmd: &Cmd) -> Result<tokio::sync::mpsc::Receiver<String>, RunError>;

    /// Run `cmd` and require exit code 0.
    async fn run(&self, cmd: &Cmd) -> Result<CmdOutput, RunError> {
        let out = self.output(cmd).await?;
        if out.status == Some(0) {
            Ok(out)
        } else {
            // Some tools (bacula-sd -t) explain their failure on standard output.
            let said = if out.stderr.trim().is_empty() { &out.stdout } else { &out.stderr };
            Err(RunError::Failed { cmd: cmd.to_string(), status: out.status, stderr: said.trim().to_string() })
        }
    }
}

impl RunError {
    /// When a command failed because a service it needs is missing or not running (rather than
    /// because it refused what was asked): what is missing, for a 503 that says so.
    pub fn unavailable(&self) -> Option<String> {
        match self {
            Self::NotInstalled { program } => Some(format!("{program} is not installed on this machine")),
            Self::Failed { cmd, stderr, .. } => {
                let s = stderr.to_lowercase();
                if s.contains("tgt daemon") || (cmd.contains("tgtadm") && s.contains("not connected")) {
                    Some("tgtd is not running".into())
                } else if s.contains("not been booted with systemd") || s.contains("failed to connect to bus") {
                    Some("systemd is not running on this machine, so services cannot be managed".into())
                } else if s.contains("could not connect to director") || s.contains("connection refused") {
                    Some(format!("the service behind {cmd} is not reachable"))
                } else {
                    None
                }
            }
            _ => None,
        }
    }
}

/// The real operating system.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRunner;

#[async_trait]
impl CommandRunner for SystemRunner {
    async fn output(&self, cmd: &Cmd) -> Result<CmdOutput, RunError> {
        use tokio::io::AsyncWriteExt;
        let started = Instant::now();
        let mut command = tokio::process::Command::new(&cmd.program);
        command
            .args(&cmd.args)
            .stdin(if cmd.stdin.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => RunError::NotInstalled { program: cmd.program.clone() },
            _ => RunError::Io { cmd: cmd.to_string(), source: e },
        })?;
        if let (Some(data), Some(mut pipe)) = (&cmd.stdin, child.stdin.take()) {
            pipe.write_all(data).await.map_err(|e| RunError::Io { cmd: cmd.to_string(), source: e })?;
        }
        let waited = tokio::time::timeout(cmd.timeout, child.wait_with_output()).await;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let out = match waited {
            Err(_) => {
                tracing::warn!(command = %cmd, elapsed_ms, "command timed out");
                return Err(RunError::Timeout { cmd: cmd.to_string(), secs: cmd.timeout.as_secs() });
            }
            Ok(Err(e)) => return Err(RunError::Io { cmd: cmd.to_string(), source: e }),
            Ok(Ok(o)) => o,
        };
        let result = CmdOutput {
            status: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        tracing::info!(command = %cmd, status = ?result.status, elapsed_ms, "ran command");
        Ok(result)
    }

    async fn lines(&self, cmd: &Cmd) -> Result<tokio::sync::mpsc::Receiver<String>, RunError> {
        Self::spawn_lines(cmd).await
    }
}

impl SystemRunner {
    async fn spawn_lines(cmd: &Cmd) -> Result<tokio::sync::mpsc::Receiver<String>, RunError> {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(&cmd.program)
            .args(&cmd.args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => RunError::NotInstalled { program: cmd.program.clone() },
                _ => RunError::Io { cmd: cmd.to_string(), source: e },
            })?;
        tracing::info!(command = %cmd, "following command output");
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| RunError::Io { cmd: cmd.to_string(), source: std::io::Error::other("no stdout pipe") })?;
        // Bounded: a slow reader makes this task wait, and the pipe then makes the command wait.
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            loop {
                tokio::select! {
                    line = lines.next_line() => match line {
                        Ok(Some(l)) => {
                            if tx.send(l).await.is_err() {
                                break;
                            }
                        }
                        _ => break,
                    },
                    // Nobody reads any more: stop now, not at the next line.
                    _ = tx.closed() => break,
                }
            }
            drop(child); // kill_on_drop stops the command once nobody reads
        });
        Ok(rx)
    }
}

/// A runner for tests and for machines without the device: answers each expected command
/// (exact argument vector, in order) with a recorded output, and fails on anything else.
#[derive(Debug, Default)]
pub struct ScriptedRunner {
    script: Mutex<VecDeque<(Vec<String>, CmdOutput)>>,
    seen: Mutex<Vec<Vec<String>>>,
}

impl ScriptedRunner {
    /// Expect `argv` next and answer with `output`.
    pub fn expect<S: Into<String>>(self, argv: impl IntoIterator<Item = S>, output: CmdOutput) -> Self {
        self.script
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push_back((argv.into_iter().map(Into::into).collect(), output));
        self
    }

    /// Every command run so far.
    pub fn seen(&self) -> Vec<Vec<String>> {
        self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Whether every expected command ran.
    pub fn finished(&self) -> bool {
        self.script.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_empty()
    }
}

#[async_trait]
impl CommandRunner for ScriptedRunner {
    async fn output(&self, cmd: &Cmd) -> Result<CmdOutput, RunError> {
        self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(cmd.argv());
        let mut script = self.script.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match script.front() {
            Some((argv, _)) if *argv == cmd.argv() => Ok(script.pop_front().map(|(_, o)| o).unwrap_or_default()),
            Some((argv, _)) => Err(RunError::Unexpected(format!("{cmd} (expected {argv:?})"))),
            None => Err(RunError::Unexpected(cmd.to_string())),
        }
    }

    async fn lines(&self, cmd: &Cmd) -> Result<tokio::sync::mpsc::Receiver<String>, RunError> {
        let out = self.output(cmd).await?;
        let lines: Vec<String> = out.stdout.lines().map(str::to_string).collect();
        let (tx, rx) = tokio::sync::mpsc::channel(lines.len().max(1));
        for l in lines {
            let _ = tx.try_send(l);
        }
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn real_commands_report_output_exit_codes_and_timeouts() {
        let r = SystemRunner;
        let out = r.run(&Cmd::new("sh", ["-c", "printf 'a b'; printf oops >&2"])).await.expect("sh");
        assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("a b", "oops"));
        // Arguments are passed as they are, never through a shell.
        let out = r.run(&Cmd::new("printf", ["%s|", "$(id)", "a b;c"])).await.expect("printf");
        assert_eq!(out.stdout, "$(id)|a b;c|");
        let failed = r.run(&Cmd::new("sh", ["-c", "echo bad disk >&2; exit 3"])).await.expect_err("must fail");
        assert!(
            matches!(&failed, RunError::Failed { status: Some(3), stderr, .. } if stderr == "bad disk"),
            "{failed}"
        );
        let slow = Cmd::new("sleep", ["5"]).timeout(Duration::from_millis(200));
        assert!(matches!(r.run(&slow).await, Err(RunError::Timeout { .. })));
        assert!(matches!(r.run(&Cmd::new("no-such-program-bams", [""; 0])).await, Err(RunError::NotInstalled { .. })));
        let piped = r.run(&Cmd::new("cat", [""; 0]).stdin("fed")).await.expect("cat");
        assert_eq!(piped.stdout, "fed");
        // A secret argument is passed as it is but never shown.
        let secret = Cmd::new("sh", ["-c", "test ${#1} -eq 12 && exit 4", "sh"]).secret_arg("hunter2-long");
        let failed = r.run(&secret).await.expect_err("exit 4");
        assert!(failed.to_string().contains("\"***\"") && !failed.to_string().contains("hunter2"), "{failed}");
    }

    #[tokio::test]
    async fn scripted_runner_checks_the_exact_vectors() {
        let r = ScriptedRunner::default().expect(["mtx", "-f", "/dev/sg3", "status"], CmdOutput::ok("x"));
        assert!(r.run(&Cmd::new("mtx", ["-f", "/dev/sg4", "status"])).await.is_err());
        assert_eq!(r.run(&Cmd::new("mtx", ["-f", "/dev/sg3", "status"])).await.expect("scripted").stdout, "x");
        assert!(r.finished());
        assert_eq!(r.seen().len(), 2);
    }
}

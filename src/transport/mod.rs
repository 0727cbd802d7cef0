//! Transports run a shell script on a host with the script on stdin. Everything kiln does
//! on a host is one such call (facts, apply, checks), so a transport needs little: `run`.
//! `ssh` (OpenSSH with a multiplexed master per host) is the real one; `local` runs on this
//! machine (pull mode, tests). `russh` speaks SSH in process (`--transport russh`), and
//! hands a host to `ssh` when it cannot reach it exactly as OpenSSH would.

pub mod local;
pub mod recorded;
pub mod russh;
pub mod ssh;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use crate::desired::Connection;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Called with each stdout line as it arrives (progress markers).
pub type LineSink<'a> = &'a (dyn Fn(&str) + Send + Sync);

#[derive(Debug, Clone)]
pub struct RunOutput {
    /// Exit status of the remote shell; `None` when it was killed by a signal.
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

pub trait Transport: Send + Sync {
    /// Runs `script` with `sh -s` (through `sudo -n` for non-root users). The remote side is
    /// wrapped in `timeout`, so the remote process ends even if this side is gone.
    fn run<'a>(
        &'a self,
        script: &'a str,
        timeout: Duration,
        on_line: Option<LineSink<'a>>,
    ) -> BoxFuture<'a, Result<RunOutput>>;

    /// A human name for errors: `root@10.0.0.5:22`.
    fn describe(&self) -> String;
}

/// Opens transports to hosts. Everything that reaches a host (the engine's gather, apply,
/// the Galera executor, backup, providers waiting for SSH) gets its transports from a
/// `Connector`, so there is one place connections are made (`ssh::SshConnector`) and one
/// seam where tests put a recorded host (`recorded::Recorded`).
pub trait Connector: Send + Sync {
    /// A transport to the host `name` reached through `conn`.
    fn connect<'a>(
        &'a self,
        name: &'a str,
        conn: &'a Connection,
    ) -> BoxFuture<'a, Result<Arc<dyn Transport>>>;
}

/// Which SSH implementation reaches hosts: `--transport` / `KILN_TRANSPORT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kind {
    /// The system's `ssh` through the openssh crate (a master per host): everything in
    /// ~/.ssh/config, at the cost of an ssh process and a master per host.
    OpenSsh,
    /// `russh`, in process; falls back to OpenSSH per host for what it lacks. The default:
    /// faster at every size measured (BENCHMARKS.md, "Transports"), and every lab suite
    /// runs through it.
    #[default]
    Russh,
}

static KIND: std::sync::OnceLock<Kind> = std::sync::OnceLock::new();

/// Chooses the transport for this process (the CLI, once, before any connection).
pub fn select(kind: Kind) {
    let _ = KIND.set(kind);
}

/// The transport chosen with `select`, else the default (russh).
pub fn selected() -> Kind {
    KIND.get().copied().unwrap_or_default()
}

/// A run's future, ended on our side 10 s after the remote `timeout` (in `remote_command`)
/// should have ended the remote process: `TARGET: timed out after Ns`.
pub(crate) async fn bounded<T>(
    target: &str,
    timeout: Duration,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(timeout + Duration::from_secs(10), fut)
        .await
        .map_err(|_| anyhow::anyhow!("{target}: timed out after {}s", timeout.as_secs()))?
}

/// The remote command line: no secrets and no script content ever appear in it.
pub fn remote_command(user: &str, timeout: Duration) -> String {
    let t = timeout.as_secs().max(1);
    let sudo = if user == "root" { "" } else { "sudo -n " };
    format!("{sudo}timeout -k 5 {t} sh -s")
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn output_that_is_not_utf8_is_read_line_by_line_not_refused() {
        let stdout: &[u8] = b"@@kiln:begin\nentry caf\xe9.jpg\nentry ok\n";
        let stderr: &[u8] = b"warn \xff\n";
        let mut seen = vec![];
        let sink = std::sync::Mutex::new(&mut seen);
        let on_line = |l: &str| sink.lock().unwrap().push(l.to_string());
        let (out, err) = super::pump(tokio::io::sink(), stdout, stderr, "", Some(&on_line))
            .await
            .expect("not an error");
        assert_eq!(out, "@@kiln:begin\nentry caf\u{FFFD}.jpg\nentry ok\n");
        assert_eq!(err, "warn \u{FFFD}\n");
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn remote_command_has_timeout_and_sudo_for_non_root() {
        assert_eq!(
            super::remote_command("root", std::time::Duration::from_secs(30)),
            "timeout -k 5 30 sh -s"
        );
        assert_eq!(
            super::remote_command("admin", std::time::Duration::from_secs(30)),
            "sudo -n timeout -k 5 30 sh -s"
        );
    }
}

/// Feeds `script` to a remote or local shell's stdin while reading its stdout line by line
/// (each line also goes to `on_line`) and its stderr whole. A script that exits before
/// reading all of its input closes stdin early: that is not an error.
pub(crate) async fn pump<W, R, E>(
    mut stdin: W,
    stdout: R,
    mut stderr: E,
    script: &str,
    on_line: Option<LineSink<'_>>,
) -> Result<(String, String)>
where
    W: tokio::io::AsyncWrite + Unpin,
    R: tokio::io::AsyncRead + Unpin,
    E: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let writer = async move {
        let r = stdin.write_all(script.as_bytes()).await;
        let _ = stdin.shutdown().await;
        drop(stdin);
        r
    };
    // Remote output is bytes: a file name in Latin-1 must not fail the whole host. Each
    // line is decoded on its own, invalid sequences shown as U+FFFD; the fact parser
    // treats a name holding U+FFFD as one it cannot name exactly (see `facts::parse`).
    let reader = async {
        let mut out = String::new();
        let mut reader = tokio::io::BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            if reader.read_until(b'\n', &mut buf).await? == 0 {
                break;
            }
            if buf.last() == Some(&b'\n') {
                buf.pop();
            }
            let line = String::from_utf8_lossy(&buf);
            if let Some(f) = on_line {
                f(&line);
            }
            out.push_str(&line);
            out.push('\n');
        }
        Ok::<_, std::io::Error>(out)
    };
    let err_reader = async {
        let mut b = Vec::new();
        stderr
            .read_to_end(&mut b)
            .await
            .map(|_| String::from_utf8_lossy(&b).into_owned())
    };
    let (w, out, err) = tokio::join!(writer, reader, err_reader);
    if let Err(e) = w {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(anyhow::Error::from(e).context("sending the script"));
        }
    }
    Ok((out?, err?))
}

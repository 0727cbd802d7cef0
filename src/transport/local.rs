//! Runs scripts on this machine (`sh -s`), for pull mode and tests.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{BoxFuture, LineSink, RunOutput, Transport};

#[derive(Debug, Default)]
pub struct LocalTransport;

impl Transport for LocalTransport {
    fn run<'a>(
        &'a self,
        script: &'a str,
        timeout: Duration,
        on_line: Option<LineSink<'a>>,
    ) -> BoxFuture<'a, Result<RunOutput>> {
        Box::pin(async move {
            let mut child = tokio::process::Command::new("sh")
                .arg("-s")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .context("starting sh")?;
            let stdin = child.stdin.take().context("stdin")?;
            let stdout = child.stdout.take().context("stdout")?;
            let stderr = child.stderr.take().context("stderr")?;
            let fut = async move {
                let (stdout, stderr) = super::pump(stdin, stdout, stderr, script, on_line).await?;
                let status = child.wait().await?;
                Ok(RunOutput {
                    status: status.code(),
                    stdout,
                    stderr,
                })
            };
            tokio::time::timeout(timeout, fut)
                .await
                .map_err(|_| anyhow::anyhow!("timed out after {}s", timeout.as_secs()))?
        })
    }

    fn describe(&self) -> String {
        "local".into()
    }
}

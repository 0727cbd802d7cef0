//! Runs scripts on this machine (`sh -s`), for pull mode and tests.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

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
            let mut stdin = child.stdin.take().context("stdin")?;
            let stdout = child.stdout.take().context("stdout")?;
            let mut stderr = child.stderr.take().context("stderr")?;
            let body = script.to_string();
            let fut = async move {
                let writer = async move {
                    let r = stdin.write_all(body.as_bytes()).await;
                    drop(stdin);
                    r
                };
                let reader = async {
                    let mut out = String::new();
                    let mut lines = BufReader::new(stdout).lines();
                    while let Some(line) = lines.next_line().await? {
                        if let Some(f) = on_line {
                            f(&line);
                        }
                        out.push_str(&line);
                        out.push('\n');
                    }
                    Ok::<_, std::io::Error>(out)
                };
                let err_reader = async {
                    let mut s = String::new();
                    stderr.read_to_string(&mut s).await.map(|_| s)
                };
                let (w, out, err) = tokio::join!(writer, reader, err_reader);
                // A script that exits early closes stdin: not an error.
                if let Err(e) = w {
                    if e.kind() != std::io::ErrorKind::BrokenPipe {
                        return Err(anyhow::Error::from(e).context("writing the script"));
                    }
                }
                let status = child.wait().await?;
                Ok(RunOutput {
                    status: status.code(),
                    stdout: out?,
                    stderr: err?,
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

//! SSH through OpenSSH (the `openssh` crate, native multiplexing): one master connection
//! per host, so the user's ~/.ssh/config, agent and ProxyJump keep working and host keys
//! are checked by ssh itself against the environment's known_hosts file.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder, Stdio};
use tokio::sync::Semaphore;

use super::{remote_command, BoxFuture, LineSink, RunOutput, Transport};
use crate::desired::Connection;

/// sshd's default MaxSessions is 10; stay under it.
pub const MAX_CHANNELS: usize = 8;

/// A master is shut down when kiln drops its session; one that no kiln process uses any
/// more (a crashed run) exits after this idle time. It must outlast the quiet stretches of
/// one run: a host whose script finished waits while the others install and while cluster
/// steps run elsewhere (30 s was too short: "the connection was terminated").
pub const MASTER_IDLE_SECS: usize = 900;

pub struct SshOptions {
    pub known_hosts: PathBuf,
    /// Record unknown host keys (never accept changed ones).
    pub accept_new: bool,
    pub connect_timeout: Duration,
}

/// The real `Connector`: OpenSSH sessions with the environment's SSH settings.
pub struct SshConnector {
    pub known_hosts: PathBuf,
    /// `[ssh] accept_new`: record unknown host keys of static hosts. Lab hosts never: their
    /// keys are recorded when they are created.
    pub accept_new: bool,
    pub connect_timeout: Duration,
}

impl SshConnector {
    /// The environment's `[ssh]` settings and known_hosts file.
    pub fn for_env(env: &crate::spec::Environment) -> SshConnector {
        SshConnector {
            known_hosts: env.known_hosts(),
            accept_new: env.spec.ssh.accept_new.unwrap_or(false),
            connect_timeout: Duration::from_secs(env.spec.ssh.connect_timeout.unwrap_or(10)),
        }
    }

    pub fn options(&self, conn: &Connection) -> SshOptions {
        SshOptions {
            known_hosts: self.known_hosts.clone(),
            accept_new: conn.provider != crate::spec::Provider::Lab && self.accept_new,
            connect_timeout: self.connect_timeout,
        }
    }
}

impl super::Connector for SshConnector {
    fn connect<'a>(
        &'a self,
        _name: &'a str,
        conn: &'a Connection,
    ) -> BoxFuture<'a, Result<Arc<dyn Transport>>> {
        Box::pin(async move {
            let t = SshTransport::connect(conn, &self.options(conn)).await?;
            Ok(Arc::new(t) as Arc<dyn Transport>)
        })
    }
}

pub struct SshTransport {
    session: Session,
    user: String,
    target: String,
    channels: Arc<Semaphore>,
}

/// A short control directory: socket paths over ~104 bytes fail, and $TMPDIR can be long.
///
/// /tmp is shared: another user could create `/tmp/kiln-UID` first (or a symlink by that
/// name) and read or replace the SSH control sockets. The directory is created with mode
/// 0700 in one step; when it exists it must be a real directory owned by this user and
/// closed to others, else kiln refuses to use it.
pub fn control_dir() -> Result<PathBuf> {
    let uid = unsafe_uid();
    let dir = PathBuf::from(format!("/tmp/kiln-{uid}"));
    checked_private_dir(&dir, uid)?;
    Ok(dir)
}

/// Creates `dir` (mode 0700) or checks that the existing one is safe to use.
pub fn checked_private_dir(dir: &Path, uid: u32) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
    }
    let meta =
        std::fs::symlink_metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    if !meta.file_type().is_dir() {
        anyhow::bail!(
            "{} exists and is not a directory (a symlink?); kiln keeps its SSH control \
             sockets there and will not use it: remove it",
            dir.display()
        );
    }
    if meta.uid() != uid || meta.mode() & 0o077 != 0 {
        anyhow::bail!(
            "{} is owned by uid {} with mode {:o}; kiln needs it owned by uid {uid} and closed \
             to others (mode 700) for its SSH control sockets: remove it",
            dir.display(),
            meta.uid(),
            meta.mode() & 0o7777
        );
    }
    Ok(())
}

fn unsafe_uid() -> u32 {
    // Read from /proc to avoid a libc dependency for one number.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|u| u.parse().ok())
        })
        .unwrap_or(0)
}

impl SshTransport {
    pub async fn connect(conn: &Connection, opts: &SshOptions) -> Result<SshTransport> {
        let target = format!("{}@{}:{}", conn.user, conn.address, conn.port);
        // ssh only warns about a key file it cannot read (on a stderr nobody sees) and goes
        // on with the agent and the default keys: the error would be "Permission denied",
        // hiding that the key named is not there (a mistyped KILN_SSH_KEY).
        if let Some(k) = &conn.key {
            if let Err(e) = std::fs::File::open(k) {
                anyhow::bail!(
                    "ssh to {target} failed: the SSH key {} cannot be read: {e} (it is named by \
                     KILN_SSH_KEY, the host's `key` or `[ssh] key`)",
                    k.display()
                );
            }
        }
        let mut b = SessionBuilder::default();
        b.user(conn.user.clone())
            .port(conn.port)
            .known_hosts_check(if opts.accept_new {
                KnownHosts::Add
            } else {
                KnownHosts::Strict
            })
            .user_known_hosts_file(&opts.known_hosts)
            .control_directory(control_dir()?)
            .control_persist(ControlPersist::IdleFor(
                NonZeroUsize::new(MASTER_IDLE_SECS).expect("non-zero"),
            ))
            .connect_timeout(opts.connect_timeout)
            .server_alive_interval(Duration::from_secs(5));
        if let Some(k) = &conn.key {
            b.keyfile(k);
        }
        if let Some(parent) = opts.known_hosts.parent() {
            std::fs::create_dir_all(parent).ok();
        }
        let session = b.connect_mux(&conn.address).await.map_err(|e| {
            anyhow::anyhow!(
                "ssh to {target} failed: {}",
                describe_error(&e, &opts.known_hosts)
            )
        })?;
        Ok(SshTransport {
            session,
            user: conn.user.clone(),
            target,
            channels: Arc::new(Semaphore::new(MAX_CHANNELS)),
        })
    }

    pub async fn close(self) -> Result<()> {
        self.session.close().await.context("closing ssh master")
    }
}

fn describe_error(e: &openssh::Error, known_hosts: &Path) -> String {
    let s = format!("{e}");
    let mut chain = s.clone();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        chain.push_str(&format!(": {inner}"));
        src = inner.source();
    }
    if chain.contains("Host key verification failed")
        || chain.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
    {
        chain.push_str(&format!(
            " (the host key is unknown or changed; known_hosts is {}; record a new host deliberately with `accept_new`, never for a changed key)",
            known_hosts.display()
        ));
    }
    chain
}

impl Transport for SshTransport {
    fn run<'a>(
        &'a self,
        script: &'a str,
        timeout: Duration,
        on_line: Option<LineSink<'a>>,
    ) -> BoxFuture<'a, Result<RunOutput>> {
        Box::pin(async move {
            let _permit = self.channels.acquire().await.context("channel limit")?;
            let fut = async {
                let mut child = self
                    .session
                    .raw_command(remote_command(&self.user, timeout))
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .await
                    .with_context(|| format!("starting a remote shell on {}", self.target))?;
                let stdin = child.stdin().take().context("stdin")?;
                let stdout = child.stdout().take().context("stdout")?;
                let stderr = child.stderr().take().context("stderr")?;
                let (stdout, stderr) = super::pump(stdin, stdout, stderr, script, on_line).await?;
                let status = child
                    .wait()
                    .await
                    .with_context(|| format!("waiting for the remote shell on {}", self.target))?;
                Ok(RunOutput {
                    status: status.code(),
                    stdout,
                    stderr,
                })
            };
            super::bounded(&self.target, timeout, fut).await
        })
    }

    fn describe(&self) -> String {
        self.target.clone()
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_key_file_that_cannot_be_read_is_named_before_ssh_runs() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("no-such-key");
        let conn = crate::desired::Connection {
            // Nothing listens there: the error must come before any connection attempt.
            address: "192.0.2.1".into(),
            port: 22,
            user: "ci".into(),
            key: Some(key.clone()),
            provider: crate::spec::Provider::Static,
        };
        let opts = super::SshOptions {
            known_hosts: dir.path().join("known_hosts"),
            accept_new: false,
            connect_timeout: std::time::Duration::from_secs(1),
        };
        let t = std::time::Instant::now();
        let e = match super::SshTransport::connect(&conn, &opts).await {
            Ok(_) => panic!("connected with a missing key"),
            Err(e) => e.to_string(),
        };
        assert!(t.elapsed().as_secs() < 1, "it tried to connect: {e}");
        assert!(
            e.starts_with("ssh to ci@192.0.2.1:22 failed: the SSH key ")
                && e.contains(&key.display().to_string())
                && e.contains("cannot be read")
                && e.contains("KILN_SSH_KEY"),
            "{e}"
        );
    }

    #[test]
    fn the_control_directory_must_be_ours_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let uid = super::unsafe_uid();
        let tmp = tempfile::tempdir().unwrap();
        let fresh = tmp.path().join("fresh");
        super::checked_private_dir(&fresh, uid).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // Reused as it is.
        super::checked_private_dir(&fresh, uid).unwrap();
        // Open to others: refused, not silently fixed.
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = super::checked_private_dir(&open, uid)
            .unwrap_err()
            .to_string();
        assert!(e.contains("mode 777"), "{e}");
        // Someone else's: refused.
        let e = super::checked_private_dir(&fresh, uid + 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("owned by uid"), "{e}");
        // A symlink planted by that name: refused.
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&fresh, &link).unwrap();
        let e = super::checked_private_dir(&link, uid)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a directory"), "{e}");
    }
}

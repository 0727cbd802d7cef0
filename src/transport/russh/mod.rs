//! SSH in process through `russh` (`--transport russh` / `KILN_TRANSPORT=russh`): no ssh
//! process and no master per host, so a connection costs a handshake and no more.
//!
//! It keeps what the OpenSSH transport gives kiln's users: host keys judged against the
//! environment's known_hosts (and /etc/ssh/ssh_known_hosts) as `StrictHostKeyChecking=yes`
//! does — an unknown or changed key refused — or, with `accept_new`, an unknown key recorded
//! and a changed one still refused; the key named by KILN_SSH_KEY / `key`, the
//! `IdentityFile`s of ssh_config, the agent at SSH_AUTH_SOCK and the ~/.ssh/id_* defaults;
//! `remote_command` (sudo for non-root users); the connect timeout; keepalives every 5 s,
//! three missed ones end the connection (OpenSSH's ServerAliveInterval 5, CountMax 3).
//! What it lacks is detected before connecting (`config::decide`, a host trusted through a
//! `@cert-authority`, a key with a certificate beside it or a passphrase) and that host is
//! reached through OpenSSH instead, with a note naming why.

pub mod config;
pub mod known_hosts;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::russh::client;
use ::russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use ::russh::ChannelMsg;
use anyhow::{Context, Result};
use tokio::sync::Semaphore;

use super::ssh::{SshConnector, SshOptions, SshTransport, MAX_CHANNELS};
use super::{remote_command, BoxFuture, LineSink, RunOutput, Transport};
use crate::desired::Connection;

const GLOBAL_KNOWN_HOSTS: &[&str] = &["/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2"];
/// OpenSSH's default identities, in its order (used when no key file is named).
const DEFAULT_KEYS: &[&str] = &["id_rsa", "id_ecdsa", "id_ed25519"];

/// The russh `Connector`; hosts it cannot serve exactly go to `openssh`.
pub struct RusshConnector {
    pub openssh: SshConnector,
}

impl super::Connector for RusshConnector {
    fn connect<'a>(
        &'a self,
        name: &'a str,
        conn: &'a Connection,
    ) -> BoxFuture<'a, Result<Arc<dyn Transport>>> {
        Box::pin(async move {
            let opts = self.openssh.options(conn);
            let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
            match prepare(conn, &opts, &home).await? {
                Plan::Russh(p) => {
                    Ok(Arc::new(RusshTransport::connect(conn, &opts, p).await?)
                        as Arc<dyn Transport>)
                }
                Plan::OpenSsh(why) => {
                    eprintln!("note: {name}: connecting through OpenSSH, not russh: {why}");
                    Ok(Arc::new(SshTransport::connect(conn, &opts).await?) as Arc<dyn Transport>)
                }
            }
        })
    }
}

/// What russh will authenticate with.
pub struct Prepared {
    keys: Vec<(String, PrivateKey)>,
    agent: bool,
}

pub enum Plan {
    Russh(Prepared),
    OpenSsh(String),
}

/// Decides, before any connection, whether russh can reach `conn` exactly as OpenSSH would,
/// and loads the key files it will offer.
pub async fn prepare(conn: &Connection, opts: &SshOptions, home: &str) -> Result<Plan> {
    let target = format!("{}@{}:{}", conn.user, conn.address, conn.port);
    // ssh_config: the user's, then the system's (ssh's order; first value wins).
    let mut files = vec![];
    for p in [format!("{home}/.ssh/config"), "/etc/ssh/ssh_config".into()] {
        if let Ok(t) = std::fs::read_to_string(&p) {
            files.push((p, t));
        }
    }
    let applied = match config::decide(&files, &conn.address, home, &read_include) {
        Ok(a) => a,
        Err(why) => return Ok(Plan::OpenSsh(why)),
    };
    let kh = known_hosts_texts(&opts.known_hosts);
    let texts: Vec<&str> = kh.iter().map(|s| s.as_str()).collect();
    if let known_hosts::Verdict::CertAuthority { line } =
        known_hosts::verdict(&texts, &conn.address, conn.port, "", "")
    {
        return Ok(Plan::OpenSsh(format!(
            "the host is trusted through a @cert-authority (known_hosts line {line})"
        )));
    }
    let mut paths: Vec<String> = vec![];
    if let Some(k) = &conn.key {
        if let Err(e) = std::fs::File::open(k) {
            anyhow::bail!(
                "ssh to {target} failed: the SSH key {} cannot be read: {e} (it is named by \
                 KILN_SSH_KEY, the host's `key` or `[ssh] key`)",
                k.display()
            );
        }
        paths.push(k.display().to_string());
    }
    paths.extend(applied.identity_files.iter().cloned());
    if paths.is_empty() {
        paths.extend(DEFAULT_KEYS.iter().map(|k| format!("{home}/.ssh/{k}")));
    }
    let mut keys = vec![];
    for p in paths {
        if Path::new(&format!("{p}-cert.pub")).exists() {
            return Ok(Plan::OpenSsh(format!(
                "the key {p} has a certificate beside it"
            )));
        }
        // ssh goes on without a missing IdentityFile or default key; so does russh. (The
        // key kiln names was checked above.)
        let Ok(text) = std::fs::read_to_string(&p) else {
            continue;
        };
        match ::russh::keys::decode_secret_key(&text, None) {
            Ok(k) => keys.push((p, k)),
            Err(::russh::keys::Error::KeyIsEncrypted) => {
                return Ok(Plan::OpenSsh(format!(
                    "the key {p} is protected by a passphrase"
                )))
            }
            // An RSA key (russh is built without RSA) or a format it does not read: OpenSSH
            // would offer it, so OpenSSH connects.
            Err(e) => {
                return Ok(Plan::OpenSsh(format!(
                    "the key {p} is not one russh can use ({e})"
                )))
            }
        }
    }
    let agent = !applied.identities_only && std::env::var_os("SSH_AUTH_SOCK").is_some();
    Ok(Plan::Russh(Prepared { keys, agent }))
}

fn read_include(pattern: &str) -> Vec<(String, String)> {
    let path = Path::new(pattern);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !name.contains('*') && !name.contains('?') {
        return std::fs::read_to_string(path)
            .map(|t| vec![(pattern.to_string(), t)])
            .unwrap_or_default();
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    let mut out: Vec<(String, String)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| known_hosts::glob(&name, &e.file_name().to_string_lossy()))
        .filter_map(|e| {
            let p = e.path();
            Some((p.display().to_string(), std::fs::read_to_string(&p).ok()?))
        })
        .collect();
    out.sort();
    out
}

fn known_hosts_texts(user_file: &Path) -> Vec<String> {
    std::iter::once(user_file.to_path_buf())
        .chain(GLOBAL_KNOWN_HOSTS.iter().map(PathBuf::from))
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect()
}

/// Checks the server's key; keeps the refusal's reason for the error.
struct HostKeyCheck {
    known_hosts: PathBuf,
    accept_new: bool,
    host: String,
    port: u16,
    refused: Arc<Mutex<Option<String>>>,
}

impl client::Handler for HostKeyCheck {
    type Error = ::russh::Error;

    async fn check_server_key(&mut self, key: &PublicKey) -> Result<bool, Self::Error> {
        let line = key.to_openssh().map_err(::russh::keys::Error::from)?;
        let mut words = line.split_whitespace();
        let (kt, kb) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let texts = known_hosts_texts(&self.known_hosts);
        let texts: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
        let kh = self.known_hosts.display();
        let why = match known_hosts::verdict(&texts, &self.host, self.port, kt, kb) {
            known_hosts::Verdict::Known => return Ok(true),
            known_hosts::Verdict::Unknown if self.accept_new => {
                use std::io::Write;
                let rec = known_hosts::new_line(&self.host, self.port, kt, kb);
                let r = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.known_hosts)
                    .and_then(|mut f| f.write_all(rec.as_bytes()));
                match r {
                    Ok(()) => return Ok(true),
                    Err(e) => format!("recording its key in {kh} failed: {e}"),
                }
            }
            known_hosts::Verdict::Unknown => format!(
                "Host key verification failed: the host key is unknown (known_hosts is {kh}; \
                 record a new host deliberately with `accept_new`)"
            ),
            // Worded as OpenSSH and kiln's hint word it (transport::ssh::describe_error), so
            // a changed key reads the same whichever transport met it.
            known_hosts::Verdict::Changed { line } => format!(
                "Host key verification failed: REMOTE HOST IDENTIFICATION HAS CHANGED: Host key \
                 for {} has changed (it differs from {kh} line {line} or the system's \
                 known_hosts; record a new host deliberately with `accept_new`, never for a \
                 changed key)",
                known_hosts::host_name(&self.host, self.port)
            ),
            known_hosts::Verdict::Revoked { line } => {
                format!("Host key verification failed: the host key is @revoked (line {line})")
            }
            known_hosts::Verdict::CertAuthority { line } => format!(
                "Host key verification failed: the host is trusted through a @cert-authority \
                 (line {line}), which the russh transport does not check"
            ),
        };
        *self.refused.lock().expect("not poisoned") = Some(why);
        Ok(false)
    }
}

pub struct RusshTransport {
    handle: client::Handle<HostKeyCheck>,
    user: String,
    target: String,
    channels: Arc<Semaphore>,
}

impl RusshTransport {
    pub async fn connect(conn: &Connection, opts: &SshOptions, p: Prepared) -> Result<Self> {
        let target = format!("{}@{}:{}", conn.user, conn.address, conn.port);
        // Ask first for the host key types known_hosts records for the host (as OpenSSH does).
        let kh = known_hosts_texts(&opts.known_hosts);
        let texts: Vec<&str> = kh.iter().map(|s| s.as_str()).collect();
        let known = known_hosts::known_types(&texts, &conn.address, conn.port);
        let mut preferred = ::russh::Preferred::default();
        let mut algs = preferred.key.to_vec();
        algs.sort_by_key(|a| !known.iter().any(|k| k == a.as_str()));
        preferred.key = algs.into();
        let config = Arc::new(client::Config {
            keepalive_interval: Some(Duration::from_secs(5)),
            keepalive_max: 3,
            nodelay: true,
            preferred,
            ..Default::default()
        });
        if let Some(parent) = opts.known_hosts.parent() {
            std::fs::create_dir_all(parent).ok();
        }
        let refused = Arc::new(Mutex::new(None));
        let check = HostKeyCheck {
            known_hosts: opts.known_hosts.clone(),
            accept_new: opts.accept_new,
            host: conn.address.clone(),
            port: conn.port,
            refused: refused.clone(),
        };
        let addr = (conn.address.as_str(), conn.port);
        let t = opts.connect_timeout;
        let fail = |why: String| anyhow::anyhow!("ssh to {target} failed: {why}");
        let mut handle = match tokio::time::timeout(t, client::connect(config, addr, check)).await {
            Err(_) => return Err(fail(format!("connection timed out after {}s", t.as_secs()))),
            Ok(Err(e)) => {
                let why = refused.lock().expect("not poisoned").take();
                return Err(fail(why.unwrap_or_else(|| e.to_string())));
            }
            Ok(Ok(h)) => h,
        };
        let authed = tokio::time::timeout(t, authenticate(&mut handle, &conn.user, p))
            .await
            .map_err(|_| fail(format!("authentication timed out after {}s", t.as_secs())))?
            .map_err(|e| fail(format!("{e:#}")))?;
        if !authed {
            return Err(fail(
                "Permission denied (publickey): no key offered was accepted (KILN_SSH_KEY, the \
                 host's `key`, `[ssh] key`, IdentityFile, the agent, ~/.ssh/id_*)"
                    .into(),
            ));
        }
        Ok(RusshTransport {
            handle,
            user: conn.user.clone(),
            target,
            channels: Arc::new(Semaphore::new(MAX_CHANNELS)),
        })
    }
}

async fn authenticate(
    h: &mut client::Handle<HostKeyCheck>,
    user: &str,
    p: Prepared,
) -> Result<bool> {
    let rsa = h.best_supported_rsa_hash().await.ok().flatten().flatten();
    for (_, key) in p.keys {
        let k = PrivateKeyWithHashAlg::new(Arc::new(key), rsa);
        if h.authenticate_publickey(user, k).await?.success() {
            return Ok(true);
        }
    }
    if p.agent {
        let Ok(mut agent) = ::russh::keys::agent::client::AgentClient::connect_env().await else {
            return Ok(false);
        };
        for key in agent.request_identities().await.unwrap_or_default() {
            let hash: Option<HashAlg> = if key.algorithm().is_rsa() { rsa } else { None };
            match h
                .authenticate_publickey_with(user, key, hash, &mut agent)
                .await
            {
                Ok(r) if r.success() => return Ok(true),
                _ => {}
            }
        }
    }
    Ok(false)
}

impl Transport for RusshTransport {
    fn run<'a>(
        &'a self,
        script: &'a str,
        timeout: Duration,
        on_line: Option<LineSink<'a>>,
    ) -> BoxFuture<'a, Result<RunOutput>> {
        Box::pin(async move {
            let _permit = self.channels.acquire().await.context("channel limit")?;
            let fut = async {
                let channel = self
                    .handle
                    .channel_open_session()
                    .await
                    .with_context(|| format!("starting a remote shell on {}", self.target))?;
                channel
                    .exec(true, remote_command(&self.user, timeout))
                    .await
                    .with_context(|| format!("starting a remote shell on {}", self.target))?;
                let (mut rx, tx) = channel.split();
                let writer = async move {
                    // A script that exits before reading all its input closes the channel:
                    // not an error (as a broken pipe is not for OpenSSH).
                    let _ = tx.data(script.as_bytes()).await;
                    let _ = tx.eof().await;
                };
                let reader = async {
                    let mut lines = Lines::new(on_line);
                    let mut err = Vec::new();
                    let mut status = None;
                    while let Some(msg) = rx.wait().await {
                        match msg {
                            ChannelMsg::Data { data } => lines.push(&data),
                            ChannelMsg::ExtendedData { data, ext: 1 } => {
                                err.extend_from_slice(&data)
                            }
                            ChannelMsg::ExitStatus { exit_status } => {
                                status = Some(exit_status as i32)
                            }
                            ChannelMsg::Close => break,
                            _ => {}
                        }
                    }
                    (
                        lines.finish(),
                        String::from_utf8_lossy(&err).into_owned(),
                        status,
                    )
                };
                let ((), (stdout, stderr, status)) = tokio::join!(writer, reader);
                Ok(RunOutput {
                    status,
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

/// Stdout split into lines as it arrives, each decoded on its own (as `super::pump` does).
struct Lines<'a> {
    buf: Vec<u8>,
    out: String,
    sink: Option<LineSink<'a>>,
}

impl<'a> Lines<'a> {
    fn new(sink: Option<LineSink<'a>>) -> Self {
        Lines {
            buf: vec![],
            out: String::new(),
            sink,
        }
    }

    fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        while let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
            let rest = self.buf.split_off(i + 1);
            let mut line = std::mem::replace(&mut self.buf, rest);
            line.pop();
            self.emit(&line);
        }
    }

    fn emit(&mut self, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        if let Some(f) = self.sink {
            f(&line);
        }
        self.out.push_str(&line);
        self.out.push('\n');
    }

    fn finish(mut self) -> String {
        if !self.buf.is_empty() {
            let line = std::mem::take(&mut self.buf);
            self.emit(&line);
        }
        self.out
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lines_split_across_packets_and_a_last_line_without_newline() {
        let mut seen = vec![];
        let sink = std::sync::Mutex::new(&mut seen);
        let f = |l: &str| sink.lock().unwrap().push(l.to_string());
        let mut l = super::Lines::new(Some(&f));
        l.push(b"@@kiln:be");
        l.push(b"gin\nentry caf\xe9\nlast");
        assert_eq!(l.finish(), "@@kiln:begin\nentry caf\u{FFFD}\nlast\n");
        assert_eq!(seen.len(), 3);
    }
}

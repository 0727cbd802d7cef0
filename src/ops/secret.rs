//! `kiln secret set ENV NAME` and `kiln secret rekey ENV`: the age-encrypted secrets
//! committed beside an environment (`[secrets.NAME] age = "secrets/NAME.age"`, see
//! `spec::age`). The value comes from standard input, never an argument; it is encrypted
//! in memory and only ciphertext is written (atomically, 0644: it is meant to be committed).
//! Neither command edits the environment file: `set` prints the lines to add.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use zeroize::Zeroizing;

use crate::spec::age::{self, IDENTITY_HELP};
use crate::spec::error::SpecErrors;
use crate::spec::source::join_key;
use crate::spec::Environment;

#[derive(Debug, clap::Subcommand)]
pub enum SecretAction {
    /// Encrypt a value read from standard input (never an argument) to the environment's
    /// `age_recipients` and write its file (default secrets/NAME.age beside the environment).
    Set {
        /// Environment name under environments/, or a path to a .toml file.
        env: String,
        /// The secret's name (`[secrets.NAME]`).
        name: String,
    },
    /// Re-encrypt every age secret of the environment to its current `age_recipients`
    /// (after a recipient was added or removed), with the identity that reads them now.
    Rekey {
        /// Environment name under environments/, or a path to a .toml file.
        env: String,
    },
}

pub fn run(action: SecretAction) -> Result<i32> {
    match action {
        SecretAction::Set { env, name } => set(&env, &name),
        SecretAction::Rekey { env } => rekey(&env),
    }
}

fn recipients(env: &Environment) -> Result<Vec<::age::x25519::Recipient>> {
    let r = env.age_recipients().map_err(anyhow::Error::msg)?;
    if r.is_empty() {
        bail!(
            "{} has no `age_recipients`: add `age_recipients = [\"age1…\"]` at its top \
             (`age-keygen -y IDENTITY_FILE` prints a key's recipient)",
            env.file.display()
        );
    }
    Ok(r)
}

fn set(env_arg: &str, name: &str) -> Result<i32> {
    let env = crate::engine::load_env(env_arg)?;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        bail!("a secret's name is letters, digits, `_` or `-`: `{name}`");
    }
    let key = format!("secrets.{}.age", join_key("", name));
    let (path, declared) = match env.spec.secrets.get(name) {
        Some(r) if r.age.is_some() => {
            if !env.sets_own(&key) {
                let (file, _) = env.source_of(&key);
                bail!(
                    "secret `{name}` is set by {}, which {} extends: write it there (`kiln secret set {} {name}`)",
                    file.path.display(),
                    env.name,
                    file.path.display()
                );
            }
            let path = env
                .age_file(name)
                .expect("an age secret")
                .map_err(|e| spec_error(&env, &key, e))?;
            (path, true)
        }
        Some(_) => bail!(
            "secret `{name}` of {} is not an age secret (it has `env`, `file`, `generate` or `lab_artifact`); make it `age = \"secrets/{name}.age\"` first",
            env.file.display()
        ),
        None => (env_dir(&env).join("secrets").join(format!("{name}.age")), false),
    };
    let recipients = recipients(&env)?;
    let value = read_value()?;
    let ciphertext = age::encrypt(&recipients, value.as_bytes())?;
    drop(value);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    crate::state::write_atomic(&path, &ciphertext, 0o644)?;
    println!(
        "Encrypted secret `{name}` to {} recipient(s): {}",
        recipients.len(),
        path.display()
    );
    if !declared {
        println!(
            "\n{} does not declare it yet; add:\n\n[secrets.{}]\nage = \"secrets/{name}.age\"",
            env.file.display(),
            join_key("", name)
        );
    }
    Ok(0)
}

fn rekey(env_arg: &str) -> Result<i32> {
    let env = crate::engine::load_env(env_arg)?;
    let recipients = recipients(&env)?;
    let Some(identity) = env.age_identity().map_err(|e| anyhow::anyhow!("{e}"))? else {
        bail!("`kiln secret rekey` decrypts each age secret first and no identity is given: {IDENTITY_HELP}");
    };
    // Every file is decrypted and re-encrypted in memory before the first is written:
    // one that cannot be read leaves all of them as they were.
    let mut out: Vec<(String, PathBuf, Vec<u8>)> = vec![];
    let mut errors = vec![];
    for (name, r) in &env.spec.secrets {
        if r.age.is_none() {
            continue;
        }
        let key = format!("secrets.{}.age", join_key("", name));
        if !env.sets_own(&key) {
            let (file, _) = env.source_of(&key);
            println!(
                "Skipped `{name}`: set by {} (rekey that environment).",
                file.path.display()
            );
            continue;
        }
        match env.read_age_secret(name, Some(&identity)) {
            Ok(Some(value)) => {
                let path = env.age_file(name).expect("age").expect("checked at load");
                out.push((
                    name.clone(),
                    path,
                    age::encrypt(&recipients, value.as_bytes())?,
                ));
            }
            Ok(None) => unreachable!("an identity was given"),
            Err(e) => errors.push(env.error(&key, e)),
        }
    }
    if !errors.is_empty() {
        eprintln!("kiln secret rekey: nothing was re-encrypted.");
        return Err(anyhow::Error::new(SpecErrors(errors)));
    }
    for (_, path, ciphertext) in &out {
        crate::state::write_atomic(path, ciphertext, 0o644)?;
    }
    let names: Vec<&str> = out.iter().map(|(n, _, _)| n.as_str()).collect();
    println!(
        "Re-encrypted {} secret(s) to {} recipient(s){}",
        out.len(),
        recipients.len(),
        if names.is_empty() {
            String::new()
        } else {
            format!(": {}", names.join(", "))
        }
    );
    Ok(0)
}

fn env_dir(env: &Environment) -> PathBuf {
    env.file.parent().unwrap_or(Path::new(".")).to_path_buf()
}

fn spec_error(env: &Environment, key: &str, message: String) -> anyhow::Error {
    anyhow::Error::new(SpecErrors::from(env.error(key, message)))
}

/// The value from standard input, without its trailing newlines. From a terminal: one line,
/// not echoed.
fn read_value() -> Result<Zeroizing<String>> {
    use std::io::Read;
    // Room up front, so that reading does not leave copies behind in freed buffers.
    let mut raw = Zeroizing::new(String::with_capacity(8192));
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        eprint!("Value (not shown), then Enter: ");
        let echo = EchoOff::new();
        std::io::stdin().read_line(&mut raw)?;
        drop(echo);
        eprintln!();
    } else {
        std::io::stdin().read_to_string(&mut raw)?;
    }
    let value = Zeroizing::new(raw.trim_end_matches(['\n', '\r']).to_string());
    if value.is_empty() {
        bail!("no value on standard input (pipe it in: `kiln secret set ENV NAME < FILE`)");
    }
    Ok(value)
}

/// Terminal echo off while it lives.
struct EchoOff(Option<libc::termios>);

impl EchoOff {
    fn new() -> EchoOff {
        // SAFETY: tcgetattr/tcsetattr on fd 0 with a termios the call fills.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return EchoOff(None);
            }
            let old = t;
            t.c_lflag &= !libc::ECHO;
            libc::tcsetattr(0, libc::TCSANOW, &t);
            EchoOff(Some(old))
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            // SAFETY: restores the attributes read in `new`.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, old);
            }
        }
    }
}

//! Secrets encrypted in the repository with age: `[secrets.NAME] age = "secrets/NAME.age"`,
//! a file encrypted to the environment's `age_recipients`, committed beside the environment.
//! kiln decrypts it in memory with an identity from `KILN_AGE_IDENTITY` or the
//! environment's `age_identity` (both outside the repository); the plaintext never touches
//! the disk and is zeroized once it became a [`SecretValue`](super::SecretValue).
//!
//! Pure but for reading the identity and the encrypted files; `kiln secret set|rekey`
//! (`ops::secret`) writes them.

use std::path::{Component, Path, PathBuf};

use zeroize::Zeroizing;

use super::{expand_home, source, Environment};

/// The variable that names the identity file; it wins over `age_identity`.
pub const IDENTITY_VAR: &str = "KILN_AGE_IDENTITY";

/// How to give kiln an identity, for error messages.
pub const IDENTITY_HELP: &str = "set KILN_AGE_IDENTITY to an age identity file (made by \
`age-keygen -o FILE`), or `age_identity = \"PATH\"` in the environment, outside the repository";

/// The identities of one identity file, and where they came from (for messages).
pub struct AgeIdentity {
    /// `KILN_AGE_IDENTITY (/path)` or `age_identity (/path)`.
    pub source: String,
    identities: Vec<Box<dyn age::Identity + Send + Sync>>,
}

/// Why an age secret could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum AgeError {
    /// The file is missing or unreadable.
    Read(String),
    /// The file is not in age format.
    NotAge(String),
    /// None of the identities is a recipient of the file.
    WrongIdentity,
    /// Decrypted, but the value is not UTF-8 text or is empty.
    BadValue(&'static str),
}

impl AgeIdentity {
    /// Reads an identity file (age's format: `AGE-SECRET-KEY-1…` lines, `#` comments).
    pub fn read(path: &Path, source: String) -> Result<AgeIdentity, String> {
        let file = age::IdentityFile::from_file(path.display().to_string())
            .map_err(|e| format!("cannot read the age identity {source}: {e}"))?;
        let identities = file
            .into_identities()
            .map_err(|e| format!("the age identity {source} is not usable: {e}"))?;
        if identities.is_empty() {
            return Err(format!("the age identity {source} holds no identity"));
        }
        Ok(AgeIdentity { source, identities })
    }

    /// For tests and `secret rekey` round trips: one X25519 identity.
    pub fn from_x25519(identity: age::x25519::Identity, source: &str) -> AgeIdentity {
        AgeIdentity {
            source: source.to_string(),
            identities: vec![Box::new(identity)],
        }
    }

    /// Decrypts an age file's bytes in memory. The value is UTF-8 text without its trailing
    /// newlines (as `file` secrets are read), and not empty.
    pub fn decrypt(&self, ciphertext: &[u8]) -> Result<Zeroizing<String>, AgeError> {
        use std::io::Read;
        let decryptor = decryptor(ciphertext)?;
        let mut reader = decryptor
            .decrypt(
                self.identities
                    .iter()
                    .map(|i| i.as_ref() as &dyn age::Identity),
            )
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => AgeError::WrongIdentity,
                other => AgeError::NotAge(other.to_string()),
            })?;
        let mut plain = Zeroizing::new(Vec::new());
        reader
            .read_to_end(&mut plain)
            .map_err(|e| AgeError::NotAge(format!("its payload does not decrypt: {e}")))?;
        let text = std::str::from_utf8(&plain).map_err(|_| AgeError::BadValue("not UTF-8 text"))?;
        let text = Zeroizing::new(text.trim_end_matches('\n').to_string());
        if text.is_empty() {
            return Err(AgeError::BadValue("empty"));
        }
        Ok(text)
    }
}

fn decryptor(ciphertext: &[u8]) -> Result<age::Decryptor<&[u8]>, AgeError> {
    age::Decryptor::new_buffered(ciphertext).map_err(|e| AgeError::NotAge(e.to_string()))
}

/// Whether the bytes are an age file (the header parses); needs no identity.
pub fn check_format(ciphertext: &[u8]) -> Result<(), AgeError> {
    decryptor(ciphertext).map(|_| ())
}

/// Parses an `age1…` recipient.
pub fn parse_recipient(s: &str) -> Result<age::x25519::Recipient, String> {
    s.parse::<age::x25519::Recipient>()
        .map_err(|e| format!("`{s}` is not an age recipient (`age1…`, from `age-keygen -y`): {e}"))
}

/// Encrypts `plaintext` in memory to every recipient (binary age format).
pub fn encrypt(recipients: &[age::x25519::Recipient], plaintext: &[u8]) -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))?;
    let mut out = vec![];
    let mut w = encryptor.wrap_output(&mut out)?;
    w.write_all(plaintext)?;
    w.finish()?;
    Ok(out)
}

/// The file an `age = "REL"` names: `REL` under `dir` (the directory of the environment
/// file that set it), refused when it leaves that tree — absolute, `..`, or a symbolic link
/// that points out of it.
pub fn resolve_path(dir: &Path, rel: &str) -> Result<PathBuf, String> {
    let p = Path::new(rel);
    let escapes = rel.is_empty()
        || p.components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
    if escapes {
        return Err(format!(
            "`{rel}` must be a relative path inside the environment's directory ({}), without `..`",
            dir.display()
        ));
    }
    let full = dir.join(p);
    if let (Ok(real), Ok(real_dir)) = (std::fs::canonicalize(&full), std::fs::canonicalize(dir)) {
        if !real.starts_with(&real_dir) {
            return Err(format!(
                "`{rel}` leads out of the environment's directory ({} → {})",
                dir.display(),
                real.display()
            ));
        }
    }
    Ok(full)
}

impl Environment {
    /// The file of an `age` secret, resolved against the environment file that set it.
    pub fn age_file(&self, name: &str) -> Option<Result<PathBuf, String>> {
        let rel = self.spec.secrets.get(name)?.age.as_deref()?;
        let key = format!("secrets.{}.age", source::join_key("", name));
        let (file, _) = self.source_of(&key);
        let dir = file.path.parent().unwrap_or(Path::new("."));
        Some(resolve_path(dir, rel))
    }

    /// Whether `age_path`'s key is set by the named environment file itself (not inherited
    /// through `extends`): `secret set` and `rekey` only write an environment's own files.
    pub fn sets_own(&self, key: &str) -> bool {
        let (file, found) = self.source_of(key);
        found == key && file.path == self.file
    }

    /// Where the identity comes from: `KILN_AGE_IDENTITY`, else `age_identity`; `None`
    /// when neither is set. A path inside the repository is refused (committing a private
    /// key is the mistake this prevents).
    pub fn age_identity_path(&self) -> Result<Option<(PathBuf, String)>, String> {
        let (path, what) = match std::env::var(IDENTITY_VAR) {
            Ok(v) if !v.is_empty() => (PathBuf::from(expand_home(&v)), IDENTITY_VAR),
            _ => match &self.spec.age_identity {
                Some(p) => (PathBuf::from(expand_home(p)), "age_identity"),
                None => return Ok(None),
            },
        };
        if self.inside_repo(&path) {
            return Err(format!(
                "the age identity {what} ({}) is inside the repository; keep private keys out of it",
                path.display()
            ));
        }
        let source = format!("{what} ({})", path.display());
        Ok(Some((path, source)))
    }

    /// Reads the identity, if one is configured.
    pub fn age_identity(&self) -> Result<Option<AgeIdentity>, String> {
        match self.age_identity_path()? {
            None => Ok(None),
            Some((path, source)) => AgeIdentity::read(&path, source).map(Some),
        }
    }

    /// The environment's `age_recipients`, parsed (checked at load).
    pub fn age_recipients(&self) -> Result<Vec<age::x25519::Recipient>, String> {
        self.spec
            .age_recipients
            .iter()
            .map(|r| parse_recipient(r))
            .collect()
    }

    /// A relative path counts from the current directory, like any path on the command line.
    pub(super) fn inside_repo(&self, p: &Path) -> bool {
        let abs_root = std::fs::canonicalize(&self.root).unwrap_or(self.root.clone());
        let abs = std::fs::canonicalize(p).unwrap_or_else(|_| {
            std::env::current_dir()
                .map(|d| d.join(p))
                .unwrap_or(p.to_path_buf())
        });
        abs.starts_with(&abs_root)
    }

    /// Reads and decrypts one `age` secret. `identity` is `None` when none is configured;
    /// then the file is still checked (present, age format) and `Ok(None)` says so.
    pub fn read_age_secret(
        &self,
        name: &str,
        identity: Option<&AgeIdentity>,
    ) -> Result<Option<Zeroizing<String>>, String> {
        let path = match self.age_file(name) {
            Some(Ok(p)) => p,
            Some(Err(e)) => return Err(e),
            None => return Err(format!("secret `{name}` is not an age secret")),
        };
        let shown = path.display();
        let bytes = std::fs::read(&path).map_err(|e| {
            format!(
                "secret `{name}`: cannot read {shown}: {e} (write it with `kiln secret set {} {name}`)",
                self.name
            )
        })?;
        let Some(identity) = identity else {
            check_format(&bytes).map_err(|e| describe(name, &shown.to_string(), None, e))?;
            return Ok(None);
        };
        identity
            .decrypt(&bytes)
            .map(Some)
            .map_err(|e| describe(name, &shown.to_string(), Some(&identity.source), e))
    }
}

fn describe(name: &str, file: &str, identity: Option<&str>, e: AgeError) -> String {
    match e {
        AgeError::Read(m) => format!("secret `{name}`: cannot read {file}: {m}"),
        AgeError::NotAge(m) => format!("secret `{name}`: {file} is not an age file: {m}"),
        AgeError::WrongIdentity => format!(
            "secret `{name}`: {file} was not encrypted to the identity {} (a recipient's key is needed; after `age_recipients` changed, `kiln secret rekey` with an old key)",
            identity.unwrap_or("given")
        ),
        AgeError::BadValue(why) => {
            format!("secret `{name}`: the value decrypted from {file} is {why}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (age::x25519::Identity, age::x25519::Recipient) {
        let id = age::x25519::Identity::generate();
        let r = id.to_public();
        (id, r)
    }

    #[test]
    fn encrypts_to_every_recipient_and_decrypts_in_memory() {
        let (a, ra) = pair();
        let (b, rb) = pair();
        let c = encrypt(&[ra, rb], b"s3cret-value\n").expect("encrypt");
        assert!(!c.windows(12).any(|w| w == b"s3cret-value"));
        for id in [a, b] {
            let v = AgeIdentity::from_x25519(id, "test")
                .decrypt(&c)
                .expect("decrypt");
            assert_eq!(v.as_str(), "s3cret-value");
        }
        check_format(&c).expect("age format");
    }

    #[test]
    fn wrong_identity_and_not_age_and_empty_are_told_apart() {
        let (_, r) = pair();
        let (other, _) = pair();
        let c = encrypt(std::slice::from_ref(&r), b"x").expect("encrypt");
        let other = AgeIdentity::from_x25519(other, "other");
        assert_eq!(other.decrypt(&c).unwrap_err(), AgeError::WrongIdentity);
        assert!(matches!(
            other.decrypt(b"password=hunter2\n"),
            Err(AgeError::NotAge(_))
        ));
        assert!(matches!(
            check_format(b"password=hunter2\n"),
            Err(AgeError::NotAge(_))
        ));
        let (id, r) = pair();
        let c = encrypt(&[r], b"\n").expect("encrypt");
        assert_eq!(
            AgeIdentity::from_x25519(id, "t").decrypt(&c).unwrap_err(),
            AgeError::BadValue("empty")
        );
    }

    #[test]
    fn recipients_parse_and_a_secret_key_is_no_recipient() {
        let (id, r) = pair();
        assert_eq!(parse_recipient(&r.to_string()).expect("parses"), r);
        use age::secrecy::ExposeSecret;
        let secret = id.to_string();
        let err = parse_recipient(secret.expose_secret()).unwrap_err();
        assert!(err.contains("is not an age recipient"), "{err}");
    }

    #[test]
    fn paths_stay_inside_the_environment_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let envs = dir.path().join("environments");
        std::fs::create_dir_all(envs.join("secrets")).expect("mkdir");
        assert_eq!(
            resolve_path(&envs, "secrets/db.age").expect("inside"),
            envs.join("secrets/db.age")
        );
        for bad in ["../db.age", "secrets/../../db.age", "/etc/db.age", ""] {
            let e = resolve_path(&envs, bad).unwrap_err();
            assert!(
                e.contains("inside the environment's directory"),
                "{bad}: {e}"
            );
        }
        // A symbolic link inside the tree that points out of it.
        std::os::unix::fs::symlink(dir.path(), envs.join("secrets/up")).expect("symlink");
        std::fs::write(dir.path().join("x.age"), "x").expect("write");
        let e = resolve_path(&envs, "secrets/up/x.age").unwrap_err();
        assert!(e.contains("leads out of"), "{e}");
    }

    /// A repository with one environment whose `db` secret is age-encrypted to `recipient`;
    /// the identity is written outside it when given.
    struct Repo {
        dir: tempfile::TempDir,
        keys: tempfile::TempDir,
    }

    impl Repo {
        fn new(extra: &str) -> Repo {
            let r = Repo {
                dir: tempfile::tempdir().expect("tempdir"),
                keys: tempfile::tempdir().expect("tempdir"),
            };
            std::fs::create_dir_all(r.dir.path().join("environments/secrets")).expect("mkdir");
            r.env(extra);
            r
        }
        fn env(&self, extra: &str) {
            std::fs::write(
                self.dir.path().join("environments/e.toml"),
                format!("[secrets.db]\nage = \"secrets/db.age\"\n{extra}"),
            )
            .expect("write");
        }
        fn key(&self, id: &age::x25519::Identity) -> String {
            use age::secrecy::ExposeSecret;
            let p = self.keys.path().join("id.txt");
            std::fs::write(&p, format!("# test\n{}\n", id.to_string().expose_secret()))
                .expect("write");
            p.display().to_string()
        }
        fn load(&self) -> Result<Environment, String> {
            Environment::load(&self.dir.path().join("environments/e.toml"))
                .map_err(|e| e.to_string())
        }
    }

    #[test]
    fn an_environment_decrypts_its_age_secret_with_age_identity() {
        if std::env::var_os(IDENTITY_VAR).is_some() {
            return; // the variable wins over the key; this test is about the key
        }
        let (id, r) = pair();
        let repo = Repo::new("");
        let c = encrypt(std::slice::from_ref(&r), b"pa55-word\n").expect("encrypt");
        std::fs::write(repo.dir.path().join("environments/secrets/db.age"), c).expect("write");
        // Top-level keys first: in TOML, keys after `[secrets.db]` would belong to it.
        std::fs::write(
            repo.dir.path().join("environments/e.toml"),
            format!(
                "age_identity = {:?}\nage_recipients = [\"{r}\"]\n\n[secrets.db]\nage = \"secrets/db.age\"\n",
                repo.key(&id)
            ),
        )
        .expect("write");
        let mut env = repo.load().expect("loads");
        env.resolve_secrets().expect("decrypts");
        assert_eq!(env.secrets["db"].expose(), "pa55-word");
        assert_eq!(env.redactor().redact("x pa55-word y"), "x (sensitive) y");

        // Another identity: the error names the secret and the file.
        let (other, _) = pair();
        std::fs::write(
            repo.dir.path().join("environments/e.toml"),
            format!(
                "age_identity = {:?}\n\n[secrets.db]\nage = \"secrets/db.age\"\n",
                repo.key(&other)
            ),
        )
        .expect("write");
        let mut env = repo.load().expect("loads");
        let e = env.resolve_secrets().unwrap_err().to_string();
        assert!(e.contains("secret `db`"), "{e}");
        assert!(
            e.contains("secrets/db.age was not encrypted to the identity"),
            "{e}"
        );
        assert!(e.contains("secrets.db.age"), "{e}");
        assert!(!env.secrets.contains_key("db"));
    }

    #[test]
    fn without_identity_online_is_an_error_and_offline_a_placeholder() {
        if std::env::var_os(IDENTITY_VAR).is_some() {
            return;
        }
        let (_, r) = pair();
        let repo = Repo::new("");
        let path = repo.dir.path().join("environments/secrets/db.age");
        // Missing file: an error even offline (the repository's mistake).
        let mut env = repo.load().expect("loads");
        let e = env
            .resolve_secrets_or_placeholders()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("secret `db`: cannot read") && e.contains("db.age"),
            "{e}"
        );
        // Not an age file: also.
        std::fs::write(&path, "hunter2\n").expect("write");
        let e = env
            .resolve_secrets_or_placeholders()
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not an age file"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        // An age file and no identity: online an error saying how to give one, offline a
        // placeholder.
        std::fs::write(&path, encrypt(&[r], b"v").expect("encrypt")).expect("write");
        let e = env.resolve_secrets().unwrap_err().to_string();
        assert!(
            e.contains("no identity is given") && e.contains("KILN_AGE_IDENTITY"),
            "{e}"
        );
        env.resolve_secrets_or_placeholders().expect("offline");
        assert_eq!(env.placeholders, vec!["db".to_string()]);
    }

    #[test]
    fn escaping_paths_identities_in_the_repo_and_bad_recipients_are_spec_errors() {
        let repo = Repo::new("");
        std::fs::write(
            repo.dir.path().join("environments/e.toml"),
            "[secrets.db]\nage = \"../db.age\"\n",
        )
        .expect("write");
        let e = repo.load().unwrap_err();
        assert!(
            e.contains("e.toml:2:") && e.contains("secrets.db.age"),
            "{e}"
        );
        let inside = repo.dir.path().join("id.txt");
        std::fs::write(&inside, "x").expect("write");
        std::fs::write(
            repo.dir.path().join("environments/e.toml"),
            format!(
                "age_identity = {:?}\nage_recipients = [\"age1nope\"]\n",
                inside.display().to_string()
            ),
        )
        .expect("write");
        let e = repo.load().unwrap_err();
        assert!(
            e.contains("e.toml:1:") && e.contains("outside the repository"),
            "{e}"
        );
        assert!(
            e.contains("e.toml:2:") && e.contains("age_recipients[0]"),
            "{e}"
        );
    }

    #[test]
    fn a_child_secret_replaces_its_parents_source() {
        let repo = Repo::new("");
        std::fs::write(
            repo.dir.path().join("environments/qa.toml"),
            "extends = \"e\"\n\n[secrets.db]\ngenerate = 24\n",
        )
        .expect("write");
        let env = Environment::load(&repo.dir.path().join("environments/qa.toml"))
            .expect("one source per secret");
        assert_eq!(env.spec.secrets["db"].generate, Some(24));
        assert_eq!(env.spec.secrets["db"].age, None);
    }
}

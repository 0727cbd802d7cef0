//! Secrets encrypted in the repository with age (issue 15): `kiln secret set` and
//! `kiln secret rekey` through the built binary, `plan --offline` with an age secret, the
//! errors (exit 1, naming the secret and the file, no host contacted), `kiln clone`, and
//! that the value appears in no output. The hosts point at a closed port: a connection
//! attempt would say "ssh to". Identities are generated here and kept outside the repository.

use std::path::{Path, PathBuf};
use std::process::Output;

use age::secrecy::ExposeSecret;
use assert_cmd::Command;

const VALUE: &str = "Tr0ub4dor-and-3-horses";

struct Repo {
    dir: tempfile::TempDir,
    /// Outside the repository: identity files and kiln's state.
    home: tempfile::TempDir,
}

struct Key {
    file: PathBuf,
    recipient: String,
}

impl Repo {
    fn new() -> Repo {
        let r = Repo {
            dir: tempfile::tempdir().expect("tempdir"),
            home: tempfile::tempdir().expect("tempdir"),
        };
        r.write(
            "modules/m.toml",
            "description = \"test module\"\n\n[[resource]]\ntype = \"file\"\npath = \"/etc/kiln-test\"\ntemplate = \"t.j2\"\n",
        );
        r.write("templates/m/t.j2", "password={{ secrets.db }}\n");
        r
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }
    fn key(&self, name: &str) -> Key {
        let id = age::x25519::Identity::generate();
        let file = self.home.path().join(format!("{name}.key"));
        std::fs::write(&file, format!("{}\n", id.to_string().expose_secret())).expect("write");
        Key {
            file,
            recipient: id.to_public().to_string(),
        }
    }
    /// `environments/e.toml`: `top` (top-level keys), one host, the `db` secret as `secret`.
    fn env(&self, top: &str, secret: &str) {
        self.write(
            "environments/e.toml",
            &format!(
                "{top}\n[hosts.h1]\naddress = \"127.0.0.1\"\nport = 1\nroles = [\"r\"]\n\n[roles.r]\nmodules = [\"m\"]\n\n[secrets.db]\n{secret}\n"
            ),
        );
    }
    fn kiln(&self, args: &[&str], identity: Option<&Path>, stdin: &str) -> Output {
        let mut c = Command::cargo_bin("kiln").expect("binary");
        c.current_dir(self.dir.path())
            .env("NO_COLOR", "1")
            .env("XDG_STATE_HOME", self.home.path().join("state"))
            .env_remove("KILN_ROOT")
            .env_remove("KILN_AGE_IDENTITY")
            .args(args)
            .write_stdin(stdin);
        if let Some(i) = identity {
            c.env("KILN_AGE_IDENTITY", i);
        }
        c.output().expect("run")
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[track_caller]
fn ok(o: &Output) -> String {
    let t = text(o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(!t.contains(VALUE), "the value was printed:\n{t}");
    t
}

#[track_caller]
fn fails(o: &Output, expect: &[&str]) -> String {
    let t = text(o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    for e in expect {
        assert!(t.contains(e), "should contain {e:?}:\n{t}");
    }
    assert!(!t.contains("ssh to"), "a host was contacted:\n{t}");
    assert!(!t.contains(VALUE), "the value was printed:\n{t}");
    t
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

#[test]
fn set_encrypts_from_stdin_and_plan_offline_reads_it_with_the_identity() {
    let r = Repo::new();
    let alice = r.key("alice");
    let top = format!("age_recipients = [\"{}\"]", alice.recipient);
    r.env(&top, "age = \"secrets/db.age\"");
    let out = ok(&r.kiln(&["secret", "set", "e", "db"], None, &format!("{VALUE}\n")));
    let file = r.path("environments/secrets/db.age");
    assert!(
        out.contains("Encrypted secret `db` to 1 recipient(s)"),
        "{out}"
    );
    assert!(!out.contains("add:"), "declared already: {out}");
    assert_eq!(mode(&file), 0o644, "ciphertext, meant to be committed");
    let bytes = std::fs::read(&file).expect("read");
    assert!(bytes.starts_with(b"age-encryption.org/v1\n"));
    assert!(!String::from_utf8_lossy(&bytes).contains(VALUE));
    // No temporary file left beside it.
    let names: Vec<_> = std::fs::read_dir(file.parent().expect("dir"))
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");

    // With the identity the value is read and rendered, and shown nowhere (the file's
    // content is sensitive by taint); JSON too.
    let out = ok(&r.kiln(&["plan", "e", "--offline"], Some(&alice.file), ""));
    assert!(out.contains("file:/etc/kiln-test"), "{out}");
    assert!(!out.contains("placeholders used"), "{out}");
    ok(&r.kiln(
        &["plan", "e", "--offline", "--format", "json"],
        Some(&alice.file),
        "",
    ));
    // Without one, offline: a placeholder, named.
    let out = ok(&r.kiln(&["plan", "e", "--offline"], None, ""));
    assert!(out.contains("placeholders used: db."), "{out}");
    // Online without one: exit 1 naming the secret, the file, the key and how to give one.
    fails(
        &r.kiln(&["plan", "e"], None, ""),
        &[
            "environments/e.toml:",
            "secrets.db.age",
            "secret `db`",
            "secrets/db.age",
            "KILN_AGE_IDENTITY",
        ],
    );
}

#[test]
fn an_undeclared_secret_is_written_and_the_lines_to_add_are_printed() {
    let r = Repo::new();
    let alice = r.key("alice");
    r.env(
        &format!("age_recipients = [\"{}\"]", alice.recipient),
        "generate = 16",
    );
    let out = ok(&r.kiln(&["secret", "set", "e", "api_token"], None, VALUE));
    assert!(
        out.contains("[secrets.api_token]\nage = \"secrets/api_token.age\""),
        "{out}"
    );
    assert!(r.path("environments/secrets/api_token.age").exists());
    // A secret with another source is not overwritten by an age file.
    fails(
        &r.kiln(&["secret", "set", "e", "db"], None, VALUE),
        &["secret `db`", "is not an age secret"],
    );
    // An empty value is refused.
    fails(
        &r.kiln(&["secret", "set", "e", "x"], None, "\n"),
        &["no value on standard input"],
    );
    assert!(!r.path("environments/secrets/x.age").exists());
    // No recipients: refused before reading anything.
    r.env("", "generate = 16");
    fails(
        &r.kiln(&["secret", "set", "e", "y"], None, VALUE),
        &["has no `age_recipients`"],
    );
}

#[test]
fn wrong_identity_missing_file_and_not_age_exit_1_naming_secret_and_file() {
    let r = Repo::new();
    let alice = r.key("alice");
    let mallory = r.key("mallory");
    let top = format!("age_recipients = [\"{}\"]", alice.recipient);
    r.env(&top, "age = \"secrets/db.age\"");
    // Missing file: even offline (the repository is incomplete).
    fails(
        &r.kiln(&["plan", "e", "--offline"], None, ""),
        &[
            "secrets.db.age",
            "secret `db`",
            "secrets/db.age",
            "secret set e db",
        ],
    );
    ok(&r.kiln(&["secret", "set", "e", "db"], None, VALUE));
    for args in [
        &["plan", "e"][..],
        &["plan", "e", "--offline"],
        &["apply", "e", "--yes"],
    ] {
        fails(
            &r.kiln(args, Some(&mallory.file), ""),
            &[
                "environments/e.toml:",
                "secrets.db.age",
                "secret `db`",
                "secrets/db.age was not encrypted to the identity",
                "mallory.key",
            ],
        );
    }
    // Not an age file.
    r.write("environments/secrets/db.age", "plain text\n");
    fails(
        &r.kiln(&["plan", "e"], Some(&alice.file), ""),
        &["secret `db`", "secrets/db.age is not an age file"],
    );
    // A path out of the environment's directory, an identity inside the repository.
    r.env(&top, "age = \"../../db.age\"");
    fails(
        &r.kiln(&["plan", "e", "--offline"], None, ""),
        &["environments/e.toml:", "secrets.db.age", "without `..`"],
    );
    r.write("keys/id.txt", "x");
    r.env(
        &format!(
            "age_identity = {:?}",
            r.path("keys/id.txt").display().to_string()
        ),
        "age = \"secrets/db.age\"",
    );
    fails(
        &r.kiln(&["plan", "e", "--offline"], None, ""),
        &[
            "environments/e.toml:1:",
            "age_identity",
            "outside the repository",
        ],
    );
}

#[test]
fn rekey_re_encrypts_to_the_current_recipients() {
    let r = Repo::new();
    let alice = r.key("alice");
    let bob = r.key("bob");
    r.env(
        &format!("age_recipients = [\"{}\"]", alice.recipient),
        "age = \"secrets/db.age\"",
    );
    ok(&r.kiln(&["secret", "set", "e", "db"], None, VALUE));
    let before = std::fs::read(r.path("environments/secrets/db.age")).expect("read");
    // Bob cannot read it yet.
    fails(
        &r.kiln(&["plan", "e", "--offline"], Some(&bob.file), ""),
        &["secret `db`"],
    );
    // Rekey needs an identity; with Bob's it cannot decrypt and changes nothing.
    r.env(
        &format!(
            "age_recipients = [\"{}\", \"{}\"]",
            alice.recipient, bob.recipient
        ),
        "age = \"secrets/db.age\"",
    );
    fails(
        &r.kiln(&["secret", "rekey", "e"], None, ""),
        &["no identity is given"],
    );
    fails(
        &r.kiln(&["secret", "rekey", "e"], Some(&bob.file), ""),
        &["secret `db`", "nothing was re-encrypted"],
    );
    assert_eq!(
        std::fs::read(r.path("environments/secrets/db.age")).expect("read"),
        before
    );
    // Alice rekeys to both; then Bob reads it.
    let out = ok(&r.kiln(&["secret", "rekey", "e"], Some(&alice.file), ""));
    assert!(
        out.contains("Re-encrypted 1 secret(s) to 2 recipient(s): db"),
        "{out}"
    );
    assert_ne!(
        std::fs::read(r.path("environments/secrets/db.age")).expect("read"),
        before
    );
    let out = ok(&r.kiln(&["plan", "e", "--offline"], Some(&bob.file), ""));
    assert!(!out.contains("placeholders used"), "{out}");
    // Alice removed: she no longer reads it after a rekey by Bob.
    r.env(
        &format!("age_recipients = [\"{}\"]", bob.recipient),
        "age = \"secrets/db.age\"",
    );
    ok(&r.kiln(&["secret", "rekey", "e"], Some(&bob.file), ""));
    fails(
        &r.kiln(&["plan", "e", "--offline"], Some(&alice.file), ""),
        &["secrets/db.age was not encrypted to the identity"],
    );
}

#[test]
fn a_clone_gets_a_fresh_value_not_the_sources_age_file() {
    let r = Repo::new();
    let alice = r.key("alice");
    r.env(
        &format!("age_recipients = [\"{}\"]", alice.recipient),
        "age = \"secrets/db.age\"",
    );
    ok(&r.kiln(&["secret", "set", "e", "db"], None, VALUE));
    ok(&r.kiln(&["clone", "e", "qa", "--hosts", "lab"], None, ""));
    let qa = std::fs::read_to_string(r.path("environments/qa.toml")).expect("read");
    assert!(
        qa.contains("[secrets.db]\ngenerate = 32  # e: age secrets/db.age"),
        "{qa}"
    );
    // The copy plans without the source's identity: its secret is its own.
    let out = ok(&r.kiln(&["plan", "qa", "--offline"], None, ""));
    assert!(!out.contains("placeholders used"), "{out}");
}

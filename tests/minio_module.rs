//! The `minio` module from the repository, expanded offline (no host contacted) for a
//! 4-node, 2-drive distributed fixture and for a single node: the rendered environment file
//! (MINIO_VOLUMES in MinIO's ellipsis notation, credentials from secrets), the systemd unit,
//! the pinned-artifact install command, and the bucket step on the first node only. MinIO's
//! distributed erasure-coded mode cannot run on this machine; this is how it is tested.

use std::path::Path;

use kiln::desired::{self, Desired};
use kiln::resource::{Kind, OnChange};
use kiln::spec::Environment;

const SHA: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

const DISTRIBUTED: &str = r#"
[hosts.storage1]
address = "10.0.1.1"
roles = ["storage"]
[hosts.storage2]
address = "10.0.1.2"
roles = ["storage"]
[hosts.storage3]
address = "10.0.1.3"
roles = ["storage"]
[hosts.storage4]
address = "10.0.1.4"
roles = ["storage"]

[roles.storage]
modules = ["minio"]

[modules.minio]
artifact_url = "https://dl.example.test/minio.RELEASE.2024-01-01"
artifact_sha256 = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
nodes = ["storage1", "storage2", "storage3", "storage4"]
drives = ["/data1", "/data2"]
buckets = ["backups", "media"]
policies = [{ name = "backup-rw", policy = { Version = "2012-10-17", Statement = [{ Effect = "Allow", Action = ["s3:*"], Resource = ["arn:aws:s3:::backups/*"] }] } }]
env = { MINIO_SERVER_URL = "https://s3.example.test" }

[secrets.minio_root_user]
env = "KILN_TEST_MINIO_USER"
[secrets.minio_root_password]
env = "KILN_TEST_MINIO_PASSWORD"
"#;

struct Fixture {
    _dir: tempfile::TempDir,
    desired: Desired,
}

fn fixture(env_text: &str) -> Fixture {
    std::env::set_var("KILN_TEST_MINIO_USER", "root-user-xyz");
    std::env::set_var("KILN_TEST_MINIO_PASSWORD", "root-password-not-in-output");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(repo.join("modules"), dir.path().join("modules")).unwrap();
    std::os::unix::fs::symlink(repo.join("templates"), dir.path().join("templates")).unwrap();
    std::fs::create_dir_all(dir.path().join("environments")).unwrap();
    let p = dir.path().join("environments/prod.toml");
    std::fs::write(&p, env_text).unwrap();
    let mut env = Environment::load(&p).unwrap_or_else(|e| panic!("{e}"));
    env.resolve_secrets().unwrap_or_else(|e| panic!("{e}"));
    let hosts = env.select_hosts(None).unwrap();
    let desired = desired::expand(&env, &hosts, None).unwrap_or_else(|e| panic!("{e}"));
    kiln::plan::graph::ResourceGraph::build(&env, &desired).unwrap_or_else(|e| panic!("{e}"));
    Fixture { _dir: dir, desired }
}

fn file<'a>(f: &'a Fixture, host: &str, path: &str) -> &'a kiln::resource::file::File {
    f.desired
        .host(host)
        .unwrap()
        .resources
        .iter()
        .find_map(|r| match &r.kind {
            Kind::File(x) if x.path == path => Some(x),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{host}: no file {path}"))
}

fn unit(f: &Fixture, host: &str, name: &str) -> String {
    f.desired
        .host(host)
        .unwrap()
        .resources
        .iter()
        .find_map(|r| match &r.kind {
            Kind::Unit(u) if u.name == name => u.content.clone(),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{host}: no unit {name}"))
}

fn commands(f: &Fixture, host: &str) -> Vec<kiln::resource::command::Command> {
    f.desired
        .host(host)
        .unwrap()
        .resources
        .iter()
        .filter_map(|r| match &r.kind {
            Kind::Command(c) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

fn env_lines(f: &Fixture, host: &str) -> Vec<String> {
    let x = file(f, host, "/etc/default/minio");
    assert_eq!(x.mode, "0600");
    assert!(x.sensitive, "the env file holds the root credentials");
    x.content
        .clone()
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn distributed_env_file_uses_the_ellipsis_notation() {
    let f = fixture(DISTRIBUTED);
    for h in ["storage1", "storage3"] {
        let lines = env_lines(&f, h);
        for want in [
            "MINIO_ROOT_USER=\"root-user-xyz\"",
            "MINIO_ROOT_PASSWORD=\"root-password-not-in-output\"",
            "MINIO_VOLUMES=\"http://storage{1...4}:9000/data{1...2}\"",
            "MINIO_OPTS=\"--address :9000 --console-address :9001\"",
            "MINIO_SERVER_URL=\"https://s3.example.test\"",
        ] {
            assert!(
                lines.iter().any(|l| l == want),
                "{h}: missing {want:?} in {lines:#?}"
            );
        }
    }
}

#[test]
fn unit_is_minios_own() {
    let f = fixture(DISTRIBUTED);
    let u = unit(&f, "storage2", "minio.service");
    for want in [
        "User=minio-user",
        "EnvironmentFile=/etc/default/minio",
        "ExecStart=/usr/local/bin/minio server $MINIO_OPTS $MINIO_VOLUMES",
        "AssertFileIsExecutable=/usr/local/bin/minio",
        "Restart=always",
    ] {
        assert!(u.lines().any(|l| l == want), "missing {want:?} in:\n{u}");
    }
    // Every drive is a directory owned by the service user.
    let dirs: Vec<String> = f
        .desired
        .host("storage2")
        .unwrap()
        .resources
        .iter()
        .filter_map(|r| match &r.kind {
            Kind::Directory(d) if d.owner == "minio-user" => Some(d.path.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(dirs, ["/data1", "/data2"]);
}

#[test]
fn binary_is_verified_before_it_is_installed() {
    let f = fixture(DISTRIBUTED);
    let c = commands(&f, "storage1");
    let bin = c
        .iter()
        .find(|c| c.name == "minio binary")
        .expect("install");
    assert_eq!(bin.run, "/usr/local/sbin/kiln-minio-install");
    assert_eq!(
        bin.unless.as_deref(),
        Some("/usr/local/sbin/kiln-minio-install --check")
    );
    let script = file(&f, "storage1", "/usr/local/sbin/kiln-minio-install");
    let run = script.content.as_deref().unwrap();
    let dl = run.find("curl -fsSL").unwrap();
    let check = run
        .find("echo \"$pin  $t\" | sha256sum -c --status")
        .unwrap();
    let mv = run.find("mv -f \"$t\" \"$BIN\"").unwrap();
    assert!(dl < check && check < mv, "{run}");
    assert!(
        run.contains("mktemp /usr/local/bin/.minio."),
        "same filesystem: atomic rename"
    );
    // The plan's guard (--check) trusts a stamp of the verified file's identity instead of
    // hashing ~100 MB on every plan, and never writes it; the install writes it after the
    // rename (the new file's identity).
    let check = &run[run.find("if [ \"${1:-}\" = --check ]").unwrap()..];
    let check = &check[..check.find("exit\n").unwrap()];
    assert!(check.contains("remembered || hashed"), "{check}");
    assert!(
        !check.contains("remember\n"),
        "--check writes nothing: {check}"
    );
    assert!(run.contains("stat -c '%d %i %s %y %z'"), "{run}");
    let remember = run.rfind("\nremember\n").unwrap();
    assert!(mv < remember, "{run}");
    assert!(run.contains("URL='https://dl.example.test/minio.RELEASE.2024-01-01'"));
    let pin = file(&f, "storage1", "/etc/kiln/minio/artifact.sha256");
    assert_eq!(pin.content.as_deref(), Some(format!("{SHA}\n").as_str()));
    assert!(!pin.sensitive);
    // A changed pin restarts the installer unit, which installs the newly pinned binary.
    let pin_res = f
        .desired
        .host("storage1")
        .unwrap()
        .resources
        .iter()
        .find(|r| r.id == "file:/etc/kiln/minio/artifact.sha256")
        .unwrap();
    assert_eq!(pin_res.notify[0].unit, "kiln-minio-install.service");
    assert_eq!(pin_res.notify[0].action, OnChange::Restart);
    // Buckets and policies once for the cluster: on its first node.
    assert!(c.iter().any(|c| c.name == "minio buckets and policies"));
    assert!(!commands(&f, "storage2")
        .iter()
        .any(|c| c.name == "minio buckets and policies"));
    let cfg = file(&f, "storage1", "/etc/kiln/minio/config.json");
    let cfg: serde_json::Value = serde_json::from_str(cfg.content.as_deref().unwrap()).unwrap();
    assert_eq!(cfg["buckets"], serde_json::json!(["backups", "media"]));
    assert_eq!(cfg["policies"][0]["name"], "backup-rw");
    assert_eq!(cfg["endpoint"], "http://127.0.0.1:9000");
}

#[test]
fn names_that_are_not_a_sequence_are_listed() {
    let text = DISTRIBUTED
        .replace("[hosts.storage4]", "[hosts.s3-east]")
        .replace("\"storage4\"]", "\"s3-east\"]")
        .replace("drives = [\"/data1\", \"/data2\"]", "drives = [\"/srv/a\"]");
    let f = fixture(&text);
    let lines = env_lines(&f, "storage1");
    let want = "MINIO_VOLUMES=\"http://storage1:9000/srv/a http://storage2:9000/srv/a http://storage3:9000/srv/a http://s3-east:9000/srv/a\"";
    assert!(lines.iter().any(|l| l == want), "{lines:#?}");
}

#[test]
fn single_node_with_drives_and_a_secret_pin() {
    let text = r#"
[hosts.storage]
address = "10.0.1.9"
roles = ["storage"]
[roles.storage]
modules = ["minio"]
[modules.minio]
artifact_url = "http://10.233.0.1:8090/minio"
artifact_sha256_secret = "minio_sha"
drives = ["/srv/minio/d1", "/srv/minio/d2", "/srv/minio/d3", "/srv/minio/d4"]
port = 9100
[secrets.minio_root_user]
env = "KILN_TEST_MINIO_USER"
[secrets.minio_root_password]
env = "KILN_TEST_MINIO_PASSWORD"
[secrets.minio_sha]
env = "KILN_TEST_MINIO_SHA"
"#;
    std::env::set_var("KILN_TEST_MINIO_SHA", format!("{SHA}\n"));
    let f = fixture(text);
    let lines = env_lines(&f, "storage");
    assert!(
        lines.contains(&"MINIO_VOLUMES=\"/srv/minio/d{1...4}\"".to_string()),
        "{lines:#?}"
    );
    assert!(lines.contains(&"MINIO_OPTS=\"--address :9100 --console-address :9001\"".to_string()));
    let c = commands(&f, "storage");
    let pin = file(&f, "storage", "/etc/kiln/minio/artifact.sha256");
    assert_eq!(pin.content.as_deref(), Some(format!("{SHA}\n").as_str()));
    assert!(pin.sensitive, "a pin from a secret stays out of plans");
    assert!(!c.iter().any(|c| c.run.contains(SHA)));
    assert!(c.iter().any(|c| c.name == "minio buckets and policies"));
}

fn packages(f: &Fixture, host: &str) -> Vec<String> {
    f.desired
        .host(host)
        .unwrap()
        .resources
        .iter()
        .filter_map(|r| match &r.kind {
            Kind::Package(p) => Some(p.name.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn users_are_kept_in_a_private_file_with_their_secret_keys() {
    let text = r#"
[hosts.storage]
address = "10.0.1.9"
roles = ["storage"]
[roles.storage]
modules = ["minio"]
[modules.minio]
artifact_url = "http://10.233.0.1:8090/minio"
artifact_sha256 = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
buckets = ["backups"]
policies = [{ name = "backup-rw", policy = { Version = "2012-10-17", Statement = [{ Effect = "Allow", Action = ["s3:*"], Resource = ["arn:aws:s3:::backups/*"] }] } }]
users = [{ name = "backup", secret = "minio_backup_key", policy = "backup-rw" }]
[secrets.minio_root_user]
env = "KILN_TEST_MINIO_USER"
[secrets.minio_root_password]
env = "KILN_TEST_MINIO_PASSWORD"
[secrets.minio_backup_key]
env = "KILN_TEST_MINIO_BACKUP_KEY"
"#;
    std::env::set_var("KILN_TEST_MINIO_BACKUP_KEY", "backup-key-not-in-output");
    let f = fixture(text);
    let users = file(&f, "storage", "/etc/kiln/minio/users.json");
    assert_eq!(users.mode, "0600");
    assert!(users.sensitive, "users.json holds the users' secret keys");
    let doc: serde_json::Value = serde_json::from_str(users.content.as_deref().unwrap()).unwrap();
    assert_eq!(
        doc,
        serde_json::json!([{ "name": "backup", "secret": "backup-key-not-in-output", "policy": "backup-rw" }])
    );
    let config = file(&f, "storage", "/etc/kiln/minio/config.json");
    assert!(!config.sensitive);
    assert!(!config
        .content
        .as_deref()
        .unwrap()
        .contains("backup-key-not-in-output"));
    let p = packages(&f, "storage");
    assert!(p.iter().any(|p| p == "python3-cryptography"), "{p:?}");
    assert!(p.iter().any(|p| p == "python3-argon2"), "{p:?}");

    // Without users: no crypto packages, an empty list.
    let f = fixture(DISTRIBUTED);
    let p = packages(&f, "storage1");
    assert!(!p.iter().any(|p| p.starts_with("python3-argon2")), "{p:?}");
    let users = file(&f, "storage1", "/etc/kiln/minio/users.json");
    assert_eq!(users.content.as_deref().map(str::trim), Some("[]"));
}

//! The backup tool's pure parts (templates/backup/kiln-backup.py): retention over synthetic
//! histories of backups, the comparison of row counts and checksums, the file names a
//! manifest may give. Python's unittest, run from the suite (python3 is on every lab host and
//! on the machine that runs the suite).

#[test]
fn kiln_backup_python_unit_tests() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python");
    let out = std::process::Command::new("python3")
        .args(["-B", "-m", "unittest", "-v", "test_kiln_backup"])
        .current_dir(&dir)
        .output()
        .expect("python3 runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("test_history_a ("), "{text}");
    assert!(text.trim_end().ends_with("OK"), "{text}");
    // Every test written in the file ran (none lost to a name clash or a bad indent).
    let written = std::fs::read_to_string(dir.join("test_kiln_backup.py"))
        .expect("test file")
        .lines()
        .filter(|l| l.trim_start().starts_with("def test_"))
        .count();
    assert!(written >= 25, "{written} tests written");
    assert!(text.contains(&format!("Ran {written} tests")), "{text}");
    assert!(
        text.contains("test_absolute_climbing_and_odd_names_are_refused"),
        "{text}"
    );
}

const ENV: &str = r#"
[hosts.db1]
address = "10.0.0.1"
roles = ["db"]
[roles.db]
modules = ["backup"]
[modules.backup]
endpoint = "http://storage:9000"
databases = ["app"]
media_bucket = "media"
media_mirror_bucket = "media-mirror"
[secrets.minio_root_user]
env = "KILN_TEST_BACKUP_KEY"
[secrets.minio_root_password]
env = "KILN_TEST_BACKUP_SECRET"
"#;

#[test]
fn backup_module_expands_offline() {
    use kiln::resource::Kind;
    let (_dir, env) = environment("").unwrap_or_else(|e| panic!("{e}"));
    let hosts = env.select_hosts(None).unwrap();
    let desired = kiln::desired::expand(&env, &hosts, None).unwrap_or_else(|e| panic!("{e}"));
    kiln::plan::graph::ResourceGraph::build(&env, &desired).unwrap_or_else(|e| panic!("{e}"));
    let db1 = desired.host("db1").unwrap();
    let file = |path: &str| {
        db1.resources
            .iter()
            .find_map(|r| match &r.kind {
                Kind::File(f) if f.path == path => Some(f.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no {path}"))
    };
    let creds = file("/etc/kiln/backup/s3.env");
    assert_eq!(creds.mode, "0600");
    assert!(creds.sensitive);
    let cfg = file("/etc/kiln/backup/backup.json");
    assert!(!cfg.sensitive, "the configuration holds no secret");
    let cfg: serde_json::Value = serde_json::from_str(cfg.content.as_deref().unwrap()).unwrap();
    assert_eq!(cfg["prefix"], "prod/db1");
    assert_eq!(
        cfg["keep"],
        serde_json::json!({"daily": 7, "weekly": 4, "monthly": 12})
    );
    assert_eq!(cfg["media_mirror_bucket"], "media-mirror");
    let units: Vec<String> = db1
        .resources
        .iter()
        .filter_map(|r| match &r.kind {
            Kind::Unit(u) => Some(format!("{}\n{}", u.name, u.content.clone().unwrap())),
            _ => None,
        })
        .collect();
    assert_eq!(units.len(), 5);
    assert!(
        units[0].contains("Type=oneshot\nExecStart=/usr/local/sbin/kiln-backup run --if-leader")
    );
    assert!(units[1].contains("OnCalendar=*-*-* 02:30:00\nPersistent=true"));
    assert!(units[2].contains("ExecStart=/usr/local/sbin/kiln-backup verify"));
    // Point-in-time recovery is on by default: the archiver runs, held to a 60 s target.
    assert!(units[4].starts_with("kiln-binlog-archive.service\n"));
    assert!(units[4]
        .contains("Type=simple\nExecStart=/usr/local/sbin/kiln-backup archive\nRestart=always"));
    assert_eq!(
        cfg["binlog"],
        serde_json::json!({"enabled": true, "interval": 20, "target_lag": 60, "peers": []})
    );
    assert_eq!(cfg["host"], "db1");
    // A change of the tool, its configuration or credentials restarts the archiver.
    for path in [
        "/usr/local/sbin/kiln-backup",
        "/etc/kiln/backup/backup.json",
        "/etc/kiln/backup/s3.env",
    ] {
        let r = db1
            .resources
            .iter()
            .find(|r| matches!(&r.kind, Kind::File(f) if f.path == path))
            .unwrap();
        assert!(
            r.notify
                .iter()
                .any(|n| n.unit == "kiln-binlog-archive.service"),
            "{path}"
        );
    }
    // The tool as installed is the file the unit tests exercise.
    let tool = file("/usr/local/sbin/kiln-backup");
    let src = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/backup/kiln-backup.py"),
    )
    .unwrap();
    assert_eq!(tool.content.as_deref(), Some(src.as_str()));
    assert_eq!(tool.mode, "0755");
}

/// ENV with `extra` added to its `[modules.backup]`, loaded with its secrets resolved, in
/// a scratch repository (kept alive by the returned directory).
fn environment(extra: &str) -> Result<(tempfile::TempDir, kiln::spec::Environment), String> {
    std::env::set_var("KILN_TEST_BACKUP_KEY", "access-key-xyz");
    std::env::set_var("KILN_TEST_BACKUP_SECRET", "secret-key-not-in-output");
    std::env::set_var(
        "KILN_TEST_BACKUP_AGE",
        "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ",
    );
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(repo.join("modules"), dir.path().join("modules")).unwrap();
    std::os::unix::fs::symlink(repo.join("templates"), dir.path().join("templates")).unwrap();
    std::fs::create_dir_all(dir.path().join("environments")).unwrap();
    let p = dir.path().join("environments/prod.toml");
    let text = ENV.replace(
        "media_mirror_bucket = \"media-mirror\"\n",
        &format!("media_mirror_bucket = \"media-mirror\"\n{extra}\n"),
    ) + "[secrets.backup_age]\nenv = \"KILN_TEST_BACKUP_AGE\"\n";
    std::fs::write(&p, text).unwrap();
    let mut env = kiln::spec::Environment::load(&p).map_err(|e| e.to_string())?;
    env.resolve_secrets().map_err(|e| e.to_string())?;
    Ok((dir, env))
}

/// Expands the backup module of `extra` (added to ENV's `[modules.backup]`) offline.
fn expand_with(extra: &str) -> Result<kiln::desired::Desired, String> {
    let (_dir, env) = environment(extra)?;
    let hosts = env.select_hosts(None).unwrap();
    kiln::desired::expand(&env, &hosts, None).map_err(|e| e.to_string())
}

#[test]
fn encrypted_backups_install_age_and_the_identity_as_a_sensitive_file() {
    use kiln::resource::Kind;
    const R: &str = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";
    let d = expand_with(&format!(
        "age_recipients = [\"{R}\"]\nage_identity_secret = \"backup_age\""
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let db1 = d.host("db1").unwrap();
    let id = db1
        .resources
        .iter()
        .find_map(|r| match &r.kind {
            Kind::File(f) if f.path == "/etc/kiln/backup/age-identity" => Some(f.clone()),
            _ => None,
        })
        .expect("the identity file");
    assert_eq!(id.mode, "0600");
    assert!(id.sensitive, "the identity is a secret's value");
    assert!(db1
        .resources
        .iter()
        .any(|r| matches!(&r.kind, Kind::Package(p) if p.name == "age")));
    let cfg = db1
        .resources
        .iter()
        .find_map(|r| match &r.kind {
            Kind::File(f) if f.path == "/etc/kiln/backup/backup.json" => f.content.clone(),
            _ => None,
        })
        .unwrap();
    let cfg: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    assert_eq!(
        cfg["age"],
        serde_json::json!({"recipients": [R], "identity": "/etc/kiln/backup/age-identity"})
    );
    assert!(!cfg.to_string().contains("AGE-SECRET-KEY"));
    // Without encryption: no identity, no age package.
    let plain = expand_with("").unwrap_or_else(|e| panic!("{e}"));
    assert!(!plain
        .host("db1")
        .unwrap()
        .resources
        .iter()
        .any(|r| matches!(&r.kind,
        Kind::File(f) if f.path == "/etc/kiln/backup/age-identity")));
}

#[test]
fn encryption_without_an_identity_or_with_a_bad_recipient_is_refused() {
    let e = expand_with(
        "age_recipients = [\"age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\"]",
    )
    .err()
    .expect("refused");
    assert!(e.contains("age_identity_secret is not"), "{e}");
    let e = expand_with("age_recipients = [\"ssh-rsa\"]\nage_identity_secret = \"backup_age\"")
        .err()
        .expect("refused");
    assert!(e.contains("is not an age public key"), "{e}");
}

/// `s3.env` of db1 for `extra` added to ENV's `[modules.backup]`.
fn credentials_with(extra: &str) -> String {
    use kiln::resource::Kind;
    let d = expand_with(extra).unwrap_or_else(|e| panic!("{e}"));
    d.host("db1")
        .unwrap()
        .resources
        .iter()
        .find_map(|r| match &r.kind {
            Kind::File(f) if f.path == "/etc/kiln/backup/s3.env" => f.content.clone(),
            _ => None,
        })
        .expect("s3.env")
}

#[test]
fn a_backup_user_named_by_access_key_replaces_the_root_key() {
    // The default: MinIO's root user, on both targets.
    let root = credentials_with("replicate_to = \"http://offsite:9000\"");
    assert!(
        root.contains("S3_ACCESS_KEY=\"access-key-xyz\"\n"),
        "{root}"
    );
    assert!(
        root.contains("REPLICA_ACCESS_KEY=\"access-key-xyz\""),
        "{root}"
    );
    // A user's name given as `access_key`: the root key is not written anywhere, the
    // replica takes the same name unless it has its own.
    let user =
        credentials_with("access_key = \"kiln-backup\"\nreplicate_to = \"http://offsite:9000\"");
    assert!(user.contains("S3_ACCESS_KEY=\"kiln-backup\"\n"), "{user}");
    assert!(
        user.contains("REPLICA_ACCESS_KEY=\"kiln-backup\""),
        "{user}"
    );
    assert!(!user.contains("access-key-xyz"), "{user}");
    let own = credentials_with(
        "access_key = \"kiln-backup\"\nreplicate_to = \"http://offsite:9000\"\nreplica_access_key = \"offsite-backup\"",
    );
    assert!(own.contains("S3_ACCESS_KEY=\"kiln-backup\"\n"), "{own}");
    assert!(
        own.contains("REPLICA_ACCESS_KEY=\"offsite-backup\""),
        "{own}"
    );
    // A replica key from a secret wins over both names.
    let secret = credentials_with(
        "access_key = \"kiln-backup\"\nreplicate_to = \"http://offsite:9000\"\nreplica_access_key = \"offsite-backup\"\nreplica_access_key_secret = \"minio_root_user\"",
    );
    assert!(
        secret.contains("REPLICA_ACCESS_KEY=\"access-key-xyz\""),
        "{secret}"
    );
}

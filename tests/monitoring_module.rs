//! The `monitoring` module expanded offline (no host contacted) for a production-like
//! topology: every scrape target and probe derived from the environment (node exporters,
//! the Galera nodes' mysqld exporters, nginx's exporter, one HTTPS probe per site domain,
//! one SSH probe per host), a host or site added or removed follows, the exporters opened to
//! the monitoring host only, the rules' overrides, the SMTP password making Alertmanager's
//! file sensitive, and bad overrides refused. When `promtool` is on PATH (Debian's
//! `prometheus` package) the rendered rules and config must pass `promtool check`; the lab
//! suite (tests/monitoring_e2e.rs) checks them with the host's promtool in any case.

use std::path::Path;

use kiln::desired::{self, Desired};
use kiln::resource::Kind;
use kiln::spec::Environment;

const TOPOLOGY: &str = r#"
[hosts.web]
address = "10.1.0.10"
roles = ["web"]
[hosts.db1]
address = "10.1.0.21"
roles = ["db"]
[hosts.db2]
address = "10.1.0.22"
roles = ["db"]
[hosts.mon]
address = "10.1.0.40"
roles = ["monitoring"]

[roles.web]
modules = ["debian-base", "nginx", "tls"]
[roles.db]
modules = ["debian-base", "mariadb-galera"]
[roles.monitoring]
modules = ["debian-base", "monitoring"]

[secrets.smtp]
env = "KILN_TEST_MONITORING_SMTP"

[modules.mariadb-galera]
cluster_name = "main"
nodes = ["db1", "db2"]

[modules.tls]
email = "ops@example.com"
certificates = [{ name = "shop", domains = ["shop.example.com", "www.example.com"] }, { name = "api", domains = ["api.example.com"] }]

[modules.nginx]
sites = [
  { name = "shop", type = "static", domains = ["shop.example.com", "www.example.com"], root = "/srv/shop", certificate = "shop" },
  { name = "api", type = "proxy", domains = ["api.example.com"], upstream = "http://127.0.0.1:3000", certificate = "api" },
  { name = "plain", type = "static", domains = ["plain.example.com"], root = "/srv/plain" },
]
"#;

const SECRET: &str = "smtp-pw-not-in-any-output-5b3e";

fn load(text: &str) -> Result<(tempfile::TempDir, Environment), String> {
    std::env::set_var("KILN_TEST_MONITORING_SMTP", SECRET);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(repo.join("modules"), dir.path().join("modules")).unwrap();
    std::os::unix::fs::symlink(repo.join("templates"), dir.path().join("templates")).unwrap();
    std::fs::create_dir_all(dir.path().join("environments")).unwrap();
    let p = dir.path().join("environments/t.toml");
    std::fs::write(&p, text).unwrap();
    let mut env = Environment::load(&p).map_err(|e| e.to_string())?;
    env.resolve_secrets().map_err(|e| e.to_string())?;
    Ok((dir, env))
}

fn expand(extra: &str) -> Result<Desired, String> {
    let (_dir, env) = load(&format!("{TOPOLOGY}\n{extra}\n"))?;
    let hosts = env.select_hosts(None).unwrap();
    desired::expand(&env, &hosts, None).map_err(|e| e.to_string())
}

fn file_of(d: &Desired, host: &str, path: &str) -> (String, bool) {
    d.host(host)
        .unwrap()
        .resources
        .iter()
        .find_map(|r| match &r.kind {
            Kind::File(f) if f.path == path => {
                Some((f.content.clone().unwrap_or_default(), f.sensitive))
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("{host} has no {path}"))
}

fn file(d: &Desired, host: &str, path: &str) -> String {
    file_of(d, host, path).0
}

/// `(job, instance)` pairs of kiln-targets.json.
fn targets(d: &Desired) -> Vec<(String, String)> {
    let v: serde_json::Value =
        serde_json::from_str(&file(d, "mon", "/etc/prometheus/kiln-targets.json"))
            .expect("kiln-targets.json is JSON");
    let mut out: Vec<(String, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["job"].as_str().unwrap().to_string(),
                t["instance"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = list
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    v.sort();
    v
}

#[test]
fn every_target_and_probe_is_derived_from_the_environment() {
    let d = expand("").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        targets(&d),
        pairs(&[
            ("alertmanager", "mon"),
            ("blackbox", "mon"),
            ("prometheus", "mon"),
            ("node", "web"),
            ("node", "db1"),
            ("node", "db2"),
            ("node", "mon"),
            ("ssh", "web"),
            ("ssh", "db1"),
            ("ssh", "db2"),
            ("ssh", "mon"),
            ("mysqld", "db1"),
            ("mysqld", "db2"),
            ("nginx", "web"),
            ("sites", "https://shop.example.com/"),
            ("sites", "https://www.example.com/"),
            ("sites", "https://api.example.com/"),
            ("sites", "http://plain.example.com/"),
        ])
    );
    let prom = file(&d, "mon", "/etc/prometheus/prometheus.yml");
    for line in [
        "- targets: [\"10.1.0.21:9100\"]",
        "- targets: [\"10.1.0.22:9104\"]",
        "\"cluster\": \"main\"",
        "\"cluster_nodes\": \"2\"",
        "- targets: [\"10.1.0.10:9113\"]",
        "- targets: [\"https://www.example.com/\"]",
        "- targets: [\"10.1.0.40:22\"]",
        "module: [\"https_site\"]",
        "module: [\"ssh_banner\"]",
        "replacement: 127.0.0.1:9115",
    ] {
        assert!(prom.contains(line), "prometheus.yml lacks {line}:\n{prom}");
    }
    let rules = file(&d, "mon", "/etc/prometheus/kiln-rules.yml");
    // The cluster's size comes from its `nodes`.
    assert!(
        rules.contains(r#"mysql_global_status_wsrep_cluster_size{cluster=\"main\"} \u003c 2"#),
        "{rules}"
    );
    assert_eq!(rules.matches("- alert: ").count(), 15, "{rules}");
}

#[test]
fn a_host_or_site_added_or_removed_follows() {
    let more = TOPOLOGY.replace(
        "[roles.web]",
        "[hosts.web2]\naddress = \"10.1.0.11\"\nroles = [\"web\"]\n\n[roles.web]",
    );
    let (_dir, env) = load(&more.replace(
        "{ name = \"plain\", type = \"static\", domains = [\"plain.example.com\"], root = \"/srv/plain\" },\n",
        "",
    ))
    .unwrap();
    let hosts = env.select_hosts(None).unwrap();
    let d = desired::expand(&env, &hosts, None).unwrap_or_else(|e| panic!("{e}"));
    let t = targets(&d);
    for want in [("node", "web2"), ("nginx", "web2"), ("ssh", "web2")] {
        assert!(
            t.contains(&(want.0.into(), want.1.into())),
            "{want:?} in {t:?}"
        );
    }
    assert!(
        !t.iter().any(|(_, i)| i.contains("plain.example.com")),
        "the removed site is not probed: {t:?}"
    );
}

#[test]
fn exporters_open_to_the_monitoring_host_only() {
    let d = expand("").unwrap_or_else(|e| panic!("{e}"));
    let nft = file(&d, "web", "/etc/nftables.conf");
    for port in [9100, 9113] {
        let line = nft
            .lines()
            .map(str::trim)
            .find(|l| l.contains(&format!("tcp dport {port} ")))
            .unwrap_or_else(|| panic!("no rule for {port}:\n{nft}"));
        assert!(line.starts_with("ip saddr { 10.1.0.40 }"), "{line}");
    }
    let db = file(&d, "db1", "/etc/nftables.conf");
    assert!(
        db.contains("ip saddr { 10.1.0.40 } tcp dport 9104 accept"),
        "{db}"
    );
    // stub_status on loopback only; the exporter account has no password anywhere.
    let stub = file(&d, "web", "/etc/nginx/conf.d/kiln-stub-status.conf");
    assert!(stub.contains("listen 127.0.0.1:8080;"), "{stub}");
    let dflt = file(&d, "db1", "/etc/default/prometheus-mysqld-exporter");
    assert!(
        dflt.contains("DATA_SOURCE_NAME=\"prometheus@unix(/run/mysqld/mysqld.sock)/\""),
        "{dflt}"
    );
    let users = d
        .host("db1")
        .unwrap()
        .resources
        .iter()
        .find_map(|r| match &r.kind {
            Kind::GaleraNode(g) => Some(g.users.clone()),
            _ => None,
        })
        .unwrap();
    let p = users.iter().find(|u| u.name == "prometheus").unwrap();
    assert_eq!(
        (p.host.as_str(), p.password_secret.as_str()),
        ("localhost", "")
    );
    assert_eq!(p.grants, ["PROCESS, REPLICATION CLIENT ON *.*"]);
}

#[test]
fn exporters_can_be_switched_off() {
    let d = expand(
        "[modules.debian-base]\nnode_exporter = false\n[hosts.web.modules.nginx]\nexporter = false\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let t = targets(&d);
    assert!(!t.iter().any(|(j, _)| j == "node" || j == "nginx"), "{t:?}");
    let nft = file(&d, "web", "/etc/nftables.conf");
    assert!(
        !nft.contains("dport 9100") && !nft.contains("dport 9113"),
        "{nft}"
    );
}

#[test]
fn rules_are_overridden_by_name_and_unknown_ones_refused() {
    let d = expand(
        "[modules.monitoring]\nrules = { SiteDown = { for = \"1m\", severity = \"page\" }, SiteSlow = { enabled = false } }\n\
         extra_rules = [{ alert = \"QueueLong\", expr = \"app_queue > 10\", for = \"10m\", severity = \"warning\", summary = \"q\" }]\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let rules = file(&d, "mon", "/etc/prometheus/kiln-rules.yml");
    let site = rules
        .split("- alert: ")
        .find(|r| r.starts_with("\"SiteDown\""))
        .unwrap();
    assert!(
        site.contains("for: \"1m\"") && site.contains("severity: \"page\""),
        "{site}"
    );
    assert!(!rules.contains("- alert: \"SiteSlow\""), "{rules}");
    assert!(rules.contains("- alert: \"QueueLong\""), "{rules}");
    let e = expand("[modules.monitoring]\nrules = { SiteGone = { for = \"1m\" } }\n").unwrap_err();
    assert!(
        e.contains("SiteGone") && e.contains("t.toml") && e.contains("modules.monitoring"),
        "{e}"
    );
    let e = expand("[modules.monitoring]\nscrape_interval = \"5 seconds\"\n").unwrap_err();
    assert!(
        e.contains("t.toml:") && e.contains("scrape_interval") && e.contains("Prometheus duration"),
        "{e}"
    );
}

#[test]
fn the_smtp_password_makes_alertmanager_sensitive() {
    let plain = expand("[modules.monitoring]\nwebhook_urls = [\"http://127.0.0.1:9099/a\"]\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let (am, sensitive) = file_of(&plain, "mon", "/etc/prometheus/alertmanager.yml");
    assert!(
        !sensitive && am.contains("url: \"http://127.0.0.1:9099/a\""),
        "{am}"
    );
    assert!(am.contains("send_resolved: true"), "{am}");
    let mail = expand(
        "[modules.monitoring]\nemail_to = [\"ops@example.com\"]\nsmtp_smarthost = \"mail.example.com:587\"\n\
         smtp_from = \"alerts@example.com\"\nsmtp_username = \"alerts\"\nsmtp_password_secret = \"smtp\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (am, sensitive) = file_of(&mail, "mon", "/etc/prometheus/alertmanager.yml");
    assert!(
        sensitive,
        "alertmanager.yml holds the SMTP password: sensitive"
    );
    assert!(
        am.contains(SECRET) && am.contains("to: \"ops@example.com\""),
        "{am}"
    );
    let e = expand("[modules.monitoring]\nemail_to = [\"ops@example.com\"]\n").unwrap_err();
    assert!(e.contains("smtp_smarthost"), "{e}");
}

/// A Prometheus tool (`promtool`, `amtool`): `$KILN_<NAME>` or PATH. None (said) when it is
/// missing; under `KILN_E2E=require` (CI, whose `.ci/run` unpacks them) a missing tool fails.
fn tool(name: &str) -> Option<std::path::PathBuf> {
    let var = format!("KILN_{}", name.to_uppercase());
    let path = std::env::var_os(&var)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| name.into());
    match std::process::Command::new(&path).arg("--version").output() {
        Ok(out) if out.status.success() => Some(path),
        other => {
            assert!(
                std::env::var("KILN_E2E").as_deref() != Ok("require"),
                "KILN_E2E=require and no {name} ({var} or PATH): {other:?}"
            );
            println!("{name} not installed: the lab suite checks the files on the host");
            None
        }
    }
}

/// `tool ARGS FILE`: whether it exited 0, and its stdout and stderr.
fn run_tool(tool: &Path, args: &[&str], file: &Path) -> (bool, String) {
    let r = std::process::Command::new(tool)
        .args(args)
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", tool.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    (r.status.success(), text)
}

/// promtool (Debian's `prometheus` package): the rendered rules and config pass it; amtool
/// (`prometheus-alertmanager`): Alertmanager's file, with a webhook and with email.
#[test]
fn rendered_rules_and_config_pass_promtool_and_amtool() {
    if let Some(amtool) = tool("amtool") {
        for extra in [
            "[modules.monitoring]\nwebhook_urls = [\"http://hooks.example:9099/a\"]\n",
            "[modules.monitoring]\nemail_to = [\"ops@example.com\"]\nsmtp_smarthost = \"mail.example.com:587\"\n\
             smtp_from = \"alerts@example.com\"\nsmtp_username = \"alerts\"\nsmtp_password_secret = \"smtp\"\n",
        ] {
            let d = expand(extra).unwrap_or_else(|e| panic!("{e}"));
            let dir = tempfile::tempdir().unwrap();
            let am = dir.path().join("alertmanager.yml");
            std::fs::write(&am, file(&d, "mon", "/etc/prometheus/alertmanager.yml")).unwrap();
            let (ok, text) = run_tool(&amtool, &["check-config"], &am);
            assert!(ok && text.contains("SUCCESS"), "{extra}\n{text}");
        }
    }
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let d = expand("[modules.monitoring]\nextra_rules = [{ alert = \"X\", expr = \"up == 0\" }]\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("kiln-rules.yml");
    std::fs::write(&rules, file(&d, "mon", "/etc/prometheus/kiln-rules.yml")).unwrap();
    let (ok, text) = run_tool(&promtool, &["check", "rules"], &rules);
    assert!(ok && text.contains("SUCCESS: 16 rules found"), "{text}");
    let prom = file(&d, "mon", "/etc/prometheus/prometheus.yml")
        .replace("/etc/prometheus/kiln-rules.yml", rules.to_str().unwrap());
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(&cfg, prom).unwrap();
    let (ok, text) = run_tool(&promtool, &["check", "config"], &cfg);
    assert!(ok, "{text}");
}

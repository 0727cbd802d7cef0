//! environments/prod.toml's topology converged on real lab hosts: the shipped production
//! example copied by `kiln clone prod prodlab --hosts lab@10.233.0.91` (every address moved,
//! nothing else touched), then `prodci`, which extends the copy with only the lab's
//! stand-ins for what the internet would give (an apt mirror, MinIO's download, Let's
//! Encrypt and DNS as the lab's pebble and /etc/hosts, PyPI none, the office's SSH range as
//! the controller, a certificate for the shop, the team's app code) — and **no `ports`
//! anywhere**: the firewall of every host is what the modules declare.
//!
//! Scenarios, in order: clone and lab up (8 hosts, 10.233.0.91-98); the first apply from bare
//! Debian converges and verify passes; the web host reaches the Galera cluster through its
//! HAProxy and the object store, while the ports no module opens to it stay shut (and the
//! object store cannot reach MariaDB); the monitoring prod declares on `offsite` probes every
//! site with success, and the copy's alerts go to its own receiver (`kiln clone --set`),
//! never prod's email; a second apply changes nothing; no secret in any output. Needs root.

mod common;

use common::{expect, Lab};

const ENV: &str = "prodci";
const CLONE: &str = "prodlab";
const FIRST: &str = "10.233.0.91";
const WEB1: &str = "10.233.0.91";
const DB1: &str = "10.233.0.92";
const STORAGE: &str = "10.233.0.95";
const ACME: &str = "10.233.0.97";

/// What `prodci` changes of the clone: the lab's stand-ins, nothing of the topology.
fn overlay(recipient: &str) -> String {
    format!(
        r#"# The clone of prod on lab hosts, with the lab's stand-ins for the internet.
extends = "{CLONE}"
description = "prod's topology on lab hosts (tests/prod_e2e.rs)"

# Let's Encrypt's stand-in: the lab's ACME server (its own host, like lab.toml's).
[hosts.acme]
address = "{ACME}"
provider = "lab"
roles = ["acme"]

[roles.acme]
modules = ["debian-base", "pebble"]

# DNS's stand-in: the sites' names in every lab host's /etc/hosts.
[hosts.web1]
aliases = ["api.prod.lab.test", "node.prod.lab.test", "ws.prod.lab.test", "app.prod.lab.test", "www.prod.lab.test", "prod.lab.test", "admin.prod.lab.test", "docs.prod.lab.test", "shop.prod.lab.test"]

# The team's deploy pipeline's stand-in: the lab's demo apps in the places prod names.
[roles.web]
modules = ["debian-base", "galera-endpoint", "php", "node", "python-wkhtmltopdf", "lab-apps", "nginx", "tls"]

[modules.lab-apps]
spas = [{{ name = "app", root = "/srv/app/dist" }}, {{ name = "admin", root = "/srv/admin/dist" }}, {{ name = "docs", root = "/srv/docs/dist" }}, {{ name = "shop", root = "/srv/shop/dist" }}]

[modules.debian-base]
# The lab's apt cache instead of Debian's mirrors; SSH from the controller instead of the
# office range (prod's range would lock kiln out, and kiln refuses that).
apt_proxy = "http://10.233.0.1:3143"
ssh_from = ["10.233.0.1"]
fail2ban_ignoreip = ["10.233.0.1"]

[modules.python-wkhtmltopdf]
# No PyPI in the lab.
apps = [{{ name = "pdf", dir = "/srv/pdf" }}]

[modules.minio]
# MinIO's download: the lab's stand-in, pinned by the file `kiln lab up` writes.
artifact_url = "http://10.233.0.1:8090/minio"
artifact_sha256 = ""
artifact_sha256_secret = "minio_artifact_sha256"

[modules.tls]
acme_server = "https://acme:14000/dir"
acme_ca_template = "pebble/listener-ca.pem"
trust = "partial"

[modules.backup]
age_recipients = ["{recipient}"]

# The lab's ACME CA is made at `kiln lab up`: probes measure expiry but do not verify it.
# The copy's receiver (its `webhook_urls`, given by `kiln clone --set`) is the lab's.
[roles.monitoring]
modules = ["debian-base", "monitoring", "lab-webhook"]

[modules.monitoring]
probe_tls_verify = false

[secrets.minio_artifact_sha256]
lab_artifact = "minio.sha256"
[secrets.node_app_secret]
generate = 32
[secrets.db_app]
env = "PRODCI_DB_APP"
[secrets.minio_root_user]
generate = 16
[secrets.minio_root_password]
generate = 32
[secrets.offsite_root_user]
generate = 16
[secrets.offsite_root_password]
generate = 32
[secrets.minio_backup_key]
generate = 32
[secrets.offsite_backup_key]
generate = 32
[secrets.smtp_password]
generate = 16
[secrets.backup_age_identity]
env = "PRODCI_AGE_IDENTITY"
[secrets.shop_fullchain]
env = "PRODCI_SHOP_FULLCHAIN"
[secrets.shop_key]
env = "PRODCI_SHOP_KEY"
"#
    )
}

fn up(lab: &Lab) -> Result<(), String> {
    std::fs::copy(
        common::repo().join("environments/prod.toml"),
        lab.path("environments/prod.toml"),
    )
    .map_err(|e| format!("copy prod.toml: {e}"))?;
    let r = lab.kiln(&[
        "clone",
        "prod",
        CLONE,
        "--hosts",
        &format!("lab@{FIRST}"),
        "--domain-map",
        "example.com=prod.lab.test",
        "--set",
        "monitoring.webhook_urls=[\"http://127.0.0.1:9099/alerts\"]",
    ]);
    expect(r.code == 0, "kiln clone prod prodlab", &r)?;
    let clone = std::fs::read_to_string(lab.path(&format!("environments/{CLONE}.toml")))
        .map_err(|e| e.to_string())?;
    expect(
        clone.contains(&format!("address = \"{WEB1}\"")) && !clone.contains("ports"),
        "the clone moves the hosts and writes no ports",
        &r,
    )?;
    expect(
        clone.contains("email_to = []  # prod's own, not inherited")
            && clone.contains("webhook_urls = [\"http://127.0.0.1:9099/alerts\"]  # --set")
            && clone.contains("\"api.prod.lab.test\" = \"/health\"")
            && !clone.contains("ops@example.com"),
        "the clone's alerts go to its own receiver, not prod's email; its probe paths follow the domains",
        &r,
    )?;
    let r = lab.kiln(&["lab", "down", ENV]);
    expect(r.code == 0, "kiln lab down (leftovers)", &r)?;
    let r = lab.kiln(&["lab", "up", ENV]);
    expect(r.code == 0, "kiln lab up prodci", &r)?;
    let r = lab.kiln(&["lab", "status", ENV]);
    expect(
        r.code == 0 && r.stdout.matches("running").count() == 7,
        "seven hosts running",
        &r,
    )
}

fn first_apply_converges(lab: &Lab) -> Result<(), String> {
    let r = lab.kiln_timeout(&["apply", ENV, "--yes"], 1800);
    expect(
        r.code == 0,
        "the first apply of prod's topology converges",
        &r,
    )?;
    println!(
        "      {}",
        r.stdout
            .lines()
            .rev()
            .find(|l| l.contains("change"))
            .unwrap_or("")
    );
    let r = lab.kiln_timeout(&["verify", ENV], 600);
    expect(r.code == 0, "verify passes on every host", &r)
}

fn reach(lab: &Lab, host: &str, addr: &str, port: u16) -> Result<bool, String> {
    let r = lab.sh(
        host,
        &format!("timeout 3 bash -c 'exec 3<>/dev/tcp/{addr}/{port}' 2>/dev/null && echo OPEN || echo SHUT"),
    );
    if r.code != 0 {
        return Err(format!("probe from {host}: {}", r.all()));
    }
    Ok(r.stdout.contains("OPEN"))
}

fn web_reaches_the_cluster_and_the_object_store(lab: &Lab) -> Result<(), String> {
    // The API (PHP-FPM, its pool's database settings from prod.toml) through nginx and
    // TLS on web1: it logs in as the app through HAProxy on 127.0.0.1:3306 and asks a node
    // for the cluster's size.
    let r = lab.sh(
        "web1",
        "curl -sk --max-time 10 https://api.prod.lab.test/health",
    );
    expect(
        r.code == 0 && r.stdout.contains("\"ok\":true") && r.stdout.contains("\"cluster_size\":3"),
        "web1's API queries the 3-node cluster through HAProxy as the app",
        &r,
    )?;
    println!("      api /health: {}", r.stdout.trim());
    let r = lab.sh(
        "web1",
        "curl -s -o /dev/null -w '%{http_code}' http://storage:9000/minio/health/live",
    );
    expect(
        r.code == 0 && r.stdout.trim() == "200",
        "web1 reaches the object store (minio allow_from = [\"web1\"])",
        &r,
    )?;
    // What no module opens to them stays shut.
    let checks: [(&str, &str, u16, bool, &str); 6] = [
        (
            "web1",
            DB1,
            3306,
            true,
            "web1 → db1 MariaDB (galera-endpoint)",
        ),
        (
            "db2",
            DB1,
            4567,
            true,
            "db2 → db1 Galera replication (a node)",
        ),
        ("web1", DB1, 4567, false, "web1 → db1 Galera replication"),
        ("storage", DB1, 3306, false, "storage → db1 MariaDB"),
        ("offsite", DB1, 3306, false, "offsite → db1 MariaDB"),
        ("acme", STORAGE, 9000, false, "acme → storage S3 API"),
    ];
    for (from, addr, port, open, what) in checks {
        let got = reach(lab, from, addr, port)?;
        if got != open {
            return Err(format!(
                "{what}: expected {}, found {}",
                if open { "open" } else { "shut" },
                if got { "open" } else { "shut" }
            ));
        }
        println!("      {what}: {}", if open { "open" } else { "shut" });
    }
    // The rule on db1 that lets web1 in names the module that declared it.
    let r = lab.sh("db1", "nft list table inet kiln");
    expect(
        r.code == 0
            && r.stdout.lines().any(|l| {
                l.contains("tcp dport 3306") && l.contains(WEB1) && l.contains("mariadb-galera")
            }),
        "db1's firewall in force admits web1 on 3306 (module mariadb-galera)",
        &r,
    )
}

/// The monitoring prod declares, on the copy: every site probe succeeds (the derived paths
/// and domains are right for prod's sites), and the copy's Alertmanager sends to the copy's
/// receiver, never to prod's email.
fn monitoring_probes_every_site_and_alerts_go_to_the_copy(lab: &Lab) -> Result<(), String> {
    let q = lab.sh(
        "offsite",
        r#"for i in $(seq 30); do
  out=$(curl -fsS --max-time 10 'http://127.0.0.1:9090/api/v1/query?query=probe_success%7Bjob%3D%22sites%22%7D' | python3 -c '
import json, sys
r = json.load(sys.stdin)["data"]["result"]
print(len(r), sum(1 for x in r if x["value"][1] == "1"))
for x in r:
    print(x["metric"]["instance"], x["value"][1])') && [ "$(echo "$out" | head -1 | cut -d" " -f1)" = 9 ] && [ "$(echo "$out" | head -1 | cut -d" " -f2)" = 9 ] && break
  sleep 3
done; echo "$out""#,
    );
    expect(
        q.code == 0 && q.stdout.lines().next() == Some("9 9"),
        "Prometheus on offsite probes the 9 site domains of prod, every probe succeeds",
        &q,
    )?;
    let am = lab.sh("offsite", "cat /etc/prometheus/alertmanager.yml");
    expect(
        am.code == 0
            && am.stdout.contains("http://127.0.0.1:9099/alerts")
            && !am.stdout.contains("ops@example.com")
            && !am.stdout.contains("email_configs"),
        "the copy's Alertmanager sends to the copy's webhook, no email",
        &am,
    )?;
    let t = lab.sh(
        "offsite",
        "t0=$(date +%s); amtool --alertmanager.url=http://127.0.0.1:9093 alert add KilnCopyRouting severity=warning instance=prodci >/dev/null && \
         for i in $(seq 60); do grep -q KilnCopyRouting /var/lib/kiln-webhook/alerts.jsonl 2>/dev/null && { echo \"after $(( $(date +%s) - t0 )) s\"; exit 0; }; sleep 2; done; exit 1",
    );
    expect(
        t.code == 0,
        "an alert raised on the copy's Alertmanager reaches the copy's receiver",
        &t,
    )?;
    println!(
        "      a test alert reached the copy's webhook {}",
        t.stdout.trim()
    );
    Ok(())
}

/// Python on db1 (a backup host) with kiln-backup loaded as a module, its configuration and
/// its S3 client (sealed with age, replicated to offsite).
fn backup_py(lab: &Lab, code: &str) -> common::Run {
    lab.sh(
        "db1",
        &format!(
            "python3 - <<'PYEOF'\nimport importlib.machinery, importlib.util\nloader = importlib.machinery.SourceFileLoader('kb', '/usr/local/sbin/kiln-backup')\nspec = importlib.util.spec_from_loader('kb', loader)\nkb = importlib.util.module_from_spec(spec)\nloader.exec_module(kb)\ncfg = kb.load_config()\ns3 = kb.s3_client(cfg)\n{code}\nPYEOF"
        ),
    )
}

/// prod's media backup: an object the app stored in the media bucket is, after a backup,
/// in the media mirror of both targets (storage and offsite) as age ciphertext only, and
/// reads back as the original through the backup tool (the identity).
fn media_backup_is_sealed_and_off_site(lab: &Lab) -> Result<(), String> {
    let r = backup_py(
        lab,
        "s3.s3.primary.put_bytes('media', 'e2e/photo.txt', b'MEDIA-PLAINTEXT-' * 100)\nprint('stored')",
    );
    expect(
        r.stdout.trim() == "stored",
        "a media object in the media bucket",
        &r,
    )?;
    let r = lab.kiln_timeout(&["backup", ENV], 900);
    expect(
        r.code == 0
            && r.stdout
                .contains("copied to media-mirror (sealed with age)"),
        "kiln backup mirrors the media, sealed",
        &r,
    )?;
    let r = backup_py(
        lab,
        "for name, t in (('storage', s3.s3.primary), ('offsite', s3.s3.replica)):\n    b = t.get_bytes('media-mirror', 'e2e/photo.txt')\n    print(name, b.startswith(b'age-encryption.org/v1\\n'), b'MEDIA-PLAINTEXT' in b)\nprint('opened', s3.get_bytes('media-mirror', 'e2e/photo.txt') == b'MEDIA-PLAINTEXT-' * 100)",
    );
    expect(
        r.code == 0 && r.stdout.trim() == "storage True False\noffsite True False\nopened True",
        "the media mirror on both targets is age ciphertext, opened by the identity",
        &r,
    )
}

fn second_apply_changes_nothing(lab: &Lab) -> Result<(), String> {
    let r = lab.kiln_timeout(&["apply", ENV, "--yes"], 900);
    expect(
        r.code == 0 && r.stdout.contains("No changes to apply"),
        "a second apply changes nothing",
        &r,
    )
}

fn down(lab: &Lab) -> Result<(), String> {
    let r = lab.kiln(&["lab", "down", ENV]);
    expect(r.code == 0, "lab down", &r)
}

/// A CA and a certificate for shop.prod.lab.test signed by it (fullchain: leaf then CA),
/// made with the controller's openssl: the "provided" certificate prod names.
fn shop_certificate(dir: &std::path::Path) -> (String, String) {
    let sh = format!(
        "set -e; cd {d}; \
         openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=prodci-ca -keyout ca.key -out ca.pem 2>/dev/null; \
         openssl req -newkey rsa:2048 -nodes -subj /CN=shop.prod.lab.test -keyout shop.key -out shop.csr 2>/dev/null; \
         printf 'subjectAltName=DNS:shop.prod.lab.test\\n' > ext; \
         openssl x509 -req -in shop.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 -extfile ext -out shop.pem 2>/dev/null; \
         cat shop.pem ca.pem > fullchain.pem",
        d = dir.display()
    );
    let r = common::local("sh", &["-c", &sh]);
    assert_eq!(r.code, 0, "openssl: {}", r.all());
    (
        std::fs::read_to_string(dir.join("fullchain.pem")).expect("fullchain"),
        std::fs::read_to_string(dir.join("shop.key")).expect("key"),
    )
}

fn main() {
    use age::secrecy::ExposeSecret;
    let id = age::x25519::Identity::generate();
    let certs = tempfile::tempdir().expect("tempdir");
    let (fullchain, key) = shop_certificate(certs.path());
    let pw = format!("Prodci-{:x}", std::process::id() as u64 * 7919 + 104729);
    let lab = Lab::new(ENV, &overlay(&id.to_public().to_string()))
        .with_secret("PRODCI_DB_APP", &pw)
        .with_secret("PRODCI_AGE_IDENTITY", id.to_string().expose_secret())
        .with_secret("PRODCI_SHOP_KEY", &key)
        .with_env("PRODCI_SHOP_FULLCHAIN", &fullchain);
    let scenarios: &[common::Scenario<'_, Lab>] = &[
        ("prod_lab_up", &up),
        ("first_apply_converges", &first_apply_converges),
        (
            "web_reaches_the_cluster_and_the_object_store",
            &web_reaches_the_cluster_and_the_object_store,
        ),
        (
            "monitoring_probes_every_site_and_alerts_go_to_the_copy",
            &monitoring_probes_every_site_and_alerts_go_to_the_copy,
        ),
        (
            "media_backup_is_sealed_and_off_site",
            &media_backup_is_sealed_and_off_site,
        ),
        (
            "second_apply_changes_nothing",
            &second_apply_changes_nothing,
        ),
        ("no_secret_in_any_output", &|l: &Lab| {
            l.no_secret_in_any_output()
        }),
    ];
    common::run_suite(
        "prod_e2e",
        lab,
        scenarios,
        &down,
        common::Policy {
            stop_at_failure: true,
            always: &["no_secret_in_any_output"],
        },
    );
}

//! The `nginx` module from the repository, expanded offline (no host contacted): the TLS
//! profile (Mozilla's "intermediate" by default, "modern" per site or for the module), OCSP
//! stapling, the optional resolver, and where gzip is on (a static site's text assets) and
//! where it never is (nginx.conf, php and proxy sites: BREACH). The handshakes themselves
//! are judged by testssl.sh in tests/web_e2e.rs, against the lab.

use std::path::Path;

use kiln::desired::{self, Desired};
use kiln::resource::Kind;
use kiln::spec::Environment;

const SITES: &str = r#"
[hosts.web]
address = "10.0.1.1"
roles = ["web"]

[roles.web]
modules = ["php", "nginx", "tls"]

[modules.php]
pools = [{ name = "api", user = "api", dir = "/srv/api" }]

[modules.tls]
email = "ops@example.test"
certificates = [
  { name = "api", domains = ["api.example.test"] },
  { name = "node", domains = ["node.example.test"] },
  { name = "app", domains = ["app.example.test"] },
  { name = "new", domains = ["new.example.test"] },
]

[modules.nginx]
sites = [
  { name = "api", type = "php", domains = ["api.example.test"], root = "/srv/api/public", pool = "api", certificate = "api" },
  { name = "node", type = "proxy", domains = ["node.example.test"], upstream = "http://127.0.0.1:3000", certificate = "node" },
  { name = "app", type = "static", domains = ["app.example.test"], root = "/srv/app/dist", certificate = "app" },
  { name = "new", type = "static", domains = ["new.example.test"], root = "/srv/new/dist", certificate = "new", tls = "modern" },
  { name = "plain", type = "static", domains = ["plain.example.test"], root = "/srv/plain" },
]
"#;

/// The Mozilla intermediate v5.7 suites for ECDHE: every one AEAD (GCM or ChaCha20-Poly1305).
const CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:\
ECDHE-RSA-CHACHA20-POLY1305";

struct Fixture {
    _dir: tempfile::TempDir,
    desired: Desired,
}

fn expand(env_text: &str) -> Result<Fixture, String> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(repo.join("modules"), dir.path().join("modules")).unwrap();
    std::os::unix::fs::symlink(repo.join("templates"), dir.path().join("templates")).unwrap();
    std::fs::create_dir_all(dir.path().join("environments")).unwrap();
    let p = dir.path().join("environments/t.toml");
    std::fs::write(&p, env_text).unwrap();
    let env = Environment::load(&p).map_err(|e| e.to_string())?;
    let hosts = env.select_hosts(None).unwrap();
    let desired = desired::expand(&env, &hosts, None).map_err(|e| e.to_string())?;
    Ok(Fixture { _dir: dir, desired })
}

fn fixture(env_text: &str) -> Fixture {
    expand(env_text).unwrap_or_else(|e| panic!("{e}"))
}

fn file(f: &Fixture, path: &str) -> String {
    f.desired
        .host("web")
        .unwrap()
        .resources
        .iter()
        .find_map(|r| match &r.kind {
            Kind::File(x) if x.path == path => x.content.clone(),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no file {path}"))
}

fn site(f: &Fixture, name: &str) -> String {
    file(f, &format!("/etc/nginx/sites-enabled/{name}.conf"))
}

/// The directive lines (trimmed, comments left out) of a config.
fn directives(conf: &str) -> Vec<&str> {
    conf.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

fn has(conf: &str, line: &str) -> bool {
    directives(conf).contains(&line)
}

/// The lines of the block that opens with `opening` (`location / {`), up to its `}`.
fn block<'a>(conf: &'a str, opening: &str) -> Vec<&'a str> {
    let lines = directives(conf);
    let start = lines
        .iter()
        .position(|l| *l == opening)
        .unwrap_or_else(|| panic!("no block {opening:?} in:\n{conf}"));
    let mut depth = 0;
    let mut out = vec![];
    for l in &lines[start..] {
        depth += l.matches('{').count();
        depth -= l.matches('}').count();
        out.push(*l);
        if depth == 0 {
            break;
        }
    }
    out
}

#[test]
fn nginx_conf_is_mozilla_intermediate_without_gzip() {
    let f = fixture(SITES);
    let c = file(&f, "/etc/nginx/nginx.conf");
    for want in [
        "ssl_protocols TLSv1.2 TLSv1.3;",
        &format!("ssl_ciphers {CIPHERS};"),
        "ssl_prefer_server_ciphers off;",
        "ssl_session_cache shared:kiln_ssl:10m;",
        "ssl_session_timeout 1d;",
        "ssl_session_tickets off;",
        "gzip off;",
    ] {
        assert!(has(&c, want), "nginx.conf lacks {want:?}:\n{c}");
    }
    for suite in CIPHERS.split(':') {
        assert!(suite.starts_with("ECDHE-"), "{suite}: not ECDHE");
        assert!(
            suite.contains("-GCM-") || suite.ends_with("-CHACHA20-POLY1305"),
            "{suite}: not AEAD"
        );
    }
    let all = directives(&c).join("\n");
    assert!(!all.contains("gzip on"), "gzip on in nginx.conf:\n{c}");
    assert!(!all.contains("TLSv1;") && !all.contains("TLSv1.1"), "{c}");
    // No resolver unless one is named: one that does not answer would stall stapling.
    assert!(!all.contains("resolver"), "{c}");
}

#[test]
fn every_https_site_staples_ocsp_with_its_chain_and_a_modern_one_refuses_older_tls() {
    let f = fixture(SITES);
    for name in ["api", "node", "app", "new"] {
        let s = site(&f, name);
        for want in [
            "listen 443 ssl http2;".to_string(),
            "ssl_stapling on;".to_string(),
            "ssl_stapling_verify on;".to_string(),
            format!("ssl_trusted_certificate /etc/kiln/tls/live/{name}/fullchain.pem;"),
            "add_header Strict-Transport-Security \"max-age=31536000\" always;".to_string(),
        ] {
            assert!(has(&s, &want), "{name}: lacks {want:?}:\n{s}");
        }
        // nginx 1.22 takes the protocols of the listen socket's default server, whatever
        // a server block says: a site's own ssl_protocols would be a dead letter.
        assert!(!s.contains("ssl_protocols"), "{name}:\n{s}");
        // Only the "modern" site refuses requests that came over TLS 1.2.
        assert_eq!(s.contains("return 426;"), name == "new", "{name}:\n{s}");
        if name == "new" {
            let refuses = block(&s, "if ($ssl_protocol != \"TLSv1.3\") {");
            assert_eq!(
                refuses,
                ["if ($ssl_protocol != \"TLSv1.3\") {", "return 426;", "}"]
            );
        }
    }
    let plain = site(&f, "plain");
    assert!(
        !plain.contains("ssl_"),
        "a site without a certificate has no TLS:\n{plain}"
    );
}

#[test]
fn gzip_only_for_static_text_assets_never_for_php_or_proxy() {
    let f = fixture(SITES);
    for name in ["api", "node"] {
        let s = site(&f, name);
        assert!(has(&s, "gzip off;"), "{name}: gzip not off:\n{s}");
        assert!(!s.contains("gzip on"), "{name}: gzip on:\n{s}");
    }
    for name in ["app", "new", "plain"] {
        let s = site(&f, name);
        // The document (and every deep link to it) is served uncompressed.
        let doc = block(&s, "location / {");
        assert!(
            !doc.iter().any(|l| l.starts_with("gzip")),
            "{name}: {doc:#?}"
        );
        let assets = block(&s, "location ~* \\.(?:css|js|json|svg|txt|xml)$ {");
        for want in ["gzip on;", "gzip_vary on;"] {
            assert!(assets.contains(&want), "{name}: assets lack {want}");
        }
        let types = assets
            .iter()
            .find(|l| l.starts_with("gzip_types "))
            .expect("gzip_types");
        assert!(
            types.contains("text/css") && types.contains("application/javascript"),
            "{types}"
        );
        assert!(!types.contains("text/html"), "{types}");
        // Only inside that block.
        assert_eq!(s.matches("gzip on;").count(), 1, "{name}:\n{s}");
    }
}

#[test]
fn module_default_modern_narrows_every_handshake_and_names_a_resolver() {
    let env = SITES.replace(
        "[modules.nginx]\n",
        "[modules.nginx]\ntls = \"modern\"\nresolver = [\"127.0.0.53\", \"10.0.0.2\"]\n",
    );
    let f = fixture(&env);
    let c = file(&f, "/etc/nginx/nginx.conf");
    assert!(has(&c, "ssl_protocols TLSv1.3;"), "{c}");
    assert!(has(&c, "resolver 127.0.0.53 10.0.0.2;"), "{c}");
    assert!(has(&c, "resolver_timeout 5s;"), "{c}");
    for name in ["api", "node", "app", "new"] {
        assert!(site(&f, name).contains("return 426;"), "{name}");
    }
}

#[test]
fn every_https_site_modern_narrows_the_handshake_too() {
    let env = SITES
        .replace(
            "pool = \"api\", certificate = \"api\" }",
            "pool = \"api\", certificate = \"api\", tls = \"modern\" }",
        )
        .replace(
            "certificate = \"node\" }",
            "certificate = \"node\", tls = \"modern\" }",
        )
        .replace(
            "certificate = \"app\" }",
            "certificate = \"app\", tls = \"modern\" }",
        );
    assert_eq!(env.matches("tls = \"modern\"").count(), 4, "{env}");
    let c = file(&fixture(&env), "/etc/nginx/nginx.conf");
    assert!(has(&c, "ssl_protocols TLSv1.3;"), "{c}");
}

#[test]
fn a_site_cannot_widen_a_modern_module() {
    let env = SITES
        .replace("[modules.nginx]\n", "[modules.nginx]\ntls = \"modern\"\n")
        .replace(
            "certificate = \"node\" }",
            "certificate = \"node\", tls = \"intermediate\" }",
        );
    let err = expand(&env).err().expect("refused");
    assert!(
        err.contains(
            "site node: tls = \"intermediate\" cannot widen the module's tls = \"modern\""
        ),
        "{err}"
    );
}

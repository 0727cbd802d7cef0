//! `kiln plan --format markdown` (for pull requests) and targeted runs (`--target`,
//! `--exclude`): a snapshot of the Markdown of a plan with a file diff, a sensitive change
//! and a Galera step; the same rendering of plans made from recorded hosts (no secret in any
//! form); the selection on recorded hosts; the flags through the binary, offline.

use std::path::PathBuf;
use std::sync::{Arc, Once};

use assert_cmd::Command;
use kiln::engine::{load, make_plan, Connections, Loaded};
use kiln::plan::markdown::{render_markdown, Notes};
use kiln::plan::step::galera::{GaleraOp, GaleraStep};
use kiln::plan::{Action, AttrChange, Change, HostPlan, Plan, Shown, Step, PLAN_FORMAT};
use kiln::transport::recorded::Recorded;

const TOKEN: &str = "rec-secret-Token-4711";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let state = std::env::temp_dir().join(format!("kiln-plan-md-{}", std::process::id()));
        std::env::set_var("XDG_STATE_HOME", &state);
        std::env::set_var("KILN_REC_API_TOKEN", TOKEN);
    });
}

fn rec_env() -> PathBuf {
    fixtures().join("recorded/repo/environments/rec.toml")
}

fn loaded(limit: Option<&str>) -> Loaded {
    setup();
    load(rec_env().to_str().unwrap(), limit).expect("the fixture environment loads")
}

fn replay(tape: &str) -> Connections {
    let r = Arc::new(Recorded::load(&fixtures().join("recorded/tapes").join(tape)).expect("tape"));
    Connections::new(r)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn assert_no_secret(what: &str, text: &str) {
    use base64::Engine as _;
    use sha2::Digest as _;
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let forms = [
        TOKEN.to_string(),
        hex(&sha2::Sha256::digest(TOKEN.as_bytes())),
        base64::engine::general_purpose::STANDARD.encode(TOKEN),
        base64::engine::general_purpose::STANDARD.encode(format!("token = {TOKEN}\n")),
        hex(&sha2::Sha256::digest(
            format!("token = {TOKEN}\n").as_bytes(),
        )),
    ];
    for f in forms {
        assert!(!text.contains(&f), "{what} holds a form of the secret: {f}");
    }
}

fn change(resource: &str, action: Action, summary: &str) -> Change {
    Change {
        resource: resource.into(),
        action,
        summary: summary.into(),
        attributes: vec![],
        diff: None,
        sensitive: false,
        reason: None,
        fingerprint: "0".repeat(64),
        facts: vec![],
        steps: vec![],
    }
}

/// A plan with what a reviewer must see right: a file diff (holding a run of backticks and
/// a `|`), a sensitive change, a handler, a Galera step, a failed host.
fn sample_plan() -> Plan {
    let mut conf = change("file:/etc/nginx/nginx.conf", Action::Update, "content");
    conf.attributes = vec![AttrChange::values("mode", Some("0600"), "0644")];
    conf.diff = Some(
        "--- /etc/nginx/nginx.conf\n+++ /etc/nginx/nginx.conf (desired)\n@@ -1,2 +1,2 @@\n \
         worker_processes auto;\n-# ``` old | note\n+# ```` new | note\n"
            .into(),
    );
    let mut env = change("file:/etc/app/env", Action::Update, "content");
    env.sensitive = true;
    env.attributes = vec![AttrChange::new(
        "content",
        Shown::Sensitive,
        Shown::Sensitive,
    )];
    let mut reload = change(
        "handler:reload@nginx.service",
        Action::Run,
        "reload nginx.service",
    );
    reload.reason = Some("notified by file:/etc/nginx/nginx.conf".into());
    let mut galera = change(
        "galera_node:prod",
        Action::Run,
        "[1/1] restart db1 (configuration changed)",
    );
    galera.reason = Some("60-galera.cnf changes".into());
    galera.steps = vec![Step::Galera(GaleraStep {
        cluster: "prod".into(),
        seq: 1,
        total: 1,
        host: "db1".into(),
        nodes: vec!["db1".into(), "db2".into(), "db3".into()],
        op: GaleraOp::Restart,
    })];
    let mut cnf = change(
        "file:/etc/mysql/mariadb.conf.d/60-galera.cnf",
        Action::Update,
        "content",
    );
    cnf.diff = Some("@@ -1 +1 @@\n-wsrep_slave_threads = 4\n+wsrep_slave_threads = 8\n".into());
    let host = |name: &str, address: &str, changes: Vec<Change>| HostPlan {
        host: name.into(),
        address: address.into(),
        changes,
        after_hosts: vec![],
        error: None,
        facts_ms: 0,
        lockout: Default::default(),
        timings: None,
    };
    let mut db2 = host("db2", "10.0.0.12", vec![]);
    db2.error = Some("ssh to 10.0.0.12: connection refused | retried".into());
    Plan {
        format: PLAN_FORMAT,
        kiln_version: "test".into(),
        environment: "prod".into(),
        env_file: "environments/prod.toml".into(),
        created_at: "2026-01-01T00:00:00Z".into(),
        hosts: vec![
            host(
                "web1",
                "10.0.0.2",
                vec![
                    change("package:nginx", Action::Create, "install nginx"),
                    conf,
                    env,
                    reload,
                ],
            ),
            host("db1", "10.0.0.11", vec![cnf, galera]),
            db2,
            host("db3", "10.0.0.13", vec![]),
        ],
        targets: None,
    }
}

/// The Markdown of `sample_plan`, fixed in `tests/fixtures/plan.md`. After an intended
/// change of the rendering, write it again with `KILN_BLESS=1`.
#[test]
fn markdown_snapshot_of_a_plan_with_a_diff_a_sensitive_change_and_a_galera_step() {
    let md = render_markdown(
        &sample_plan(),
        &Notes {
            offline: false,
            placeholders: &[],
        },
    );
    let snap = fixtures().join("plan.md");
    if std::env::var_os("KILN_BLESS").is_some() {
        std::fs::write(&snap, &md).unwrap();
    }
    let want = std::fs::read_to_string(&snap).expect("tests/fixtures/plan.md");
    assert_eq!(
        md, want,
        "the Markdown plan changed; KILN_BLESS=1 writes it"
    );
    // What the snapshot must hold, said once more so a careless bless cannot lose it.
    assert!(md.contains("| web1 | 10.0.0.2 | 1 | 2 | 0 | 1 | 0 | changes |"));
    assert!(md.contains("| db1 | 10.0.0.11 | 0 | 1 | 0 | 0 | 1 | changes |"));
    assert!(md.contains("connection refused \\| retried"), "{md}");
    assert!(md.contains("content: (sensitive value changed)"));
    assert!(
        md.contains("\n`````diff\n"),
        "a fence longer than ````: {md}"
    );
    assert!(md.contains("1. **db1** `galera_node[prod]`: restart db1"));
}

#[test]
fn a_lockout_is_a_warning_in_the_row_and_what_was_not_checked_a_note() {
    let mut plan = sample_plan();
    plan.hosts[0].lockout = kiln::plan::Lockout {
        reasons: vec!["the firewall (/etc/nftables.conf) admits SSH (port 22) only from 198.51.100.0/24, and kiln connects from 10.233.0.1".into()],
        not_checked: vec!["/home/deploy/.ssh/authorized_keys (deploy's authorized_keys) is written by kiln, and kiln's key is not named".into()],
        overridden: true,
    };
    let md = render_markdown(
        &plan,
        &Notes {
            offline: false,
            placeholders: &[],
        },
    );
    assert!(
        md.contains("| changes<br>⚠️ applying this locks kiln out (--i-know-this-locks-me-out): the firewall (/etc/nftables.conf) admits SSH (port 22) only from 198.51.100.0/24, and kiln connects from 10.233.0.1 |"),
        "{md}"
    );
    assert!(
        md.contains("> `web1`: lockout check: /home/deploy/.ssh/authorized\\_keys (deploy's authorized\\_keys) is written by kiln"),
        "{md}"
    );
    let human = kiln::plan::render::render_plan(&plan, &kiln::ui::Paint::plain());
    assert!(
        human.contains(
            "\n  warning: applying this locks kiln out (--i-know-this-locks-me-out): the firewall"
        ),
        "{human}"
    );
    assert!(
        human.contains("\n  lockout check: /home/deploy/.ssh/authorized_keys"),
        "{human}"
    );
    // Refused: the row is the error, the changes are gone.
    plan.hosts[0].lockout.overridden = false;
    plan.refuse_lockouts(false);
    let md = render_markdown(
        &plan,
        &Notes {
            offline: false,
            placeholders: &[],
        },
    );
    assert!(md.contains("| web1 | 10.0.0.2 | 0 | 0 | 0 | 0 | 0 | ❌ applying this would lock kiln out: the firewall"), "{md}");
}

#[test]
fn markdown_of_a_fresh_recorded_plan_holds_no_secret() {
    let loaded = loaded(None);
    let plan = runtime()
        .block_on(make_plan(&loaded, &mut replay("fresh")))
        .unwrap();
    let md = render_markdown(
        &plan,
        &Notes {
            offline: false,
            placeholders: &[],
        },
    );
    assert_no_secret("the Markdown plan", &md);
    assert!(
        md.contains("<code>+ file:/etc/rec-app/token.conf</code>"),
        "{md}"
    );
    assert!(
        md.contains("kiln recorded"),
        "the page's diff is shown: {md}"
    );
    assert!(md.contains("| db | 10.233.0.72 |"), "{md}");
    assert!(md.contains("❌"), "db was unreachable: {md}");
}

// ---------------------------------------------------------------------------------------
// Targeted runs on recorded hosts: web, converged but for an edited motd and a removed page
// ---------------------------------------------------------------------------------------

fn drift_plan(target: &[&str], exclude: &[&str]) -> Plan {
    let mut l = loaded(Some("web"));
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    l.select(&s(target), &s(exclude))
        .expect("a valid selection");
    runtime()
        .block_on(make_plan(&l, &mut replay("drift")))
        .unwrap()
}

fn resources(plan: &Plan) -> Vec<&str> {
    plan.hosts
        .iter()
        .flat_map(|h| &h.changes)
        .map(|c| c.resource.as_str())
        .collect()
}

#[test]
fn the_untargeted_drift_plan_has_both_edits() {
    let plan = drift_plan(&[], &[]);
    let r = resources(&plan);
    assert!(r.contains(&"file:/etc/motd") && r.contains(&"file:/var/www/kiln/index.html"));
    assert!(plan.targets.is_none());
}

#[test]
fn a_target_plans_only_it_and_names_what_it_pulled_in() {
    let plan = drift_plan(&["file:/etc/motd"], &[]);
    assert_eq!(resources(&plan), vec!["file:/etc/motd"]);
    let t = plan.targets.as_ref().expect("the plan records its targets");
    assert_eq!(t.target, vec!["file:/etc/motd"]);
    assert_eq!(t.targeted, vec!["web:file:/etc/motd"]);
    // base's packages come before its files: required, planned (converged: no change).
    assert!(
        t.pulled_in.contains(&"web:package:curl".to_string()),
        "{t:?}"
    );
    let human = kiln::plan::render::render_plan(&plan, &kiln::ui::Paint::plain());
    assert!(
        human.contains("targeted (--target file:/etc/motd): 1 resource: web:file:/etc/motd"),
        "{human}"
    );
    assert!(human.contains("pulled in as dependencies: web:package:ca-certificates"));
    // A saved plan keeps them.
    let back: Plan = serde_json::from_str(&serde_json::to_string(&plan).unwrap()).unwrap();
    assert_eq!(back.targets, plan.targets);
}

#[test]
fn a_glob_target_minus_an_exclude() {
    let plan = drift_plan(&["file:/*"], &["file:/etc/motd"]);
    let r = resources(&plan);
    assert!(r.contains(&"file:/var/www/kiln/index.html"), "{r:?}");
    assert!(!r.contains(&"file:/etc/motd"), "{r:?}");
}

#[test]
fn an_exclude_leaves_out_what_requires_it_and_says_so() {
    let plan = drift_plan(&[], &["package:nginx"]);
    let r = resources(&plan);
    assert_eq!(r, vec!["file:/etc/motd"], "the page needs nginx's package");
    let t = plan.targets.as_ref().unwrap();
    assert_eq!(t.excluded, vec!["web:package:nginx"]);
    assert!(
        t.left_out
            .contains(&"web:file:/var/www/kiln/index.html".to_string()),
        "{t:?}"
    );
    let md = render_markdown(
        &plan,
        &Notes {
            offline: false,
            placeholders: &[],
        },
    );
    assert!(
        md.lines().any(
            |l| l.starts_with("> left out because they require an excluded resource: ")
                && l.contains("web:file:/var/www/kiln/index.html")
        ),
        "{md}"
    );
}

#[test]
fn bad_selections_are_errors_naming_the_pattern() {
    let mut l = loaded(Some("web"));
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let err = l.select(&s(&["file:/etc/nope*"]), &[]).unwrap_err();
    assert!(
        format!("{err}").contains("--target `file:/etc/nope*` matches no resource"),
        "{err}"
    );
    let err = l.select(&[], &s(&["service:nothing"])).unwrap_err();
    assert!(
        format!("{err}").contains("--exclude `service:nothing`"),
        "{err}"
    );
    let err = l.select(&s(&["nginx"]), &[]).unwrap_err();
    assert!(format!("{err}").contains("expected `type:name`"), "{err}");
    let err = l.select(&s(&["fle:/etc/motd"]), &[]).unwrap_err();
    assert!(format!("{err}").contains("no resource type `fle`"), "{err}");
    let err = l
        .select(
            &s(&["file:/var/www/kiln/index.html"]),
            &s(&["package:nginx"]),
        )
        .unwrap_err();
    assert!(
        format!("{err}").contains(
            "--exclude removes web:package:nginx, which the targeted web:file:/var/www/kiln/index.html requires"
        ),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// Through the binary, offline: no host is contacted
// ---------------------------------------------------------------------------------------

fn kiln(args: &[&str]) -> (Option<i32>, String, String) {
    kiln_with_token(args, false)
}

fn kiln_with_token(args: &[&str], token: bool) -> (Option<i32>, String, String) {
    setup();
    let mut cmd = Command::cargo_bin("kiln").expect("binary");
    cmd.current_dir(fixtures().join("recorded/repo"))
        .env("NO_COLOR", "1");
    if !token {
        cmd.env_remove("KILN_REC_API_TOKEN");
    }
    let out = cmd.args(args).output().expect("run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn offline_markdown_names_placeholders_and_keeps_the_exit_codes() {
    let (code, md, err) = kiln(&[
        "plan",
        "rec",
        "--offline",
        "--format",
        "markdown",
        "--detailed-exitcode",
    ]);
    assert_eq!(code, Some(2), "changes, --detailed-exitcode: {err}");
    assert!(md.contains("> **Offline**: no host was contacted"), "{md}");
    assert!(md.contains("placeholders used: `api_token`"), "{md}");
    assert!(
        md.contains("<code>+ package:nginx</code>: install nginx"),
        "{md}"
    );
    assert!(
        md.contains("<details><summary><code>+ file:/var/www/kiln/index.html</code>"),
        "{md}"
    );
    let (code, _, err) = kiln(&["plan", "rec", "--offline", "--format", "markdown"]);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn target_flags_through_the_binary() {
    let (code, out, err) = kiln(&[
        "plan",
        "rec",
        "--offline",
        "--target",
        "file:/etc/motd",
        "--limit",
        "db",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("targeted (--target file:/etc/motd): 1 resource: db:file:/etc/motd"),
        "{out}"
    );
    assert!(!out.contains("package:nginx"), "{out}");
    let (code, _, err) = kiln(&["plan", "rec", "--offline", "--target", "service:nope"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("--target `service:nope` matches no resource"),
        "{err}"
    );
    // drift: the environment is an error naming the pattern, before any host is contacted.
    let (code, out, err) = kiln_with_token(
        &[
            "drift",
            "rec",
            "--format",
            "json",
            "--exclude",
            "file:/nowhere",
        ],
        true,
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        out.contains("--exclude `file:/nowhere` matches no resource"),
        "{out}"
    );
    let (code, _, err) = kiln_with_token(&["apply", "rec", "--yes", "--target", "nope"], true);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("--target `nope`: expected `type:name`"),
        "{err}"
    );
}

/// The pull-request workflow (checked with actionlint when it was written; no YAML crate is
/// in Cargo.lock, so here: what it must keep saying, and no tab, which YAML refuses).
#[test]
fn the_pull_request_workflow_plans_offline_by_default_and_keeps_one_comment() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".github/workflows/plan.yml");
    let wf = std::fs::read_to_string(&path).expect(".github/workflows/plan.yml");
    assert!(!wf.contains('\t'), "a tab in YAML");
    for must in [
        "pull_request:",
        "KILN_PLAN_ONLINE: \"\"",
        "mode=--offline",
        "--format markdown --detailed-exitcode",
        "echo '<!-- kiln-plan -->'",
        "startswith(\"<!-- kiln-plan -->\")",
        "--method PATCH \"repos/$REPO/issues/comments/$id\"",
        "pull-requests: write",
    ] {
        assert!(wf.contains(must), "plan.yml should contain {must:?}");
    }
    // Untrusted values reach the shell through env, never spliced into a script.
    for line in wf.lines().filter(|l| l.contains("${{")) {
        let t = line.trim_start();
        assert!(
            !t.starts_with("run:") && (t.contains(": ${{") || t.starts_with("group:")),
            "an expression outside `env:`/`with:`: {line}"
        );
    }
}

//! Plan building from a tiny spec on disk: spec → desired → graph → host plan, with
//! hand-made facts. Covers the "second apply changes nothing" invariant at the unit level,
//! notifications and journalled handlers, sensitive content, fingerprints and ordering.

use std::path::{Path, PathBuf};

use kiln::desired::{self, Desired, DesiredHost};
use kiln::facts::{FactQuery, HostFacts, PackageFact, PathFact, PathKind, ServiceFact};
use kiln::plan::build::{fact_rules, fingerprint, host_plan, host_queries};
use kiln::plan::graph::ResourceGraph;
use kiln::plan::{Action, Change, Content, HandlerAction, HostPlan, Plan, Step, PLAN_FORMAT};
use kiln::resource::file::{sha256_hex, FileState};
use kiln::resource::Kind;
use kiln::spec::Environment;

const SEAL_KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

// ---------------------------------------------------------------------------------------
// A spec on disk
// ---------------------------------------------------------------------------------------

struct Spec {
    dir: tempfile::TempDir,
}

impl Spec {
    fn new(files: &[(&str, &str)]) -> Spec {
        let dir = tempfile::tempdir().expect("tempdir");
        for (rel, text) in files {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, text).unwrap();
        }
        Spec { dir }
    }

    fn env_path(&self, name: &str) -> PathBuf {
        self.dir
            .path()
            .join("environments")
            .join(format!("{name}.toml"))
    }

    fn load(&self, name: &str) -> Loaded {
        let mut env = Environment::load(&self.env_path(name))
            .unwrap_or_else(|e| panic!("spec does not load:\n{e}"));
        env.resolve_secrets()
            .unwrap_or_else(|e| panic!("secrets:\n{e}"));
        let hosts = env.select_hosts(None).expect("hosts");
        let desired =
            desired::expand(&env, &hosts, None).unwrap_or_else(|e| panic!("expand:\n{e}"));
        let graph = ResourceGraph::build(&env, &desired).unwrap_or_else(|e| panic!("graph:\n{e}"));
        Loaded {
            env,
            desired,
            graph,
        }
    }
}

struct Loaded {
    #[allow(dead_code)]
    env: Environment,
    desired: Desired,
    graph: ResourceGraph,
}

impl Loaded {
    fn host(&self) -> &DesiredHost {
        &self.desired.hosts[0]
    }
    fn plan(&self, facts: &HostFacts) -> HostPlan {
        host_plan(&self.desired, &self.graph, 0, facts, SEAL_KEY)
    }
    fn content_of(&self, id: &str) -> String {
        self.host()
            .resources
            .iter()
            .find(|r| r.id == id)
            .and_then(|r| match &r.kind {
                Kind::File(f) => f.content.clone(),
                Kind::Unit(u) => u.content.clone(),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no content for {id}"))
    }
    /// Resource ids in apply order.
    fn order(&self) -> Vec<String> {
        self.graph
            .host_order(&self.desired, 0)
            .into_iter()
            .map(|r| self.host().resources[r].id.clone())
            .collect()
    }
}

const ENV_X: &str = r#"
description = "fixture"

[hosts.h1]
address = "192.0.2.10"
roles = ["r"]

[roles.r]
modules = ["m", "tools"]

[vars]
greeting = "hello from vars"
"#;

/// Declared in reverse of apply order on purpose: the graph must put them right.
const MODULE_M: &str = r#"
description = "a service with a config file"

[params.title]
type = "string"
default = "fixture title"

[[resource]]
type = "service"
name = "svc"
enabled = true
running = true
check = "svc --check-config"
on_change = "reload"

[[resource]]
type = "file"
path = "/etc/svc/svc.conf"
template = "svc.conf.j2"
mode = "640"
notify = ["svc"]

[[resource]]
type = "directory"
path = "/etc/svc"

[[resource]]
type = "package"
name = "svcpkg"
"#;

/// Another module: no implicit package → file edge with module `m`.
const MODULE_TOOLS: &str = r#"
[[resource]]
type = "file"
path = "/etc/tools.conf"
content = "tools {{ host.name }}\n"

[[resource]]
type = "package"
name = "jq"
"#;

const SVC_CONF: &str = "# {{ params.title }} on {{ host.name }} ({{ env.name }})\ngreeting = {{ vars.greeting }}\nworkers = 4\n";

fn base_files() -> Vec<(&'static str, &'static str)> {
    vec![
        ("environments/x.toml", ENV_X),
        ("modules/m.toml", MODULE_M),
        ("modules/tools.toml", MODULE_TOOLS),
        ("templates/m/svc.conf.j2", SVC_CONF),
    ]
}

fn base() -> (Spec, Loaded) {
    let spec = Spec::new(&base_files());
    let loaded = spec.load("x");
    (spec, loaded)
}

// ---------------------------------------------------------------------------------------
// Facts of a converged host, computed from the desired state
// ---------------------------------------------------------------------------------------

fn installed() -> PackageFact {
    PackageFact {
        version: Some("1.0-1".into()),
        status: "ii".into(),
    }
}

fn file_fact(content: &str, owner: &str, group: &str, mode: &str, sensitive: bool) -> PathFact {
    PathFact {
        kind: PathKind::File,
        owner: Some(owner.into()),
        group: Some(group.into()),
        mode: Some(mode.into()),
        size: Some(content.len() as u64),
        sha256: (!sensitive).then(|| sha256_hex(content.as_bytes())),
        matches: Some(true),
        content: None,
        link_target: None,
        ctime: Some("1700000000.000000001".into()),
    }
}

fn dir_fact(owner: &str, group: &str, mode: &str) -> PathFact {
    PathFact {
        kind: PathKind::Directory,
        owner: Some(owner.into()),
        group: Some(group.into()),
        mode: Some(mode.into()),
        ..PathFact::missing()
    }
}

fn running_service() -> ServiceFact {
    ServiceFact {
        load_state: "loaded".into(),
        active_state: "active".into(),
        unit_file_state: "enabled".into(),
    }
}

/// Lists a tool refreshed `age` seconds ago (one Packages list, no sources to compare).
fn lists_refreshed(age: u64) -> kiln::facts::AptListsFact {
    let now = 1_000_000;
    kiln::facts::AptListsFact {
        now,
        stamp: Some(now - age),
        arch: "amd64".into(),
        lists: [(
            "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages".to_string(),
            1,
        )]
        .into(),
        ..Default::default()
    }
}

fn converged(host: &DesiredHost) -> HostFacts {
    let mut f = HostFacts {
        apt_lists: Some(lists_refreshed(3600)),
        ..HostFacts::default()
    };
    for r in &host.resources {
        match &r.kind {
            Kind::Package(p) => {
                f.packages.insert(p.name.clone(), installed());
            }
            Kind::File(file) if file.state == FileState::Present => {
                f.paths.insert(
                    file.path.clone(),
                    file_fact(
                        file.content.as_deref().unwrap_or(""),
                        &file.owner,
                        &file.group,
                        &file.mode,
                        file.sensitive,
                    ),
                );
            }
            Kind::File(file) => {
                f.paths.insert(file.path.clone(), PathFact::missing());
            }
            Kind::Directory(d) => {
                f.paths
                    .insert(d.path.clone(), dir_fact(&d.owner, &d.group, &d.mode));
            }
            Kind::Service(s) => {
                f.services.insert(s.unit(), running_service());
            }
            Kind::Unit(u) => {
                f.paths.insert(
                    u.path(),
                    file_fact(
                        u.content.as_deref().unwrap_or(""),
                        "root",
                        "root",
                        "0644",
                        u.sensitive,
                    ),
                );
            }
            other => panic!("fixture helper does not know {other:?}"),
        }
    }
    f
}

/// Facts where the file's content differs (as the fact script reports a small text file).
fn differing(mut facts: HostFacts, path: &str, old: &str) -> HostFacts {
    let fact = facts.paths.get_mut(path).expect("path in facts");
    fact.sha256 = Some(sha256_hex(old.as_bytes()));
    fact.matches = Some(false);
    fact.content = Some(old.into());
    fact.size = Some(old.len() as u64);
    facts
}

fn ids(plan: &HostPlan) -> Vec<&str> {
    plan.changes.iter().map(|c| c.resource.as_str()).collect()
}

fn change<'a>(plan: &'a HostPlan, id: &str) -> &'a Change {
    plan.changes
        .iter()
        .find(|c| c.resource == id)
        .unwrap_or_else(|| panic!("no change {id} in {:?}", ids(plan)))
}

// ---------------------------------------------------------------------------------------
// (a) converged host → no changes
// ---------------------------------------------------------------------------------------

#[test]
fn desired_state_is_rendered_from_templates_and_modes_normalised() {
    let (_spec, l) = base();
    let conf = l.content_of("file:/etc/svc/svc.conf");
    assert_eq!(
        conf,
        "# fixture title on h1 (x)\ngreeting = hello from vars\nworkers = 4\n"
    );
    let file = l
        .host()
        .resources
        .iter()
        .find(|r| r.id == "file:/etc/svc/svc.conf")
        .unwrap();
    match &file.kind {
        Kind::File(f) => {
            assert_eq!(f.mode, "0640");
            assert!(!f.sensitive);
        }
        _ => unreachable!(),
    }
    assert_eq!(file.notify.len(), 1);
    assert_eq!(file.notify[0].handler(), "reload@svc.service");
}

#[test]
fn converged_host_yields_zero_changes() {
    let (_spec, l) = base();
    let facts = converged(l.host());
    let plan = l.plan(&facts);
    assert!(plan.error.is_none(), "{:?}", plan.error);
    assert!(plan.changes.is_empty(), "{:#?}", plan.changes);
    assert_eq!(plan.host, "h1");
    assert_eq!(plan.address, "192.0.2.10");
    // Every fact the plan needs was asked for.
    let q = host_queries(l.host());
    assert!(q.contains(&FactQuery::Pending));
    assert!(q.contains(&FactQuery::Package {
        name: "svcpkg".into()
    }));
    assert!(q.contains(&FactQuery::Service {
        name: "svc.service".into()
    }));
    assert!(q.iter().any(|q| matches!(q,
        FactQuery::Path { path, expect_sha256: Some(sha), sensitive: false }
            if path == "/etc/svc/svc.conf" && *sha == sha256_hex(l.content_of("file:/etc/svc/svc.conf").as_bytes()))));
}

/// A tiny model of what apply's steps do to a host, to check the invariant end to end at
/// the unit level: plan on a bare host, "apply" it, plan again → nothing.
fn simulate(facts: &mut HostFacts, plan: &HostPlan, provides: &[(&str, &str)]) {
    for c in &plan.changes {
        for s in &c.steps {
            match s {
                Step::AptUpdate => facts.apt_lists = Some(lists_refreshed(0)),
                Step::AptInstall { packages, .. } => {
                    for p in packages {
                        let name = p.split('=').next().unwrap();
                        facts.packages.insert(name.into(), installed());
                        for (pkg, unit) in provides {
                            if *pkg == name {
                                facts.services.insert(
                                    unit.to_string(),
                                    ServiceFact {
                                        load_state: "loaded".into(),
                                        active_state: "inactive".into(),
                                        unit_file_state: "disabled".into(),
                                    },
                                );
                            }
                        }
                    }
                }
                Step::MakeDir {
                    path,
                    owner,
                    group,
                    mode,
                } => {
                    facts
                        .paths
                        .insert(path.clone(), dir_fact(owner, group, mode));
                }
                Step::WriteFile {
                    path,
                    content,
                    owner,
                    group,
                    mode,
                } => {
                    let text = match content {
                        Content::Text { text } => text.clone(),
                        Content::Sensitive { .. } => panic!("not in this fixture"),
                    };
                    facts
                        .paths
                        .insert(path.clone(), file_fact(&text, owner, group, mode, false));
                }
                Step::Systemctl { verb, unit } => {
                    let s = facts.services.get_mut(unit).expect("unit exists");
                    match verb.as_str() {
                        "enable" => s.unit_file_state = "enabled".into(),
                        "start" => s.active_state = "active".into(),
                        other => panic!("{other}"),
                    }
                }
                Step::Handler { unit, action, .. } => {
                    let s = facts.services.get_mut(unit).expect("unit exists");
                    assert!(["start", "reload", "restart"].contains(&action.as_str()));
                    s.active_state = "active".into();
                }
                Step::JournalHandler { handler } => facts.pending.push(handler.clone()),
                other => panic!("fixture does not simulate {other:?}"),
            }
            // Handlers clear their journal entries.
            if let Step::Handler { unit, .. } | Step::Systemctl { unit, .. } = s {
                facts.pending.retain(|p| !p.ends_with(&format!("@{unit}")));
            }
        }
    }
}

#[test]
fn second_apply_changes_nothing_from_a_bare_host() {
    let (_spec, l) = base();
    let mut facts = HostFacts::default();
    let first = l.plan(&facts);
    assert!(first.error.is_none(), "{:?}", first.error);
    assert_eq!(
        ids(&first),
        vec![
            "package:svcpkg",
            "package:jq",
            "directory:/etc/svc",
            "file:/etc/svc/svc.conf",
            "file:/etc/tools.conf",
            "service:svc.service",
            "handler:reload@svc.service",
        ]
    );
    // The unit does not exist yet (the package brings it, and may start it with the
    // package's default configuration): the notified reload still runs, last.
    assert_eq!(
        first.changes.last().unwrap().steps,
        vec![Step::Handler {
            unit: "svc.service".into(),
            action: HandlerAction::Reload,
            check: Some("svc --check-config".into()),
        }]
    );
    simulate(&mut facts, &first, &[("svcpkg", "svc.service")]);
    assert!(facts.pending.is_empty(), "{:?}", facts.pending);
    let second = l.plan(&facts);
    assert!(second.error.is_none(), "{:?}", second.error);
    assert!(second.changes.is_empty(), "{:#?}", second.changes);
}

// ---------------------------------------------------------------------------------------
// (b) notify → handler at the end
// ---------------------------------------------------------------------------------------

#[test]
fn changed_file_notifies_reload_handler_with_check_at_the_end() {
    let (_spec, l) = base();
    let facts = differing(
        converged(l.host()),
        "/etc/svc/svc.conf",
        "# old\ngreeting = hi\nworkers = 4\n",
    );
    let plan = l.plan(&facts);
    assert_eq!(
        ids(&plan),
        vec!["file:/etc/svc/svc.conf", "handler:reload@svc.service"]
    );
    let file = &plan.changes[0];
    assert_eq!(file.action, Action::Update);
    assert_eq!(
        file.steps[0],
        Step::JournalHandler {
            handler: "reload@svc.service".into()
        }
    );
    assert!(matches!(&file.steps[1], Step::WriteFile { path, .. } if path == "/etc/svc/svc.conf"));
    let diff = file.diff.as_deref().expect("diff");
    assert!(diff.lines().any(|l| l == "-greeting = hi"), "{diff}");
    assert!(
        diff.lines().any(|l| l == "+greeting = hello from vars"),
        "{diff}"
    );

    let handler = plan.changes.last().unwrap();
    assert_eq!(handler.resource, "handler:reload@svc.service");
    assert_eq!(handler.action, Action::Run);
    assert_eq!(handler.summary, "reload svc.service");
    assert_eq!(
        handler.steps,
        vec![Step::Handler {
            unit: "svc.service".into(),
            action: HandlerAction::Reload,
            check: Some("svc --check-config".into()),
        }]
    );
    let reason = handler.reason.as_deref().unwrap();
    assert!(reason.contains("file:/etc/svc/svc.conf"), "{reason}");
}

#[test]
fn starting_an_existing_stopped_service_covers_the_notified_reload() {
    let (_spec, l) = base();
    let mut facts = differing(converged(l.host()), "/etc/svc/svc.conf", "old\n");
    facts.services.get_mut("svc.service").unwrap().active_state = "inactive".into();
    let plan = l.plan(&facts);
    assert_eq!(
        ids(&plan),
        vec!["file:/etc/svc/svc.conf", "service:svc.service"]
    );
    // The start goes through the check, like a reload would.
    assert_eq!(
        change(&plan, "service:svc.service").steps,
        vec![Step::Handler {
            unit: "svc.service".into(),
            action: HandlerAction::Start,
            check: Some("svc --check-config".into()),
        }]
    );
    // The journal entry is still written before the file, so an interrupted run owes it.
    assert_eq!(
        plan.changes[0].steps[0],
        Step::JournalHandler {
            handler: "reload@svc.service".into()
        }
    );
}

#[test]
fn only_attrs_changed_still_notifies() {
    let (_spec, l) = base();
    let mut facts = converged(l.host());
    facts.paths.get_mut("/etc/svc/svc.conf").unwrap().mode = Some("0644".into());
    let plan = l.plan(&facts);
    assert_eq!(
        ids(&plan),
        vec!["file:/etc/svc/svc.conf", "handler:reload@svc.service"]
    );
    assert!(matches!(plan.changes[0].steps[1], Step::SetAttrs { .. }));
}

#[test]
fn unit_change_restarts_and_the_restart_covers_a_reload() {
    let mut files = base_files();
    files.push((
        "modules/m.toml",
        r#"
[[resource]]
type = "service"
name = "svc"
running = true
on_change = "reload"

[[resource]]
type = "unit"
name = "svc"
content = "[Service]\nExecStart=/usr/bin/svc\n"

[[resource]]
type = "file"
path = "/etc/svc.conf"
content = "x = 1\n"
notify = ["svc"]
"#,
    ));
    let spec = Spec::new(&files);
    let l = spec.load("x");
    let unit = l
        .host()
        .resources
        .iter()
        .find(|r| r.id == "unit:svc.service")
        .unwrap();
    assert_eq!(unit.notify[0].handler(), "restart@svc.service");
    let mut facts = converged(l.host());
    facts = differing(facts, "/etc/svc.conf", "x = 0\n");
    facts = differing(
        facts,
        "/etc/systemd/system/svc.service",
        "[Service]\nExecStart=/usr/bin/old\n",
    );
    let plan = l.plan(&facts);
    let handlers: Vec<&str> = ids(&plan)
        .into_iter()
        .filter(|i| i.starts_with("handler:"))
        .collect();
    assert_eq!(handlers, vec!["handler:restart@svc.service"]);
    assert_eq!(ids(&plan).last(), Some(&"handler:restart@svc.service"));
    let unit_change = change(&plan, "unit:svc.service");
    assert_eq!(unit_change.steps.last(), Some(&Step::DaemonReload));
    // The unit is written before the service it defines is touched, and before the handler.
    let pos = |id: &str| ids(&plan).iter().position(|i| *i == id).unwrap();
    assert!(pos("unit:svc.service") < pos("handler:restart@svc.service"));
}

// ---------------------------------------------------------------------------------------
// (c) journalled handler from an interrupted run
// ---------------------------------------------------------------------------------------

#[test]
fn pending_journal_entry_yields_one_handler_run() {
    let (_spec, l) = base();
    let mut facts = converged(l.host());
    facts.pending = vec!["reload@svc.service".into()];
    let plan = l.plan(&facts);
    assert_eq!(plan.changes.len(), 1, "{:#?}", plan.changes);
    let c = &plan.changes[0];
    assert_eq!(c.resource, "handler:reload@svc.service");
    assert_eq!(c.action, Action::Run);
    let reason = c.reason.as_deref().unwrap();
    assert!(reason.contains("earlier run"), "{reason}");
    assert_eq!(
        c.steps,
        vec![Step::Handler {
            unit: "svc.service".into(),
            action: HandlerAction::Reload,
            check: Some("svc --check-config".into()),
        }]
    );
    assert_eq!(
        c.facts,
        vec![
            FactQuery::Service {
                name: "svc.service".into()
            },
            FactQuery::Pending
        ]
    );
}

#[test]
fn pending_entry_notified_again_is_one_handler_and_junk_is_ignored() {
    let (_spec, l) = base();
    let mut facts = differing(converged(l.host()), "/etc/svc/svc.conf", "old\n");
    facts.pending = vec![
        "reload@svc.service".into(),
        "lock.holder".into(),
        "stop@svc.service".into(),
    ];
    let plan = l.plan(&facts);
    assert_eq!(
        ids(&plan),
        vec!["file:/etc/svc/svc.conf", "handler:reload@svc.service"]
    );
    // Notified now: the reason names the notifier, not the journal.
    assert!(plan.changes[1]
        .reason
        .as_deref()
        .unwrap()
        .contains("notified by"));
}

// ---------------------------------------------------------------------------------------
// (d) secrets
// ---------------------------------------------------------------------------------------

const SECRET_VAR: &str = "KILN_TEST_SECRET_xyz";
const SECRET_VALUE: &str = "kiln-fixture-secret-Qz81-do-not-print";

const ENV_S: &str = r#"
[hosts.h1]
address = "192.0.2.20"
roles = ["r"]

[roles.r]
modules = ["app"]

[secrets.s]
env = "KILN_TEST_SECRET_xyz"
"#;

const MODULE_APP: &str = r#"
[[resource]]
type = "file"
path = "/etc/app/db.conf"
template = "db.conf.j2"
mode = "0600"

[[resource]]
type = "file"
path = "/etc/app/token"
template = "token.j2"
mode = "0600"

[[resource]]
type = "file"
path = "/etc/app/public.conf"
content = "public = yes\n"
"#;

fn secret_spec() -> (Spec, Loaded) {
    std::env::set_var(SECRET_VAR, SECRET_VALUE);
    let spec = Spec::new(&[
        ("environments/s.toml", ENV_S),
        ("modules/app.toml", MODULE_APP),
        (
            "templates/app/db.conf.j2",
            "user = app\npassword = {{ secrets.s }}\n",
        ),
        // Exactly the secret, no newline.
        ("templates/app/token.j2", "{{ secrets.s }}"),
    ]);
    let l = spec.load("s");
    (spec, l)
}

fn make_plan(l: &Loaded, hp: HostPlan) -> Plan {
    Plan {
        format: PLAN_FORMAT,
        kiln_version: "test".into(),
        environment: l.desired.environment.clone(),
        env_file: PathBuf::from("environments/x.toml"),
        created_at: "2024-01-01T00:00:00Z".into(),
        hosts: vec![hp],
        targets: None,
    }
}

#[test]
fn secret_content_is_sensitive_sealed_and_never_serialised() {
    let (_spec, l) = secret_spec();
    let content = l.content_of("file:/etc/app/db.conf");
    assert!(content.contains(SECRET_VALUE), "the secret was rendered");
    // Bare host: everything is created.
    let plan = l.plan(&HostFacts::default());
    assert!(plan.error.is_none(), "{:?}", plan.error);
    let c = change(&plan, "file:/etc/app/db.conf");
    assert!(c.sensitive);
    assert!(c.diff.is_none());
    match &c.steps[..] {
        [Step::WriteFile {
            content: Content::Sensitive { resource, seal },
            mode,
            ..
        }] => {
            assert_eq!(resource, "file:/etc/app/db.conf");
            assert_eq!(seal, &kiln::plan::seal::seal(SEAL_KEY, content.as_bytes()));
            assert_eq!(seal.len(), 64);
            assert_eq!(mode, "0600");
        }
        other => panic!("{other:?}"),
    }
    // Non-secret content stays text.
    let public = change(&plan, "file:/etc/app/public.conf");
    assert!(!public.sensitive);
    assert!(matches!(
        &public.steps[0],
        Step::WriteFile {
            content: Content::Text { .. },
            ..
        }
    ));

    let json = serde_json::to_string(&plan).unwrap();
    assert!(!json.contains(SECRET_VALUE), "secret in plan JSON: {json}");
    let change_json = serde_json::to_string(c).unwrap();
    assert!(!change_json.contains(SECRET_VALUE));
    let human =
        kiln::plan::render::render_plan(&make_plan(&l, plan.clone()), &kiln::ui::Paint::plain());
    assert!(!human.contains(SECRET_VALUE), "{human}");
    assert!(human.contains("(sensitive value changed)"), "{human}");

    // The host's copy differs: still sensitive, still sealed, still not in the JSON.
    let mut facts = converged(l.host());
    let f = facts.paths.get_mut("/etc/app/db.conf").unwrap();
    f.matches = Some(false);
    f.ctime = Some("1700000001.0".into());
    let plan = l.plan(&facts);
    assert_eq!(ids(&plan), vec!["file:/etc/app/db.conf"]);
    assert!(plan.changes[0].sensitive);
    assert!(plan.changes[0].diff.is_none());
    let json = serde_json::to_string(&plan).unwrap();
    assert!(!json.contains(SECRET_VALUE));
}

/// SRC BUG (see report): `src/plan/seal.rs` promises that a saved plan holds neither a
/// secret nor a plain hash of one, but `Change.facts` carries the file's
/// `FactQuery::Path { expect_sha256: sha256(content) }` even for sensitive files
/// (`src/resource/file.rs`, `File::facts`). For a file that is exactly the secret, the plan
/// JSON contains sha256(secret).
#[test]
fn plan_json_holds_no_plain_hash_of_sensitive_content() {
    let (_spec, l) = secret_spec();
    assert_eq!(l.content_of("file:/etc/app/token"), SECRET_VALUE);
    let plan = l.plan(&HostFacts::default());
    let json = serde_json::to_string(&plan).unwrap();
    let mut leaks = vec![];
    for id in ["file:/etc/app/db.conf", "file:/etc/app/token"] {
        let digest = sha256_hex(l.content_of(id).as_bytes());
        if json.contains(&digest) {
            leaks.push(format!("{id}: sha256 of its content {digest}"));
        }
    }
    let secret_digest = sha256_hex(SECRET_VALUE.as_bytes());
    if json.contains(&secret_digest) {
        leaks.push(format!("sha256 of the secret itself {secret_digest}"));
    }
    assert!(
        leaks.is_empty(),
        "the plan JSON contains plain hashes of sensitive content:\n  {}",
        leaks.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------
// (e) fingerprints
// ---------------------------------------------------------------------------------------

#[test]
fn fingerprint_moves_with_relevant_facts_only() {
    let (_spec, l) = base();
    let facts = differing(converged(l.host()), "/etc/svc/svc.conf", "old\n");
    let fp = |facts: &HostFacts| {
        change(&l.plan(facts), "file:/etc/svc/svc.conf")
            .fingerprint
            .clone()
    };
    let base_fp = fp(&facts);
    assert_eq!(base_fp.len(), 64);
    assert_eq!(base_fp, fp(&facts), "deterministic");

    // The file itself changed again on the host.
    let mut moved = facts.clone();
    {
        let f = moved.paths.get_mut("/etc/svc/svc.conf").unwrap();
        f.content = Some("edited by hand\n".into());
        f.sha256 = Some(sha256_hex(b"edited by hand\n"));
    }
    assert_ne!(base_fp, fp(&moved));
    let mut moved = facts.clone();
    moved.paths.get_mut("/etc/svc/svc.conf").unwrap().owner = Some("nobody".into());
    assert_ne!(base_fp, fp(&moved));

    // Unrelated facts: another path, a package, the service, the journal.
    let mut other = facts.clone();
    other.paths.get_mut("/etc/svc").unwrap().mode = Some("0700".into());
    other.packages.insert("unrelated".into(), installed());
    other.services.get_mut("svc.service").unwrap().active_state = "inactive".into();
    other
        .paths
        .insert("/etc/unrelated".into(), dir_fact("root", "root", "0755"));
    assert_eq!(base_fp, fp(&other));

    // The public function agrees with what the plan recorded.
    let c = change(&l.plan(&facts), "file:/etc/svc/svc.conf").clone();
    assert_eq!(
        fingerprint(&facts, &c.facts, &fact_rules(&l.desired)),
        c.fingerprint
    );
    assert_eq!(
        c.facts,
        vec![FactQuery::Path {
            path: "/etc/svc/svc.conf".into(),
            expect_sha256: Some(sha256_hex(
                l.content_of("file:/etc/svc/svc.conf").as_bytes()
            )),
            sensitive: false,
        }]
    );

    // A handler's fingerprint follows the service and the journal.
    let h = |facts: &HostFacts| {
        change(&l.plan(facts), "handler:reload@svc.service")
            .fingerprint
            .clone()
    };
    let h0 = h(&facts);
    let mut svc_moved = facts.clone();
    svc_moved
        .services
        .get_mut("svc.service")
        .unwrap()
        .unit_file_state = "enabled-runtime".into();
    assert_ne!(h0, h(&svc_moved));
    let mut pkg_moved = facts.clone();
    pkg_moved.packages.insert("unrelated".into(), installed());
    assert_eq!(h0, h(&pkg_moved));
}

#[test]
fn sensitive_file_fingerprint_moves_with_ctime() {
    let (_spec, l) = secret_spec();
    let mut facts = converged(l.host());
    facts.paths.get_mut("/etc/app/db.conf").unwrap().matches = Some(false);
    let a = change(&l.plan(&facts), "file:/etc/app/db.conf")
        .fingerprint
        .clone();
    facts.paths.get_mut("/etc/app/db.conf").unwrap().ctime = Some("1800000000.0".into());
    let b = change(&l.plan(&facts), "file:/etc/app/db.conf")
        .fingerprint
        .clone();
    assert_ne!(a, b);
}

/// A package change's fingerprint must not cover the lists' age, which grows every second:
/// a saved plan's installs would always be refused as stale by `kiln apply plan.json`
/// (`refuse_stale` in src/ops/apply.rs), although nothing relevant moved.
#[test]
fn package_fingerprint_is_stable_while_apt_lists_merely_age() {
    let (_spec, l) = base();
    let mut facts = converged(l.host());
    facts.packages.insert("jq".into(), PackageFact::default());
    let fp = |facts: &HostFacts| change(&l.plan(facts), "package:jq").fingerprint.clone();
    let a = fp(&facts);
    // Five seconds later the lists are still fresh: the plan is identical...
    facts.apt_lists.as_mut().unwrap().now += 5;
    let p = l.plan(&facts);
    assert_eq!(
        change(&p, "package:jq").steps,
        vec![Step::AptInstall {
            packages: vec!["jq".into()],
            recommends: false,
        }]
    );
    // ...so its fingerprint must be too.
    assert_eq!(a, fp(&facts), "fingerprint moved only because time passed");
}

/// The apt-lists part of a fingerprint is judged by the environment's `[apt]
/// lists_max_age`, the rule planning used; with the fixed default instead, a saved plan
/// made under a longer max age was refused as stale by `kiln apply plan.json` although
/// nothing moved. Recomputed here the way `refuse_stale` (src/ops/apply.rs) does.
#[test]
fn saved_plan_with_a_custom_lists_max_age_is_not_falsely_stale() {
    let env = ENV_X.replace("[hosts.h1]", "[apt]\nlists_max_age = 172800\n\n[hosts.h1]");
    let mut files = base_files();
    files[0] = ("environments/x.toml", &env);
    let spec = Spec::new(&files);
    let l = spec.load("x");
    assert_eq!(l.desired.apt.lists_max_age_secs, 172_800);

    // Refreshed 30 hours ago: stale by the default (24 h), fresh by this environment (48 h).
    let mut facts = converged(l.host());
    facts.apt_lists = Some(lists_refreshed(30 * 3600));
    facts.packages.insert("jq".into(), PackageFact::default());
    let plan = l.plan(&facts);
    let c = change(&plan, "package:jq").clone();
    assert_eq!(
        c.steps,
        vec![Step::AptInstall {
            packages: vec!["jq".into()],
            recommends: false,
        }],
        "planned as fresh lists: no refresh first"
    );
    assert!(c.facts.contains(&FactQuery::AptLists));

    // Saved and read back, then re-checked against the same (re-read) facts.
    let saved: Plan =
        serde_json::from_str(&serde_json::to_string(&make_plan(&l, plan)).unwrap()).unwrap();
    let c = change(&saved.hosts[0], "package:jq");
    let behind: Vec<FactQuery> = c.facts.clone();
    assert_eq!(
        fingerprint(&facts, &behind, &fact_rules(&l.desired)),
        c.fingerprint,
        "a saved plan made with lists_max_age = 48 h is not stale a moment later"
    );

    // The fixed default would judge the same lists stale: that was the false refusal.
    let default_rules = kiln::facts::FactRules {
        lists_max_age_secs: kiln::resource::package::APT_LISTS_MAX_AGE_SECS,
    };
    assert_ne!(fingerprint(&facts, &behind, &default_rules), c.fingerprint);

    // And the lists really moving (past 48 h now) still makes the change stale.
    facts.apt_lists = Some(lists_refreshed(49 * 3600));
    assert_ne!(
        fingerprint(&facts, &behind, &fact_rules(&l.desired)),
        c.fingerprint
    );
}

// ---------------------------------------------------------------------------------------
// (f) ordering
// ---------------------------------------------------------------------------------------

#[test]
fn order_packages_then_directories_then_files_then_services() {
    let (_spec, l) = base();
    assert_eq!(
        l.order(),
        vec![
            "package:svcpkg",
            "package:jq",
            "directory:/etc/svc",
            "file:/etc/svc/svc.conf",
            "file:/etc/tools.conf",
            "service:svc.service",
        ]
    );
}

#[test]
fn directory_comes_before_files_inside_it_regardless_of_rank() {
    let spec = Spec::new(&[
        (
            "environments/x.toml",
            &ENV_X.replace("\"m\", \"tools\"", "\"d\""),
        ),
        (
            "modules/d.toml",
            r#"
[[resource]]
type = "file"
path = "/srv/site/index.html"
content = "hi\n"

[[resource]]
type = "symlink"
path = "/srv/site/current"
target = "/srv/site/index.html"

[[resource]]
type = "directory"
path = "/srv/site"
owner = "www"

[[resource]]
type = "user"
name = "www"

[[resource]]
type = "directory"
path = "/srv/sitewide"

[[resource]]
type = "file"
path = "/srv/sitewide.conf"
content = "x\n"
"#,
        ),
    ]);
    let l = spec.load("x");
    let order = l.order();
    let pos = |id: &str| order.iter().position(|i| i == id).unwrap();
    assert!(pos("directory:/srv/site") < pos("file:/srv/site/index.html"));
    assert!(pos("directory:/srv/site") < pos("symlink:/srv/site/current"));
    // The owner exists before what it owns.
    assert!(pos("user:www") < pos("directory:/srv/site"));
    // A sibling with a common prefix is not "inside".
    let dir = l
        .graph
        .graph
        .node_indices()
        .find(|n| l.host().resources[l.graph.graph[*n].1].id == "directory:/srv/site")
        .unwrap();
    let children: Vec<String> = l
        .graph
        .graph
        .neighbors(dir)
        .map(|n| l.host().resources[l.graph.graph[n].1].id.clone())
        .collect();
    assert!(!children.contains(&"directory:/srv/sitewide".to_string()));
    assert!(!children.contains(&"file:/srv/sitewide.conf".to_string()));
    assert_eq!(order.len(), 6);
}

#[test]
fn explicit_after_is_respected_over_type_rank() {
    let spec = Spec::new(&[
        (
            "environments/x.toml",
            &ENV_X.replace("\"m\", \"tools\"", "\"a\", \"b\""),
        ),
        (
            "modules/a.toml",
            r#"
[[resource]]
type = "file"
path = "/etc/first.conf"
content = "1\n"
"#,
        ),
        (
            "modules/b.toml",
            r#"
[[resource]]
type = "package"
name = "late"
after = ["file:/etc/first.conf"]

[[resource]]
type = "service"
name = "early"
running = true

[[resource]]
type = "command"
name = "cmd"
run = "true"
creates = "/x"
after = ["service:early.service"]
"#,
        ),
    ]);
    let l = spec.load("x");
    let order = l.order();
    let pos = |id: &str| order.iter().position(|i| i == id).unwrap();
    assert!(
        pos("file:/etc/first.conf") < pos("package:late"),
        "{order:?}"
    );
    assert!(
        pos("service:early.service") < pos("command:cmd"),
        "{order:?}"
    );
    assert_eq!(order.len(), 4);
}

fn cycle_spec(module: &str) -> Spec {
    Spec::new(&[
        (
            "environments/x.toml",
            &ENV_X.replace("\"m\", \"tools\"", "\"c\""),
        ),
        ("modules/c.toml", module),
    ])
}

#[allow(clippy::result_large_err)]
fn graph_error(spec: &Spec) -> Result<ResourceGraph, kiln::spec::error::SpecError> {
    let env = Environment::load(&spec.env_path("x")).unwrap();
    let hosts = env.select_hosts(None).unwrap();
    let desired = desired::expand(&env, &hosts, None).unwrap();
    ResourceGraph::build(&env, &desired)
}

#[test]
fn after_cycle_is_a_spec_error_naming_the_cycle() {
    let spec = cycle_spec(
        r#"
[[resource]]
type = "file"
path = "/etc/a"
content = "a\n"
after = ["file:/etc/b"]

[[resource]]
type = "file"
path = "/etc/b"
content = "b\n"
after = ["command:c"]

[[resource]]
type = "command"
name = "c"
run = "true"
creates = "/c"
after = ["file:/etc/a"]
"#,
    );
    let err = match graph_error(&spec) {
        Err(e) => e,
        Ok(_) => panic!("a cycle must be an error"),
    };
    assert!(err.message.contains("cycle"), "{err}");
    assert!(
        err.location.file.ends_with(Path::new("modules/c.toml")),
        "{err}"
    );
    assert!(err.location.line > 0);
    let note = err
        .notes
        .iter()
        .find(|n| n.contains(" → "))
        .unwrap_or_else(|| panic!("no cycle note in {:?}", err.notes));
    for id in ["h1:file:/etc/a", "h1:file:/etc/b", "h1:command:c"] {
        assert!(note.contains(id), "{note}");
    }
    // The cycle is closed: it starts and ends with the same member.
    let members: Vec<&str> = note.trim_start_matches("cycle: ").split(" → ").collect();
    assert_eq!(members.len(), 4, "{note}");
    assert_eq!(members.first(), members.last(), "{note}");
    assert!(err.to_string().contains(" → "));
}

/// SRC BUG (see report): a resource `after` itself makes a self-loop, which
/// `check_cycles` skips (it ignores SCCs of size 1); `host_order` then never releases the
/// resource (its in-degree counts itself), so it silently disappears from the plan.
#[test]
fn after_naming_itself_is_a_cycle_not_a_silently_dropped_resource() {
    let spec = cycle_spec(
        r#"
[[resource]]
type = "file"
path = "/etc/a"
content = "a\n"
after = ["file:/etc/a"]

[[resource]]
type = "file"
path = "/etc/b"
content = "b\n"
"#,
    );
    match graph_error(&spec) {
        Err(e) => assert!(e.message.contains("cycle"), "{e}"),
        Ok(g) => {
            let env = Environment::load(&spec.env_path("x")).unwrap();
            let desired = desired::expand(&env, &["h1".to_string()], None).unwrap();
            let order = g.host_order(&desired, 0);
            panic!(
                "no error, and host_order has {} of {} resources",
                order.len(),
                desired.hosts[0].resources.len()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Conflicts and the human rendering
// ---------------------------------------------------------------------------------------

#[test]
fn conflict_gives_the_host_an_error_and_no_changes() {
    let (_spec, l) = base();
    let mut facts = HostFacts::default();
    facts
        .paths
        .insert("/etc/svc/svc.conf".into(), dir_fact("root", "root", "0755"));
    let plan = l.plan(&facts);
    assert!(plan.changes.is_empty());
    let e = plan.error.expect("error");
    assert!(e.contains("file:/etc/svc/svc.conf"), "{e}");

    // A service nothing installs is a conflict too.
    let mut facts = converged(l.host());
    facts.services.clear();
    let plan = l.plan(&facts);
    let e = plan.error.expect("error");
    assert!(e.contains("service:svc.service"), "{e}");
}

#[test]
fn human_plan_of_a_bare_host() {
    let (_spec, l) = base();
    let hp = l.plan(&HostFacts::default());
    let out = kiln::plan::render::render_plan(&make_plan(&l, hp), &kiln::ui::Paint::plain());
    insta::assert_snapshot!(out, @r###"
    h1 (192.0.2.10)  7 changes
      + package:svcpkg  install svcpkg
          (apt lists: not read from the host: refreshed first)
          version: (none) → (known after apply)
      + package:jq  install jq
          version: (none) → (known after apply)
      + directory:/etc/svc  create
          owner: (none) → "root"
          group: (none) → "root"
          mode: (none) → "0755"
      + file:/etc/svc/svc.conf  create
          owner: (none) → "root"
          group: (none) → "root"
          mode: (none) → "0640"
          --- /etc/svc/svc.conf (on host)
          +++ /etc/svc/svc.conf (planned)
          @@ -0,0 +1,3 @@
          +# fixture title on h1 (x)
          +greeting = hello from vars
          +workers = 4
      + file:/etc/tools.conf  create
          owner: (none) → "root"
          group: (none) → "root"
          mode: (none) → "0644"
          --- /etc/tools.conf (on host)
          +++ /etc/tools.conf (planned)
          @@ -0,0 +1 @@
          +tools h1
      + service:svc.service  enabled=true, running=true
          (unit provided by changes earlier in this plan; its state is known after apply)
          enabled: "unknown" → "true"
          running: "unknown" → "true"
      ! handler:reload@svc.service  reload svc.service
          (notified by file:/etc/svc/svc.conf)

    Plan: 6 to create, 0 to update, 0 to remove, 1 to run.
    "###);
}

// ---------------------------------------------------------------------------------------
// (d2) taint: whatever a secret flows into is sensitive
// ---------------------------------------------------------------------------------------

const MODULE_TAINT: &str = r#"
[[resource]]
type = "file"
path = "/etc/app/upper"
content = "PASSWORD={{ secrets.s | upper }}\n"

[[resource]]
type = "file"
path = "/etc/app/reversed"
content = "{{ secrets.s | reverse }}{{ secrets.s | replace('-', '') }}\n"

[[resource]]
type = "file"
path = "/etc/app/loop"
content = "{% for c in secrets.s %}{{ c }}.{% endfor %}\n"

[[resource]]
type = "file"
path = "/etc/app/length-only"
content = "{{ secrets.s | length > 8 }}\n"

[[resource]]
type = "command"
name = "set-password"
run = "printf '%s' '{{ secrets.s | upper }}' | chpasswd-like"
unless = "grep -q {{ secrets.s | lower }} /etc/app/state"

[[resource]]
type = "unit"
name = "app-worker"
content = "[Service]\nEnvironment=TOKEN={{ secrets.s | title }}\nExecStart=/bin/true\n"

[[resource]]
type = "command"
name = "public"
run = "touch /etc/app/done"
creates = "/etc/app/done"
"#;

fn taint_spec(module: &str) -> Spec {
    std::env::set_var(SECRET_VAR, SECRET_VALUE);
    Spec::new(&[("environments/s.toml", ENV_S), ("modules/app.toml", module)])
}

/// Forms of the secret that must never be shown: the value, through filters, its digests.
fn secret_forms() -> Vec<String> {
    use base64::Engine as _;
    vec![
        SECRET_VALUE.into(),
        SECRET_VALUE.to_uppercase(),
        SECRET_VALUE.to_lowercase(),
        SECRET_VALUE.chars().rev().collect(),
        SECRET_VALUE.replace('-', ""),
        base64::engine::general_purpose::STANDARD.encode(SECRET_VALUE),
        sha256_hex(SECRET_VALUE.as_bytes()),
        sha256_hex(SECRET_VALUE.to_uppercase().as_bytes()),
    ]
}

#[test]
fn content_derived_from_a_secret_through_filters_is_sensitive() {
    let l = taint_spec(MODULE_TAINT).load("s");
    let plan = l.plan(&HostFacts::default());
    assert!(plan.error.is_none(), "{:?}", plan.error);
    for id in [
        "file:/etc/app/upper",
        "file:/etc/app/reversed",
        "file:/etc/app/loop",
        "unit:app-worker.service",
    ] {
        let c = change(&plan, id);
        assert!(c.sensitive, "{id} depends on the secret");
        assert!(c.diff.is_none(), "{id}");
    }
    // Only the truth of a comparison on the secret's length: nothing of the value.
    assert!(!change(&plan, "file:/etc/app/length-only").sensitive);
    assert!(!change(&plan, "command:public").sensitive);

    let json = serde_json::to_string_pretty(&plan).unwrap();
    let human =
        kiln::plan::render::render_plan(&make_plan(&l, plan.clone()), &kiln::ui::Paint::plain());
    for form in secret_forms() {
        assert!(!json.contains(&form), "{form} in plan JSON:\n{json}");
        assert!(!human.contains(&form), "{form} in the human plan:\n{human}");
    }
}

#[test]
fn a_command_whose_text_depends_on_a_secret_is_sealed_and_its_guard_stored_without_text() {
    let l = taint_spec(MODULE_TAINT).load("s");
    let plan = l.plan(&HostFacts::default());
    let c = change(&plan, "command:set-password");
    assert!(c.sensitive);
    assert_eq!(
        c.reason.as_deref(),
        Some("its `unless` guard failed (sensitive)")
    );
    let run = match &l
        .host()
        .resources
        .iter()
        .find(|r| r.id == c.resource)
        .unwrap()
        .kind
    {
        Kind::Command(cmd) => cmd.run.clone(),
        other => panic!("{other:?}"),
    };
    assert!(
        run.contains(&SECRET_VALUE.to_uppercase()),
        "rendered with the value"
    );
    match &c.steps[..] {
        [Step::SensitiveShell {
            resource,
            seal,
            creates: None,
        }] => {
            assert_eq!(resource, "command:set-password");
            assert_eq!(seal, &kiln::plan::seal::seal(SEAL_KEY, run.as_bytes()));
        }
        other => panic!("{other:?}"),
    }
    // The guard is stored by its resource, without its text.
    let guard = c
        .facts
        .iter()
        .find(|q| matches!(q, FactQuery::Guard { .. }))
        .expect("the guard query");
    assert_eq!(
        guard,
        &FactQuery::Guard {
            command: String::new(),
            sensitive_of: Some("command:set-password".into()),
        }
    );
    assert_eq!(guard.key(), "guard@command:set-password");
    // A public command keeps its text.
    assert!(matches!(
        &change(&plan, "command:public").steps[..],
        [Step::Shell { command, .. }] if command == "touch /etc/app/done"
    ));
}

#[test]
fn a_secret_in_a_name_or_a_creates_path_is_refused() {
    for (module, key) in [
        (
            "[[resource]]\ntype = \"file\"\npath = \"/etc/{{ secrets.s }}\"\ncontent = \"x\"\n",
            "resource[0]",
        ),
        (
            "[[resource]]\ntype = \"command\"\nname = \"c\"\nrun = \"true\"\ncreates = \"/var/{{ secrets.s | upper }}\"\n",
            "resource[0].creates",
        ),
        (
            "[[resource]]\ntype = \"package\"\nname = \"{{ secrets.s | lower }}\"\n",
            "resource[0]",
        ),
    ] {
        let spec = taint_spec(module);
        let mut env = Environment::load(&spec.env_path("s")).unwrap();
        env.resolve_secrets().unwrap();
        let hosts = env.select_hosts(None).unwrap();
        let err = desired::expand(&env, &hosts, None)
            .map(|_| ())
            .expect_err("a secret in a shown setting is refused")
            .to_string();
        assert!(err.contains("secret"), "{err}");
        assert!(err.contains(key), "{key} named: {err}");
        for form in secret_forms() {
            assert!(!err.contains(&form), "{form} in the error: {err}");
        }
    }
}

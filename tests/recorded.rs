//! plan, apply, verify and drift through recorded hosts: the engine, the apply runner and
//! the checks run against tapes of what real lab hosts answered (`transport::recorded`),
//! as any user, with no host, no root and no network.
//!
//! The fixture repository is `tests/fixtures/recorded/repo` (environment `rec`: `web` with
//! the base, web-hello and rec-app modules — a 0600 file and a check holding a secret —
//! and `db`, which was unreachable when recorded). The tapes were recorded from lab hosts
//! by `tests/fixtures/recorded/record.sh`; record them again when the fact script or the
//! modules of the fixture change (a replay refuses a script of another kind than recorded,
//! and the plan assertions below say what changed).

use std::path::PathBuf;
use std::sync::{Arc, Once};

use kiln::engine::{load, make_plan, Connections, Loaded};
use kiln::plan::{Action, Plan};
use kiln::transport::recorded::Recorded;

const TOKEN: &str = "rec-secret-Token-4711";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/recorded")
}

fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let state = std::env::temp_dir().join(format!("kiln-recorded-{}", std::process::id()));
        std::env::set_var("XDG_STATE_HOME", &state);
        std::env::set_var("KILN_REC_API_TOKEN", TOKEN);
        // The seal key of this fresh state directory, made once here: tests running in
        // parallel threads would otherwise each make one, and a plan sealed with one key
        // would be checked with another.
        kiln::plan::seal::load_key().expect("seal key");
    });
}

fn loaded(limit: Option<&str>) -> Loaded {
    setup();
    let env = fixtures().join("repo/environments/rec.toml");
    load(env.to_str().unwrap(), limit).expect("the fixture environment loads")
}

fn replay(tape: &str) -> (Arc<Recorded>, Connections) {
    let r = Arc::new(Recorded::load(&fixtures().join("tapes").join(tape)).expect("tape"));
    (r.clone(), Connections::new(r))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn host<'a>(plan: &'a Plan, name: &str) -> &'a kiln::plan::HostPlan {
    plan.hosts.iter().find(|h| h.host == name).expect(name)
}

/// Neither the secret nor anything kiln could show of it: its sha256, its base64.
fn assert_no_secret(what: &str, text: &str) {
    use base64::Engine as _;
    use sha2::Digest as _;
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

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn a_fresh_host_plans_everything_and_an_unreachable_one_fails_alone() {
    let loaded = loaded(None);
    let (tape, mut conns) = replay("fresh");
    let plan = runtime().block_on(make_plan(&loaded, &mut conns)).unwrap();
    let web = host(&plan, "web");
    assert!(web.error.is_none(), "{:?}", web.error);
    let by = |r: &str| web.changes.iter().find(|c| c.resource == r);
    let nginx = by("package:nginx").expect("nginx is planned");
    assert_eq!(nginx.action, Action::Create);
    let token = by("file:/etc/rec-app/token.conf").expect("the token file is planned");
    assert!(token.sensitive && token.diff.is_none(), "{token:?}");
    let page = by("file:/var/www/kiln/index.html").expect("the page is planned");
    assert!(page.diff.as_deref().unwrap_or("").contains("kiln recorded"));
    assert!(by("handler:reload@nginx.service").is_none() || nginx.action == Action::Create);
    let db = host(&plan, "db");
    let err = db.error.as_deref().expect("db was unreachable");
    assert!(db.changes.is_empty());
    assert!(!err.is_empty());
    assert!(plan.has_errors());
    assert_eq!(tape.unused(), vec![], "every recorded answer was asked for");
    let json = serde_json::to_string(&plan).unwrap();
    assert_no_secret("the plan's JSON", &json);
    let human = kiln::plan::render::render_plan(&plan, &kiln::ui::Paint::plain());
    assert_no_secret("the rendered plan", &human);
    assert!(human.contains("file:/etc/rec-app/token.conf"));
}

#[test]
fn apply_runs_the_plan_in_one_script_and_reports_every_change() {
    let loaded = loaded(None);
    let (tape, mut conns) = replay("apply");
    let rt = runtime();
    let plan = rt.block_on(make_plan(&loaded, &mut conns)).unwrap();
    let web_changes = host(&plan, "web").changes.len();
    // What the lab host applied when recorded: "16 changes applied".
    assert_eq!(web_changes, 16, "the plan the tape was recorded with");
    let outcomes = rt
        .block_on(kiln::apply::run::execute(
            &loaded, &plan, &mut conns, None, 10,
        ))
        .unwrap();
    let web = outcomes.iter().find(|o| o.host == "web").expect("web ran");
    assert_eq!(web.error, None);
    assert_eq!((web.applied, web.total), (web_changes, web_changes));
    // db could not be read, so it has nothing to apply and no script was sent to it.
    assert!(outcomes.iter().all(|o| o.host != "db" || o.total == 0));
    assert_eq!(
        tape.unused(),
        vec![],
        "one fact script and one apply script on web"
    );
}

#[test]
fn a_converged_host_replans_to_nothing_and_its_checks_pass() {
    let loaded = loaded(Some("web"));
    let (tape, mut conns) = replay("verify");
    let rt = runtime();
    let plan = rt.block_on(make_plan(&loaded, &mut conns)).unwrap();
    let web = host(&plan, "web");
    assert_eq!(
        web.changes
            .iter()
            .map(|c| c.resource.as_str())
            .collect::<Vec<_>>(),
        Vec::<&str>::new(),
        "converged"
    );
    let checks = rt.block_on(kiln::verify::run_checks(&loaded, &conns));
    assert_eq!(checks.len(), 1);
    let results = checks[0].result.as_ref().expect("checks ran");
    assert!(results.len() >= 3, "{results:?}");
    assert!(results.iter().all(|c| c.passed()), "{results:?}");
    let secret_check = results
        .iter()
        .find(|c| c.module == "rec-app")
        .expect("the rec-app check");
    assert!(secret_check.sensitive && secret_check.log.is_empty());
    assert_eq!(tape.unused(), vec![]);
}

#[test]
fn local_edits_are_drift_with_the_diff_and_exit_code_2() {
    let loaded = loaded(Some("web"));
    let (_tape, mut conns) = replay("drift");
    let plan = runtime().block_on(make_plan(&loaded, &mut conns)).unwrap();
    let web = host(&plan, "web");
    let motd = web
        .changes
        .iter()
        .find(|c| c.resource == "file:/etc/motd")
        .expect("the edited motd is drift");
    assert_eq!(motd.action, Action::Update);
    assert!(motd
        .diff
        .as_deref()
        .unwrap_or("")
        .contains("-edited by hand"));
    let page = web
        .changes
        .iter()
        .find(|c| c.resource == "file:/var/www/kiln/index.html")
        .expect("the removed page is drift");
    assert_eq!(page.action, Action::Create);
    let env = kiln::verify::drift::from_plan("rec", &plan);
    let report = kiln::verify::drift::DriftReport::new("now".into(), vec![env]);
    assert_eq!(report.exit_code(), 2);
    let md = kiln::verify::drift::markdown(&report);
    assert!(
        md.contains("/etc/motd") && md.contains("edited by hand"),
        "{md}"
    );
    assert_no_secret("the drift report", &md);
    assert_no_secret("the drift JSON", &serde_json::to_string(&report).unwrap());
}

#[test]
fn a_tape_for_other_queries_fails_loudly_not_silently() {
    // The verify tape holds a fact answer then a checks answer; asking apply's questions of
    // it (facts, then an apply script) must fail on the second, naming both kinds.
    let loaded = loaded(Some("web"));
    let (_tape, mut conns) = replay("verify");
    let rt = runtime();
    let mut plan = rt.block_on(make_plan(&loaded, &mut conns)).unwrap();
    // Pretend there is something to apply.
    let fresh = {
        let (_t, mut c) = replay("fresh");
        rt.block_on(make_plan(&loaded, &mut c)).unwrap()
    };
    plan.hosts = fresh.hosts;
    let outcomes = rt
        .block_on(kiln::apply::run::execute(
            &loaded, &plan, &mut conns, None, 10,
        ))
        .unwrap();
    let err = outcomes[0].error.as_deref().expect("refused");
    assert!(
        err.contains("`apply` script") && err.contains("`checks` one"),
        "{err}"
    );
}

/// `kiln plan --timings` on tapes: the tapes were recorded with the untimed script, so the
/// hosts sent no section times; the controller's own (connect, total) are there, and the
/// plan is the same as without timings.
#[test]
fn timings_on_tapes_say_the_host_sent_no_section_times() {
    let loaded = loaded(Some("web"));
    let (_, mut plain) = replay("verify");
    let (_, mut conns) = replay("verify");
    conns.timings = true;
    let rt = runtime();
    let timed = rt.block_on(make_plan(&loaded, &mut conns)).unwrap();
    let untimed = rt.block_on(make_plan(&loaded, &mut plain)).unwrap();
    let web = host(&timed, "web");
    let t = web.timings.as_ref().expect("timings asked for");
    assert_eq!((t.script_us, t.sections.len()), (None, 0));
    assert!(host(&untimed, "web").timings.is_none());
    assert_eq!(web.changes, host(&untimed, "web").changes);
    let text = kiln::plan::render::render_timings(&timed);
    assert!(text.contains("web: total "), "{text}");
    assert!(text.contains("the host sent no section times"), "{text}");
}

//! `kiln verify --format json` and `kiln apply --format json` through recorded hosts (the
//! tapes of tests/recorded.rs): the documents' shape, their exit codes, and no secret in
//! them in any form.

use std::path::PathBuf;
use std::sync::{Arc, Once};

use kiln::engine::{load, make_plan, Connections, Loaded};
use kiln::transport::recorded::Recorded;

const TOKEN: &str = "rec-secret-Token-4711";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/recorded")
}

fn loaded(limit: Option<&str>) -> Loaded {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let state = std::env::temp_dir().join(format!("kiln-json-rec-{}", std::process::id()));
        std::env::set_var("XDG_STATE_HOME", &state);
        std::env::set_var("KILN_REC_API_TOKEN", TOKEN);
        // The seal key of this fresh state directory, made once here: tests running in
        // parallel threads would otherwise each make one, and a plan sealed with one key
        // would be checked with another.
        kiln::plan::seal::load_key().expect("seal key");
    });
    let env = fixtures().join("repo/environments/rec.toml");
    load(env.to_str().unwrap(), limit).expect("the fixture environment loads")
}

fn replay(tape: &str) -> Connections {
    let r = Arc::new(Recorded::load(&fixtures().join("tapes").join(tape)).expect("tape"));
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

#[test]
fn verify_json_of_a_converged_host() {
    let loaded = loaded(Some("web"));
    let mut conns = replay("verify");
    let rt = runtime();
    let plan = rt.block_on(make_plan(&loaded, &mut conns)).unwrap();
    let (doc, code) = rt.block_on(kiln::ops::verify::json_report(&loaded, &conns, plan));
    assert_eq!(code, 0, "{doc:#}");
    assert_eq!(doc["status"], "ok");
    assert_eq!(doc["environment"], "rec");
    let checks = doc["checks"].as_array().unwrap();
    assert!(checks.len() >= 3, "{doc:#}");
    assert!(checks
        .iter()
        .all(|c| c["passed"] == true && c["host"] == "web"));
    let secret = checks
        .iter()
        .find(|c| c["module"] == "rec-app")
        .expect("the rec-app check");
    assert_eq!(secret["sensitive"], true);
    assert!(secret["log"].as_array().unwrap().is_empty());
    assert!(doc["unchecked"].as_array().unwrap().is_empty());
    assert_no_secret("verify --format json", &doc.to_string());
}

#[test]
fn verify_json_of_a_drifted_host_exits_2_with_the_changes() {
    let loaded = loaded(Some("web"));
    let mut conns = replay("drift");
    let rt = runtime();
    let plan = rt.block_on(make_plan(&loaded, &mut conns)).unwrap();
    assert!(plan.change_count() > 0);
    let (doc, code) = rt.block_on(kiln::ops::verify::json_report(&loaded, &conns, plan));
    // The drift tape holds no check run (recorded with `kiln plan`): the checks could not
    // run on web, so the document says "failed" (exit 1) and lists web as unchecked.
    assert_eq!(
        (doc["status"].as_str(), code),
        (Some("failed"), 1),
        "{doc:#}"
    );
    assert!(doc["unchecked"]
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["host"] == "web"));
    let hosts = doc["plan"]["hosts"].as_array().unwrap();
    assert!(hosts
        .iter()
        .any(|h| !h["changes"].as_array().unwrap().is_empty()));
    assert_no_secret("verify --format json (drift)", &doc.to_string());
}

#[test]
fn apply_json_reports_each_host() {
    let loaded = loaded(None);
    let mut conns = replay("apply");
    let rt = runtime();
    let plan = rt.block_on(make_plan(&loaded, &mut conns)).unwrap();
    let outcomes = rt
        .block_on(kiln::apply::run::execute(
            &loaded, &plan, &mut conns, None, 10,
        ))
        .unwrap();
    let code = if plan.has_errors() { 1 } else { 0 };
    let doc = kiln::ops::apply::output::json_doc(&plan, 0, &outcomes, true, code);
    assert_eq!(doc["environment"], "rec");
    let web = doc["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == "web")
        .expect("web ran");
    assert_eq!(web["error"], serde_json::Value::Null);
    assert_eq!(web["applied"], web["total"]);
    assert_eq!(web["applied"].as_u64().unwrap(), 16);
    // db was unreachable when recorded: the plan says so, and the run failed.
    assert_eq!(doc["status"], "failed");
    assert_eq!(doc["exit_code"], 1);
    assert_no_secret("apply --format json", &doc.to_string());
}

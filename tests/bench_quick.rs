//! The cross-tool benchmark harness in quick mode (`bench/run --quick`: one lab host, one
//! sample of every measurement), so that the harness cannot rot. It needs root (the lab),
//! the network for apt through the lab's cache, and `bench/.venv` with ansible-core and
//! pyinfra, which `.ci/run` creates in its "bench venv" stage. Without the venv this test
//! fails and says how to make it; it never skips. It also fails when the host's no-op plan
//! takes more than twice `ssh HOST true` measured in the same run (issue 19).

mod common;

use std::path::Path;
use std::process::Command;

/// Every measurement quick mode takes at N=1.
const MEASUREMENTS: &[&str] = &[
    "first_floor",
    "first_kiln",
    "first_pyinfra",
    "first_ansible",
    "floor_true",
    "floor_facts",
    "noop_kiln",
    "noop_pyinfra",
    "noop_ansible",
    "dry_kiln",
    "dry_pyinfra",
    "dry_ansible",
    "change_kiln",
    "change_pyinfra",
    "change_ansible",
];

#[test]
fn bench_quick_mode_measures_everything_and_all_tools_converge_equal() {
    common::root_or_not_run("bench_quick (lab hosts)");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join("bench/.venv/bin");
    assert!(
        venv.join("ansible-playbook").exists() && venv.join("pyinfra").exists(),
        "{} has no ansible-playbook/pyinfra: run the \"bench venv\" stage of .ci/run, or \
         `python3 -m venv bench/.venv && bench/.venv/bin/pip install -r bench/requirements.txt`",
        venv.display()
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let report = dir.path().join("REPORT.md");
    let status = Command::new("python3")
        .arg(root.join("bench/run"))
        .args([
            "--quick",
            "--no-venv-install",
            "--kiln",
            env!("CARGO_BIN_EXE_kiln"),
            "--out",
        ])
        .arg(&report)
        .current_dir(root)
        .status()
        .expect("python3 runs bench/run");
    assert!(status.success(), "bench/run --quick failed: {status}");

    let text = std::fs::read_to_string(&report).expect("bench/run wrote its report");
    assert!(
        text.contains("## Targets (issue 6)"),
        "report lacks the targets table"
    );
    assert!(
        text.contains("were **identical** host by host"),
        "report does not show equal convergence:\n{text}"
    );
    let svg =
        std::fs::read_to_string(report.with_extension("svg")).expect("bench/run wrote its chart");
    assert!(
        svg.starts_with("<svg") && svg.contains("kiln"),
        "chart is not an SVG with kiln in it"
    );

    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(report.with_extension("json"))
            .expect("bench/run wrote its results"),
    )
    .expect("results are JSON");
    let one = &json["results"]["1"];
    assert_eq!(
        one["converged_equal"],
        serde_json::json!(true),
        "tools did not converge equal"
    );
    let tools: Vec<&str> = one["compared_tools"]
        .as_array()
        .expect("compared_tools")
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    assert_eq!(tools, ["kiln", "pyinfra", "ansible", "floor"]);
    for m in MEASUREMENTS {
        let samples = one["samples"][m]
            .as_array()
            .unwrap_or_else(|| panic!("no samples for {m}"));
        assert_eq!(samples.len(), 1, "{m}: quick mode takes one sample");
        for s in samples {
            let v = s.as_f64().unwrap_or(f64::NAN);
            assert!(
                v.is_finite() && v > 0.0,
                "{m}: sample {s} is not a positive number of seconds"
            );
        }
    }
    // Issue 19: the web-like host's no-op plan (`dry_kiln`: `kiln plan`, one fact script)
    // costs at most twice an SSH round trip (`floor_true`: `ssh HOST true`), both measured
    // in this run on the same host: a ratio, not an absolute time.
    let first = |m: &str| one["samples"][m][0].as_f64().unwrap_or(f64::NAN);
    let (plan, floor) = (first("dry_kiln"), first("floor_true"));
    assert!(
        plan <= 2.0 * floor,
        "the no-op plan took {plan:.3} s, {:.2}× `ssh HOST true` ({floor:.3} s); at most 2×",
        plan / floor
    );
}

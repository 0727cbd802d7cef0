//! A plan saved with `kiln plan -o FILE`, recognised by its content.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::plan::{Plan, PLAN_FORMAT};

/// A plan saved with `kiln plan -o FILE`, recognised by its content (a JSON document with
/// kiln's plan fields), whatever the file is called; `None` for anything else (an
/// environment name or file).
pub(super) fn saved_plan(target: &str) -> Result<Option<Plan>> {
    let path = Path::new(target);
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {target}"))?;
    let Ok(serde_json::Value::Object(doc)) = serde_json::from_str::<serde_json::Value>(&text)
    else {
        return Ok(None);
    };
    if !(doc.contains_key("kiln_version") && doc.contains_key("format")) {
        bail!("{target} is a JSON document but not a kiln plan (no `kiln_version`/`format`)");
    }
    let format = doc.get("format").and_then(|f| f.as_u64()).unwrap_or(0);
    if format != u64::from(PLAN_FORMAT) {
        bail!(
            "{target} has plan format {format}, this kiln reads format {PLAN_FORMAT}; make the plan again"
        );
    }
    let plan: Plan =
        serde_json::from_str(&text).with_context(|| format!("{target} is not a kiln plan"))?;
    Ok(Some(plan))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_plan_is_known_by_content_and_an_environment_is_not_a_plan() {
        let dir = tempfile::tempdir().unwrap();
        let plan = Plan {
            format: PLAN_FORMAT,
            kiln_version: "test".into(),
            environment: "lab".into(),
            env_file: "environments/lab.toml".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            hosts: vec![],
            targets: None,
        };
        let saved = dir.path().join("x.plan");
        std::fs::write(&saved, serde_json::to_string_pretty(&plan).unwrap()).unwrap();
        let read = saved_plan(saved.to_str().unwrap())
            .unwrap()
            .expect("a plan");
        assert_eq!(read.environment, "lab");

        let env = dir.path().join("prod.toml");
        std::fs::write(&env, "[hosts.web]\naddress = \"10.0.0.5\"\n").unwrap();
        assert!(saved_plan(env.to_str().unwrap()).unwrap().is_none());
        // A name, not a file: an environment under environments/.
        assert!(saved_plan("no-such-environment").unwrap().is_none());
    }
}

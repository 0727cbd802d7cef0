//! `kiln clone SRC DST`: write `environments/DST.toml`, an environment that `extends` SRC and
//! overrides only what must differ — its hosts (new addresses; hosts left out are omitted and
//! every reference to them dropped, so a 3-node cluster becomes a 1-node one), its domains
//! (`--domain-map FROM=TO`, applied to every site, certificate and alias), the ACME directory
//! (Let's Encrypt staging), its secrets (DST's own files and variables), and the module
//! parameters that belong to one environment (`per_environment`: the module's default, or
//! `--set MODULE.KEY=VALUE`).

use std::path::Path;

use anyhow::{bail, Context, Result};

pub use crate::spec::clone::{render, CloneArgs};
use crate::spec::{Environment, Provider};

pub fn run(args: CloneArgs, command: &str) -> Result<i32> {
    if args.dst.is_empty()
        || !args
            .dst
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!(
            "the new environment's name must be letters, digits, `-` or `_`: `{}`",
            args.dst
        );
    }
    let env = crate::engine::load_env(&args.src)?;
    let path = env.file.clone();
    // The copy inherits everything the source renders: a source whose templates do not
    // render would give a copy that cannot be planned. Rendered as `plan --offline` does
    // (no host, no network, unreadable secrets as placeholders), before anything is written.
    crate::engine::load_with(&args.src, None, true).map_err(|e| {
        e.context(format!(
            "{} does not render, so it cannot be cloned",
            args.src
        ))
    })?;
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut args = args;
    if let Some(f) = &args.anonymize {
        // Checked before anything is written; kept relative to the environments folder
        // when it is inside it (the copy's `[seed] anonymize` is read from there).
        crate::spec::anonymize::load(Path::new(f))?;
        let abs = std::fs::canonicalize(f).with_context(|| format!("reading {f}"))?;
        let envdir = std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
        args.anonymize = Some(
            abs.strip_prefix(&envdir)
                .map(|r| r.to_string_lossy().into_owned())
                .unwrap_or_else(|_| abs.to_string_lossy().into_owned()),
        );
    }
    let target = dir.join(format!("{}.toml", args.dst));
    if target.exists() && !args.force {
        bail!("{} exists (use --force to replace it)", target.display());
    }
    let text = render(&env, &args, command)?;
    // Check the result as kiln will read it before it takes the name.
    let tmp = dir.join(format!(".{}.toml.tmp", args.dst));
    std::fs::write(&tmp, &text).with_context(|| format!("writing {}", tmp.display()))?;
    let checked = Environment::load(&tmp);
    if let Err(e) = checked {
        let _ = std::fs::remove_file(&tmp);
        let why = if args.set.is_empty() {
            "the clone does not validate (a kiln bug)"
        } else {
            "the copy does not validate: check the --set values"
        };
        return Err(anyhow::Error::new(e).context(why));
    }
    std::fs::rename(&tmp, &target).with_context(|| format!("writing {}", target.display()))?;
    println!(
        "Wrote {} ({} lines):\n",
        target.display(),
        text.lines().count()
    );
    print!("{text}");
    let lab = text.contains("provider = \"lab\"")
        || env.spec.hosts.values().any(|h| h.provider == Provider::Lab);
    println!(
        "\nNext: {}kiln apply {} --yes",
        if lab {
            format!("kiln lab up {} && ", args.dst)
        } else {
            String::new()
        },
        args.dst
    );
    Ok(0)
}

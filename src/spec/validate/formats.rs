//! The formats a module parameter may declare (`format = "email"`, `fields`), and the walk
//! that checks a parameter value, scalar by scalar, against them.

use crate::spec::error::SpecError;
use crate::spec::source::join_key;
use crate::spec::Module;

use super::names::{
    abs_path, address, cidr, domain, email, line, locale, network, package_name, port, secret_name,
    shown, size, timezone, unit_name, url, url_path, user_name, word,
};
use super::Check;

/// The formats a module parameter may declare (`format = "email"`; a trailing `?` also
/// accepts an empty string, for "not set").
pub const FORMATS: &[(&str, Check)] = &[
    ("email", email),
    ("domain", domain),
    ("host", address),
    ("port", port),
    ("cidr", cidr),
    ("network", network),
    ("name", user_name),
    ("package", package_name),
    ("path", abs_path),
    ("unit", unit_name),
    ("url", url),
    ("word", word),
    ("size", size),
    ("locale", locale),
    ("timezone", timezone),
    ("urlpath", url_path),
    ("line", line),
    // The name of a `[secrets]` entry; the environment check also requires it declared.
    ("secret", secret_name),
    ("tls_profile", tls_profile),
    ("duration", duration),
];

/// A Prometheus duration (`5s`, `1m`, `1h30m`, `15d`): units `ms s m h d w y`, largest
/// first, each once. Prometheus and Alertmanager refuse anything else at load time; kiln
/// refuses it at the environment key instead.
fn duration(s: &str) -> Result<(), String> {
    const UNITS: [&str; 7] = ["y", "w", "d", "h", "m", "s", "ms"];
    let bad = || {
        Err(format!(
            "`{}` is not a Prometheus duration (digits and a unit: 30s, 5m, 4h, 15d; units ms s m h d w y)",
            shown(s)
        ))
    };
    let mut rest = s;
    let mut last: Option<usize> = None;
    if rest.is_empty() || rest.len() > 32 {
        return bad();
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return bad();
        }
        rest = &rest[digits..];
        let letters = rest.bytes().take_while(|b| b.is_ascii_lowercase()).count();
        let Some(u) = UNITS.iter().position(|u| *u == &rest[..letters]) else {
            return bad();
        };
        if last.is_some_and(|l| u <= l) {
            return bad();
        }
        last = Some(u);
        rest = &rest[letters..];
    }
    Ok(())
}

/// The TLS profiles the nginx module renders, after Mozilla's server-side TLS guidelines.
pub const TLS_PROFILES: &[&str] = &["intermediate", "modern"];

/// A TLS profile name (`intermediate`, `modern`): the template picks protocols by it, so any
/// other word would silently fall back to one of them.
fn tls_profile(s: &str) -> Result<(), String> {
    if TLS_PROFILES.contains(&s) {
        Ok(())
    } else {
        Err(format!(
            "TLS profile `{}` must be one of: {}",
            shown(s),
            TLS_PROFILES.join(", ")
        ))
    }
}

/// The checks of a declared format (`a|b`: either), and whether it accepts "" (a
/// trailing `?`); `None` when a format is unknown.
pub fn format_check(format: &str) -> Option<(Vec<Check>, bool)> {
    let (names, optional) = match format.strip_suffix('?') {
        Some(n) => (n, true),
        None => (format, false),
    };
    names
        .split('|')
        .map(|name| FORMATS.iter().find(|(n, _)| *n == name).map(|(_, c)| *c))
        .collect::<Option<Vec<Check>>>()
        .map(|checks| (checks, optional))
}

/// The module's own declarations: every `format` and `fields` value names a known format.
pub fn module_formats(module: &Module) -> Vec<SpecError> {
    let mut errors = vec![];
    let known = || {
        FORMATS
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (k, p) in &module.spec.params {
        let base = format!("params.{}", join_key("", k));
        let mut declared: Vec<(String, &String)> = vec![];
        if let Some(f) = &p.format {
            declared.push((format!("{base}.format"), f));
        }
        for (field, f) in &p.fields {
            declared.push((join_key(&format!("{base}.fields"), field), f));
        }
        for (key, f) in declared {
            if format_check(f).is_none() {
                errors.push(SpecError::at_key(
                    &module.source,
                    &key,
                    format!("unknown format `{f}` (formats: {})", known()),
                ));
            }
        }
        if let Some(r) = &p.replaced_by {
            if r == k || !module.spec.params.contains_key(r) {
                errors.push(SpecError::at_key(
                    &module.source,
                    &format!("{base}.replaced_by"),
                    format!("`{r}` is not another parameter of this module"),
                ));
            }
        }
        if let Some(d) = &p.default {
            for (path, msg) in check_value(d, p.format.as_deref(), &p.fields, &base) {
                let path = path.replacen(&base, &format!("{base}.default"), 1);
                errors.push(SpecError::at_key(
                    &module.source,
                    &path,
                    format!("default: {msg}"),
                ));
            }
        }
    }
    errors
}

/// Checks a parameter value against its declared `format` (every scalar reached through
/// lists and tables) and `fields` (a table key listed there switches to its own format).
/// Returns (key path, message) for every offending scalar.
pub(super) fn check_value(
    v: &toml::Value,
    format: Option<&str>,
    fields: &indexmap::IndexMap<String, String>,
    path: &str,
) -> Vec<(String, String)> {
    let mut out = vec![];
    walk(v, format, fields, path, &mut out);
    out
}

fn walk(
    v: &toml::Value,
    format: Option<&str>,
    fields: &indexmap::IndexMap<String, String>,
    path: &str,
    out: &mut Vec<(String, String)>,
) {
    match v {
        toml::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                walk(x, format, fields, &format!("{path}[{i}]"), out);
            }
        }
        toml::Value::Table(t) => {
            for (k, x) in t {
                let p = join_key(path, k);
                match fields.get(k) {
                    Some(f) => walk(x, Some(f), &indexmap::IndexMap::new(), &p, out),
                    None => walk(x, format, fields, &p, out),
                }
            }
        }
        scalar => {
            let Some((checks, optional)) = format.and_then(format_check) else {
                return;
            };
            let text = match scalar {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                other => {
                    out.push((
                        path.to_string(),
                        format!(
                            "expected a {} value, found {}",
                            format.unwrap_or(""),
                            other.type_str()
                        ),
                    ));
                    return;
                }
            };
            if optional && text.is_empty() {
                return;
            }
            let results: Vec<Result<(), String>> = checks.iter().map(|c| c(&text)).collect();
            if !results.iter().any(Result::is_ok) {
                let msgs: Vec<String> = results.into_iter().filter_map(Result::err).collect();
                out.push((path.to_string(), msgs.join("; and ")));
            }
        }
    }
}

/// The non-empty string scalars of a parameter value whose declared format (or `fields`
/// format) is `wanted` (`secret`), with their key paths: the references the environment
/// check resolves.
pub(super) fn values_of_format(
    v: &toml::Value,
    format: Option<&str>,
    fields: &indexmap::IndexMap<String, String>,
    path: &str,
    wanted: &str,
) -> Vec<(String, String)> {
    let mut out = vec![];
    collect(v, format, fields, path, wanted, &mut out);
    out
}

fn collect(
    v: &toml::Value,
    format: Option<&str>,
    fields: &indexmap::IndexMap<String, String>,
    path: &str,
    wanted: &str,
    out: &mut Vec<(String, String)>,
) {
    match v {
        toml::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                collect(x, format, fields, &format!("{path}[{i}]"), wanted, out);
            }
        }
        toml::Value::Table(t) => {
            for (k, x) in t {
                let p = join_key(path, k);
                match fields.get(k) {
                    Some(f) => collect(x, Some(f), &indexmap::IndexMap::new(), &p, wanted, out),
                    None => collect(x, format, fields, &p, wanted, out),
                }
            }
        }
        toml::Value::String(s)
            if !s.is_empty() && format.map(|f| f.trim_end_matches('?')) == Some(wanted) =>
        {
            out.push((path.to_string(), s.clone()));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_walk_lists_tables_and_fields() {
        let v: toml::Value = toml::from_str::<toml::Table>(
            "x = { web = [80, 0], db = [{ port = 3306, from = [\"10.0.0.0/8\", \"nope\"] }] }",
        )
        .unwrap()["x"]
            .clone();
        let mut fields = indexmap::IndexMap::new();
        fields.insert("from".to_string(), "cidr".to_string());
        let bad = check_value(&v, Some("port"), &fields, "p");
        let paths: Vec<&str> = bad.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["p.web[1]", "p.db[0].from[1]"]);
        assert!(check_value(
            &toml::Value::String(String::new()),
            Some("email?"),
            &fields,
            "e"
        )
        .is_empty());
        assert_eq!(
            check_value(
                &toml::Value::String(String::new()),
                Some("email"),
                &fields,
                "e"
            )
            .len(),
            1
        );
    }

    #[test]
    fn config_values_and_alternative_formats() {
        assert!(locale("en_US.UTF-8").is_ok() && locale("sr_RS@latin").is_ok());
        assert!(locale("en_US.UTF-8'; id; '").is_err());
        assert!(timezone("Europe/Berlin").is_ok() && timezone("Etc/GMT+5").is_ok());
        assert!(timezone("../../etc/shadow").is_err() && timezone("/etc/x").is_err());
        assert!(url_path("/health").is_ok() && url_path("/h; rm -rf /").is_err());
        assert!(line("Sun *-*-* 05:00:00").is_ok() && line("daily\nExecStart=x").is_err());
        let none = indexmap::IndexMap::new();
        let partial = toml::Value::String("partial".into());
        assert!(check_value(&partial, Some("path|word"), &none, "t").is_empty());
        let bad = toml::Value::String("$(id)".into());
        assert_eq!(check_value(&bad, Some("path|word"), &none, "t").len(), 1);
        assert!(format_check("path|nope").is_none());
    }

    #[test]
    fn durations_are_prometheus_durations() {
        let none = indexmap::IndexMap::new();
        for ok in ["5s", "1m", "1h30m", "15d", "500ms", "2w"] {
            let v = toml::Value::String(ok.into());
            assert!(
                check_value(&v, Some("duration"), &none, "d").is_empty(),
                "{ok}"
            );
        }
        for bad in ["", "5", "m", "5 m", "30m1h", "1mm", "5s;", "1.5h", "5S"] {
            let v = toml::Value::String(bad.into());
            assert_eq!(
                check_value(&v, Some("duration"), &none, "d").len(),
                1,
                "{bad}"
            );
        }
    }

    #[test]
    fn tls_profiles_are_a_closed_set() {
        let none = indexmap::IndexMap::new();
        for ok in ["intermediate", "modern"] {
            assert!(check_value(
                &toml::Value::String(ok.into()),
                Some("tls_profile"),
                &none,
                "t"
            )
            .is_empty());
        }
        for bad in ["old", "Modern", "", "modern; ssl_protocols TLSv1"] {
            let errs = check_value(
                &toml::Value::String(bad.into()),
                Some("tls_profile"),
                &none,
                "t",
            );
            assert_eq!(errs.len(), 1, "{bad}");
            assert!(
                errs[0].1.contains("must be one of: intermediate, modern"),
                "{}",
                errs[0].1
            );
        }
    }
}

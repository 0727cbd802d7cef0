//! Validation before any connection: every name, path and address of the spec is checked
//! against the grammar of the tool that will receive it (useradd, apt, systemctl, ssh), so
//! a broken or hostile value is refused with its file, line and key instead of reaching a
//! host as an option (`-oProxyCommand=…`), a path outside what was meant (`../../cron.d`)
//! or shell text (`a@b.c; touch /tmp/x`).
//!
//! Entry points, each called from the stage that owns the data:
//! * [`environment`] from `Environment::validate`: hosts, ssh settings, secrets, and the
//!   declared `format`s of module parameters (checked at the environment key that set them);
//! * [`resources`] from `desired::expand_host`: every rendered resource;
//! * [`for_each_value`] from the expansion of a `for_each`.
//!
//! (Hosts that would wait on each other are found by `desired::cycles`, over the expanded
//! hosts.)
//!
//! A value rendered from a module parameter is reported at the environment key the user
//! wrote ([`relocate`]), with a note naming the module resource that used it.
//!
//! The grammars are deliberately the tools' own, not stricter: what useradd, apt and
//! systemd accept and a shell cannot misread passes.

use std::net::IpAddr;

use crate::spec::error::SpecError;
use crate::resource::{Kind, Resource};
use crate::spec::source::join_key;
use crate::spec::{Environment, Module};

/// A check of one scalar: `Err` says what is wrong, for a message after the key.
type Check = fn(&str) -> Result<(), String>;

// ---------------------------------------------------------------------------------------
// Grammars

/// useradd's default NAME_REGEX `^[a-z_][a-z0-9_-]*[$]?$`, at most 32 characters.
pub fn user_name(s: &str) -> Result<(), String> {
    let body = s.strip_suffix('$').unwrap_or(s);
    let mut chars = body.chars();
    let first_ok = chars
        .next()
        .map(|c| c.is_ascii_lowercase() || c == '_')
        .unwrap_or(false);
    if !first_ok
        || !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    {
        return Err(format!(
            "`{}` is not a user or group name (useradd's NAME_REGEX `^[a-z_][a-z0-9_-]*[$]?$`)",
            shown(s)
        ));
    }
    if s.len() > 32 {
        return Err(format!(
            "`{}` is longer than 32 characters (useradd's limit)",
            shown(s)
        ));
    }
    Ok(())
}

/// The owner or group of a path: a name as [`user_name`], or a numeric id.
pub fn owner(s: &str) -> Result<(), String> {
    if !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(());
    }
    user_name(s)
}

/// A Debian package name (`^[a-z0-9][a-z0-9+.-]+$`, Debian Policy 5.6.1) with an optional
/// `:arch` qualifier.
pub fn package_name(s: &str) -> Result<(), String> {
    let (name, arch) = match s.split_once(':') {
        Some((n, a)) => (n, Some(a)),
        None => (s, None),
    };
    let ok = name.len() >= 2
        && name
            .chars()
            .next()
            .map(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            .unwrap_or(false)
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '.' | '-'));
    if !ok {
        return Err(format!(
            "`{}` is not a Debian package name (`^[a-z0-9][a-z0-9+.-]+$`, optionally `:arch`)",
            shown(s)
        ));
    }
    if let Some(arch) = arch {
        let ok = !arch.is_empty()
            && !arch.starts_with('-')
            && arch
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !ok {
            return Err(format!(
                "`{}`: `{}` is not a Debian architecture",
                shown(s),
                shown(arch)
            ));
        }
    }
    Ok(())
}

/// A version pin for `apt-get install NAME=VERSION` (Debian Policy 5.6.12, plus apt's `*`).
pub fn package_version(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.chars()
            .next()
            .map(|c| c.is_ascii_alphanumeric())
            .unwrap_or(false)
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '~' | ':' | '-' | '*'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a Debian version (letters, digits and `.+~:-*`, starting with a letter or digit)",
            shown(s)
        ))
    }
}

/// Suffixes systemd knows (`systemd.unit(5)`).
const UNIT_SUFFIXES: &[&str] = &[
    "service",
    "socket",
    "timer",
    "target",
    "path",
    "mount",
    "automount",
    "swap",
    "slice",
    "scope",
    "device",
];

/// A systemd unit name (`systemd.unit(5)`): `[A-Za-z0-9:_.\@-]`, at most 255 characters,
/// no `/`; a name without a known suffix is a `.service` (as `systemctl` reads it).
pub fn unit_name(s: &str) -> Result<(), String> {
    let full = crate::facts::unit_name(s);
    let bad = |why: &str| Err(format!("`{}` is not a systemd unit name: {why}", shown(s)));
    if s.is_empty() {
        return bad("it is empty");
    }
    if s.contains('/') {
        return bad("it contains `/`");
    }
    if s.contains("..") {
        return bad("it contains `..`");
    }
    if s.starts_with('-') || s.starts_with('.') {
        return bad("it starts with `-` or `.`");
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '\\' | '@' | '-')))
    {
        return bad(&format!("{c:?} is not allowed (only `A-Za-z0-9:_.\\@-`)"));
    }
    if full.len() > 255 {
        return bad("it is longer than 255 characters");
    }
    let (stem, suffix) = full.rsplit_once('.').unwrap_or((&full, ""));
    if stem.is_empty() || !UNIT_SUFFIXES.contains(&suffix) {
        return bad("no valid unit suffix");
    }
    Ok(())
}

/// An absolute, normalised path: starts with `/`, no `.` or `..` component, no `//`, no
/// trailing `/`, no control character (NUL, newline).
pub fn abs_path(s: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("path `{}` {why}", shown(s)));
    if !s.starts_with('/') {
        return bad("must be absolute");
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return bad(&format!("contains the control character {c:?}"));
    }
    if s.len() > 4096 {
        return bad("is longer than PATH_MAX");
    }
    if s == "/" {
        return Ok(());
    }
    if s.contains("//") {
        return bad("is not normalised (`//`)");
    }
    if s.ends_with('/') {
        return bad("is not normalised (trailing `/`)");
    }
    if s.split('/').any(|c| c == "..") {
        return bad("climbs with `..`");
    }
    if s.split('/').any(|c| c == ".") {
        return bad("is not normalised (`.` component)");
    }
    Ok(())
}

/// Directories whose purge would wreck the system: `/`, every top-level system directory,
/// and a few that hold the packaged system below them.
pub fn purge_allowed(path: &str) -> Result<(), String> {
    const TOP: &[&str] = &[
        "etc", "usr", "var", "boot", "root", "home", "bin", "sbin", "opt", "srv", "run", "proc",
        "sys", "dev", "tmp", "mnt", "media",
    ];
    const DEEPER: &[&str] = &[
        "/usr/bin",
        "/usr/sbin",
        "/usr/lib",
        "/usr/local",
        "/usr/share",
        "/var/lib",
        "/var/log",
        "/var/cache",
        "/etc/systemd",
        "/etc/systemd/system",
    ];
    let p = path.trim_end_matches('/');
    let refuse = p.is_empty()
        || p.strip_prefix('/')
            .map(|top| !top.contains('/') && (TOP.contains(&top) || top.starts_with("lib")))
            .unwrap_or(false)
        || DEEPER.contains(&p);
    if refuse {
        Err(format!(
            "`purge = true` on `{}` would remove everything kiln does not manage in a system directory; purge only a directory of your own",
            shown(path)
        ))
    } else {
        Ok(())
    }
}

/// A DNS host name (RFC 1123 labels): `[A-Za-z0-9-]` labels of 1–63, not starting or
/// ending with `-`, at most 253 characters.
pub fn hostname(s: &str) -> Result<(), String> {
    let t = s.strip_suffix('.').unwrap_or(s);
    let ok = !t.is_empty()
        && t.len() <= 253
        && t.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("`{}` is not a host name", shown(s)))
    }
}

/// A domain of a site or certificate: a host name, optionally a `*.` wildcard.
pub fn domain(s: &str) -> Result<(), String> {
    hostname(s.strip_prefix("*.").unwrap_or(s))
        .map_err(|_| format!("`{}` is not a domain name", shown(s)))
}

/// A host's address: an IP address or a host name (nothing ssh could read as an option).
pub fn address(s: &str) -> Result<(), String> {
    if s.parse::<IpAddr>().is_ok() || hostname(s).is_ok() {
        Ok(())
    } else {
        Err(format!(
            "`{}` is neither an IP address nor a host name",
            shown(s)
        ))
    }
}

/// A login name for ssh: letters, digits, `_.-`, not starting with `-`, at most 32.
pub fn ssh_user(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 32
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not an ssh user name (letters, digits, `_.-`, not starting with `-`)",
            shown(s)
        ))
    }
}

/// An email address as ACME accounts take it, without anything a shell would read:
/// `local@domain`, local part of letters, digits and `._%+-`.
pub fn email(s: &str) -> Result<(), String> {
    let bad = || Err(format!("`{}` is not an email address", shown(s)));
    let Some((local, dom)) = s.rsplit_once('@') else {
        return bad();
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with(['-', '.'])
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '%' | '+' | '-'));
    if !local_ok || !dom.contains('.') || hostname(dom).is_err() {
        return bad();
    }
    Ok(())
}

/// A TCP/UDP port, 1–65535 (as a number or its decimal text).
pub fn port(s: &str) -> Result<(), String> {
    match s.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(()),
        _ => Err(format!("`{}` is not a port (1–65535)", shown(s))),
    }
}

/// An IP address or a network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`).
pub fn cidr(s: &str) -> Result<(), String> {
    let bad = || {
        Err(format!(
            "`{}` is not an IP address or CIDR network",
            shown(s)
        ))
    };
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s, None),
    };
    let Ok(ip) = ip.parse::<IpAddr>() else {
        return bad();
    };
    if let Some(len) = len {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        match len.parse::<u8>() {
            Ok(l) if l <= max && !len.starts_with('+') => {}
            _ => return bad(),
        }
    }
    Ok(())
}

/// A peer of a firewall rule: a host name (of the environment or DNS), an IP address or a
/// CIDR network.
pub fn network(s: &str) -> Result<(), String> {
    if cidr(s).is_ok() || hostname(s).is_ok() {
        Ok(())
    } else {
        Err(format!(
            "`{}` is neither a host name, an IP address nor a CIDR network",
            shown(s)
        ))
    }
}

/// A word that goes into a file name, a config value or a SQL identifier as is:
/// `[A-Za-z0-9_.-]`, not starting with `-` or `.`, at most 64.
pub fn word(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && !s.starts_with(['-', '.'])
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a plain name (letters, digits, `_.-`, not starting with `-` or `.`)",
            shown(s)
        ))
    }
}

/// A URL for apt sources, downloads and ACME directories: a scheme, then no whitespace,
/// quote, backslash or shell metacharacter.
pub fn url(s: &str) -> Result<(), String> {
    let scheme_ok = ["http://", "https://", "file:/", "ftp://", "s3://"]
        .iter()
        .any(|p| s.starts_with(p));
    let chars_ok = s.chars().all(|c| {
        c.is_ascii_graphic()
            && !matches!(
                c,
                '"' | '\'' | '`' | '\\' | '$' | ';' | '|' | '&' | '<' | '>' | '(' | ')'
            )
    });
    if scheme_ok && chars_ok && s.len() > 8 {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a URL (http(s)://…, no spaces, quotes or shell characters)",
            shown(s)
        ))
    }
}

/// A size or duration as the configs take it: `512M`, `20m`, `1month`, `6h`, `20r/s`.
pub fn size(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.chars()
            .next()
            .map(|c| c.is_ascii_digit())
            .unwrap_or(false)
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '/' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a size or duration (a number and a unit, like `512M` or `6h`)",
            shown(s)
        ))
    }
}

/// A locale name (`en_US.UTF-8`, `sr_RS@latin`): it goes into /etc/locale.gen and a
/// quoted `locale -a` guard.
pub fn locale(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .next()
            .map(|c| c.is_ascii_alphabetic())
            .unwrap_or(false)
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a locale name (like `en_US.UTF-8`)",
            shown(s)
        ))
    }
}

/// A tz database name (`Europe/Berlin`, `Etc/GMT+5`): a relative path under
/// /usr/share/zoneinfo that cannot climb out of it.
pub fn timezone(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && !s.starts_with(['/', '-', '.'])
        && !s.ends_with('/')
        && !s.contains("//")
        && !s.split('/').any(|c| c == ".." || c == ".")
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '/'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a time zone name (like `Europe/Berlin`)",
            shown(s)
        ))
    }
}

/// The path part of a URL that a health check appends to `http://127.0.0.1:PORT`.
pub fn url_path(s: &str) -> Result<(), String> {
    let ok = s.starts_with('/')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '~' | '%' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a URL path (`/`, then letters, digits and `/._~%-`)",
            shown(s)
        ))
    }
}

/// One line of a config file (a systemd `OnCalendar=`, an env file, php.ini): no control
/// character (a newline would add a directive), no quote, backslash, `$` or backtick.
pub fn line(s: &str) -> Result<(), String> {
    match s
        .chars()
        .find(|c| c.is_control() || matches!(c, '"' | '\\' | '$' | '`'))
    {
        None => Ok(()),
        Some(c) => Err(format!(
            "`{}` holds {c:?}, which a one-line config value cannot carry",
            shown(s)
        )),
    }
}

/// A value shown in a message: control characters escaped, long values cut.
fn shown(s: &str) -> String {
    let mut out: String = s.escape_debug().collect();
    if out.chars().count() > 80 {
        out = out.chars().take(77).collect::<String>() + "...";
    }
    out
}

// ---------------------------------------------------------------------------------------
// Declared formats of module parameters

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
];

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
fn check_value(
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

// ---------------------------------------------------------------------------------------
// Environment

/// Hosts, ssh settings, secrets and module parameter formats of a loaded environment.
pub fn environment(
    env: &Environment,
    modules: &indexmap::IndexMap<String, Module>,
) -> Vec<SpecError> {
    let mut errors = vec![];
    let mut check = |path: String, value: &str, f: Check| {
        if let Err(msg) = f(value) {
            errors.push(env.error(&path, msg));
        }
    };
    if let Some(u) = &env.spec.ssh.user {
        check("ssh.user".into(), u, ssh_user);
    }
    if let Some(k) = &env.spec.ssh.key {
        check("ssh.key".into(), k, key_file);
    }
    if let Some(k) = &env.spec.ssh.known_hosts {
        check("ssh.known_hosts".into(), k, key_file);
    }
    for (name, host) in &env.spec.hosts {
        let base = format!("hosts.{}", join_key("", name));
        check(base.clone(), name, host_name);
        if let Some(a) = host.address.as_deref().filter(|a| !a.is_empty()) {
            check(format!("{base}.address"), a, address);
        }
        if let Some(u) = &host.user {
            check(format!("{base}.user"), u, ssh_user);
        }
        if let Some(k) = &host.key {
            check(format!("{base}.key"), k, key_file);
        }
        for (i, a) in host.aliases.iter().enumerate() {
            check(format!("{base}.aliases[{i}]"), a, hostname);
        }
    }
    for (name, r) in &env.spec.secrets {
        let base = format!("secrets.{}", join_key("", name));
        check(base.clone(), name, secret_name);
        if let Some(var) = &r.env {
            check(format!("{base}.env"), var, env_var);
        }
        if let Some(len) = r.generate {
            check(
                format!("{base}.generate"),
                &len.to_string(),
                generate_length,
            );
        }
    }
    // Module parameters with a declared format, at the key the environment wrote.
    let mut tables: Vec<(String, &String, &toml::Table)> = vec![];
    for (m, t) in &env.spec.modules {
        tables.push((format!("modules.{}", join_key("", m)), m, t));
    }
    for (h, host) in &env.spec.hosts {
        for (m, t) in &host.modules {
            tables.push((
                format!("hosts.{}.modules.{}", join_key("", h), join_key("", m)),
                m,
                t,
            ));
        }
    }
    for (base, m, table) in tables {
        let Some(module) = modules.get(m) else {
            continue;
        };
        for (k, v) in table {
            let Some(p) = module.spec.params.get(k) else {
                continue;
            };
            if p.format.is_none() && p.fields.is_empty() {
                continue;
            }
            let key = join_key(&base, k);
            for (path, msg) in check_value(v, p.format.as_deref(), &p.fields, &key) {
                errors.push(env.error(&path, format!("parameter `{k}` of module `{m}`: {msg}")));
            }
        }
    }
    for m in modules.values() {
        errors.extend(module_formats(m));
    }
    errors
}

/// The name of a host in the environment: it becomes `Host ENV-NAME` in ssh-config and the
/// host part of `after = ["NAME:type:name"]`.
fn host_name(s: &str) -> Result<(), String> {
    word(s).map_err(|_| {
        format!(
            "host name `{}` must be letters, digits and `_.-` (not starting with `-` or `.`)",
            shown(s)
        )
    })
}

/// A secret's name is also a file name (`generate` keeps the value under it).
fn secret_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "secret name `{}` must be letters, digits, `_` and `-`",
            shown(s)
        ))
    }
}

/// `generate = N`: a length between 8 and 256 (checked at load, so `--offline` sees it).
fn generate_length(s: &str) -> Result<(), String> {
    match s.parse::<u32>() {
        Ok(n) if (8..=256).contains(&n) => Ok(()),
        _ => Err(format!("`generate` is a length between 8 and 256, not {s}")),
    }
}

/// An environment variable name (POSIX: `[A-Za-z_][A-Za-z0-9_]*`).
fn env_var(s: &str) -> Result<(), String> {
    let ok = s
        .chars()
        .next()
        .map(|c| c.is_ascii_alphabetic() || c == '_')
        .unwrap_or(false)
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not an environment variable name",
            shown(s)
        ))
    }
}

/// A file ssh is given (`-i`, `UserKnownHostsFile`): nothing it could read as an option or
/// that breaks a config line.
fn key_file(s: &str) -> Result<(), String> {
    if s.is_empty() || s.starts_with('-') || s.chars().any(|c| c.is_control() || c == '"') {
        Err(format!(
            "`{}` is not a usable file name (empty, leading `-`, a quote or a control character)",
            shown(s)
        ))
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Resources

/// Checks the rendered resources of one module on one host. Errors name the environment
/// key that set the offending value when it came from there (see [`relocate`]).
pub fn resources(
    env: &Environment,
    module: &Module,
    host: &str,
    resources: &[Resource],
) -> Vec<SpecError> {
    let mut errors = vec![];
    for r in resources {
        let key = &r.origin.key;
        let mut bad: Vec<(String, String)> = vec![];
        let mut check = |field: &str, value: &str, f: Check| {
            if let Err(msg) = f(value) {
                bad.push((join_key(key, field), msg));
            }
        };
        match &r.kind {
            Kind::AptRepo(a) => {
                check("name", &a.name, word);
                check("uri", &a.uri, url);
                for s in a.suites.iter().chain(&a.components) {
                    check("suites", s, apt_word);
                }
                if let Some(k) = &a.keyring {
                    check("keyring", k, abs_path);
                }
            }
            Kind::Package(p) => {
                check("name", &p.name, package_name);
                if let Some(v) = &p.version {
                    check("version", v, package_version);
                }
            }
            Kind::Group(g) => check("name", &g.name, user_name),
            Kind::User(u) => {
                check("name", &u.name, user_name);
                if let Some(h) = &u.home {
                    check("home", h, abs_path);
                }
                check("shell", &u.shell, abs_path);
                for g in &u.groups {
                    check("groups", g, user_name);
                }
            }
            Kind::Directory(d) => {
                check("path", &d.path, abs_path);
                check("owner", &d.owner, owner);
                check("group", &d.group, owner);
                if d.purge {
                    check("purge", &d.path, purge_allowed);
                }
            }
            Kind::File(f) => {
                check("path", &f.path, abs_path);
                check("owner", &f.owner, owner);
                check("group", &f.group, owner);
            }
            Kind::Symlink(s) => {
                check("path", &s.path, abs_path);
                check("target", &s.target, link_target);
            }
            Kind::Unit(u) => check("name", &u.name, unit_name),
            Kind::Service(s) => check("name", &s.name, unit_name),
            Kind::Command(c) => {
                if let Some(p) = &c.creates {
                    check("creates", p, abs_path);
                }
            }
            Kind::GaleraNode(g) => {
                check("cluster", &g.cluster, word);
                for p in &g.restart_on {
                    check("restart_on", p, abs_path);
                }
                for d in &g.databases {
                    check("databases", d, sql_name);
                }
                for u in &g.users {
                    check("users", &u.name, sql_name);
                    check("users", &u.host, sql_host);
                }
                for n in &g.nodes {
                    let known = env.spec.hosts.contains_key(n)
                        || env
                            .spec
                            .hosts
                            .values()
                            .any(|h| h.address.as_deref() == Some(n.as_str()));
                    if !known {
                        bad.push((
                            join_key(key, "nodes"),
                            format!(
                                "cluster node `{}` is not a host of this environment (hosts: {})",
                                shown(n),
                                env.spec
                                    .hosts
                                    .keys()
                                    .cloned()
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        ));
                    }
                }
                for u in &g.users {
                    if !env.spec.secrets.contains_key(&u.password_secret) {
                        bad.push((
                            join_key(key, "users"),
                            format!(
                                "`password_secret` names `{}`, which is not a `[secrets]` entry (user `{}`)",
                                shown(&u.password_secret),
                                shown(&u.name)
                            ),
                        ));
                    }
                }
            }
        }
        for (path, msg) in bad {
            let e = SpecError::at_key(&module.source, &path, msg);
            errors.push(relocate(env, module, host, e));
        }
    }
    errors
}

/// A suite or component of an apt source: one word of the deb822 file.
fn apt_word(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/'));
    if ok {
        Ok(())
    } else {
        Err(format!("`{}` is not an apt suite or component", shown(s)))
    }
}

/// A symlink target may be relative; it still holds no control character, and an
/// absolute one is normalised.
fn link_target(s: &str) -> Result<(), String> {
    if s.starts_with('/') {
        return abs_path(s);
    }
    if s.is_empty() || s.chars().any(|c| c.is_control()) {
        return Err(format!(
            "symlink target `{}` is empty or holds a control character",
            shown(s)
        ));
    }
    Ok(())
}

/// A database or account name as the Galera steps quote it: `[A-Za-z0-9_]`, at most 64.
fn sql_name(s: &str) -> Result<(), String> {
    let ok =
        !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a database or account name (letters, digits, `_`)",
            shown(s)
        ))
    }
}

/// The host part of a MariaDB account: a name, an address or a pattern with `%`/`_`.
fn sql_host(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 255
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '%' | ':' | '/'));
    if ok {
        Ok(())
    } else {
        Err(format!("`{}` is not an account host pattern", shown(s)))
    }
}

/// Checks what a `for_each` expression gave: a list or a map. A string would iterate
/// its characters (`for_each = "params.packages"` with a string gives packages `h`, `e`…).
pub fn for_each_value(
    src: &crate::spec::SourceFile,
    key: &str,
    expr: &str,
    v: &minijinja::Value,
) -> Result<(), SpecError> {
    use minijinja::value::ValueKind;
    match v.kind() {
        ValueKind::Seq | ValueKind::Map | ValueKind::Iterable => Ok(()),
        kind => {
            let mut shown_value = v.to_string();
            if shown_value.chars().count() > 40 {
                shown_value = shown_value.chars().take(37).collect::<String>() + "...";
            }
            Err(SpecError::at_key(
                src,
                key,
                format!(
                    "`for_each` must give a list or a map, `{expr}` gave {kind} `{shown_value}`"
                ),
            ))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Where a module's error comes from

/// Re-points an error found in a module's resource at the environment key whose value
/// caused it: a backticked value of the message that a parameter (host's, then the
/// environment's) or a variable holds, exactly or as the longest part. The module place
/// stays as a note. Errors with no such value are returned unchanged.
pub fn relocate(env: &Environment, module: &Module, host: &str, e: SpecError) -> SpecError {
    if e.location.file != module.source.path {
        return e;
    }
    let quoted: Vec<&str> = e
        .message
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|q| !q.is_empty())
        .collect();
    if quoted.is_empty() {
        return e;
    }
    let h = join_key("", host);
    let m = join_key("", &module.name);
    let mut leaves: Vec<(String, String)> = vec![];
    if let Some(hs) = env.spec.hosts.get(host) {
        if let Some(t) = hs.modules.get(&module.name) {
            collect(t, &format!("hosts.{h}.modules.{m}"), &mut leaves);
        }
    }
    if let Some(t) = env.spec.modules.get(&module.name) {
        collect(t, &format!("modules.{m}"), &mut leaves);
    }
    if let Some(hs) = env.spec.hosts.get(host) {
        collect(&hs.vars, &format!("hosts.{h}.vars"), &mut leaves);
    }
    collect(&env.spec.vars, "vars", &mut leaves);
    let found = quoted
        .iter()
        .find_map(|q| leaves.iter().find(|(_, v)| v == q))
        .or_else(|| {
            quoted
                .iter()
                .filter_map(|q| {
                    leaves
                        .iter()
                        .filter(|(_, v)| v.chars().count() >= 3 && q.contains(v.as_str()))
                        .max_by_key(|(_, v)| v.len())
                })
                .max_by_key(|(_, v)| v.len())
        });
    let Some((path, _)) = found else {
        return e;
    };
    let mut out = env.error(path, e.message.clone());
    out.notes = e.notes.clone();
    out.notes.push(format!(
        "used by module `{}` at {} (`{}`), on host `{host}`",
        module.name, e.location, e.key
    ));
    out
}

fn collect(t: &toml::Table, base: &str, out: &mut Vec<(String, String)>) {
    fn value(v: &toml::Value, path: String, out: &mut Vec<(String, String)>) {
        match v {
            toml::Value::String(s) => out.push((path, s.clone())),
            toml::Value::Integer(i) => out.push((path, i.to_string())),
            toml::Value::Array(a) => a
                .iter()
                .enumerate()
                .for_each(|(i, x)| value(x, format!("{path}[{i}]"), out)),
            toml::Value::Table(t) => t
                .iter()
                .for_each(|(k, x)| value(x, join_key(&path, k), out)),
            _ => {}
        }
    }
    for (k, v) in t {
        value(v, join_key(base, k), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_follow_useradd() {
        for ok in ["alice", "_svc", "www-data", "a1_b-c", "machine$", "x"] {
            assert!(user_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "-x",
            "Bad Name",
            "Root",
            "1abc",
            "",
            "a/b",
            "a$b",
            "a\nb",
            "abcdefghijklmnopqrstuvwxyzabcdefg",
        ] {
            assert!(user_name(bad).is_err(), "{bad:?}");
        }
        assert!(owner("0").is_ok() && owner("33").is_ok() && owner("-R").is_err());
    }

    #[test]
    fn package_names_follow_debian_policy() {
        for ok in ["nginx", "php8.2-fpm", "g++", "libc6:amd64", "0ad"] {
            assert!(package_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "-oAPT::Get=1",
            "a",
            "Nginx",
            "nginx pkg",
            "ngi_nx",
            "x:",
            "x:-a",
            "",
        ] {
            assert!(package_name(bad).is_err(), "{bad:?}");
        }
        for ok in ["1.2.3-1", "1:2.0~rc1+dfsg-3", "1.22*"] {
            assert!(package_version(ok).is_ok(), "{ok}");
        }
        for bad in ["-1", "", "1 2", "1;reboot"] {
            assert!(package_version(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unit_names_follow_systemd() {
        for ok in [
            "nginx",
            "nginx.service",
            "kiln-certs.timer",
            "getty@tty1.service",
            "php8.2-fpm",
        ] {
            assert!(unit_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "../../cron.d/evil",
            "a/b.service",
            "-x",
            "a b",
            "x.foo..service",
            "",
            ".service",
        ] {
            assert!(unit_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn paths_are_absolute_and_normalised() {
        for ok in ["/", "/etc/nginx/nginx.conf", "/srv/app-1/.env"] {
            assert!(abs_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "etc/x",
            "/etc/../x",
            "/etc//x",
            "/etc/x/",
            "/a/./b",
            "/a\nb",
            "/a\0b",
            "",
        ] {
            assert!(abs_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn purge_refused_on_system_directories() {
        for bad in [
            "/", "/etc", "/usr", "/lib64", "/lib", "/var/lib", "/tmp", "/home",
        ] {
            assert!(purge_allowed(bad).is_err(), "{bad}");
        }
        for ok in [
            "/etc/nginx/sites-enabled",
            "/etc/kiln/tls/certs.d",
            "/srv/app",
        ] {
            assert!(purge_allowed(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn addresses_and_network_values() {
        for ok in ["192.0.2.1", "2001:db8::1", "db1", "web-1.example.com"] {
            assert!(address(ok).is_ok(), "{ok}");
        }
        for bad in [
            "-oProxyCommand=x",
            "a b",
            "a\nb",
            "",
            "a;b",
            "$(x)",
            "-x.example.com",
        ] {
            assert!(address(bad).is_err(), "{bad:?}");
        }
        assert!(email("ops@example.com").is_ok());
        for bad in [
            "a@b.c; touch /tmp/x",
            "a@b",
            "@b.c",
            "-a@b.c",
            "a$(x)@b.c",
            "a b@c.d",
        ] {
            assert!(email(bad).is_err(), "{bad:?}");
        }
        assert!(domain("*.example.com").is_ok() && domain("$(touch x).example.com").is_err());
        assert!(port("22").is_ok() && port("0").is_err() && port("65536").is_err());
        for ok in ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"] {
            assert!(cidr(ok).is_ok(), "{ok}");
        }
        for bad in ["10.0.0.0/33", "10.0.0/8", "any", "10.0.0.0/8; x"] {
            assert!(cidr(bad).is_err(), "{bad:?}");
        }
        assert!(url("https://deb.debian.org/debian").is_ok());
        assert!(url("http://x/$(id)").is_err() && url("deb.debian.org").is_err());
    }

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
}

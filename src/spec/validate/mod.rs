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
//!
//! * [`names`]: the grammars of single values, most of them one table-like [`names::Word`];
//! * [`formats`]: the `format`s a module parameter may declare, and the walk that checks a
//!   parameter value against its format;
//! * [`entries`]: the `entry` schema of list entries and nested tables (unknown keys,
//!   wrong types);
//! * [`refs`]: references between module parameters of a host (site → certificate,
//!   php site → pool);
//! * [`relocate`]: points an error in a module's resource at the environment key that set
//!   the offending value.

pub mod entries;
pub mod formats;
pub mod names;
mod refs;
mod relocate;

use crate::resource::{Kind, Resource};
use crate::spec::error::SpecError;
use crate::spec::source::join_key;
use crate::spec::{Environment, Module};

pub use entries::check_entries;
pub use formats::{format_check, module_formats, FORMATS};
use names::*;
pub use relocate::relocate;

/// A check of one scalar: `Err` says what is wrong, for a message after the key.
pub type Check = fn(&str) -> Result<(), String>;

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
            for (path, msg) in formats::check_value(v, p.format.as_deref(), &p.fields, &key) {
                errors.push(env.error(&path, format!("parameter `{k}` of module `{m}`: {msg}")));
            }
            // Secrets a module is told to read must be declared.
            for (path, name) in
                formats::values_of_format(v, p.format.as_deref(), &p.fields, &key, "secret")
            {
                if secret_name(&name).is_ok() && !env.spec.secrets.contains_key(&name) {
                    errors.push(env.error(
                        &path,
                        format!(
                            "parameter `{k}` of module `{m}` names the secret `{name}`, which is not a `[secrets]` entry (secrets: {})",
                            secret_list(env)
                        ),
                    ));
                }
            }
        }
    }
    for m in modules.values() {
        errors.extend(module_formats(m));
    }
    errors.extend(default_secrets(env, modules));
    if errors.is_empty() {
        errors.extend(refs::references(env));
    }
    errors
}

/// A module's parameter of format `secret` left to its default (`minio_root_user`) on a
/// host that uses the module must name a declared secret too: reported at the role that
/// brings the module in.
fn default_secrets(
    env: &Environment,
    modules: &indexmap::IndexMap<String, Module>,
) -> Vec<SpecError> {
    let mut errors = vec![];
    for (rname, role) in &env.spec.roles {
        for (i, m) in role.modules.iter().enumerate() {
            let Some(module) = modules.get(m) else {
                continue;
            };
            let hosts: Vec<_> = env
                .spec
                .hosts
                .values()
                .filter(|h| h.roles.contains(rname))
                .collect();
            for (k, p) in &module.spec.params {
                let is_secret =
                    p.format.as_deref().map(|f| f.trim_end_matches('?')) == Some("secret");
                let Some(name) = p.default.as_ref().and_then(|d| d.as_str()) else {
                    continue;
                };
                if !is_secret || name.is_empty() || env.spec.secrets.contains_key(name) {
                    continue;
                }
                // Set: the key given at the environment's or the host's table; a parameter
                // that replaces it, given there and not empty, counts as setting it.
                let sets = |t: Option<&toml::Table>| {
                    t.is_some_and(|t| {
                        t.contains_key(k)
                            || p.replaced_by
                                .as_ref()
                                .is_some_and(|r| t.get(r).is_some_and(|v| v.as_str() != Some("")))
                    })
                };
                let env_sets = sets(env.spec.modules.get(m));
                let defaulted = !env_sets && hosts.iter().any(|h| !sets(h.modules.get(m)));
                if defaulted {
                    errors.push(env.error(
                        &format!("roles.{}.modules[{i}]", join_key("", rname)),
                        format!(
                            "module `{m}` reads the secret `{name}` (the default of its parameter `{k}`), which is not a `[secrets]` entry: declare it, or set `{k}` (secrets: {})",
                            secret_list(env)
                        ),
                    ));
                }
            }
        }
    }
    errors
}

/// The declared secrets, for messages (`none` when there are none).
fn secret_list(env: &Environment) -> String {
    if env.spec.secrets.is_empty() {
        return "none".into();
    }
    env.spec
        .secrets
        .keys()
        .cloned()
        .collect::<Vec<_>>()
        .join(", ")
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
        // `field` is one key, or a dotted path of simple keys (`due.certs.live`).
        let mut check = |field: &str, value: &str, f: Check| {
            if let Err(msg) = f(value) {
                let at = match field.contains('.') {
                    true => format!("{key}.{field}"),
                    false => join_key(key, field),
                };
                bad.push((at, msg));
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
                if let Some(crate::resource::Due::Certs(d)) = &c.due {
                    check("due.certs.live", &d.live, abs_path);
                    if let Some(r) = &d.renewal {
                        check("due.certs.renewal", r, abs_path);
                    }
                    for (i, cert) in d.certificates.iter().enumerate() {
                        check(
                            &format!("due.certs.certificates[{i}].name"),
                            &cert.name,
                            word,
                        );
                    }
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
                    if u.password_secret.is_empty() {
                        if u.host != "localhost" {
                            bad.push((
                                join_key(key, "users"),
                                format!(
                                    "user `{}` has no `password_secret`, so it logs in over the socket (unix_socket) only: its `host` must be `localhost`, not `{}`",
                                    shown(&u.name),
                                    shown(&u.host)
                                ),
                            ));
                        }
                        continue;
                    }
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

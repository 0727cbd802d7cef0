//! Desired state: roles → modules → resources for each host, with every template rendered
//! (strict undefined variables) and every reference (notify, after) resolved. Pure: reads
//! only the spec's own files (templates), never a host.

pub mod cycles;
pub mod fail;
pub mod inbound;
pub mod render;

use std::path::PathBuf;

use indexmap::IndexMap;
use serde::Serialize;

use crate::resource::{self, Kind, Notify, OnChange, Origin, Resource};
use crate::spec::error::{SpecError, SpecErrors};
use crate::spec::source::{join_key, SourceFile};
use crate::spec::{Environment, Module, Provider};

pub use crate::resource::AptSettings;
pub use render::Renderer;

/// Keys a resource table may have besides its type's own fields.
const META_KEYS: &[&str] = &["type", "after", "notify", "for_each", "when"];

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub module: String,
    pub name: String,
    pub run: String,
    pub timeout_secs: u64,
    pub retries: u32,
    /// Its output's last lines are shown even when it passes.
    #[serde(default)]
    pub report: bool,
    /// The command depends on a secret: never shown, never in a process argument.
    #[serde(default)]
    pub sensitive: bool,
}

/// How to reach a host, resolved from the spec.
#[derive(Debug, Clone, Serialize)]
pub struct Connection {
    pub address: String,
    pub port: u16,
    pub user: String,
    pub key: Option<PathBuf>,
    pub provider: Provider,
}

#[derive(Debug, Clone, Serialize)]
pub struct DesiredHost {
    pub name: String,
    pub connection: Connection,
    pub roles: Vec<String>,
    pub resources: Vec<Resource>,
    pub checks: Vec<Check>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Desired {
    pub environment: String,
    pub hosts: Vec<DesiredHost>,
    /// The environment's `[apt]` settings, with defaults applied.
    pub apt: AptSettings,
}

impl Desired {
    pub fn host(&self, name: &str) -> Option<&DesiredHost> {
        self.hosts.iter().find(|h| h.name == name)
    }
}

/// The connection settings of a host (spec defaults, then the host's own).
pub fn connection(env: &Environment, name: &str, lab_key: Option<PathBuf>) -> Connection {
    let h = &env.spec.hosts[name];
    let ssh = &env.spec.ssh;
    let key = h
        .key
        .as_ref()
        .or(ssh.key.as_ref())
        .map(|k| PathBuf::from(crate::spec::expand_home(k)));
    let key = key.or(if h.provider == Provider::Lab {
        lab_key
    } else {
        None
    });
    // CI runs (drift detection) connect as their own account: KILN_SSH_USER and
    // KILN_SSH_KEY override the spec for every host that is not a lab container.
    let ci = |var: &str| {
        std::env::var(var)
            .ok()
            .filter(|v| !v.is_empty() && h.provider != Provider::Lab)
    };
    let key = ci("KILN_SSH_KEY")
        .map(|k| PathBuf::from(crate::spec::expand_home(&k)))
        .or(key);
    Connection {
        address: h.address.clone().unwrap_or_default(),
        port: h.port.or(ssh.port).unwrap_or(22),
        user: ci("KILN_SSH_USER")
            .or(h.user.clone())
            .or(ssh.user.clone())
            .unwrap_or_else(|| "root".into()),
        key,
        provider: h.provider,
    }
}

/// Expands the selected hosts. All spec errors are collected and returned together.
pub fn expand(
    env: &Environment,
    hosts: &[String],
    lab_key: Option<PathBuf>,
) -> Result<Desired, SpecErrors> {
    let mut renderer = Renderer::new(env);
    let mut canaries = (!env.secrets.is_empty()).then(|| Renderer::with_canaries(env));
    let mut errors = vec![];
    let mut out = vec![];
    // The firewall openings first: every template of a host may render them.
    for name in hosts {
        match inbound::for_host(env, &renderer, name) {
            Ok(list) => {
                renderer.set_inbound(name, &list);
                if let Some(c) = canaries.as_mut() {
                    c.set_inbound(name, &list);
                }
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    for name in hosts {
        match expand_host(env, &renderer, name, lab_key.clone()) {
            Ok(mut h) => {
                if let Some(c) = &canaries {
                    let shadow = expand_host(env, c, name, lab_key.clone()).ok();
                    if let Err(mut e) = taint(env, &mut h, shadow.as_ref()) {
                        errors.append(&mut e);
                    }
                }
                out.push(h)
            }
            Err(mut e) => errors.append(&mut e.0),
        }
    }
    errors.extend(cycles::host_cycles(env, &out));
    // Several hosts failing on one environment key (a `fail()` about `[modules.M]`): once.
    let mut seen = vec![];
    errors.retain(|e| {
        let k = (e.location.clone(), e.key.clone(), e.message.clone());
        let new = !seen.contains(&k);
        if new {
            seen.push(k);
        }
        new
    });
    if !errors.is_empty() {
        return Err(SpecErrors(errors));
    }
    let defaults = AptSettings::default();
    Ok(Desired {
        environment: env.name.clone(),
        hosts: out,
        apt: AptSettings {
            lists_max_age_secs: env
                .spec
                .apt
                .lists_max_age
                .unwrap_or(defaults.lists_max_age_secs),
            recommends: env.spec.apt.recommends.unwrap_or(defaults.recommends),
        },
    })
}

fn expand_host(
    env: &Environment,
    renderer: &Renderer,
    name: &str,
    lab_key: Option<PathBuf>,
) -> Result<DesiredHost, SpecErrors> {
    let host = &env.spec.hosts[name];
    let mut errors: Vec<SpecError> = vec![];
    let mut resources: Vec<Resource> = vec![];
    let mut checks = vec![];
    for module in inbound::host_modules(env, name) {
        let params = match module_params(env, module, name) {
            Ok(p) => p,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let ctx = renderer.context(name, &module.name, params);
        for (i, table) in module.spec.resource.iter().enumerate() {
            match expand_resource(renderer, module, i, table, &ctx) {
                Ok(mut rs) => {
                    errors.extend(crate::spec::validate::resources(env, module, name, &rs));
                    resources.append(&mut rs)
                }
                Err(e) => errors.push(crate::spec::validate::relocate(
                    env,
                    module,
                    name,
                    with_item(e, table),
                )),
            }
        }
        for (i, c) in module.spec.check.iter().enumerate() {
            let key = format!("check[{i}].run");
            match renderer.render_str(&module.source, &key, &c.run, &ctx) {
                Ok(run) => checks.push(Check {
                    module: module.name.clone(),
                    name: c.name.clone(),
                    run,
                    timeout_secs: c.timeout.unwrap_or(30),
                    retries: c.retries.unwrap_or(0),
                    report: c.report,
                    sensitive: false,
                }),
                Err(e) => errors.push(crate::spec::validate::relocate(env, module, name, e)),
            }
        }
    }
    // Unique ids per host. Two modules may both declare the very same resource (a package
    // both need, say): identical declarations merge; any difference is an error.
    let mut merged: Vec<Resource> = Vec::with_capacity(resources.len());
    for r in resources {
        match merged.iter_mut().find(|m| m.id == r.id && m.kind == r.kind) {
            Some(m) => {
                for n in r.notify {
                    if !m.notify.contains(&n) {
                        m.notify.push(n);
                    }
                }
                for a in r.after {
                    if !m.after.contains(&a) {
                        m.after.push(a);
                    }
                }
            }
            None => merged.push(r),
        }
    }
    let mut resources = merged;
    let mut ids: IndexMap<String, Origin> = IndexMap::new();
    for r in &resources {
        if let Some(prev) = ids.get(&r.id) {
            let src = &env.modules[&r.module].source;
            errors.push(
                SpecError::at_key(
                    src,
                    &r.origin.key,
                    format!("`{}` is declared twice on host `{name}`", r.id),
                )
                .note(format!(
                    "first declared in {} at `{}`",
                    prev.file.display(),
                    prev.key
                )),
            );
        } else {
            ids.insert(r.id.clone(), r.origin.clone());
        }
    }
    // Resolve notify targets to the service resources that say how they take a change.
    let services: IndexMap<String, OnChange> = resources
        .iter()
        .filter_map(|r| match &r.kind {
            Kind::Service(s) => Some((s.unit(), s.on_change)),
            _ => None,
        })
        .collect();
    for r in &mut resources {
        let src = &env.modules[&r.module].source;
        for n in &mut r.notify {
            match services.get(&n.unit) {
                Some(action) => n.action = *action,
                None => errors.push(SpecError::at_key(
                    src,
                    &format!("{}.notify", r.origin.key),
                    format!(
                        "notifies `{}`, but host `{name}` has no service resource for it",
                        n.unit
                    ),
                )),
            }
        }
        // A unit file change restarts its own service when the host manages that service.
        if let Kind::Unit(u) = &r.kind {
            let unit = crate::facts::unit_name(&u.name);
            if services.contains_key(&unit) && !r.notify.iter().any(|n| n.unit == unit) {
                r.notify.push(Notify {
                    unit,
                    action: OnChange::Restart,
                });
            }
        }
    }
    // `after` references: same host (`type:name`) or another host (`host:type:name`).
    for r in &resources {
        let src = &env.modules[&r.module].source;
        for (i, a) in r.after.iter().enumerate() {
            let (h, id) = split_ref(a);
            let ok = match h {
                None => ids.contains_key(id),
                Some(h) => env.spec.hosts.contains_key(h),
            };
            if !ok {
                errors.push(SpecError::at_key(src, &format!("{}.after[{i}]", r.origin.key), format!("`after` names `{a}`, which is not a resource of host `{name}` (or `HOST:type:name` of another host)")));
            }
        }
    }
    if !errors.is_empty() {
        return Err(SpecErrors(errors));
    }
    Ok(DesiredHost {
        name: name.to_string(),
        connection: connection(env, name, lab_key),
        roles: host.roles.clone(),
        resources,
        checks,
    })
}

/// Marks what depends on a secret as sensitive: taint by difference. The host was
/// expanded twice, with the real secrets and with canaries of them (same form, every
/// letter and digit different); whatever renders differently depends on a secret, through
/// any filter, concatenation or loop — unlike a search for the value, which `upper` or
/// `b64encode` defeats. File and unit content and command text become sensitive (never
/// shown, sealed in saved plans, sent only in the script on stdin); a secret in anything
/// kiln must show (a resource's name, a path, a package) is refused.
///
/// When the canary expansion fails (a template that checks a secret's exact value) or
/// gives other resources (`when`/`for_each` on a secret), what depends on a secret cannot
/// be told apart: every file, unit, command and check of the host is taken as sensitive.
fn taint(
    env: &Environment,
    host: &mut DesiredHost,
    shadow: Option<&DesiredHost>,
) -> Result<(), Vec<SpecError>> {
    let same_shape = shadow.is_some_and(|s| {
        s.resources.len() == host.resources.len()
            && s.checks.len() == host.checks.len()
            && s.resources
                .iter()
                .zip(&host.resources)
                .all(|(a, b)| a.origin == b.origin)
    });
    let Some(shadow) = shadow.filter(|_| same_shape) else {
        for r in &mut host.resources {
            r.kind.mark_sensitive();
        }
        for c in &mut host.checks {
            c.sensitive = true;
        }
        return Ok(());
    };
    let mut errors = vec![];
    for (r, s) in host.resources.iter_mut().zip(&shadow.resources) {
        if r.id != s.id {
            errors.push(SpecError::at_key(
                &env.modules[&r.module].source,
                &r.origin.key,
                "this resource's name depends on a secret, and kiln shows names in every plan; \
                 keep secrets to file and unit content and command text",
            ));
            continue;
        }
        if let (Kind::Command(a), Kind::Command(b)) = (&r.kind, &s.kind) {
            if a.creates != b.creates {
                errors.push(SpecError::at_key(
                    &env.modules[&r.module].source,
                    &format!("{}.creates", r.origin.key),
                    "`creates` depends on a secret; kiln shows this path in plans",
                ));
                continue;
            }
        }
        let differs = serde_json::to_value(&r.kind).ok() != serde_json::to_value(&s.kind).ok();
        if differs && !r.kind.mark_sensitive() {
            errors.push(SpecError::at_key(
                &env.modules[&r.module].source,
                &r.origin.key,
                format!(
                    "`{}` depends on a secret in a setting kiln shows in plans; \
                     only file and unit content and command text may carry secrets",
                    r.id
                ),
            ));
        }
    }
    for (c, s) in host.checks.iter_mut().zip(&shadow.checks) {
        if c.run != s.run {
            c.sensitive = true;
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// A `fail()` that reads `item` reads what the resource's `for_each` gives.
fn with_item(mut e: SpecError, table: &toml::Table) -> SpecError {
    let each = table.get("for_each").and_then(|v| v.as_str());
    if let (Some(r), Some(each)) = (e.raised.as_mut(), each) {
        if let Some(i) = r.reads.iter().position(|x| x == "item") {
            let from: Vec<String> = fail::reads_of(each)
                .into_iter()
                .filter(|x| x != "item" && !r.reads.contains(x))
                .collect();
            r.reads.splice(i..=i, from);
        }
    }
    e
}

/// Splits an `after` reference into (host, resource id).
pub fn split_ref(r: &str) -> (Option<&str>, &str) {
    match r.split_once(':') {
        Some((first, rest)) if !Kind::TYPES.contains(&first) => (Some(first), rest),
        _ => (None, r),
    }
}

/// Module defaults, then the environment's `[modules.M]`, then the host's.
pub(crate) fn module_params(
    env: &Environment,
    module: &Module,
    host: &str,
) -> Result<toml::Table, SpecError> {
    let mut params = toml::Table::new();
    for (k, p) in &module.spec.params {
        if let Some(d) = &p.default {
            params.insert(k.clone(), d.clone());
        }
    }
    if let Some(t) = env.spec.modules.get(&module.name) {
        params.extend(t.clone());
    }
    if let Some(t) = env.spec.hosts[host].modules.get(&module.name) {
        params.extend(t.clone());
    }
    for k in module.spec.params.keys() {
        if !params.contains_key(k) {
            return Err(env.error(
                &format!("modules.{}", join_key("", &module.name)),
                format!(
                    "module `{}` needs parameter `{k}` (no default), used by host `{host}`",
                    module.name
                ),
            ));
        }
    }
    Ok(params)
}

fn expand_resource(
    renderer: &Renderer,
    module: &Module,
    i: usize,
    table: &toml::Table,
    ctx: &minijinja::Value,
) -> Result<Vec<Resource>, SpecError> {
    let src = &module.source;
    let key = format!("resource[{i}]");
    let items: Vec<Option<minijinja::Value>> = match table.get("for_each") {
        Some(toml::Value::String(expr)) => {
            let v = renderer.eval(src, &format!("{key}.for_each"), expr, ctx)?;
            crate::spec::validate::for_each_value(src, &format!("{key}.for_each"), expr, &v)?;
            let iter = v.try_iter().map_err(|_| {
                SpecError::at_key(
                    src,
                    &format!("{key}.for_each"),
                    format!("`for_each` must give a list, `{expr}` gave {}", v.kind()),
                )
            })?;
            iter.map(Some).collect()
        }
        Some(_) => {
            return Err(SpecError::at_key(
                src,
                &format!("{key}.for_each"),
                "`for_each` must be an expression string",
            ))
        }
        None => vec![None],
    };
    let mut out = vec![];
    for item in items {
        let ctx = match &item {
            Some(item) => render::with_item(ctx, item.clone()),
            None => ctx.clone(),
        };
        if let Some(w) = table.get("when") {
            let toml::Value::String(expr) = w else {
                return Err(SpecError::at_key(
                    src,
                    &format!("{key}.when"),
                    "`when` must be an expression string",
                ));
            };
            if !renderer
                .eval(src, &format!("{key}.when"), expr, &ctx)?
                .is_true()
            {
                continue;
            }
        }
        let mut rendered = toml::Table::new();
        for (k, v) in table {
            if k == "for_each" || k == "when" {
                continue;
            }
            rendered.insert(
                k.clone(),
                renderer.render_value(src, &join_key(&key, k), v, &ctx)?,
            );
        }
        out.push(build_resource(renderer, module, &key, rendered, &ctx)?);
    }
    Ok(out)
}

fn string_list(
    src: &SourceFile,
    key: &str,
    v: Option<toml::Value>,
) -> Result<Vec<String>, SpecError> {
    match v {
        None => Ok(vec![]),
        Some(toml::Value::String(s)) => Ok(vec![s]),
        Some(toml::Value::Array(a)) => a
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                toml::Value::String(s) => Ok(s),
                other => Err(SpecError::at_key(
                    src,
                    &format!("{key}[{i}]"),
                    format!("expected a string, found {}", other.type_str()),
                )),
            })
            .collect(),
        Some(other) => Err(SpecError::at_key(
            src,
            key,
            format!("expected a list of strings, found {}", other.type_str()),
        )),
    }
}

fn build_resource(
    renderer: &Renderer,
    module: &Module,
    key: &str,
    mut t: toml::Table,
    ctx: &minijinja::Value,
) -> Result<Resource, SpecError> {
    let src = &module.source;
    let ty = t
        .remove("type")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let after = string_list(src, &format!("{key}.after"), t.remove("after"))?;
    let notify = string_list(src, &format!("{key}.notify"), t.remove("notify"))?
        .into_iter()
        .map(|n| Notify {
            unit: crate::facts::unit_name(n.strip_prefix("service:").unwrap_or(&n)),
            action: OnChange::Restart,
        })
        .collect();
    debug_assert!(META_KEYS.contains(&"type"));
    let value = toml::Value::Table(t);
    fn typed<T: serde::de::DeserializeOwned>(
        src: &SourceFile,
        key: &str,
        v: toml::Value,
    ) -> Result<T, SpecError> {
        v.try_into::<T>().map_err(|e| {
            let msg = e.message().trim().to_string();
            let field = msg
                .strip_prefix("unknown field `")
                .and_then(|m| m.split('`').next())
                .map(|f| join_key(key, f));
            let at = field
                .filter(|f| src.has(f))
                .unwrap_or_else(|| key.to_string());
            SpecError::at_key(src, &at, msg)
        })
    }
    let mut kind = match ty.as_str() {
        "apt_repo" => Kind::AptRepo(typed(src, key, value)?),
        "package" => Kind::Package(typed(src, key, value)?),
        "group" => Kind::Group(typed(src, key, value)?),
        "user" => Kind::User(typed(src, key, value)?),
        "directory" => Kind::Directory(typed(src, key, value)?),
        "file" => Kind::File(typed(src, key, value)?),
        "symlink" => Kind::Symlink(typed(src, key, value)?),
        "unit" => Kind::Unit(typed(src, key, value)?),
        "command" => Kind::Command(typed(src, key, value)?),
        "service" => {
            // `on_change` is a closed set (`OnChange`): it is read after the rest of the
            // service, so that its error keeps its own key and comes after the service's
            // other errors.
            let mut value = value;
            let on_change = value.as_table_mut().and_then(|t| t.remove("on_change"));
            let mut s: resource::service::Service = typed(src, key, value)?;
            if let Some(oc) = on_change {
                let oc: String = typed(src, key, oc)?;
                s.on_change = match OnChange::parse(&oc) {
                    Some(oc) => oc,
                    None => {
                        return Err(SpecError::at_key(
                            src,
                            &format!("{key}.on_change"),
                            "`on_change` must be `reload` or `restart`",
                        ))
                    }
                };
            }
            Kind::Service(s)
        }
        "galera_node" => Kind::GaleraNode(typed(src, key, value)?),
        other => {
            return Err(SpecError::at_key(
                src,
                &format!("{key}.type"),
                format!("unknown resource type `{other}`"),
            ))
        }
    };
    // Content: inline or from a template under templates/<module>/; secrets make it sensitive.
    let content_of = |content: &mut Option<String>,
                      template: &mut Option<String>,
                      sensitive: &mut bool,
                      need: bool|
     -> Result<(), SpecError> {
        match (content.is_some(), template.take()) {
            (true, Some(_)) => {
                return Err(SpecError::at_key(
                    src,
                    &format!("{key}.template"),
                    "set either `content` or `template`, not both",
                ))
            }
            (false, Some(name)) => {
                *content = Some(renderer.render_template(
                    src,
                    &format!("{key}.template"),
                    &module.name,
                    &name,
                    ctx,
                )?)
            }
            (false, None) if need => {
                return Err(SpecError::at_key(src, key, "needs `content` or `template`"))
            }
            _ => {}
        }
        if let Some(c) = content {
            if renderer.redactor.contains_secret(c) {
                *sensitive = true;
            }
        }
        Ok(())
    };
    match &mut kind {
        Kind::File(f) => {
            let need = f.state == resource::file::FileState::Present;
            content_of(&mut f.content, &mut f.template, &mut f.sensitive, need)?;
            f.mode = mode(src, key, &f.mode)?;
            if !f.path.starts_with('/') {
                return Err(SpecError::at_key(
                    src,
                    &format!("{key}.path"),
                    format!("path `{}` must be absolute", f.path),
                ));
            }
        }
        Kind::Unit(u) => content_of(&mut u.content, &mut u.template, &mut u.sensitive, true)?,
        Kind::Directory(d) => {
            d.mode = mode(src, key, &d.mode)?;
            if !d.path.starts_with('/') {
                return Err(SpecError::at_key(
                    src,
                    &format!("{key}.path"),
                    format!("path `{}` must be absolute", d.path),
                ));
            }
        }
        Kind::Command(c) if c.creates.is_none() && c.unless.is_none() && c.due.is_none() => {
            return Err(SpecError::at_key(
                src,
                key,
                "a command needs `creates`, `unless` or `due`, so that a converged host runs nothing",
            ));
        }
        _ => {}
    }
    Ok(Resource {
        id: kind.id(),
        module: module.name.clone(),
        origin: Origin {
            file: src.path.clone(),
            key: key.to_string(),
        },
        after,
        notify,
        kind,
    })
}

fn mode(src: &SourceFile, key: &str, m: &str) -> Result<String, SpecError> {
    resource::normalize_mode(m).ok_or_else(|| {
        SpecError::at_key(
            src,
            &format!("{key}.mode"),
            format!("mode `{m}` is not an octal permission like \"0644\""),
        )
    })
}

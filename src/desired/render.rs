//! Templating with minijinja in strict mode: an undefined variable is an error naming the
//! file, line and variable, never an empty string written to a host.

use minijinja::value::Value;
use minijinja::{ErrorKind, UndefinedBehavior};
use serde_json::json;

use crate::spec::error::{Raised, SpecError};
use crate::spec::source::{Location, SourceFile};
use crate::spec::{Environment, Redactor};

pub struct Renderer {
    jinja: minijinja::Environment<'static>,
    base: serde_json::Value,
    host_vars: indexmap::IndexMap<String, serde_json::Value>,
    templates: TemplateDirs,
    pub redactor: Redactor,
}

/// Where `MODULE/NAME` templates are read: a loaded module's from the root of the module
/// path its module file came from; any other (a template another module includes) from
/// the first root of the path that has it.
#[derive(Debug, Clone)]
struct TemplateDirs {
    /// Module name → the `templates/` directory of its root.
    modules: std::collections::HashMap<String, std::path::PathBuf>,
    /// Every root's `templates/`, in path order.
    path: Vec<std::path::PathBuf>,
}

impl TemplateDirs {
    fn new(env: &Environment) -> TemplateDirs {
        TemplateDirs {
            modules: env
                .modules
                .values()
                .map(|m| (m.name.clone(), m.root.join("templates")))
                .collect(),
            path: env
                .module_path
                .roots
                .iter()
                .map(|r| r.templates_dir())
                .collect(),
        }
    }

    /// The file of template `name` (`MODULE/FILE…`), or `None` for a name that would leave
    /// `templates/` (a segment starting with `.`, a backslash).
    fn file(&self, name: &str) -> Option<std::path::PathBuf> {
        let safe = name
            .split('/')
            .all(|s| !s.is_empty() && !s.starts_with('.') && !s.contains('\\'));
        if !safe {
            return None;
        }
        let module = name.split('/').next().unwrap_or_default();
        match self.modules.get(module) {
            Some(dir) => Some(dir.join(name)),
            None => self
                .path
                .iter()
                .map(|d| d.join(name))
                .find(|p| p.is_file())
                .or_else(|| self.path.last().map(|d| d.join(name))),
        }
    }
}

/// `u` with its host part replaced by `addresses[host]` when it names one.
fn host_url(u: &str, addresses: &std::collections::HashMap<String, String>) -> String {
    let Some((scheme, rest)) = u.split_once("://") else {
        return u.to_string();
    };
    let end = rest.find([':', '/', '?', '#']).unwrap_or(rest.len());
    match addresses.get(&rest[..end]) {
        Some(a) if a.contains(':') => format!("{scheme}://[{a}]{}", &rest[end..]),
        Some(a) => format!("{scheme}://{a}{}", &rest[end..]),
        None => u.to_string(),
    }
}

/// Adds `item` (the current `for_each` element) to a context.
pub fn with_item(ctx: &Value, item: Value) -> Value {
    minijinja::context! { item => item, ..ctx.clone() }
}

impl Renderer {
    pub fn new(env: &Environment) -> Renderer {
        Renderer::with_secrets(env, |v| v.to_string())
    }

    /// A renderer whose secrets are canaries (see [`crate::spec::secret::canary`]): what
    /// renders differently with it depends on a secret.
    pub fn with_canaries(env: &Environment) -> Renderer {
        Renderer::with_secrets(env, crate::spec::secret::canary)
    }

    fn with_secrets(env: &Environment, value: impl Fn(&str) -> String) -> Renderer {
        let mut jinja = minijinja::Environment::new();
        jinja.set_undefined_behavior(UndefinedBehavior::Strict);
        jinja.set_keep_trailing_newline(true);
        let templates = TemplateDirs::new(env);
        let dirs = templates.clone();
        jinja.set_loader(move |name| {
            let Some(path) = dirs.file(name) else {
                return Ok(None);
            };
            match std::fs::read_to_string(path) {
                Ok(text) => Ok(Some(text)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    "could not read template",
                )
                .with_source(e)),
            }
        });
        // `{{ fail("why") }}`: a module's own validation of its parameters, reported like
        // any other template error (file, line, message).
        // Such an error is marked (`fail::is_fail`) and reported at the environment key
        // that set the value it is about (`spec::validate::relocate`).
        jinja.add_function("fail", |msg: String| -> Result<String, minijinja::Error> {
            Err(super::fail::fail_error(msg))
        });
        // `{{ addresses | ipv4 }}`, `| ipv6`: the addresses and networks of one family (a
        // host name counts as IPv4: nft resolves it so in `ip saddr`).
        jinja.add_filter("ipv4", |v: Vec<String>| -> Vec<String> {
            v.into_iter()
                .filter(|a| !super::inbound::is_ipv6(a))
                .collect()
        });
        jinja.add_filter("ipv6", |v: Vec<String>| -> Vec<String> {
            v.into_iter()
                .filter(|a| super::inbound::is_ipv6(a))
                .collect()
        });
        // `{{ names | addresses }}`: the environment's host names replaced by their
        // addresses (a host without one keeps its name); anything else kept as is.
        let address_of: std::collections::HashMap<String, String> = env
            .spec
            .hosts
            .iter()
            .filter_map(|(n, h)| h.address.clone().map(|a| (n.clone(), a)))
            .collect();
        let urls = address_of.clone();
        jinja.add_filter("addresses", move |v: Vec<String>| -> Vec<String> {
            v.into_iter()
                .map(|a| address_of.get(&a).cloned().unwrap_or(a))
                .collect()
        });
        // `{{ url | host_url }}`: `scheme://HOST[:port]/…` with an environment host's name
        // replaced by its address (`http://storage:9000` works where nothing resolves the
        // environment's names, and follows the host when `kiln clone` moves it).
        jinja.add_filter("host_url", move |u: String| -> String {
            host_url(&u, &urls)
        });
        // Every host with the modules it runs (`hosts.web.modules`) and their parameters
        // as the environment gives them (`hosts.web.params.nginx.sites`: defaults, then
        // `[modules.M]`, then the host's own), so a module can derive what it needs from the
        // rest of the environment — the monitoring module's targets, probes and rules.
        // Parameters are the spec's values, not rendered; a module whose parameters are
        // incomplete on another host is left out here (that host's own expansion names the
        // error, this one must not fail for it).
        let hosts: serde_json::Map<String, serde_json::Value> = env
            .spec
            .hosts
            .iter()
            .map(|(n, h)| {
                let mods = super::inbound::host_modules(env, n);
                let modules: Vec<&str> = mods.iter().map(|m| m.name.as_str()).collect();
                let params: serde_json::Map<String, serde_json::Value> = mods
                    .iter()
                    .filter_map(|m| {
                        let p = super::module_params(env, m, n).ok()?;
                        Some((m.name.clone(), serde_json::to_value(p).ok()?))
                    })
                    .collect();
                (
                    n.clone(),
                    json!({ "name": n, "address": h.address, "roles": h.roles,
                            "aliases": h.aliases, "modules": modules, "params": params }),
                )
            })
            .collect();
        let secrets: serde_json::Map<String, serde_json::Value> = env
            .secrets
            .iter()
            .map(|(k, v)| (k.clone(), json!(value(v.expose()))))
            .collect();
        let base = json!({
            "env": { "name": env.name },
            "hosts": hosts,
            "secrets": secrets,
        });
        let host_vars = env
            .spec
            .hosts
            .iter()
            .map(|(n, h)| {
                let mut vars = env.spec.vars.clone();
                vars.extend(h.vars.clone());
                (n.clone(), json!({ "host": { "name": n, "address": h.address, "roles": h.roles, "inbound": [] }, "vars": vars }))
            })
            .collect();
        Renderer {
            jinja,
            base,
            host_vars,
            templates,
            redactor: env.redactor(),
        }
    }

    /// Sets `host.inbound` of `host`: the firewall openings its modules declare
    /// ([`super::inbound`]).
    pub fn set_inbound(&mut self, host: &str, inbound: &[super::inbound::Inbound]) {
        if let Some(h) = self
            .host_vars
            .get_mut(host)
            .and_then(|v| v.get_mut("host"))
            .and_then(|v| v.as_object_mut())
        {
            h.insert(
                "inbound".into(),
                serde_json::to_value(inbound).unwrap_or_default(),
            );
        }
    }

    /// The context for one host and module: `env`, `host`, `hosts`, `vars`, `params`,
    /// `secrets`, `module`.
    pub fn context(&self, host: &str, module: &str, params: toml::Table) -> Value {
        let mut ctx = self.base.clone();
        if let (Some(obj), Some(serde_json::Value::Object(hv))) =
            (ctx.as_object_mut(), self.host_vars.get(host))
        {
            for (k, v) in hv {
                obj.insert(k.clone(), v.clone());
            }
            obj.insert(
                "params".into(),
                serde_json::to_value(params).unwrap_or_default(),
            );
            obj.insert("module".into(), json!(module));
        }
        Value::from_serialize(&ctx)
    }

    pub fn render_str(
        &self,
        src: &SourceFile,
        key: &str,
        text: &str,
        ctx: &Value,
    ) -> Result<String, SpecError> {
        if !text.contains("{{") && !text.contains("{%") {
            return Ok(text.to_string());
        }
        let tmpl = self
            .jinja
            .template_from_str(text)
            .map_err(|e| self.inline_error(src, key, text, e, ctx))?;
        tmpl.render(ctx)
            .map_err(|e| self.inline_error(src, key, text, e, ctx))
    }

    pub fn eval(
        &self,
        src: &SourceFile,
        key: &str,
        expr: &str,
        ctx: &Value,
    ) -> Result<Value, SpecError> {
        let wrapped = format!("{{{{ {expr} }}}}");
        let compiled = self
            .jinja
            .compile_expression(expr)
            .map_err(|e| self.inline_error(src, key, &wrapped, e, ctx))?;
        let v = compiled
            .eval(ctx)
            .map_err(|e| self.inline_error(src, key, &wrapped, e, ctx))?;
        if v.is_undefined() {
            return Err(self.inline_error(
                src,
                key,
                &wrapped,
                minijinja::Error::new(ErrorKind::UndefinedError, "undefined value"),
                ctx,
            ));
        }
        Ok(v)
    }

    /// Renders every string inside a TOML value. A string that is exactly one
    /// `{{ expression }}` keeps the expression's type (lists, numbers, booleans).
    pub fn render_value(
        &self,
        src: &SourceFile,
        key: &str,
        v: &toml::Value,
        ctx: &Value,
    ) -> Result<toml::Value, SpecError> {
        Ok(match v {
            toml::Value::String(s) => {
                if let Some(expr) = single_expression(s) {
                    let value = self.eval(src, key, expr, ctx)?;
                    if value.is_none() {
                        return Err(SpecError::at_key(src, key, format!("`{expr}` is none")));
                    }
                    toml::Value::try_from(&value).map_err(|e| {
                        SpecError::at_key(
                            src,
                            key,
                            format!("`{expr}` gives a value TOML cannot hold: {e}"),
                        )
                    })?
                } else {
                    toml::Value::String(self.render_str(src, key, s, ctx)?)
                }
            }
            toml::Value::Array(a) => toml::Value::Array(
                a.iter()
                    .enumerate()
                    .map(|(i, v)| self.render_value(src, &format!("{key}[{i}]"), v, ctx))
                    .collect::<Result<_, _>>()?,
            ),
            toml::Value::Table(t) => {
                let mut out = toml::Table::new();
                for (k, v) in t {
                    out.insert(
                        k.clone(),
                        self.render_value(src, &crate::spec::source::join_key(key, k), v, ctx)?,
                    );
                }
                toml::Value::Table(out)
            }
            other => other.clone(),
        })
    }

    /// Renders `templates/<module>/<name>`; errors point into the template file.
    pub fn render_template(
        &self,
        src: &SourceFile,
        key: &str,
        module: &str,
        name: &str,
        ctx: &Value,
    ) -> Result<String, SpecError> {
        let full = format!("{module}/{name}");
        let path = self
            .templates
            .file(&full)
            .unwrap_or_else(|| std::path::PathBuf::from("templates").join(&full));
        let tmpl = match self.jinja.get_template(&full) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::TemplateNotFound => {
                return Err(SpecError::at_key(
                    src,
                    key,
                    format!(
                        "template `{name}` not found ({} does not exist)",
                        path.display()
                    ),
                ));
            }
            Err(e) => return Err(self.file_error(&path, e, None, ctx)),
        };
        tmpl.render(ctx).map_err(|e| {
            if let Some(raised) = super::fail::origin(&e) {
                // The failing template may be one this one includes.
                let path = raised
                    .name()
                    .filter(|n| *n != full)
                    .and_then(|n| self.templates.file(n))
                    .unwrap_or(path.clone());
                let source = std::fs::read_to_string(&path).ok();
                let line = raised.line().unwrap_or(1);
                return self.fail_error(&path, raised, source.as_deref(), line);
            }
            let source = std::fs::read_to_string(&path).ok();
            self.file_error(&path, e, source.as_deref(), ctx)
        })
    }

    fn file_error(
        &self,
        path: &std::path::Path,
        e: minijinja::Error,
        source: Option<&str>,
        ctx: &Value,
    ) -> SpecError {
        let line = e.line().unwrap_or(1);
        let undefined = source.and_then(|s| self.undefined_name(s, &e, ctx));
        let (key, msg, line) = match &undefined {
            Some((name, l)) => (name.clone(), format!("undefined variable `{name}`"), *l),
            None => (String::new(), describe(&e), line),
        };
        let snippet = source
            .and_then(|s| s.lines().nth(line.saturating_sub(1)))
            .map(str::to_string);
        let column = match (&undefined, &snippet) {
            (Some((name, _)), Some(s)) => s
                .find(name.split('.').next().unwrap_or(name))
                .map(|c| c + 1)
                .unwrap_or(1),
            _ => 1,
        };
        let mut err = SpecError::new(
            Location {
                file: path.to_path_buf(),
                line,
                column,
            },
            key,
            self.redactor.redact(&msg),
        );
        err.snippet = snippet.map(|s| self.redactor.redact(&s));
        err
    }

    /// A template file's `fail("…")`: the module's message, at the template line, with
    /// what the failing code reads (for `spec::validate::relocate`).
    fn fail_error(
        &self,
        path: &std::path::Path,
        e: &minijinja::Error,
        source: Option<&str>,
        line: usize,
    ) -> SpecError {
        let snippet = source.and_then(|s| s.lines().nth(line.saturating_sub(1)));
        let offset = match (e.range(), source) {
            (Some(r), _) => r.start,
            (None, Some(s)) => {
                let start: usize = s
                    .lines()
                    .take(line.saturating_sub(1))
                    .map(|l| l.len() + 1)
                    .sum();
                start + snippet.and_then(|l| l.find("fail(")).unwrap_or(0)
            }
            (None, None) => 0,
        };
        let column = source
            .map(|s| {
                let before = &s[..offset.min(s.len())];
                before[before.rfind('\n').map(|i| i + 1).unwrap_or(0)..]
                    .chars()
                    .count()
                    + 1
            })
            .unwrap_or(1);
        let location = Location {
            file: path.to_path_buf(),
            line,
            column,
        };
        let mut err = SpecError::new(
            location,
            "",
            self.redactor.redact(e.detail().unwrap_or("fail()")),
        );
        err.snippet = snippet.map(|s| self.redactor.redact(s));
        err.raised = Some(Box::new(Raised {
            at: format!("{}:{line}", path.display()),
            reads: source
                .map(|s| super::fail::reads_at(s, offset))
                .unwrap_or_default(),
        }));
        err
    }

    fn inline_error(
        &self,
        src: &SourceFile,
        key: &str,
        text: &str,
        e: minijinja::Error,
        ctx: &Value,
    ) -> SpecError {
        if let Some(raised) = super::fail::origin(&e) {
            let mut err = SpecError::at_key(
                src,
                key,
                self.redactor.redact(raised.detail().unwrap_or("fail()")),
            );
            err.raised = Some(Box::new(Raised {
                at: format!("{} (`{key}`)", err.location),
                reads: super::fail::reads_of(text),
            }));
            return err;
        }
        let msg = match self.undefined_name(text, &e, ctx) {
            Some((name, _)) => format!("undefined variable `{name}` in `{text}`"),
            None => format!("{} in `{text}`", describe(&e)),
        };
        SpecError::at_key(src, key, self.redactor.redact(&msg))
    }

    /// Names the first variable of `source` that the context does not define, with the
    /// line it is first used on.
    fn undefined_name(
        &self,
        source: &str,
        e: &minijinja::Error,
        ctx: &Value,
    ) -> Option<(String, usize)> {
        if e.kind() != ErrorKind::UndefinedError {
            return None;
        }
        let tmpl = self.jinja.template_from_str(source).ok()?;
        let mut names: Vec<String> = tmpl.undeclared_variables(true).into_iter().collect();
        names.sort();
        let missing = names.into_iter().find(|n| {
            let mut v = ctx.clone();
            for part in n.split('.') {
                match v.get_attr(part) {
                    Ok(next) if !next.is_undefined() => v = next,
                    _ => return true,
                }
            }
            false
        })?;
        let line = source
            .lines()
            .position(|l| l.contains(&missing))
            .map(|i| i + 1)
            .or(e.line())
            .unwrap_or(1);
        Some((missing, line))
    }
}

fn describe(e: &minijinja::Error) -> String {
    match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    }
}

fn single_expression(s: &str) -> Option<&str> {
    // Exactly one expression and nothing around it (not even a newline, which is content).
    let t = s;
    let inner = t.strip_prefix("{{")?.strip_suffix("}}")?;
    if inner.contains("{{") || inner.contains("}}") || t.contains("{%") {
        return None;
    }
    Some(inner.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_url_replaces_an_environment_host_only() {
        let a: std::collections::HashMap<String, String> = [
            ("storage".to_string(), "10.0.0.30".to_string()),
            ("v6".to_string(), "2001:db8::30".to_string()),
        ]
        .into();
        assert_eq!(host_url("http://storage:9000", &a), "http://10.0.0.30:9000");
        assert_eq!(host_url("https://storage/x?y", &a), "https://10.0.0.30/x?y");
        assert_eq!(host_url("http://v6:9000", &a), "http://[2001:db8::30]:9000");
        assert_eq!(host_url("http://storage2:9000", &a), "http://storage2:9000");
        assert_eq!(
            host_url("https://s3.example.com", &a),
            "https://s3.example.com"
        );
        assert_eq!(host_url("", &a), "");
    }
}

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
        let hosts: serde_json::Map<String, serde_json::Value> = env
            .spec
            .hosts
            .iter()
            .map(|(n, h)| {
                (
                    n.clone(),
                    json!({ "name": n, "address": h.address, "roles": h.roles }),
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
                (n.clone(), json!({ "host": { "name": n, "address": h.address, "roles": h.roles }, "vars": vars }))
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

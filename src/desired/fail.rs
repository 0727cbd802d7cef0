//! A module's own `{{ fail("why") }}`: told apart from other template errors, and read for
//! what it depends on, so that `spec::validate::relocate` can report it at the
//! environment key that set the value (with the template position as a note).
//!
//! What a failure depends on is read from the template text, not from minijinja's
//! evaluation: the expression that called `fail` and the blocks around it (`if`, `elif`,
//! `for`, …), nearest first, each `params.NAME`, `vars.NAME` and `item` they name —
//! through names bound by `{% set %}` and `{% for %}` before it (`{% set site = item %}`,
//! `{% for n in params.nodes %}`…`{% set ns.idx = loop.index %}`).

use std::collections::HashMap;

/// The error `fail()` returns carries this as its source: how a module's own failure is
/// told apart from minijinja's errors.
#[derive(Debug)]
pub struct FailRaised;

impl std::fmt::Display for FailRaised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("raised by the module's fail()")
    }
}

impl std::error::Error for FailRaised {}

/// The error `fail(msg)` raises.
pub fn fail_error(msg: String) -> minijinja::Error {
    minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg).with_source(FailRaised)
}

/// Whether `e` was raised by `fail()` (and not by minijinja itself).
pub fn is_fail(e: &minijinja::Error) -> bool {
    origin(e).is_some()
}

/// The error `fail()` raised inside `e`: `e` itself, or — when the failing template was
/// included by another — the one minijinja's "error in …" wraps, which has the failing
/// template's name, line and the module's message.
pub fn origin(e: &minijinja::Error) -> Option<&minijinja::Error> {
    let mut current = e;
    loop {
        let source = std::error::Error::source(current)?;
        if source.is::<FailRaised>() {
            return Some(current);
        }
        current = source.downcast_ref::<minijinja::Error>()?;
    }
}

/// Statements that open a block closed by `end…`.
const BLOCKS: &[&str] = &[
    "if",
    "for",
    "with",
    "macro",
    "call",
    "filter",
    "block",
    "autoescape",
];

/// What the code around byte `offset` of `source` reads (see the module documentation),
/// nearest first, each once.
pub fn reads_at(source: &str, offset: usize) -> Vec<String> {
    let offset = offset.min(source.len());
    // The text of each enclosing block's tags (an `if` with its `elif`s), outermost first.
    let mut stack: Vec<String> = vec![];
    let mut aliases: HashMap<String, Vec<String>> = HashMap::new();
    let mut here: Option<&str> = None;
    let mut pos = 0;
    while let Some(i) = source[pos..].find('{') {
        let start = pos + i;
        if start > offset {
            break;
        }
        let rest = &source[start..];
        let close = if rest.starts_with("{%") {
            "%}"
        } else if rest.starts_with("{{") {
            "}}"
        } else if rest.starts_with("{#") {
            "#}"
        } else {
            pos = start + 1;
            continue;
        };
        let (inner_end, end) = match rest[2..].find(close) {
            Some(j) => (start + 2 + j, start + 2 + j + 2),
            None => (source.len(), source.len()),
        };
        let inner = source[start + 2..inner_end].trim_matches(|c: char| c == '-' || c == '+');
        let inner = inner.trim();
        if offset < end {
            if close != "#}" {
                here = Some(inner);
            }
            break;
        }
        if close == "%}" {
            statement(inner, &mut stack, &mut aliases);
        }
        pos = end;
    }
    let mut out: Vec<String> = vec![];
    let mut add = |text: &str| {
        for r in refs(text, &aliases) {
            if !out.contains(&r) {
                out.push(r);
            }
        }
    };
    if let Some(h) = here {
        add(h);
    }
    for s in stack.iter().rev() {
        add(s);
    }
    out
}

/// What a whole template string reads (a module file's inline template: short, so all
/// of it counts), in order of appearance.
pub fn reads_of(text: &str) -> Vec<String> {
    reads_at(text, text.len())
        .into_iter()
        .chain(refs(text, &HashMap::new()))
        .fold(vec![], |mut out, r| {
            if !out.contains(&r) {
                out.push(r);
            }
            out
        })
}

fn statement(inner: &str, stack: &mut Vec<String>, aliases: &mut HashMap<String, Vec<String>>) {
    let word = inner
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .next()
        .unwrap_or_default();
    let body = inner[word.len()..].trim();
    // What the enclosing blocks read: a value set inside them depends on them too.
    let enclosing = |stack: &[String], aliases: &HashMap<String, Vec<String>>| {
        stack
            .iter()
            .rev()
            .flat_map(|s| refs(s, aliases))
            .collect::<Vec<_>>()
    };
    match word {
        "for" => {
            if let Some((targets, expr)) = body.split_once(" in ") {
                let mut r = refs(expr, aliases);
                r.extend(enclosing(stack, aliases));
                for t in targets.split(',') {
                    let t = t.trim().trim_matches(|c| c == '(' || c == ')').trim();
                    if !t.is_empty() {
                        aliases.insert(t.to_string(), r.clone());
                    }
                }
            }
            stack.push(inner.to_string());
        }
        "elif" | "else" => match stack.last_mut() {
            Some(top) => {
                top.push(' ');
                top.push_str(inner);
            }
            None => stack.push(inner.to_string()),
        },
        "set" => match assignment(body) {
            Some((name, expr)) => {
                let mut r = refs(expr, aliases);
                r.extend(enclosing(stack, aliases));
                // The latest assignment first (`set ns.idx = …` in a loop over a
                // parameter says more than the `namespace()` it changes).
                let entry = aliases.entry(name.to_string()).or_default();
                let old = std::mem::take(entry);
                *entry = r;
                for x in old {
                    if !entry.contains(&x) {
                        entry.push(x);
                    }
                }
            }
            // `{% set x %}…{% endset %}`: a block.
            None => stack.push(inner.to_string()),
        },
        w if w.starts_with("end") => {
            stack.pop();
        }
        w if BLOCKS.contains(&w) => stack.push(inner.to_string()),
        _ => {}
    }
}

/// `name = expr` or `name.attr = expr` (a namespace) → (`name`, `expr`).
fn assignment(body: &str) -> Option<(&str, &str)> {
    let i = body.find('=')?;
    if body[i + 1..].starts_with('=') {
        return None;
    }
    let target = body[..i].trim();
    let name = target.split('.').next()?.trim();
    let ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    ok.then(|| (name, body[i + 1..].trim()))
}

/// `params.NAME`, `params["NAME"]`, `vars.NAME` (and the same through a name bound
/// before) and `item` named by `text`, outside its string literals.
fn refs(text: &str, aliases: &HashMap<String, Vec<String>>) -> Vec<String> {
    let b = text.as_bytes();
    let mut out: Vec<String> = vec![];
    let push = |r: String, out: &mut Vec<String>| {
        if !out.contains(&r) {
            out.push(r);
        }
    };
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' {
            // Skip the string literal.
            i += 1;
            while i < b.len() && b[i] != c {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            let ident = &text[start..i];
            // An attribute (`x.name`) is not a name of its own.
            let attribute = start > 0 && b[start - 1] == b'.';
            if attribute {
                continue;
            }
            match ident {
                "params" | "vars" => {
                    if let Some(name) = subscript(&text[i..]) {
                        push(format!("{ident}.{name}"), &mut out);
                    }
                }
                "item" => push("item".into(), &mut out),
                other => {
                    if let Some(rs) = aliases.get(other) {
                        for r in rs {
                            push(r.clone(), &mut out);
                        }
                    }
                }
            }
            continue;
        }
        i += 1;
    }
    out
}

/// The key after `params`: `.NAME` or `["NAME"]` / `['NAME']`.
fn subscript(rest: &str) -> Option<String> {
    let rest = rest.trim_start();
    if let Some(r) = rest.strip_prefix('.') {
        let n: String = r
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        return (!n.is_empty()).then_some(n);
    }
    let r = rest.strip_prefix('[')?.trim_start();
    let q = r.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let inner = &r[1..];
    let end = inner.find(q)?;
    Some(inner[..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at_fail(src: &str) -> Vec<String> {
        reads_at(src, src.find("fail(").expect("a fail call"))
    }

    #[test]
    fn the_expression_then_the_enclosing_blocks_nearest_first() {
        let src = "{% if params.a %}x{% endif %}\n{% for s in params.sites %}\n{% if vars.mode == 'x' %}\n{{ fail('no ' ~ s.name) }}\n{% endif %}{% endfor %}";
        assert_eq!(at_fail(src), ["params.sites", "vars.mode"]);
    }

    #[test]
    fn a_closed_block_does_not_count_and_strings_are_not_code() {
        let src = "{% if params.closed %}{% endif %}{{ fail('params.inside_a_string') }}";
        assert!(at_fail(src).is_empty(), "{:?}", at_fail(src));
    }

    #[test]
    fn names_bound_before_lead_to_what_they_were_bound_from() {
        // The shipped mariadb-galera shape: a namespace set inside a loop over a parameter.
        let src = "{%- if params.binlog %}\n{%- set ns = namespace(idx=0) %}\n{%- for n in params.nodes %}{% if n == host.name %}{% set ns.idx = loop.index %}{% endif %}{% endfor %}\n{%- if ns.idx == 0 %}{{ fail(\"not in `nodes`\") }}{% endif %}";
        assert_eq!(at_fail(src), ["params.nodes", "params.binlog"]);
        // The shipped nginx shape: the for_each element under another name.
        let src = "{%- set site = item -%}\n{%- set profile = site.tls if site.tls is defined else params.tls -%}\n{%- if profile == 'modern' %}x{%- elif params.tls == 'modern' %}\n{{ fail('site ' ~ site.name) }}\n{%- endif %}";
        assert_eq!(at_fail(src), ["item", "params.tls"]);
    }

    #[test]
    fn subscripts_and_inline_strings() {
        assert_eq!(
            reads_of("{{ params['x-y'] or (vars.b if params.c else fail('no')) }}"),
            ["params.x-y", "vars.b", "params.c"]
        );
    }

    #[test]
    fn fail_is_told_apart_from_minijinja_errors() {
        let mut env = minijinja::Environment::new();
        env.add_function("fail", |m: String| -> Result<String, minijinja::Error> {
            Err(fail_error(m))
        });
        env.add_template("a", "line\n{{ fail('why') }}")
            .expect("template");
        env.add_template("b", "{% include 'a' %}")
            .expect("template");
        let e = env
            .get_template("a")
            .and_then(|t| t.render(()))
            .expect_err("fails");
        assert!(is_fail(&e), "{e:?}");
        assert_eq!(e.detail(), Some("why"));
        assert_eq!(e.line(), Some(2));
        let r = e.range().expect("a span");
        assert!(r.start >= 5 && r.start <= "line\n{{ ".len(), "{r:?}");
        let e = env
            .get_template("b")
            .and_then(|t| t.render(()))
            .expect_err("fails through an include");
        let inner = origin(&e).expect("a fail inside");
        assert_eq!(inner.name(), Some("a"));
        assert_eq!(inner.detail(), Some("why"));
        assert_eq!(inner.line(), Some(2));
        let e = env
            .template_from_str("{{ 1 + 'x' }}")
            .and_then(|t| t.render(()))
            .expect_err("fails");
        assert!(!is_fail(&e));
    }
}

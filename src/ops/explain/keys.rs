//! Key paths as `kiln explain` takes them: `modules.nginx.sites[0].domains`,
//! `hosts."odd.name".address`.

use crate::spec::source::join_key;

/// Splits `a.b[2]."c.d"` into segments (`a`, `b`, `[2]`, `c.d`).
pub(super) fn segments(key: &str) -> Vec<String> {
    let mut out = vec![];
    let mut cur = String::new();
    let mut chars = key.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                for c in chars.by_ref() {
                    if c == '"' {
                        break;
                    }
                    cur.push(c);
                }
            }
            '.' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            '[' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                let mut idx = String::from("[");
                for c in chars.by_ref() {
                    idx.push(c);
                    if c == ']' {
                        break;
                    }
                }
                out.push(idx);
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The canonical key path (as provenance and errors spell it).
pub(super) fn canonical(segs: &[String]) -> String {
    let mut p = String::new();
    for s in segs {
        if s.starts_with('[') {
            p.push_str(s);
        } else {
            p = join_key(&p, s);
        }
    }
    p
}

pub(super) fn lookup<'a>(v: &'a toml::Value, segs: &[String]) -> Option<&'a toml::Value> {
    let mut cur = v;
    for s in segs {
        cur = if let Some(i) = s.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            cur.as_array()?.get(i.parse::<usize>().ok()?)?
        } else {
            cur.as_table()?.get(s)?
        };
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_like_errors_print_them() {
        assert_eq!(
            segments("modules.nginx.sites[1].domains"),
            ["modules", "nginx", "sites", "[1]", "domains"]
        );
        assert_eq!(
            segments("hosts.\"odd.name\".address"),
            ["hosts", "odd.name", "address"]
        );
        assert_eq!(
            canonical(&segments("hosts.\"odd.name\".address")),
            "hosts.\"odd.name\".address"
        );
        assert_eq!(canonical(&segments("a.b[2]")), "a.b[2]");
    }
}

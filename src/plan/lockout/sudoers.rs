//! Does sudoers let a user run kiln's remote command (`sudo -n timeout ... sh -s`) as root
//! without a password? Judged over the sudoers files kiln manages, in the order sudo reads
//! them: `/etc/sudoers` (when managed) with its `@includedir /etc/sudoers.d` expanded in
//! place — Debian's file ends with it, so without a managed main file the drop-ins come
//! after whatever it says — and the drop-ins in name order (sudo skips names holding a `.`
//! or ending in `~`). As in sudo, the last rule that matches decides.

pub const MAIN: &str = "/etc/sudoers";
pub const DROPIN_DIR: &str = "/etc/sudoers.d/";

/// Is `path` a drop-in sudo reads?
pub fn is_dropin(path: &str) -> bool {
    path.strip_prefix(DROPIN_DIR)
        .is_some_and(|n| !n.is_empty() && !n.contains('/') && !n.contains('.') && !n.ends_with('~'))
}

/// The rule that decides for the user, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Runs kiln's command as root without a password.
    pub nopasswd: bool,
    pub file: String,
    /// The rule as written (one line).
    pub rule: String,
}

/// The last rule of `main` (managed `/etc/sudoers`) and `dropins` that matches `user`
/// (with its `groups`) running `/usr/bin/timeout` as root; `None` when none does.
pub fn decision(
    main: Option<&str>,
    dropins: &[(&str, &str)],
    user: &str,
    groups: &[String],
) -> Option<Decision> {
    let mut dropins: Vec<(&str, &str)> = dropins.to_vec();
    dropins.sort();
    let mut files: Vec<(&str, &str)> = vec![];
    match main {
        None => files.extend(dropins.iter().copied()),
        Some(text) => {
            // Split the main file at its includedir line.
            let mut before = String::new();
            let mut after = String::new();
            let mut seen = false;
            for l in text.lines() {
                let t = l.trim();
                if (t.starts_with("@includedir") || t.starts_with("#includedir"))
                    && t.split_whitespace().nth(1).map(|d| d.trim_end_matches('/'))
                        == Some(DROPIN_DIR.trim_end_matches('/'))
                {
                    seen = true;
                    continue;
                }
                let buf = if seen { &mut after } else { &mut before };
                buf.push_str(l);
                buf.push('\n');
            }
            return decide(
                &[(MAIN, before.as_str())]
                    .into_iter()
                    .chain(if seen { dropins.clone() } else { vec![] })
                    .chain([(MAIN, after.as_str())])
                    .collect::<Vec<_>>(),
                user,
                groups,
            );
        }
    }
    decide(&files, user, groups)
}

fn decide(files: &[(&str, &str)], user: &str, groups: &[String]) -> Option<Decision> {
    let mut aliases = Aliases::default();
    let mut last = None;
    for (file, text) in files {
        for line in logical_lines(text) {
            let t = line.trim();
            let word = t.split_whitespace().next().unwrap_or("");
            match word {
                "User_Alias" => aliases.add(t, |a| &mut a.users),
                "Runas_Alias" => aliases.add(t, |a| &mut a.runas),
                "Cmnd_Alias" | "Cmd_Alias" => aliases.add(t, |a| &mut a.cmnds),
                "Host_Alias" => {}
                w if w.starts_with("Defaults") || w.starts_with('@') => {}
                _ => {
                    if let Some(nopasswd) = rule(t, user, groups, &aliases) {
                        last = Some(Decision {
                            nopasswd,
                            file: file.to_string(),
                            rule: t.to_string(),
                        });
                    }
                }
            }
        }
    }
    last
}

/// Lines joined at a trailing backslash, comments dropped (`#` starts a comment unless a
/// uid follows it; `#include` lines are directives kiln does not follow).
fn logical_lines(text: &str) -> Vec<String> {
    let mut out = vec![];
    let mut cur = String::new();
    for raw in text.lines() {
        let line = strip_comment(raw);
        if let Some(l) = line.strip_suffix('\\') {
            cur.push_str(l);
            cur.push(' ');
            continue;
        }
        cur.push_str(&line);
        if !cur.trim().is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        cur.clear();
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out
}

fn strip_comment(line: &str) -> String {
    let mut out = String::new();
    let mut prev = ' ';
    let chars: Vec<char> = line.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c == '#' && (prev.is_whitespace() || i == 0 || prev == ',' || prev == '=') {
            let uid = chars.get(i + 1).is_some_and(|d| d.is_ascii_digit());
            if !uid {
                break;
            }
        }
        out.push(c);
        prev = c;
    }
    out.trim_end().to_string()
}

/// Alias definitions of one kind: name → items.
type AliasList = Vec<(String, Vec<String>)>;

#[derive(Debug, Default, Clone)]
struct Aliases {
    users: AliasList,
    runas: AliasList,
    cmnds: AliasList,
}

impl Aliases {
    /// `X_Alias NAME = a, b : NAME2 = c`.
    fn add(&mut self, line: &str, slot: fn(&mut Aliases) -> &mut AliasList) {
        let body = line
            .split_once(char::is_whitespace)
            .map(|x| x.1)
            .unwrap_or("");
        for def in body.split(':') {
            if let Some((name, items)) = def.split_once('=') {
                let items = items.split(',').map(|i| i.trim().to_string()).collect();
                slot(self).push((name.trim().to_string(), items));
            }
        }
    }

    fn get<'a>(list: &'a [(String, Vec<String>)], name: &str) -> Option<&'a [String]> {
        list.iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// Does `item` (an entry of a user list) name the user? `depth` bounds alias recursion.
fn user_item(item: &str, user: &str, groups: &[String], a: &Aliases, depth: u8) -> bool {
    let item = item.trim();
    if item == "ALL" || item == user {
        return true;
    }
    if let Some(g) = item.strip_prefix("%:").or_else(|| item.strip_prefix('%')) {
        return groups.iter().any(|x| x == g);
    }
    if item == "#0" {
        return user == "root";
    }
    match Aliases::get(&a.users, item) {
        Some(items) if depth < 8 => {
            list_matches(items, |i| user_item(i, user, groups, a, depth + 1))
        }
        _ => false,
    }
}

/// A sudoers list matches when an item matches and no negated (`!`) item does.
fn list_matches<S: AsRef<str>>(items: &[S], m: impl Fn(&str) -> bool) -> bool {
    let mut yes = false;
    for i in items {
        let i = i.as_ref().trim();
        match i.strip_prefix('!') {
            Some(n) if m(n) => return false,
            Some(_) => {}
            None => yes |= m(i),
        }
    }
    yes
}

fn runas_root(list: &str, a: &Aliases) -> bool {
    // `(users:groups)`; `(:group)` runs as the invoking user.
    let users = list.split(':').next().unwrap_or("").trim();
    if users.is_empty() {
        return false;
    }
    let items: Vec<&str> = users.split(',').collect();
    list_matches(&items, |i| {
        i == "ALL"
            || i == "root"
            || i == "#0"
            || Aliases::get(&a.runas, i)
                .is_some_and(|v| v.iter().any(|x| x == "ALL" || x == "root" || x == "#0"))
    })
}

/// Is `cmnd` kiln's command (`timeout`, by secure_path `/usr/bin/timeout`)? `Some(false)`
/// for the command negated.
fn command(cmnd: &str, a: &Aliases) -> Option<bool> {
    let (negated, c) = match cmnd.trim().strip_prefix('!') {
        Some(c) => (true, c.trim()),
        None => (false, cmnd.trim()),
    };
    let path = c.split_whitespace().next().unwrap_or("");
    let ours = path == "ALL"
        || path == "/usr/bin/timeout"
        || path == "/bin/timeout"
        || Aliases::get(&a.cmnds, path).is_some_and(|v| {
            v.iter().any(|x| {
                let p = x.split_whitespace().next().unwrap_or("");
                p == "ALL" || p == "/usr/bin/timeout" || p == "/bin/timeout"
            })
        });
    ours.then_some(!negated)
}

const TAGS: &[&str] = &[
    "EXEC",
    "NOEXEC",
    "FOLLOW",
    "NOFOLLOW",
    "LOG_INPUT",
    "NOLOG_INPUT",
    "LOG_OUTPUT",
    "NOLOG_OUTPUT",
    "MAIL",
    "NOMAIL",
    "INTERCEPT",
    "NOINTERCEPT",
    "SETENV",
    "NOSETENV",
];

/// A user specification: `None` when it does not concern the user running kiln's
/// command as root; else whether it lets it without a password.
fn rule(line: &str, user: &str, groups: &[String], a: &Aliases) -> Option<bool> {
    let (left, right) = line.split_once('=')?;
    // `alice, %admins  ALL` → user list, host list.
    let left = left.replace(" ,", ",").replace(", ", ",");
    let users = left.split_whitespace().next()?;
    let items: Vec<&str> = users.split(',').collect();
    if !list_matches(&items, |i| user_item(i, user, groups, a, 0)) {
        return None;
    }
    let mut runas_ok = true;
    let mut nopasswd = false;
    let mut result = None;
    for part in split_commas(right) {
        let mut p = part.trim();
        if let Some(rest) = p.strip_prefix('(') {
            let (list, after) = rest.split_once(')')?;
            runas_ok = runas_root(list, a);
            p = after.trim_start();
        }
        while let Some((tag, rest)) = p.split_once(':') {
            let tag = tag.trim();
            match tag {
                "NOPASSWD" => nopasswd = true,
                "PASSWD" => nopasswd = false,
                t if TAGS.contains(&t) => {}
                _ => break,
            }
            p = rest.trim_start();
        }
        // Options such as `CWD=/` or `TIMEOUT=1h` before the command.
        while let Some((w, rest)) = p.split_once(char::is_whitespace) {
            if w.contains('=') && w.chars().next().is_some_and(|c| c.is_ascii_uppercase()) {
                p = rest.trim_start();
            } else {
                break;
            }
        }
        if !runas_ok {
            continue;
        }
        if let Some(allowed) = command(p, a) {
            result = Some(allowed && nopasswd);
        }
    }
    result
}

/// Commas outside parentheses.
fn split_commas(s: &str) -> Vec<&str> {
    let mut out = vec![];
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMINS: &str = "/etc/sudoers.d/kiln-admins";

    fn groups(g: &[&str]) -> Vec<String> {
        g.iter().map(|s| s.to_string()).collect()
    }

    fn d(files: &[(&str, &str)], user: &str, g: &[&str]) -> Option<bool> {
        decision(None, files, user, &groups(g)).map(|d| d.nopasswd)
    }

    #[test]
    fn what_debian_base_writes_grants_its_admins() {
        let text = "# Managed by kiln: admins of environment prod (SSH keys only, no passwords).\ndeploy ALL=(ALL:ALL) NOPASSWD: ALL\nalice ALL=(ALL:ALL) NOPASSWD: ALL\n";
        assert_eq!(d(&[(ADMINS, text)], "deploy", &[]), Some(true));
        assert_eq!(d(&[(ADMINS, text)], "bob", &["sudo"]), None);
        let dec = decision(None, &[(ADMINS, text)], "alice", &[]).unwrap();
        assert_eq!(dec.file, ADMINS);
        assert_eq!(dec.rule, "alice ALL=(ALL:ALL) NOPASSWD: ALL");
    }

    #[test]
    fn groups_aliases_and_lists() {
        let text = "User_Alias OPS = deploy, %wheel\nOPS, carol ALL = (root) NOPASSWD: /usr/bin/timeout, /bin/ls\n%sudo ALL=(ALL:ALL) NOPASSWD:ALL\n";
        assert_eq!(d(&[(ADMINS, text)], "deploy", &[]), Some(true));
        assert_eq!(d(&[(ADMINS, text)], "dave", &["wheel"]), Some(true));
        assert_eq!(d(&[(ADMINS, text)], "erin", &["sudo"]), Some(true));
        assert_eq!(d(&[(ADMINS, text)], "frank", &["users"]), None);
    }

    #[test]
    fn the_last_matching_rule_decides_and_a_password_rule_is_no_grant() {
        let files = [
            ("/etc/sudoers.d/10-ops", "deploy ALL=(ALL) NOPASSWD: ALL\n"),
            ("/etc/sudoers.d/20-strict", "deploy ALL=(ALL) ALL\n"),
        ];
        let dec = decision(None, &files, "deploy", &[]).unwrap();
        assert!(!dec.nopasswd);
        assert_eq!(dec.file, "/etc/sudoers.d/20-strict");
        // Tags carry to the commands after them; PASSWD takes NOPASSWD back.
        let t = "deploy ALL=(ALL) NOPASSWD: /bin/ls, PASSWD: ALL\n";
        assert_eq!(d(&[(ADMINS, t)], "deploy", &[]), Some(false));
        // Another user than root, or the invoking user with a group: not kiln's root.
        let t = "deploy ALL=(www-data) NOPASSWD: ALL\ndeploy ALL=(:adm) NOPASSWD: ALL\n";
        assert_eq!(d(&[(ADMINS, t)], "deploy", &[]), None);
        // A negated user is excluded from ALL.
        let t = "ALL,!deploy ALL=(ALL) NOPASSWD: ALL\n";
        assert_eq!(d(&[(ADMINS, t)], "deploy", &[]), None);
    }

    #[test]
    fn continuation_comments_and_a_managed_main_file() {
        let t = "# x\ndeploy ALL=(ALL) \\\n  NOPASSWD: ALL # for kiln\n";
        assert_eq!(d(&[(ADMINS, t)], "deploy", &[]), Some(true));
        // The main file's rules after its includedir come after the drop-ins.
        let main = "Defaults env_reset\n@includedir /etc/sudoers.d\ndeploy ALL=(ALL) ALL\n";
        let dec = decision(
            Some(main),
            &[(ADMINS, "deploy ALL=(ALL) NOPASSWD: ALL\n")],
            "deploy",
            &[],
        )
        .unwrap();
        assert_eq!((dec.nopasswd, dec.file.as_str()), (false, MAIN));
    }

    #[test]
    fn sudo_skips_dropins_with_a_dot_or_a_tilde() {
        assert!(is_dropin(ADMINS));
        assert!(!is_dropin("/etc/sudoers.d/kiln-admins.bak"));
        assert!(!is_dropin("/etc/sudoers.d/kiln-admins~"));
        assert!(!is_dropin("/etc/sudoers"));
    }
}

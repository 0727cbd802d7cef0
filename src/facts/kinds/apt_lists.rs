//! The `apt-lists` fact: are apt's package lists good enough to install from?
//!
//! The host returns raw data and kiln decides here, on the controller (see
//! ARCHITECTURE.md, "decide on the controller"):
//!
//! * `now <epoch>` and, when the file exists, `stamp <epoch>`: the mtime of
//!   `/var/lib/apt/periodic/update-success-stamp`, which kiln (like Ansible, pyinfra and
//!   apt's own daily job) touches after every successful `apt-get update`.
//! * `arch <name>`: `dpkg --print-architecture`.
//! * `list <mtime> <name>`: every regular file in apt's lists directory
//!   (`Dir::State::lists`), names without whitespace only (apt quotes whitespace in the
//!   names it writes).
//! * `release <name>:<Field>: <values>`: the `Architectures:` and `Components:` lines of
//!   every `*Release` file there, so that a suite that does not carry a component or the
//!   host's architecture is not taken for a suite with a missing list.
//! * `source <list|sources> <base64 path> <base64 content>`: every sources file apt reads
//!   (`Dir::Etc::sourcelist` in one-line format, `Dir::Etc::sourceparts/*.list` and
//!   `*.sources`, the latter in deb822 format).
//!
//! Why not `apt-get indextargets`: it lists only targets of suites whose Release file is
//! already on the host, so a suite that was never fetched (a fresh image built with
//! `bookworm` only, whose sources also call for `bookworm-security`) is invisible to it.
//! Comparing the sources with the directory's file names sees it.
//!
//! Lists are fresh only when every `deb` suite the sources call for has its
//! `InRelease`/`Release` and its `Packages` lists, *and* a tool recorded a successful
//! update (the stamp) recently. No stamp means nobody ever refreshed the lists: the ones a
//! cloud image or debootstrap left are as old as the image, so the first install
//! refreshes them — otherwise it would install packages without their security updates.
//!
//! Source URIs may carry credentials (`https://user:pass@host/`): they are dropped while
//! parsing, exactly as apt drops them from list file names, and no part of a sources file
//! is ever shown except suite and component names.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::facts::section::{malformed, FactParseError, RawSection};
use crate::facts::{FactQuery, FactRules, HostFacts};

/// The body of the `apt-lists` section of the fact script (see the module documentation
/// for what it prints). Runs inside the script's one function, stdin `/dev/null`.
pub const SCRIPT: &str = r#"	printf 'now %s\n' "$(date +%s)"
	stat -c 'stamp %Y' -- /var/lib/apt/periodic/update-success-stamp 2>/dev/null
	printf 'arch %s\n' "$(dpkg --print-architecture 2>/dev/null)"
	kiln_sl=/etc/apt/sources.list kiln_sp=/etc/apt/sources.list.d kiln_ld=/var/lib/apt/lists
	eval "$(apt-config shell kiln_sl Dir::Etc::sourcelist/f kiln_sp Dir::Etc::sourceparts/d kiln_ld Dir::State::lists/d 2>/dev/null)"
	kiln_sp=${kiln_sp%/} kiln_ld=${kiln_ld%/}
	find "$kiln_ld" -maxdepth 1 -type f ! -name '*[[:space:][:cntrl:]]*' -printf 'list %T@ %f\n' 2>/dev/null
	(cd "$kiln_ld" 2>/dev/null && find . -maxdepth 1 -type f -name '*Release' ! -name '*[[:space:][:cntrl:]]*' -exec grep -H -m2 -E '^(Architectures|Components):' -- {} + 2>/dev/null | sed 's|^\./|release |')
	for kiln_f in "$kiln_sl" "$kiln_sp"/*.list "$kiln_sp"/*.sources; do
		if [ ! -f "$kiln_f" ] || [ ! -r "$kiln_f" ]; then continue; fi
		case $kiln_f in *.sources) kiln_k=sources ;; *) kiln_k=list ;; esac
		printf 'source %s %s %s\n' "$kiln_k" "$(printf '%s' "$kiln_f" | base64 -w0)" "$(base64 -w0 <"$kiln_f" 2>/dev/null)"
	done
"#;

/// What the host's apt lists and sources look like (raw; [`AptListsFact::refresh_reason`]
/// decides).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AptListsFact {
    /// The host's clock when the facts were read (epoch seconds).
    pub now: u64,
    /// When a tool last recorded a successful `apt-get update` (epoch seconds).
    pub stamp: Option<u64>,
    /// dpkg's native architecture.
    pub arch: String,
    /// File name in the lists directory → mtime (epoch seconds).
    pub lists: BTreeMap<String, u64>,
    /// Release file name → what its header says the suite carries.
    pub releases: BTreeMap<String, ReleaseHeader>,
    /// Every `deb` entry of every sources file apt reads, in apt's order.
    pub sources: Vec<AptSource>,
    /// Sources lines kiln could not read (file and problem). apt will refuse them too;
    /// a refresh is planned so that apply reports apt's own message.
    pub unreadable: Vec<String>,
}

/// The `Architectures:` and `Components:` fields of a Release file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseHeader {
    pub architectures: Option<Vec<String>>,
    pub components: Option<Vec<String>>,
}

/// One `deb` suite of a sources file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AptSource {
    /// The file it came from (for messages).
    pub file: String,
    /// The repository URI without credentials, with a trailing `/`.
    pub uri: String,
    pub suite: String,
    /// Empty for a flat repository (a suite ending in `/`).
    pub components: Vec<String>,
    /// The `arch=` option / `Architectures:` field, when given.
    pub architectures: Option<Vec<String>>,
}

impl AptSource {
    fn flat(&self) -> bool {
        self.suite.ends_with('/')
    }

    /// The list file name prefix of this suite's Release files.
    fn release_prefix(&self) -> String {
        if self.flat() {
            list_file_name(&format!("{}{}", self.uri, self.suite))
        } else {
            list_file_name(&format!("{}dists/{}/", self.uri, self.suite))
        }
    }
}

/// apt's `URItoFileName`: the URI without scheme and credentials, the characters apt
/// considers unsafe percent-encoded (lowercase hex), `/` turned into `_`.
pub fn list_file_name(uri: &str) -> String {
    let rest = match uri.split_once("://") {
        Some((_, rest)) => rest,
        // `file:/srv/repo`, `cdrom:[label]/`
        None => uri.split_once(':').map(|(_, r)| r).unwrap_or(uri),
    };
    let rest = match rest.find('/') {
        Some(slash) => {
            let (host, path) = rest.split_at(slash);
            let host = host.rsplit_once('@').map(|(_, h)| h).unwrap_or(host);
            format!("{host}{path}")
        }
        None => rest
            .rsplit_once('@')
            .map(|(_, h)| h)
            .unwrap_or(rest)
            .to_string(),
    };
    let mut out = String::with_capacity(rest.len());
    for b in rest.bytes() {
        match b {
            b'/' => out.push('_'),
            b'\\' | b'|' | b'{' | b'}' | b'[' | b']' | b'<' | b'>' | b'"' | b'^' | b'~' | b'_'
            | b'=' | b'!' | b'@' | b'#' | b'$' | b'%' | b'&' | b'*' => {
                out.push_str(&format!("%{b:02x}"))
            }
            b if b <= 0x20 || b >= 0x7f => out.push_str(&format!("%{b:02x}")),
            b => out.push(b as char),
        }
    }
    out
}

/// Reads the section's lines (see the module documentation). An error names the line.
pub fn parse(lines: &[&str]) -> Result<AptListsFact, String> {
    let mut fact = AptListsFact::default();
    let mut now = None;
    for line in lines {
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        let num = |v: &str| -> Result<u64, String> {
            // find's %T@ has a fraction; whole seconds are enough.
            let whole = v.split('.').next().unwrap_or(v);
            whole
                .parse()
                .map_err(|_| format!("not a number in {line:?}"))
        };
        match key {
            "" => {}
            "now" => now = Some(num(value)?),
            "stamp" => fact.stamp = Some(num(value)?),
            "arch" => fact.arch = value.trim().to_string(),
            "list" => {
                let (mtime, name) = value
                    .split_once(' ')
                    .ok_or_else(|| format!("list line without a name: {line:?}"))?;
                fact.lists.insert(name.to_string(), num(mtime)?);
            }
            "release" => {
                let (name, field, values) = [":Architectures:", ":Components:"]
                    .iter()
                    .find_map(|f| {
                        value
                            .rfind(f)
                            .map(|i| (&value[..i], &f[1..f.len() - 1], &value[i + f.len()..]))
                    })
                    .ok_or_else(|| format!("release line without a known field: {line:?}"))?;
                let words: Vec<String> = values.split_whitespace().map(String::from).collect();
                let header = fact.releases.entry(name.to_string()).or_default();
                if field == "Architectures" {
                    header.architectures = Some(words);
                } else {
                    header.components = Some(words);
                }
            }
            "source" => {
                let mut parts = value.splitn(3, ' ');
                let format = parts.next().unwrap_or("");
                let path = decode(parts.next().unwrap_or(""))
                    .map_err(|e| format!("source path: {e}: {line:?}"))?;
                let content = decode(parts.next().unwrap_or("").trim())
                    .map_err(|e| format!("source content of {path}: {e}"))?;
                match format {
                    "list" => parse_one_line(&path, &content, &mut fact),
                    "sources" => parse_deb822(&path, &content, &mut fact),
                    _ => return Err(format!("unknown sources format in {line:?}")),
                }
            }
            _ => return Err(format!("unexpected line {line:?}")),
        }
    }
    fact.now = now.ok_or("no `now` line")?;
    Ok(fact)
}

fn decode(b64: &str) -> Result<String, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("bad base64 ({e})"))?;
    // A sources file that is not UTF-8 is read as apt reads it: bytes; lossy is enough to
    // find suites and components, which are ASCII.
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Whether apt reads this file of `sourceparts` (it ignores names with other characters,
/// e.g. `x.list.dpkg-old` is skipped by the extension, `my list.list` by the space).
fn part_name_ok(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn with_slash(uri: &str) -> String {
    if uri.ends_with('/') {
        uri.to_string()
    } else {
        format!("{uri}/")
    }
}

/// One-line format: `deb [opt=value ...] URI SUITE [COMPONENT ...]`.
fn parse_one_line(path: &str, content: &str, fact: &mut AptListsFact) {
    if path.ends_with(".list") && !part_name_ok(path) {
        return;
    }
    for (n, raw) in content.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let problem = |what: &str| format!("{path} line {}: {what}", n + 1);
        let (kind, mut rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        rest = rest.trim_start();
        if kind == "deb-src" {
            continue;
        }
        if kind != "deb" {
            fact.unreadable.push(problem("not a deb or deb-src line"));
            continue;
        }
        let mut architectures = None;
        if let Some(opts) = rest.strip_prefix('[') {
            let Some((opts, after)) = opts.split_once(']') else {
                fact.unreadable.push(problem("unclosed [ options ]"));
                continue;
            };
            for opt in opts.split_whitespace() {
                if let Some(v) = opt.strip_prefix("arch=") {
                    architectures = Some(v.split(',').map(String::from).collect());
                }
            }
            rest = after.trim_start();
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            fact.unreadable.push(problem("no URI and suite"));
            continue;
        };
        let components: Vec<String> = words.map(String::from).collect();
        if !suite.ends_with('/') && components.is_empty() {
            fact.unreadable.push(problem("a suite without components"));
            continue;
        }
        fact.sources.push(AptSource {
            file: path.to_string(),
            uri: with_slash(uri),
            suite: suite.to_string(),
            components,
            architectures,
        });
    }
}

/// deb822 format: stanzas separated by blank lines, fields `Types`, `URIs`, `Suites`,
/// `Components`, `Architectures`, `Enabled`; continuation lines start with whitespace.
fn parse_deb822(path: &str, content: &str, fact: &mut AptListsFact) {
    if !part_name_ok(path) {
        return;
    }
    let mut stanzas: Vec<(usize, BTreeMap<String, String>)> = vec![];
    let mut current: Option<(usize, BTreeMap<String, String>)> = None;
    let mut last_key: Option<String> = None;
    for (n, raw) in content.lines().enumerate() {
        if raw.starts_with('#') {
            continue;
        }
        if raw.trim().is_empty() {
            stanzas.extend(current.take());
            last_key = None;
            continue;
        }
        let stanza = current.get_or_insert_with(|| (n + 1, BTreeMap::new()));
        if raw.starts_with(' ') || raw.starts_with('\t') {
            if let Some(k) = &last_key {
                let v = stanza.1.entry(k.clone()).or_default();
                v.push(' ');
                v.push_str(raw.trim());
            }
            continue;
        }
        match raw.split_once(':') {
            Some((k, v)) => {
                let k = k.trim().to_ascii_lowercase();
                stanza.1.insert(k.clone(), v.trim().to_string());
                last_key = Some(k);
            }
            None => fact
                .unreadable
                .push(format!("{path} line {}: not a `Field: value` line", n + 1)),
        }
    }
    stanzas.extend(current.take());
    for (line, fields) in stanzas {
        let words = |k: &str| -> Vec<String> {
            fields
                .get(k)
                .map(|v| v.split_whitespace().map(String::from).collect())
                .unwrap_or_default()
        };
        if fields
            .get("enabled")
            .is_some_and(|v| v.eq_ignore_ascii_case("no"))
        {
            continue;
        }
        if !words("types").iter().any(|t| t == "deb") {
            continue;
        }
        let (uris, suites, components) = (words("uris"), words("suites"), words("components"));
        if uris.is_empty() || suites.is_empty() {
            fact.unreadable.push(format!(
                "{path} stanza at line {line}: no URIs or no Suites"
            ));
            continue;
        }
        let architectures = fields.get("architectures").map(|_| words("architectures"));
        for uri in &uris {
            for suite in &suites {
                if !suite.ends_with('/') && components.is_empty() {
                    fact.unreadable.push(format!(
                        "{path} stanza at line {line}: suite {suite} without Components"
                    ));
                    continue;
                }
                fact.sources.push(AptSource {
                    file: path.to_string(),
                    uri: with_slash(uri),
                    suite: suite.clone(),
                    components: if suite.ends_with('/') {
                        vec![]
                    } else {
                        components.clone()
                    },
                    architectures: architectures.clone(),
                });
            }
        }
    }
}

impl AptListsFact {
    /// Whether a list file named `name` (or a compressed form, `name.lz4` ...) is there.
    fn has_list(&self, name: &str) -> bool {
        self.lists
            .range(name.to_string()..)
            .take_while(|(k, _)| k.starts_with(name))
            .any(|(k, _)| k.len() == name.len() || k.as_bytes()[name.len()] == b'.')
    }

    /// Suites the sources call for whose Release file is not in the lists directory.
    pub fn unfetched_suites(&self) -> Vec<String> {
        let mut out: Vec<String> = vec![];
        for s in &self.sources {
            let prefix = s.release_prefix();
            let fetched = ["InRelease", "Release"]
                .iter()
                .any(|r| self.lists.contains_key(&format!("{prefix}{r}")));
            if !fetched && !out.contains(&s.suite) {
                out.push(s.suite.clone());
            }
        }
        out
    }

    /// `suite/component` pairs whose suite was fetched but whose Packages list for the
    /// host's architecture is missing, where the suite's Release says it carries both.
    pub fn missing_packages_lists(&self) -> Vec<String> {
        let mut out = vec![];
        if self.arch.is_empty() {
            return out;
        }
        for s in &self.sources {
            if s.architectures
                .as_ref()
                .is_some_and(|a| !a.contains(&self.arch))
            {
                continue;
            }
            let prefix = s.release_prefix();
            let header = ["InRelease", "Release"]
                .iter()
                .find_map(|r| self.releases.get(&format!("{prefix}{r}")));
            let fetched = ["InRelease", "Release"]
                .iter()
                .any(|r| self.lists.contains_key(&format!("{prefix}{r}")));
            if !fetched {
                continue;
            }
            if header
                .and_then(|h| h.architectures.as_ref())
                .is_some_and(|a| !a.contains(&self.arch))
            {
                continue;
            }
            if s.flat() {
                if !self.has_list(&format!("{prefix}Packages")) {
                    out.push(s.suite.clone());
                }
                continue;
            }
            for c in &s.components {
                let carried = header.and_then(|h| h.components.as_ref()).is_none_or(|cs| {
                    cs.iter()
                        .any(|x| x == c || x.rsplit_once('/').is_some_and(|(_, t)| t == c))
                });
                if carried && !self.has_list(&format!("{prefix}{c}_binary-{}_Packages", self.arch))
                {
                    let pair = format!("{} {c}", s.suite);
                    if !out.contains(&pair) {
                        out.push(pair);
                    }
                }
            }
        }
        out
    }

    /// Seconds since the last recorded successful update; `None` when no tool ever
    /// recorded one. A list newer than the stamp (an `apt-get update` by hand) counts.
    pub fn age_secs(&self) -> Option<u64> {
        let stamp = self.stamp?;
        let newest = self
            .lists
            .iter()
            .filter(|(k, _)| k.contains("Release"))
            .map(|(_, m)| *m)
            .max()
            .unwrap_or(0);
        Some(self.now.saturating_sub(stamp.max(newest)))
    }

    /// Why the lists must be refreshed before installing, or `None` when they are fresh
    /// and complete for every suite the sources call for.
    pub fn refresh_reason(&self, max_age_secs: u64) -> Option<String> {
        if !self.unreadable.is_empty() {
            return Some(format!(
                "apt lists: cannot read the sources ({})",
                self.unreadable.join("; ")
            ));
        }
        if self.sources.is_empty() {
            // Nothing to compare with; only the stamp can tell.
            if self.lists.keys().all(|k| !k.contains("_Packages")) {
                return Some("apt lists: none on the host".into());
            }
        }
        let never = self.unfetched_suites();
        if !never.is_empty() {
            return Some(format!("apt lists: {} never fetched", never.join(", ")));
        }
        let missing = self.missing_packages_lists();
        if !missing.is_empty() {
            return Some(format!(
                "apt lists: no {} Packages list for {}",
                self.arch,
                missing.join(", ")
            ));
        }
        match self.age_secs() {
            None => Some(
                "apt lists: never refreshed by a tool (no update-success stamp; \
                 the lists are the image's)"
                    .into(),
            ),
            Some(age) if age > max_age_secs => Some(format!(
                "apt lists: last refreshed {} ago (lists_max_age {})",
                human_age(age),
                human_age(max_age_secs)
            )),
            Some(_) => None,
        }
    }
}

fn human_age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

/// The kind: section `@@kiln:apt-lists` (see the module documentation), judged on the
/// controller by [`AptListsFact::refresh_reason`] with the environment's max age.
pub(crate) struct AptLists;

impl super::FactKind for AptLists {
    fn section(&self) -> &'static str {
        "apt-lists"
    }

    fn layout(&self) -> super::Layout {
        super::Layout::Batched
    }

    fn key(&self, _: &FactQuery) -> String {
        "apt-lists".into()
    }

    fn script(&self, _: &[&FactQuery], s: &mut String) {
        s.push_str(SCRIPT);
    }

    fn parse(
        &self,
        _: &[&FactQuery],
        section: &RawSection<'_>,
        facts: &mut HostFacts,
    ) -> Result<(), FactParseError> {
        let fact = parse(&section.lines())
            .map_err(|e| malformed(section, section.line, "apt-lists section", &e))?;
        facts.apt_lists = Some(fact);
        Ok(())
    }

    /// Lists age every second; what a plan depends on is only whether they need a
    /// refresh, judged by the same rule (and max age) as planning.
    fn fact_json(
        &self,
        facts: &HostFacts,
        _: &FactQuery,
        rules: &FactRules,
    ) -> serde_json::Result<serde_json::Value> {
        Ok(match &facts.apt_lists {
            Some(l) => serde_json::json!({
                "refresh": l.refresh_reason(rules.lists_max_age_secs).is_some(),
            }),
            None => serde_json::Value::Null,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn suites(fact: &AptListsFact) -> BTreeSet<&str> {
        fact.sources.iter().map(|s| s.suite.as_str()).collect()
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    const DEB822: &str = "Types: deb\nURIs: http://deb.debian.org/debian\n\
        Suites: bookworm bookworm-updates\nComponents: main\n\
        Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
        Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n\
        Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n";

    const ONE_LINE: &str = "# comment\n\
        deb http://deb.debian.org/debian bookworm main\n\
        deb-src http://deb.debian.org/debian bookworm main\n\
        deb [arch=amd64 signed-by=/k.gpg] http://deb.debian.org/debian bookworm-updates main\n\
        deb http://deb.debian.org/debian-security bookworm-security main # trailing\n";

    /// The lists directory of a debootstrap image: `bookworm main` only.
    fn debootstrap_lists(t: u64) -> String {
        format!(
            "list {t}.123 deb.debian.org_debian_dists_bookworm_Release\n\
             list {t}.5 deb.debian.org_debian_dists_bookworm_Release.gpg\n\
             list {t} deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages\n\
             release deb.debian.org_debian_dists_bookworm_Release:Architectures: all amd64 arm64\n\
             release deb.debian.org_debian_dists_bookworm_Release:Components: main contrib non-free-firmware non-free\n"
        )
    }

    /// Lists after a full update of the three suites.
    fn updated_lists(t: u64) -> String {
        let mut s = debootstrap_lists(t);
        for (uri, suite) in [
            ("deb.debian.org_debian", "bookworm-updates"),
            ("deb.debian.org_debian-security", "bookworm-security"),
        ] {
            s.push_str(&format!(
                "list {t} {uri}_dists_{suite}_InRelease\n\
                 list {t} {uri}_dists_{suite}_main_binary-amd64_Packages.lz4\n\
                 release {uri}_dists_{suite}_InRelease:Architectures: all amd64 arm64\n"
            ));
        }
        s.push_str("release deb.debian.org_debian-security_dists_bookworm-security_InRelease:Components: updates/main updates/contrib\n");
        s
    }

    fn fact(body: &str) -> AptListsFact {
        let lines: Vec<&str> = body.lines().collect();
        parse(&lines).unwrap()
    }

    fn deb822_source() -> String {
        format!(
            "source sources {} {}\n",
            b64("/etc/apt/sources.list.d/debian.sources"),
            b64(DEB822)
        )
    }

    #[test]
    fn list_file_names_follow_apt() {
        assert_eq!(
            list_file_name("http://deb.debian.org/debian/dists/bookworm/InRelease"),
            "deb.debian.org_debian_dists_bookworm_InRelease"
        );
        assert_eq!(
            list_file_name("https://user:secret@repo.example:8443/a_b/dists/x/"),
            "repo.example:8443_a%5fb_dists_x_"
        );
        assert_eq!(list_file_name("file:/srv/repo/./"), "_srv_repo_._");
    }

    #[test]
    fn fresh_image_without_stamp_and_two_suites_never_fetched() {
        // The debootstrap image of the lab and of cloud images: lists for `bookworm`
        // only, minutes old, no stamp.
        let f = fact(&format!(
            "now 1000\narch amd64\n{}{}",
            debootstrap_lists(900),
            deb822_source()
        ));
        assert_eq!(
            f.unfetched_suites(),
            vec!["bookworm-updates", "bookworm-security"]
        );
        assert_eq!(
            f.refresh_reason(86_400).as_deref(),
            Some("apt lists: bookworm-updates, bookworm-security never fetched")
        );
    }

    #[test]
    fn complete_lists_without_stamp_still_refresh() {
        let f = fact(&format!(
            "now 1000\narch amd64\n{}{}",
            updated_lists(990),
            deb822_source()
        ));
        assert!(f.unfetched_suites().is_empty());
        assert!(f.missing_packages_lists().is_empty(), "{f:?}");
        let why = f.refresh_reason(86_400).unwrap();
        assert!(why.contains("no update-success stamp"), "{why}");
    }

    #[test]
    fn complete_recent_lists_with_stamp_are_fresh() {
        let f = fact(&format!(
            "now 1000\nstamp 900\narch amd64\n{}{}",
            updated_lists(800),
            deb822_source()
        ));
        assert_eq!(f.age_secs(), Some(100));
        assert_eq!(f.refresh_reason(86_400), None);
    }

    #[test]
    fn stamp_older_than_max_age_refreshes() {
        let f = fact(&format!(
            "now 200000\nstamp 1000\narch amd64\n{}{}",
            updated_lists(800),
            deb822_source()
        ));
        assert_eq!(
            f.refresh_reason(86_400).as_deref(),
            Some("apt lists: last refreshed 2 days ago (lists_max_age 24 h)")
        );
        assert_eq!(f.refresh_reason(300_000), None);
    }

    #[test]
    fn a_fetched_suite_without_its_packages_list_refreshes() {
        let lists = updated_lists(800).replace(
            "list 800 deb.debian.org_debian-security_dists_bookworm-security_main_binary-amd64_Packages.lz4\n",
            "",
        );
        let f = fact(&format!(
            "now 1000\nstamp 900\narch amd64\n{lists}{}",
            deb822_source()
        ));
        assert_eq!(
            f.refresh_reason(86_400).as_deref(),
            Some("apt lists: no amd64 Packages list for bookworm-security main")
        );
    }

    #[test]
    fn one_line_sources_are_read_like_deb822() {
        let src = format!(
            "source list {} {}\n",
            b64("/etc/apt/sources.list"),
            b64(ONE_LINE)
        );
        let f = fact(&format!(
            "now 1000\narch amd64\n{}{src}",
            debootstrap_lists(900)
        ));
        assert_eq!(f.sources.len(), 3, "deb-src and comments skipped: {f:?}");
        assert_eq!(f.sources[1].architectures, Some(vec!["amd64".to_string()]));
        assert_eq!(
            f.unfetched_suites(),
            vec!["bookworm-updates", "bookworm-security"]
        );
        let full = fact(&format!(
            "now 1000\nstamp 990\narch amd64\n{}{src}",
            updated_lists(900)
        ));
        assert_eq!(full.refresh_reason(86_400), None);
    }

    #[test]
    fn components_and_architectures_a_suite_does_not_carry_are_not_missing() {
        // A third-party suite offering only arm64, and a component Debian does not have.
        let list = "deb http://deb.debian.org/debian bookworm main contrib\n\
                    deb http://repo.example/apt stable main\n";
        let body = format!(
            "now 1000\nstamp 990\narch amd64\n{}\
             list 900 repo.example_apt_dists_stable_InRelease\n\
             release repo.example_apt_dists_stable_InRelease:Architectures: arm64\n\
             source list {} {}\n",
            debootstrap_lists(900).replace(" contrib", ""),
            b64("/etc/apt/sources.list"),
            b64(list)
        );
        let f = fact(&body);
        assert!(f.missing_packages_lists().is_empty(), "{f:?}");
        assert_eq!(f.refresh_reason(86_400), None);
    }

    #[test]
    fn disabled_stanzas_ignored_names_and_credentials() {
        let deb822 = "Types: deb\nURIs: https://u:pw@private.example/debian\nSuites: x\n\
                      Components: main\nEnabled: no\n";
        let body = format!(
            "now 1000\nstamp 990\narch amd64\n{}{}source sources {} {}\nsource list {} {}\n",
            updated_lists(900),
            deb822_source(),
            b64("/etc/apt/sources.list.d/off.sources"),
            b64(deb822),
            b64("/etc/apt/sources.list.d/bad name.list"),
            b64("deb http://nowhere.example/ x main\n"),
        );
        let f = fact(&body);
        assert_eq!(suites(&f).len(), 3, "{f:?}");
        assert_eq!(f.refresh_reason(86_400), None);
        let secret = "deb https://u:pw@private.example/debian x main\n";
        let f = fact(&format!(
            "now 1000\narch amd64\nsource list {} {}\n",
            b64("/etc/apt/sources.list"),
            b64(secret)
        ));
        let why = f.refresh_reason(86_400).unwrap();
        assert!(!why.contains("pw"), "{why}");
        assert_eq!(
            f.sources[0].release_prefix(),
            "private.example_debian_dists_x_"
        );
    }

    #[test]
    fn unreadable_sources_and_bad_lines() {
        let f = fact(&format!(
            "now 1000\nstamp 990\narch amd64\n{}source list {} {}\n",
            updated_lists(900),
            b64("/etc/apt/sources.list"),
            b64("deb http://deb.debian.org/debian\n")
        ));
        let why = f.refresh_reason(86_400).unwrap();
        assert!(why.contains("/etc/apt/sources.list line 1"), "{why}");
        assert!(parse(&["now 1", "bogus"]).is_err());
        assert!(parse(&["arch amd64"]).is_err(), "no now line");
        let empty = fact("now 5\nsource list L2V0Yy9hcHQvc291cmNlcy5saXN0 \n");
        assert_eq!(empty.sources.len(), 0);
        assert_eq!(
            empty.refresh_reason(86_400).as_deref(),
            Some("apt lists: none on the host")
        );
    }
}

#[cfg(test)]
mod section_tests {
    use crate::facts::kinds::fixture::captured;
    use crate::facts::parse::parse_facts;
    use crate::facts::section::FactParseError;
    use crate::facts::{AptListsFact, FactQuery, FactRules, HostFacts};

    /// The fingerprint JSON judges freshness by the rules it is given (the environment's
    /// `[apt] lists_max_age`), not by a fixed default.
    #[test]
    fn fact_json_judges_by_the_given_max_age() {
        let now = 1_000_000;
        let facts = HostFacts {
            apt_lists: Some(AptListsFact {
                now,
                stamp: Some(now - 30 * 3600),
                arch: "amd64".into(),
                lists: [(
                    "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages".to_string(),
                    1,
                )]
                .into(),
                ..Default::default()
            }),
            ..HostFacts::default()
        };
        let json = |hours: u64| {
            facts.fact_json(
                &FactQuery::AptLists,
                &FactRules {
                    lists_max_age_secs: hours * 3600,
                },
            )
        };
        assert_eq!(json(24), serde_json::json!({ "refresh": true }));
        assert_eq!(json(48), serde_json::json!({ "refresh": false }));
        let none = HostFacts::default().fact_json(
            &FactQuery::AptLists,
            &FactRules {
                lists_max_age_secs: 0,
            },
        );
        assert_eq!(none, serde_json::Value::Null);
    }

    #[test]
    fn apt_lists_section_is_read_raw() {
        // The decision (refresh or not, and why) is tested above; here the section is
        // found and handed over whole.
        let lists = captured().apt_lists.unwrap();
        assert_eq!(lists.now, 1795355498);
        assert_eq!(lists.stamp, None);
        assert_eq!(lists.lists.len(), 4);
        let suites: Vec<&str> = lists.sources.iter().map(|s| s.suite.as_str()).collect();
        assert_eq!(suites, ["bookworm", "bookworm-updates"]);
        assert!(lists
            .refresh_reason(u64::MAX)
            .unwrap()
            .contains("no update-success stamp"));
        let bad = parse_facts(
            &[FactQuery::AptLists],
            "@@kiln:begin\n@@kiln:apt-lists\nnow 5\nmissing-list\n@@kiln:end\n",
        );
        assert!(
            matches!(bad, Err(FactParseError::Malformed { .. })),
            "{bad:?}"
        );
    }
}

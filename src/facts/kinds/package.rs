//! The `package` fact: dpkg's status and version of a package.
//!
//! Section `@@kiln:packages` (batched, present when any package is asked for): the raw
//! output of ONE
//! `dpkg-query -W -f='${Package}\t${Architecture}\t${Version}\t${db:Status-Abbrev}\n'`
//! call naming every package; names unknown to dpkg print nothing. The architecture
//! column is there so that a query such as `libc6:i386` can be told apart from
//! `libc6:amd64`.

use serde::{Deserialize, Serialize};

use super::{not_mine, push_words, FactKind, Layout};
use crate::facts::section::{malformed, FactParseError, RawSection};
use crate::facts::{FactQuery, FactRules, HostFacts};
use crate::shell::quote as sh_quote;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageFact {
    /// Installed version, when the package is fully installed (`ii`).
    pub version: Option<String>,
    /// dpkg's status abbreviation (`ii`, `rc`, `hi` ...) or empty when unknown to dpkg.
    pub status: String,
}

impl PackageFact {
    pub fn installed(&self) -> bool {
        self.version.is_some()
    }
}

pub(crate) struct Package;

fn name(q: &FactQuery) -> &str {
    match q {
        FactQuery::Package { name } => name,
        other => not_mine("package", other),
    }
}

impl FactKind for Package {
    fn section(&self) -> &'static str {
        "packages"
    }

    fn layout(&self) -> Layout {
        Layout::Batched
    }

    fn key(&self, q: &FactQuery) -> String {
        format!("package:{}", name(q))
    }

    fn script(&self, queries: &[&FactQuery], s: &mut String) {
        // dpkg-query with no names would list every package, but a packages section is
        // only planned when there is at least one name.
        s.push_str("\tdpkg-query -W -f=");
        s.push_str(&sh_quote(
            r"${Package}\t${Architecture}\t${Version}\t${db:Status-Abbrev}\n",
        ));
        s.push_str(" --");
        push_words(s, queries.iter().map(|q| name(q)));
        s.push_str(" 2>/dev/null\n");
    }

    fn parse(
        &self,
        queries: &[&FactQuery],
        section: &RawSection<'_>,
        facts: &mut HostFacts,
    ) -> Result<(), FactParseError> {
        let names: Vec<&str> = queries.iter().map(|q| name(q)).collect();
        parse_packages(section, &names, facts)
    }

    fn fact_json(
        &self,
        facts: &HostFacts,
        q: &FactQuery,
        _: &FactRules,
    ) -> serde_json::Result<serde_json::Value> {
        serde_json::to_value(facts.packages.get(name(q)))
    }
}

/// dpkg-query prints `package \t architecture \t version \t status-abbrev` for each known
/// package, in its database order rather than argument order, so lines are matched to
/// queries by name. A query `name:arch` only matches that architecture; a bare name
/// matches any, preferring an installed one.
fn parse_packages(
    section: &RawSection<'_>,
    names: &[&str],
    facts: &mut HostFacts,
) -> Result<(), FactParseError> {
    let mut rows: Vec<[&str; 4]> = Vec::new();
    for &(line, text) in &section.body {
        if text.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = text.split('\t').collect();
        match <[&str; 4]>::try_from(fields) {
            Ok(row) => rows.push(row),
            Err(_) => {
                return Err(malformed(
                    section,
                    line,
                    "expected 4 tab-separated fields",
                    text,
                ))
            }
        }
    }
    for name in names {
        let (base, arch) = match name.split_once(':') {
            Some((base, arch)) => (base, Some(arch)),
            None => (*name, None),
        };
        let candidates: Vec<&[&str; 4]> = rows
            .iter()
            .filter(|row| row[0] == base && arch.iter().all(|a| row[1] == *a))
            .collect();
        let row = candidates
            .iter()
            .find(|row| dpkg_installed(row[3]))
            .or_else(|| candidates.first());
        let fact = match row {
            Some(row) => {
                let status = row[3].trim().to_string();
                let version =
                    (dpkg_installed(&status) && !row[2].is_empty()).then(|| row[2].to_string());
                PackageFact { version, status }
            }
            None => PackageFact::default(),
        };
        facts.packages.insert(name.to_string(), fact);
    }
    Ok(())
}

/// A package counts as installed when dpkg has it fully installed and wants it kept
/// (`ii`) or held (`hi`).
fn dpkg_installed(status: &str) -> bool {
    let status = status.trim();
    status.starts_with("ii") || status.starts_with("hi")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::kinds::fixture::{captured, package};
    use crate::facts::parse::parse_facts;

    #[test]
    fn packages_installed_held_removed_and_unknown() {
        let facts = captured();
        let pkg = |name: &str| facts.packages[name].clone();
        assert_eq!(
            pkg("dpkg"),
            PackageFact {
                version: Some("1.21.22".into()),
                status: "ii".into()
            }
        );
        assert_eq!(
            pkg("kiln-fixture-held"),
            PackageFact {
                version: Some("1.2-3".into()),
                status: "hi".into()
            }
        );
        let rc = pkg("kiln-fixture-rc");
        assert_eq!(rc.status, "rc");
        assert_eq!(rc.version, None);
        assert!(!rc.installed());
        assert_eq!(pkg("kiln-no-such-package"), PackageFact::default());
        assert_eq!(facts.packages.len(), 4);
    }

    #[test]
    fn arch_qualified_package_names_match_their_architecture() {
        let queries = [
            package("libc6:i386"),
            package("libc6:amd64"),
            package("libc6"),
        ];
        let output = "@@kiln:begin\n@@kiln:packages\n\
            libc6\tamd64\t2.36-9\tii \nlibc6\ti386\t2.36-9\trc \n@@kiln:end\n";
        let facts = parse_facts(&queries, output).unwrap();
        assert_eq!(facts.packages["libc6:i386"].status, "rc");
        assert_eq!(facts.packages["libc6:amd64"].status, "ii");
        assert_eq!(facts.packages["libc6"].version.as_deref(), Some("2.36-9"));
    }
}

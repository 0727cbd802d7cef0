//! The fact kinds. Each file owns, for its kind, the part of the fact script that reads
//! it, the parser of its output section, the JSON its fingerprints cover, its fact struct
//! and its tests. `script.rs` only batches the kinds' parts into one script per host and
//! `parse.rs` only splits the output at markers and hands each section to its kind.
//!
//! A new kind: a file here implementing [`FactKind`], its `FactQuery` variant and its
//! place in `HostFacts` (the vocabulary resources and saved plans use, in `facts/mod.rs`),
//! and one line in [`kind_of`], the registration point.

pub mod apt_lists;
pub mod certs;
pub mod dir_list;
pub mod galera;
pub mod group;
pub mod guard;
pub mod package;
pub mod path;
pub mod pending;
pub mod service;
pub mod ssh_session;
pub mod user;

#[cfg(test)]
pub(crate) mod fixture;

use super::section::{FactParseError, RawSection};
use super::{FactQuery, FactRules, HostFacts};
use crate::shell::quote as sh_quote;

/// How a kind's queries map to sections of the script's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// One section, at the place of the kind's first query, for all its queries (one
    /// `dpkg-query`, one `systemctl show`); its marker carries no index. Kinds that take
    /// no argument (apt lists, the handler journal) are batched too: they have one query.
    Batched,
    /// One section per query, its marker carrying the query's index in the normalised
    /// list (and, for some kinds, a name for people reading the output).
    PerQuery,
}

/// What a fact kind provides. Each method gets the kind's own `FactQuery` variant(s).
pub(crate) trait FactKind: Sync {
    /// The section name written after `@@kiln:`.
    fn section(&self) -> &'static str;

    fn layout(&self) -> Layout {
        Layout::PerQuery
    }

    /// The key under which the query's fact is stored in plans and fingerprinted.
    fn key(&self, query: &FactQuery) -> String;

    /// A name shown in a per-query marker, for people reading the output (the parser
    /// never relies on it).
    fn label<'a>(&self, _query: &'a FactQuery) -> Option<&'a str> {
        None
    }

    /// Merges `next` into `prev` (both of this kind, `prev` sorted before `next`) when
    /// they ask for the same fact; returns whether it did.
    fn merge(&self, _prev: &mut FactQuery, _next: &FactQuery) -> bool {
        false
    }

    /// Shell functions the kind's script part calls, defined once before `kiln_facts`.
    fn shell_functions(&self) -> Option<String> {
        None
    }

    /// Appends, once and before the kind's first section, a part that reads the facts of
    /// all the kind's `queries` at once and keeps them in shell variables for the
    /// sections to print (one `stat` for every path instead of one per path). It prints
    /// nothing: its time counts towards the kind's first section in `--timings`.
    fn read_ahead(&self, _queries: &[&FactQuery], _out: &mut String) {}

    /// Appends one section's body to the script (inside `kiln_facts`, stdin `/dev/null`,
    /// each line starting with a tab): for `queries`, the section's one query, or every
    /// query of a batched kind. Nothing it prints may start with `@@kiln:`.
    fn script(&self, queries: &[&FactQuery], out: &mut String);

    /// Parses the section's body into `facts`; every query gets its entry.
    fn parse(
        &self,
        queries: &[&FactQuery],
        section: &RawSection<'_>,
        facts: &mut HostFacts,
    ) -> Result<(), FactParseError>;

    /// The JSON of the facts behind `query`, for fingerprints.
    fn fact_json(
        &self,
        facts: &HostFacts,
        query: &FactQuery,
        rules: &FactRules,
    ) -> serde_json::Result<serde_json::Value>;
}

/// The registration point: the kind that reads `query`.
pub(crate) fn kind_of(query: &FactQuery) -> &'static dyn FactKind {
    match query {
        FactQuery::Package { .. } => &package::Package,
        FactQuery::AptLists => &apt_lists::AptLists,
        FactQuery::Path { .. } => &path::Path,
        FactQuery::User { .. } => &user::User,
        FactQuery::Group { .. } => &group::Group,
        FactQuery::Service { .. } => &service::Service,
        FactQuery::Guard { .. } => &guard::Guard,
        FactQuery::DirList { .. } => &dir_list::DirList,
        FactQuery::Pending => &pending::Pending,
        FactQuery::Galera { .. } => &galera::Galera,
        FactQuery::SshSession => &ssh_session::SshSession,
        FactQuery::Certs { .. } => &certs::Certs,
    }
}

/// Appends each name as a separately quoted word.
pub(crate) fn push_words<'a>(s: &mut String, names: impl IntoIterator<Item = &'a str>) {
    for name in names {
        s.push(' ');
        s.push_str(&sh_quote(name));
    }
}

/// Called by a kind on a query of another kind: `kind_of` sent it to the wrong kind.
#[track_caller]
pub(crate) fn not_mine(kind: &str, query: &FactQuery) -> ! {
    unreachable!("fact kind `{kind}` handed a {query:?} query")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One query of every kind.
    fn one_of_each() -> Vec<FactQuery> {
        vec![
            FactQuery::Package { name: "p".into() },
            FactQuery::AptLists,
            FactQuery::Path {
                path: "/p".into(),
                expect_sha256: None,
                sensitive: false,
            },
            FactQuery::User { name: "u".into() },
            FactQuery::Group { name: "g".into() },
            FactQuery::Service {
                name: "s.service".into(),
            },
            FactQuery::Guard {
                command: "true".into(),
                sensitive_of: None,
            },
            FactQuery::DirList { path: "/d".into() },
            FactQuery::Pending,
            FactQuery::Galera {
                cluster: "c".into(),
                config: vec![],
            },
            FactQuery::SshSession,
            FactQuery::Certs {
                live: "/l".into(),
                renewal: None,
            },
        ]
    }

    #[test]
    fn kinds_have_distinct_section_names_and_keys() {
        let queries = one_of_each();
        let mut sections: Vec<&str> = queries.iter().map(|q| kind_of(q).section()).collect();
        let mut keys: Vec<String> = queries.iter().map(FactQuery::key).collect();
        sections.sort();
        sections.dedup();
        keys.sort();
        keys.dedup();
        assert_eq!(sections.len(), queries.len(), "{sections:?}");
        assert_eq!(keys.len(), queries.len(), "{keys:?}");
        for s in sections {
            assert!(!["begin", "end"].contains(&s), "{s} is reserved");
            assert!(!s.contains(' '), "{s:?}");
        }
    }
}

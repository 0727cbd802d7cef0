//! Targeted runs: `--target type:name` and `--exclude type:name` (repeatable; `*` and `?`
//! globs, e.g. `file:/etc/nginx/*`, `galera_node:*`) select resources of the hosts in the
//! run. Pure: a selection over the resource graph, applied when each host's plan is built.
//!
//! As OpenTofu's `-target`, what a targeted resource requires (its graph predecessors:
//! package → its files, directory → its contents, explicit `after`, on any host of the run)
//! is pulled in, so the run is never planned against a state that only an untargeted
//! resource would make true. A `galera_node` also requires the rest of its module on its
//! host: the cluster steps assume the server installed and configured. A kept file that a
//! `galera_node` restarts on (`restart_on`) brings the cluster's nodes, as a `notify` brings
//! its handler, and a cluster is always selected whole. Handlers fire as always: a kept change that notifies a unit
//! brings its reload or restart. Unlike OpenTofu's `-exclude` (which drops dependents
//! silently), what requires an excluded resource is left out too and the plan says so —
//! and when that would leave out a resource a `--target` asked for, the run is refused.

use std::collections::{BTreeSet, HashSet};

use petgraph::Direction;

use super::graph::{NodeRef, ResourceGraph};
use super::{HostPlan, Targeting};
use crate::desired::Desired;
use crate::resource::Kind;

/// The resources of one run that are planned.
#[derive(Debug, Clone)]
pub struct Selection {
    keep: HashSet<NodeRef>,
    pub targeting: Targeting,
}

impl Selection {
    /// Whether resource `r` of host `h` is planned in this run.
    pub fn keeps(&self, h: usize, r: usize) -> bool {
        self.keep.contains(&(h, r))
    }

    /// Whether any selected resource is of type `kind` (e.g. `galera_node`).
    pub fn keeps_type(&self, desired: &Desired, kind: &str) -> bool {
        self.keep
            .iter()
            .any(|&(h, r)| desired.hosts[h].resources[r].kind.type_name() == kind)
    }

    /// Cluster steps run only when the cluster's `galera_node` resource is selected on
    /// every node host that has a step: a cluster's steps are one ordered sequence, never
    /// part of it.
    pub fn retain_clusters(&self, desired: &Desired, hosts: &mut [HostPlan]) {
        let mut dropped: BTreeSet<String> = BTreeSet::new();
        for hp in hosts.iter() {
            let Some(h) = desired.hosts.iter().position(|d| d.name == hp.host) else {
                continue;
            };
            for c in &hp.changes {
                let Some(cluster) = c.resource.strip_prefix("galera_node:") else {
                    continue;
                };
                let kept = desired.hosts[h]
                    .resources
                    .iter()
                    .position(|r| r.id == c.resource)
                    .is_some_and(|r| self.keeps(h, r));
                if !kept {
                    dropped.insert(cluster.to_string());
                }
            }
        }
        for hp in hosts.iter_mut() {
            hp.changes.retain(|c| {
                c.resource
                    .strip_prefix("galera_node:")
                    .is_none_or(|cl| !dropped.contains(cl))
            });
        }
    }
}

/// `*` any run of characters (`/` included), `?` one character; the rest literal.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Whether pattern `p` selects resource `id`. A service is also named without its
/// `.service` suffix, as systemctl allows: `service:nginx` is `service:nginx.service`.
pub fn matches(p: &str, id: &str) -> bool {
    glob(p, id) || (p.starts_with("service:") && glob(&format!("{p}.service"), id))
}

/// A pattern must be `type:name` with a resource type kiln knows (or a glob over types).
fn check_pattern(flag: &str, p: &str) -> Result<(), String> {
    let Some((kind, name)) = p.split_once(':') else {
        return Err(format!(
            "{flag} `{p}`: expected `type:name` (e.g. `file:/etc/nginx/nginx.conf`, `service:nginx`)"
        ));
    };
    if kind.is_empty() || name.is_empty() {
        return Err(format!(
            "{flag} `{p}`: expected `type:name`, both non-empty"
        ));
    }
    if !Kind::TYPES.iter().any(|t| glob(kind, t)) {
        return Err(format!(
            "{flag} `{p}`: no resource type `{kind}` (types: {})",
            Kind::TYPES.join(", ")
        ));
    }
    Ok(())
}

/// The `galera_node` resources that `kept` brings: those of a cluster one of whose nodes is
/// kept, and those whose `restart_on` names a kept file of their host.
fn cluster_nodes_fired(
    desired: &Desired,
    all: &[NodeRef],
    kept: &BTreeSet<NodeRef>,
) -> BTreeSet<NodeRef> {
    let galera = |(h, r): NodeRef| match &desired.hosts[h].resources[r].kind {
        Kind::GaleraNode(g) => Some(g),
        _ => None,
    };
    let mut clusters: BTreeSet<&str> = BTreeSet::new();
    for &(h, r) in all {
        let Some(g) = galera((h, r)) else { continue };
        let restarts = desired.hosts[h]
            .resources
            .iter()
            .enumerate()
            .any(|(o, other)| {
                kept.contains(&(h, o))
                    && matches!(other.kind, Kind::File(_))
                    && other
                        .kind
                        .path()
                        .is_some_and(|p| g.restart_on.iter().any(|x| x == p))
            });
        if restarts || kept.contains(&(h, r)) {
            clusters.insert(g.cluster.as_str());
        }
    }
    all.iter()
        .copied()
        .filter(|&n| galera(n).is_some_and(|g| clusters.contains(g.cluster.as_str())))
        .collect()
}

/// The selection for `target` and `exclude` patterns; `None` when both are empty (the
/// whole run). An error names the pattern: one that matches no resource of the hosts in
/// the run, or an exclude that removes what a targeted resource requires.
pub fn select(
    desired: &Desired,
    graph: &ResourceGraph,
    target: &[String],
    exclude: &[String],
) -> Result<Option<Selection>, String> {
    if target.is_empty() && exclude.is_empty() {
        return Ok(None);
    }
    let name = |(h, r): NodeRef| {
        format!(
            "{}:{}",
            desired.hosts[h].name, desired.hosts[h].resources[r].id
        )
    };
    let all: Vec<NodeRef> = desired
        .hosts
        .iter()
        .enumerate()
        .flat_map(|(h, host)| (0..host.resources.len()).map(move |r| (h, r)))
        .collect();
    let matching = |flag: &str, p: &str| -> Result<BTreeSet<NodeRef>, String> {
        check_pattern(flag, p)?;
        let found: BTreeSet<NodeRef> = all
            .iter()
            .copied()
            .filter(|&(h, r)| matches(p, &desired.hosts[h].resources[r].id))
            .collect();
        if found.is_empty() {
            let hosts: Vec<&str> = desired.hosts.iter().map(|h| h.name.as_str()).collect();
            return Err(format!(
                "{flag} `{p}` matches no resource of the hosts in this run ({})",
                hosts.join(", ")
            ));
        }
        Ok(found)
    };
    let mut excluded = BTreeSet::new();
    for p in exclude {
        excluded.extend(matching("--exclude", p)?);
    }
    let node = |n: NodeRef| graph.node(n);
    // Cluster steps run after the hosts' scripts and assume everything their module sets up
    // on the node (the server package, its configuration): a `galera_node` requires the
    // other resources of its module on its host, beside its graph edges.
    let mut extra: Vec<(NodeRef, NodeRef)> = vec![]; // (required, requirer)
    for &(h, r) in &all {
        let res = &desired.hosts[h].resources[r];
        if matches!(res.kind, Kind::GaleraNode(_)) {
            for (o, other) in desired.hosts[h].resources.iter().enumerate() {
                if o != r && other.module == res.module {
                    extra.push(((h, o), (h, r)));
                }
            }
        }
    }
    let walk = |from: &BTreeSet<NodeRef>, dir: Direction| -> BTreeSet<NodeRef> {
        let mut seen: BTreeSet<NodeRef> = from.clone();
        let mut todo: Vec<NodeRef> = from.iter().copied().collect();
        while let Some(n) = todo.pop() {
            let edges = graph
                .graph
                .neighbors_directed(node(n), dir)
                .map(|m| graph.graph[m]);
            let implied = extra.iter().filter_map(|&(req, by)| match dir {
                Direction::Incoming if by == n => Some(req),
                Direction::Outgoing if req == n => Some(by),
                _ => None,
            });
            for m in edges.chain(implied).collect::<Vec<_>>() {
                if seen.insert(m) {
                    todo.push(m);
                }
            }
        }
        seen
    };
    let (targeted, pulled_in, left_out) = if target.is_empty() {
        // Everything but the excluded and what requires them.
        let gone = walk(&excluded, Direction::Outgoing);
        let targeted: BTreeSet<NodeRef> =
            all.iter().copied().filter(|n| !gone.contains(n)).collect();
        let left_out: BTreeSet<NodeRef> = gone.difference(&excluded).copied().collect();
        (targeted, BTreeSet::new(), left_out)
    } else {
        let mut targeted = BTreeSet::new();
        for p in target {
            targeted.extend(matching("--target", p)?);
        }
        // `--target 'file:/etc/nginx/*' --exclude file:/etc/nginx/x`: a glob minus one.
        let targeted: BTreeSet<NodeRef> = targeted.difference(&excluded).copied().collect();
        if targeted.is_empty() {
            return Err(format!(
                "--exclude removes every resource --target {} selected",
                target.join(" --target ")
            ));
        }
        let mut needed = walk(&targeted, Direction::Incoming);
        // What would fire: a file a `galera_node` restarts on brings the cluster's steps
        // (a rolling restart), and a cluster is planned whole — every node of it in the run.
        loop {
            let fired = cluster_nodes_fired(desired, &all, &needed);
            if fired.is_subset(&needed) {
                break;
            }
            needed = walk(
                &needed.union(&fired).copied().collect(),
                Direction::Incoming,
            );
        }
        if let Some(&x) = needed.iter().find(|n| excluded.contains(n)) {
            let by = targeted
                .iter()
                .find(|&&t| walk(&BTreeSet::from([t]), Direction::Incoming).contains(&x))
                .copied()
                .unwrap_or(x);
            return Err(format!(
                "--exclude removes {}, which the targeted {} requires; exclude {} too, or target less",
                name(x),
                name(by),
                name(by)
            ));
        }
        let pulled_in = needed.difference(&targeted).copied().collect();
        (targeted, pulled_in, BTreeSet::new())
    };
    let names = |s: &BTreeSet<NodeRef>| s.iter().map(|&n| name(n)).collect::<Vec<_>>();
    let keep = targeted.union(&pulled_in).copied().collect();
    Ok(Some(Selection {
        keep,
        targeting: Targeting {
            target: target.to_vec(),
            exclude: exclude.to_vec(),
            targeted: names(&targeted),
            pulled_in: names(&pulled_in),
            excluded: names(&excluded),
            left_out: names(&left_out),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::{glob, matches};

    #[test]
    fn globs_match_across_slashes_and_single_characters() {
        assert!(glob(
            "file:/etc/nginx/*",
            "file:/etc/nginx/sites-enabled/app"
        ));
        assert!(glob("service:nginx", "service:nginx"));
        assert!(!glob("service:nginx", "service:nginx2"));
        assert!(glob("galera_node:*", "galera_node:prod"));
        assert!(glob("package:php8.?-fpm", "package:php8.2-fpm"));
        assert!(!glob("file:/etc/*.conf", "file:/etc/nginx.conf.bak"));
        assert!(glob("*", ""));
        assert!(!glob("a", ""));
        assert!(matches("service:nginx", "service:nginx.service"));
        assert!(matches("service:php8.?-fpm", "service:php8.2-fpm.service"));
        assert!(!matches("file:/etc/x", "file:/etc/x.service"));
    }
}

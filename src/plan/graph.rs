//! The resource graph across all hosts: explicit `after` edges plus the implicit ones a
//! reader would expect (repository → package → its module's files → service; directory →
//! its contents; user/group → what they own; unit file → its service).

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};

use petgraph::graph::{DiGraph, NodeIndex};

use crate::desired::{split_ref, Desired};
use crate::resource::Kind;
use crate::spec::error::SpecError;
use crate::spec::Environment;

/// A node: (host index, resource index) into `Desired`.
pub type NodeRef = (usize, usize);

pub struct ResourceGraph {
    pub graph: DiGraph<NodeRef, ()>,
    nodes: HashMap<NodeRef, NodeIndex>,
}

impl ResourceGraph {
    pub fn build(env: &Environment, desired: &Desired) -> Result<ResourceGraph, SpecError> {
        let mut graph = DiGraph::new();
        let mut nodes = HashMap::new();
        let mut by_id: HashMap<(&str, &str), NodeIndex> = HashMap::new();
        for (h, host) in desired.hosts.iter().enumerate() {
            for (r, res) in host.resources.iter().enumerate() {
                let n = graph.add_node((h, r));
                nodes.insert((h, r), n);
                by_id.insert((host.name.as_str(), res.id.as_str()), n);
            }
        }
        for (h, host) in desired.hosts.iter().enumerate() {
            let rs = &host.resources;
            for (r, res) in rs.iter().enumerate() {
                let me = nodes[&(h, r)];
                for (i, a) in res.after.iter().enumerate() {
                    let (other_host, id) = split_ref(a);
                    let target_host = other_host.unwrap_or(&host.name);
                    match by_id.get(&(target_host, id)) {
                        Some(&dep) => {
                            graph.update_edge(dep, me, ());
                        }
                        // The host exists but is outside --limit: its resources are not in this
                        // run, so there is nothing to wait for.
                        None if other_host.is_some() && desired.host(target_host).is_none() => {}
                        None => {
                            let src = &env.modules[&res.module].source;
                            return Err(SpecError::at_key(
                                src,
                                &format!("{}.after[{i}]", res.origin.key),
                                format!(
                                    "`after` names `{a}`, which host `{target_host}` does not have"
                                ),
                            ));
                        }
                    }
                }
                for (o, other) in rs.iter().enumerate() {
                    if o != r && implicit_edge(other, res) {
                        graph.update_edge(nodes[&(h, o)], me, ());
                    }
                }
            }
        }
        let g = ResourceGraph { graph, nodes };
        g.check_cycles(env, desired)?;
        Ok(g)
    }

    /// The graph node of resource `r` of host `h`.
    pub fn node(&self, n: NodeRef) -> NodeIndex {
        self.nodes[&n]
    }

    fn check_cycles(&self, env: &Environment, desired: &Desired) -> Result<(), SpecError> {
        for scc in petgraph::algo::tarjan_scc(&self.graph) {
            if scc.len() < 2 && !self.graph.contains_edge(scc[0], scc[0]) {
                continue;
            }
            // Walk the cycle from its first member for a readable order.
            let members: BTreeSet<NodeIndex> = scc.iter().copied().collect();
            let start = scc[0];
            let mut path = vec![start];
            let mut cur = start;
            loop {
                let next = self
                    .graph
                    .neighbors(cur)
                    .find(|n| members.contains(n) && (!path.contains(n) || *n == start));
                match next {
                    Some(n) if n == start => break,
                    Some(n) => {
                        path.push(n);
                        cur = n;
                    }
                    None => break,
                }
            }
            let name = |n: NodeIndex| {
                let (h, r) = self.graph[n];
                format!(
                    "{}:{}",
                    desired.hosts[h].name, desired.hosts[h].resources[r].id
                )
            };
            let mut cycle: Vec<String> = path.iter().map(|&n| name(n)).collect();
            cycle.push(name(start));
            let (h, r) = self.graph[start];
            let res = &desired.hosts[h].resources[r];
            let src = &env.modules[&res.module].source;
            return Err(SpecError::at_key(src, &res.origin.key, "dependency cycle")
                .note(format!("cycle: {}", cycle.join(" → "))));
        }
        Ok(())
    }

    /// Apply order of one host's resources: dependencies first; among independent ones,
    /// the type rank (repositories, packages, users, directories, files, commands,
    /// services) and then declaration order.
    pub fn host_order(&self, desired: &Desired, h: usize) -> Vec<usize> {
        let n = desired.hosts[h].resources.len();
        let mut indegree = vec![0usize; n];
        for r in 0..n {
            let me = self.nodes[&(h, r)];
            indegree[r] = self
                .graph
                .neighbors_directed(me, petgraph::Direction::Incoming)
                .filter(|p| self.graph[*p].0 == h)
                .count();
        }
        let rank = |r: usize| desired.hosts[h].resources[r].kind.rank();
        let mut heap: BinaryHeap<Reverse<(u8, usize)>> = (0..n)
            .filter(|&r| indegree[r] == 0)
            .map(|r| Reverse((rank(r), r)))
            .collect();
        let mut out = Vec::with_capacity(n);
        while let Some(Reverse((_, r))) = heap.pop() {
            out.push(r);
            for next in self.graph.neighbors(self.nodes[&(h, r)]) {
                let (nh, nr) = self.graph[next];
                if nh == h {
                    indegree[nr] -= 1;
                    if indegree[nr] == 0 {
                        heap.push(Reverse((rank(nr), nr)));
                    }
                }
            }
        }
        out
    }

    /// Hosts that must finish applying before `h` starts (cross-host `after`).
    pub fn host_dependencies(&self, desired: &Desired, h: usize) -> Vec<String> {
        let mut deps = BTreeSet::new();
        for r in 0..desired.hosts[h].resources.len() {
            for p in self
                .graph
                .neighbors_directed(self.nodes[&(h, r)], petgraph::Direction::Incoming)
            {
                let (ph, _) = self.graph[p];
                if ph != h {
                    deps.insert(desired.hosts[ph].name.clone());
                }
            }
        }
        deps.into_iter().collect()
    }

    /// Graphviz DOT: one cluster per host.
    pub fn to_dot(&self, desired: &Desired) -> String {
        let mut out = String::from(
            "digraph kiln {\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];\n",
        );
        for (h, host) in desired.hosts.iter().enumerate() {
            out.push_str(&format!(
                "  subgraph \"cluster_{}\" {{\n    label={:?};\n",
                host.name, host.name
            ));
            for (r, res) in host.resources.iter().enumerate() {
                out.push_str(&format!("    n{}_{} [label={:?}];\n", h, r, res.id));
            }
            out.push_str("  }\n");
        }
        for e in self.graph.raw_edges() {
            let (a, b) = (self.graph[e.source()], self.graph[e.target()]);
            out.push_str(&format!("  n{}_{} -> n{}_{};\n", a.0, a.1, b.0, b.1));
        }
        out.push_str("}\n");
        out
    }
}

/// Whether `before` must come before `after` on the same host without being told.
fn implicit_edge(before: &crate::resource::Resource, after: &crate::resource::Resource) -> bool {
    use Kind::*;
    match (&before.kind, &after.kind) {
        (AptRepo(_), Package(_)) => true,
        (Package(_), File(_) | Directory(_) | Symlink(_) | Unit(_) | Service(_) | Command(_)) => {
            before.module == after.module
        }
        (Directory(d), _) if after.kind.path().is_some() => {
            let p = after.kind.path().unwrap_or_default();
            p.len() > d.path.len()
                && p.starts_with(&d.path)
                && p.as_bytes()[d.path.trim_end_matches('/').len()] == b'/'
        }
        (User(u), _) => after.kind.owners().first() == Some(&u.name.as_str()),
        (Group(g), User(u)) => u.groups.contains(&g.name),
        (Group(g), _) => after.kind.owners().get(1) == Some(&g.name.as_str()),
        (Unit(u), Service(s)) => crate::facts::unit_name(&u.name) == s.unit(),
        _ => false,
    }
}

//! Hosts waiting on each other: cross-host `after` edges between the expanded hosts must not
//! form a cycle. Found after expansion, before any host is contacted.

use crate::desired::{split_ref, DesiredHost};
use crate::resource::Resource;
use crate::spec::error::SpecError;
use crate::spec::Environment;

/// Cross-host `after` edges between the expanded hosts must not form a cycle: each host's
/// apply waits for the hosts it names, so a cycle waits forever.
pub fn host_cycles(env: &Environment, hosts: &[DesiredHost]) -> Vec<SpecError> {
    use std::collections::BTreeMap;
    // host → (other host, (module, resource key, after index)) for the first edge found.
    let mut edges: BTreeMap<&str, Vec<(&str, &Resource, usize)>> = BTreeMap::new();
    for h in hosts {
        for r in &h.resources {
            for (i, a) in r.after.iter().enumerate() {
                if let (Some(other), _) = split_ref(a) {
                    if other != h.name && hosts.iter().any(|x| x.name == other) {
                        edges
                            .entry(h.name.as_str())
                            .or_default()
                            .push((other, r, i));
                    }
                }
            }
        }
    }
    // Depth-first search for a cycle; report it once, at the first edge of its first host.
    fn visit<'a>(
        n: &'a str,
        edges: &BTreeMap<&'a str, Vec<(&'a str, &'a Resource, usize)>>,
        stack: &mut Vec<&'a str>,
        done: &mut std::collections::BTreeSet<&'a str>,
    ) -> Option<Vec<&'a str>> {
        if let Some(pos) = stack.iter().position(|s| *s == n) {
            return Some(stack[pos..].to_vec());
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n);
        for (other, _, _) in edges.get(n).map(Vec::as_slice).unwrap_or(&[]) {
            if let Some(c) = visit(other, edges, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n);
        None
    }
    let mut done = std::collections::BTreeSet::new();
    for h in hosts {
        let mut stack = vec![];
        if let Some(cycle) = visit(&h.name, &edges, &mut stack, &mut done) {
            let first = cycle[0];
            let next = cycle.get(1).copied().unwrap_or(first);
            let Some((_, r, i)) = edges[first].iter().find(|(o, _, _)| *o == next) else {
                continue;
            };
            let Some(module) = env.modules.get(&r.module) else {
                continue;
            };
            let mut path: Vec<&str> = cycle.clone();
            path.push(first);
            let e = SpecError::at_key(
                &module.source,
                &format!("{}.after[{i}]", r.origin.key),
                format!(
                    "`after` makes hosts wait on each other: `{}` waits for `{next}`, which waits for it in turn (apply would wait forever)",
                    first
                ),
            )
            .note(format!("hosts: {}", path.join(" → ")));
            // Not relocated: the message quotes host names, which say nothing about
            // which parameter made the edge.
            return vec![e];
        }
    }
    vec![]
}

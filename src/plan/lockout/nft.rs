//! Does the nftables ruleset kiln writes (`/etc/nftables.conf`, debian-base's
//! `nftables.conf.j2`) admit a new SSH connection from kiln's address to kiln's port?
//!
//! The file's input chains (`type filter hook input`) are read and a new TCP connection is
//! run through each rule in order: the first rule that matches with a verdict decides, else
//! the chain's policy; every input chain must accept. What this parser understands is what
//! debian-base renders and the common forms beside it (`ct state`, `iif "lo"`, `ip
//! protocol`, `ip saddr`/`ip6 saddr` with addresses, networks and sets, `tcp dport`/`th
//! dport` with ports, ranges and sets, `counter`, `log`, `comment`); a rule with anything
//! else is not guessed at: when the outcome depends on it, the firewall is "not judged".

use std::net::IpAddr;

use super::net::Cidr;

pub const PATH: &str = "/etc/nftables.conf";

/// What the ruleset does with kiln's new SSH connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Admits,
    /// Refused; `from` lists the sources the rules admit to that port (none: no rule does).
    Refuses {
        from: Vec<String>,
    },
    /// Depends on the source address, which is not known.
    NeedsSource {
        from: Vec<String>,
    },
    /// Depends on a rule this parser does not understand (the rule's text).
    Uncertain(String),
}

/// The connection to judge.
#[derive(Debug, Clone, Copy)]
pub struct Packet {
    pub source: Option<IpAddr>,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Cond {
    Yes,
    No,
    /// Depends on the unknown source address.
    Source,
    /// Not understood.
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Accept,
    Drop,
}

#[derive(Debug, Clone)]
struct Rule {
    text: String,
    cond: Cond,
    action: Option<Action>,
    /// A `saddr` condition's values, when the rule has one.
    from: Option<String>,
    /// Whether the rule's port condition (if any) admits the packet's port.
    port_matches: bool,
}

struct Chain {
    /// A base chain of the input hook.
    input: bool,
    policy_accepts: bool,
    rules: Vec<Rule>,
}

/// Judges `text` (the whole file) for `p`. `None`: the file has no input chain (it
/// filters nothing kiln's connection goes through).
pub fn judge(text: &str, p: Packet) -> Option<Verdict> {
    let chains = input_chains(text, p);
    if chains.is_empty() {
        return None;
    }
    let mut from: Vec<String> = vec![];
    for r in chains.iter().flat_map(|c| &c.rules) {
        if let (Some(Action::Accept), Some(f), true) = (r.action, &r.from, r.port_matches) {
            if !from.contains(f) {
                from.push(f.clone());
            }
        }
    }
    let outcomes: Vec<Outcome> = chains.iter().map(chain_outcome).collect();
    // Every input chain must accept; one that refuses in every case is final.
    Some(if outcomes.iter().any(|o| o.all_refuse) {
        Verdict::Refuses { from }
    } else if outcomes.iter().all(|o| o.all_admit) {
        Verdict::Admits
    } else if let Some(rule) = outcomes
        .iter()
        .filter(|o| !o.all_admit)
        .find_map(|o| o.unknown.clone())
    {
        Verdict::Uncertain(rule)
    } else {
        Verdict::NeedsSource { from }
    })
}

/// What a chain does, over every way its conditions that cannot be decided can go.
#[derive(Debug, Clone)]
struct Outcome {
    all_admit: bool,
    all_refuse: bool,
    /// A rule not understood on the way.
    unknown: Option<String>,
}

fn chain_outcome(c: &Chain) -> Outcome {
    // Each undecided condition that leads to a verdict splits the run in two; rulesets
    // kiln writes have few, and past 12 the outcome is simply undecided.
    let mut ends: Vec<bool> = vec![];
    let mut unknown = None;
    walk(c, 0, 0, &mut ends, &mut unknown);
    Outcome {
        all_admit: ends.iter().all(|a| *a),
        all_refuse: ends.iter().all(|a| !*a),
        unknown,
    }
}

fn walk(c: &Chain, from: usize, splits: u32, ends: &mut Vec<bool>, unknown: &mut Option<String>) {
    for (i, r) in c.rules.iter().enumerate().skip(from) {
        let Some(action) = r.action else { continue };
        match r.cond {
            Cond::No => continue,
            Cond::Yes => {
                ends.push(action == Action::Accept);
                return;
            }
            Cond::Source | Cond::Unknown => {
                if r.cond == Cond::Unknown && unknown.is_none() {
                    *unknown = Some(r.text.clone());
                }
                if splits >= 12 {
                    ends.push(false);
                    ends.push(true);
                    return;
                }
                // It matches …
                ends.push(action == Action::Accept);
                // … or it does not, and the rules after it decide.
                walk(c, i + 1, splits + 1, ends, unknown);
                return;
            }
        }
    }
    ends.push(c.policy_accepts);
}

/// The input chains of the tables that see `p`'s family, their rules judged for `p`.
fn input_chains(text: &str, p: Packet) -> Vec<Chain> {
    #[derive(PartialEq)]
    enum Block {
        Table(bool),
        Chain,
        Other,
    }
    let v4 = p.source.map(|s| s.is_ipv4());
    let mut stack: Vec<Block> = vec![];
    let mut chains = vec![];
    let mut current: Option<(bool, Chain)> = None;
    for raw in text.lines() {
        let line = strip_comment(raw);
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        let opens = t.matches('{').count() as i32;
        let closes = t.matches('}').count() as i32;
        let words: Vec<&str> = t.split_whitespace().collect();
        if opens > closes {
            let block = match words.first() {
                Some(&"table") => {
                    // `table inet|ip|ip6 NAME {`: does kiln's connection pass through it?
                    let family = words.get(1).copied().unwrap_or("");
                    let sees = match family {
                        "inet" => true,
                        "ip" => v4 != Some(false),
                        "ip6" => v4 != Some(true),
                        _ => false,
                    };
                    Block::Table(sees)
                }
                Some(&"chain") if stack.last().is_some_and(|b| matches!(b, Block::Table(_))) => {
                    let sees = stack.contains(&Block::Table(true));
                    current = Some((
                        sees,
                        Chain {
                            input: false,
                            policy_accepts: true,
                            rules: vec![],
                        },
                    ));
                    Block::Chain
                }
                _ => Block::Other,
            };
            stack.push(block);
            continue;
        }
        if closes > opens {
            if stack.pop() == Some(Block::Chain) {
                if let Some((sees, c)) = current.take() {
                    if sees && c.input {
                        chains.push(c);
                    }
                }
            }
            continue;
        }
        let Some((_, chain)) = current.as_mut() else {
            continue;
        };
        if stack.last() != Some(&Block::Chain) {
            continue;
        }
        if t.starts_with("type ") {
            // `type filter hook input priority filter; policy drop;`
            chain.input = words.windows(2).any(|w| w == ["hook", "input"]);
            if let Some(pol) = t.split("policy").nth(1) {
                chain.policy_accepts = !pol.trim().starts_with("drop");
            }
            continue;
        }
        if let Some(pol) = t.strip_prefix("policy") {
            chain.policy_accepts = !pol.trim().starts_with("drop");
            continue;
        }
        chain.rules.push(rule(t, p));
    }
    chains
}

fn strip_comment(line: &str) -> String {
    let mut out = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            '#' if !quoted => break,
            _ => {}
        }
        out.push(c);
    }
    out
}

/// Words, with `{`, `}` and `,` their own tokens and quoted strings kept whole.
fn tokens(s: &str) -> Vec<String> {
    let mut out = vec![];
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if quoted => cur.push(c),
            '{' | '}' | ',' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                out.push(c.to_string());
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A value or a `{ a, b }` set at `i`; returns the values and the index after them.
fn values(t: &[String], i: usize) -> Option<(Vec<String>, usize)> {
    if t.get(i)? == "{" {
        let end = t[i..].iter().position(|x| x == "}")? + i;
        let vals = t[i + 1..end]
            .iter()
            .filter(|x| *x != ",")
            .cloned()
            .collect();
        Some((vals, end + 1))
    } else {
        // `a,b` without braces is nft's anonymous set too.
        let mut vals = vec![t[i].clone()];
        let mut j = i + 1;
        while t.get(j).is_some_and(|x| x == ",") && t.get(j + 1).is_some() {
            vals.push(t[j + 1].clone());
            j += 2;
        }
        Some((vals, j))
    }
}

fn and(a: Cond, b: Cond) -> Cond {
    use Cond::*;
    match (a, b) {
        (No, _) | (_, No) => No,
        (Unknown, _) | (_, Unknown) => Unknown,
        (Source, _) | (_, Source) => Source,
        _ => Yes,
    }
}

fn port_in(vals: &[String], port: u16) -> Option<bool> {
    let mut any = false;
    for v in vals {
        let v = if v == "ssh" { "22" } else { v.as_str() };
        if let Some((a, b)) = v.split_once('-') {
            let (a, b) = (a.parse::<u16>().ok()?, b.parse::<u16>().ok()?);
            any |= (a..=b).contains(&port);
        } else {
            any |= v.parse::<u16>().ok()? == port;
        }
    }
    Some(any)
}

fn rule(text: &str, p: Packet) -> Rule {
    let t = tokens(text);
    let mut cond = Cond::Yes;
    let mut action = None;
    let mut from = None;
    let mut port_matches = true;
    let mut i = 0;
    let unknown = |text: &str| Rule {
        text: text.to_string(),
        cond: Cond::Unknown,
        action: Some(Action::Accept),
        from: None,
        port_matches: true,
    };
    while i < t.len() {
        let w = t[i].as_str();
        let next = t.get(i + 1).map(String::as_str);
        match (w, next) {
            ("comment", _) => i += 2,
            ("counter", _) => {
                i += 1;
                while matches!(t.get(i).map(String::as_str), Some("packets" | "bytes")) {
                    i += 2;
                }
            }
            ("log", _) => {
                i += 1;
                while matches!(
                    t.get(i).map(String::as_str),
                    Some("prefix" | "level" | "flags" | "group")
                ) {
                    i += 2;
                }
            }
            ("accept", _) => {
                action = Some(Action::Accept);
                i += 1;
            }
            ("drop", _) => {
                action = Some(Action::Drop);
                i += 1;
            }
            ("reject", _) => {
                action = Some(Action::Drop);
                i = t.len();
            }
            ("ct", Some("state")) => {
                let neg = t.get(i + 2).is_some_and(|x| x == "!=");
                let at = i + 2 + usize::from(neg);
                let Some((vals, j)) = values(&t, at) else {
                    return unknown(text);
                };
                let new = vals.iter().any(|v| v == "new");
                cond = and(cond, if new != neg { Cond::Yes } else { Cond::No });
                i = j;
            }
            ("iif" | "iifname", Some(name)) => {
                let lo = name.trim_matches('"') == "lo";
                cond = and(cond, if lo { Cond::No } else { Cond::Unknown });
                i += 2;
            }
            ("ip", Some("protocol")) | ("ip6", Some("nexthdr")) | ("meta", Some("l4proto")) => {
                let Some((vals, j)) = values(&t, i + 2) else {
                    return unknown(text);
                };
                let tcp = vals.iter().any(|v| v == "tcp" || v == "6");
                let fam = match w {
                    "ip" => p.source.map(|s| s.is_ipv4()),
                    "ip6" => p.source.map(|s| s.is_ipv6()),
                    _ => Some(true),
                };
                cond = and(
                    cond,
                    match (tcp, fam) {
                        (false, _) | (_, Some(false)) => Cond::No,
                        (true, Some(true)) => Cond::Yes,
                        (true, None) => Cond::Source,
                    },
                );
                i = j;
            }
            ("icmp" | "icmpv6" | "udp", _) => {
                cond = Cond::No;
                i = t.len();
            }
            ("ip" | "ip6", Some("saddr")) => {
                let neg = t.get(i + 2).is_some_and(|x| x == "!=");
                let at = i + 2 + usize::from(neg);
                let Some((vals, j)) = values(&t, at) else {
                    return unknown(text);
                };
                let nets: Option<Vec<Cidr>> = vals.iter().map(|v| Cidr::parse(v)).collect();
                let Some(nets) = nets else {
                    return unknown(text);
                };
                from = Some(format!(
                    "{}{}",
                    if neg { "not " } else { "" },
                    vals.join(", ")
                ));
                let c = match p.source {
                    None => Cond::Source,
                    Some(src) => {
                        let family = if w == "ip" {
                            src.is_ipv4()
                        } else {
                            src.is_ipv6()
                        };
                        let inside = nets.iter().any(|n| n.contains(src));
                        if family && inside != neg {
                            Cond::Yes
                        } else {
                            Cond::No
                        }
                    }
                };
                cond = and(cond, c);
                i = j;
            }
            ("tcp" | "th", Some("dport")) => {
                let neg = t.get(i + 2).is_some_and(|x| x == "!=");
                let at = i + 2 + usize::from(neg);
                let Some((vals, j)) = values(&t, at) else {
                    return unknown(text);
                };
                let Some(inside) = port_in(&vals, p.port) else {
                    return unknown(text);
                };
                port_matches = inside != neg;
                cond = and(cond, if port_matches { Cond::Yes } else { Cond::No });
                i = j;
            }
            _ => return unknown(text),
        }
    }
    Rule {
        text: text.to_string(),
        cond,
        action,
        from,
        port_matches,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What debian-base renders with `ssh_from = ["198.51.100.0/24"]` and a web role.
    const RESTRICTED: &str = r#"#!/usr/sbin/nft -f
# Managed by kiln (debian-base) for host web1 (roles: web).
table inet kiln
delete table inet kiln
table inet kiln {
	chain input {
		type filter hook input priority filter; policy drop;
		ct state established,related accept
		ct state invalid drop
		iif "lo" accept
		ip protocol icmp accept
		ip6 nexthdr icmpv6 accept
		ip saddr { 198.51.100.0/24 } tcp dport 22 accept
		tcp dport 80 accept comment "role web"
		tcp dport 443 accept comment "role web"
		ip saddr { 10.0.0.5 } tcp dport 3306 accept comment "role db"
	}
	chain forward {
		type filter hook forward priority filter; policy drop;
	}
	chain output {
		type filter hook output priority filter; policy accept;
	}
}
"#;

    fn from(src: Option<&str>, port: u16) -> Packet {
        Packet {
            source: src.map(|s| s.parse().unwrap()),
            port,
        }
    }

    #[test]
    fn a_source_outside_the_ssh_range_is_refused_inside_admitted() {
        assert_eq!(
            judge(RESTRICTED, from(Some("10.233.0.1"), 22)),
            Some(Verdict::Refuses {
                from: vec!["198.51.100.0/24".into()]
            })
        );
        assert_eq!(
            judge(RESTRICTED, from(Some("198.51.100.9"), 22)),
            Some(Verdict::Admits)
        );
        // IPv6 from anywhere: the IPv4 rule does not admit it.
        assert!(matches!(
            judge(RESTRICTED, from(Some("2001:db8::1"), 22)),
            Some(Verdict::Refuses { .. })
        ));
        // Unknown source: it depends on it.
        assert_eq!(
            judge(RESTRICTED, from(None, 22)),
            Some(Verdict::NeedsSource {
                from: vec!["198.51.100.0/24".into()]
            })
        );
    }

    #[test]
    fn an_open_ssh_rule_admits_anyone_and_a_port_nobody() {
        let open = RESTRICTED.replace("ip saddr { 198.51.100.0/24 } tcp dport 22", "tcp dport 22");
        assert_eq!(judge(&open, from(None, 22)), Some(Verdict::Admits));
        assert_eq!(
            judge(&open, from(Some("192.0.2.1"), 22)),
            Some(Verdict::Admits)
        );
        // kiln on port 2222, the firewall opens 22: nobody gets in.
        assert_eq!(
            judge(&open, from(None, 2222)),
            Some(Verdict::Refuses { from: vec![] })
        );
    }

    #[test]
    fn sets_ranges_negation_and_policy_accept() {
        let t = "table ip f {\n chain in {\n  type filter hook input priority 0; policy drop;\n  ip saddr != 10.0.0.0/8 tcp dport { 20-25, 80 } accept\n }\n}\n";
        assert_eq!(judge(t, from(Some("192.0.2.1"), 22)), Some(Verdict::Admits));
        assert!(matches!(
            judge(t, from(Some("10.1.1.1"), 22)),
            Some(Verdict::Refuses { .. })
        ));
        let accept = "table inet f {\n chain in {\n  type filter hook input priority 0; policy accept;\n  tcp dport 3306 drop\n }\n}\n";
        assert_eq!(judge(accept, from(None, 22)), Some(Verdict::Admits));
        // An ip table does not see IPv6 connections.
        assert_eq!(judge(t, from(Some("2001:db8::1"), 22)), None);
    }

    #[test]
    fn a_rule_not_understood_is_not_guessed_at() {
        let t = RESTRICTED.replace(
            "\t\tip saddr { 198.51.100.0/24 } tcp dport 22 accept\n",
            "\t\tip saddr @trusted tcp dport 22 accept\n",
        );
        assert_eq!(
            judge(&t, from(Some("10.233.0.1"), 22)),
            Some(Verdict::Uncertain(
                "ip saddr @trusted tcp dport 22 accept".into()
            ))
        );
        // One after the decision changes nothing.
        let t = RESTRICTED.replace(
            "\t\ttcp dport 80 accept",
            "\t\tmeta mark 0x1 accept\n\t\ttcp dport 80 accept",
        );
        assert_eq!(
            judge(&t, from(Some("198.51.100.1"), 22)),
            Some(Verdict::Admits)
        );
    }

    #[test]
    fn no_input_chain_filters_nothing() {
        let t = "table inet nat {\n chain post {\n  type nat hook postrouting priority 100;\n  masquerade\n }\n}\n";
        assert_eq!(judge(t, from(None, 22)), None);
    }
}

//! The lockout check: would applying a host's plan take kiln's own access away? Pure:
//! the host's desired state (the files kiln will write: sshd's configuration, the login
//! user's authorized_keys, sudoers, the firewall's rules, and the login user's account)
//! against how kiln connects (user, port, the public key of its key file) and, on a live
//! plan, where the host sees it come from (the `ssh-session` fact, `$SSH_CONNECTION`).
//!
//! Only what kiln manages is judged: a file kiln does not write is whatever it is today,
//! and kiln reached the host through it. What cannot be judged (no source address offline,
//! no key named, a rule beyond this parser) is said, never guessed. Its place: a planning
//! judgement over the expanded desired state and the facts, like `plan::build`, whose
//! result is part of the plan (`HostPlan::lockout`), so a saved plan carries it.
//!
//! Checked: sshd's `Port`/`ListenAddress` keep kiln's port (and address); `PermitRootLogin`
//! for a root login; `AllowUsers`/`DenyUsers`/`AllowGroups`/`DenyGroups`;
//! `PubkeyAuthentication`; `AuthenticationMethods`; the login user's authorized_keys
//! (sshd's `AuthorizedKeysFile`) keeping kiln's key, without a `command=` or a `from=`
//! that excludes kiln; for a non-root login, sudoers still letting it run kiln's command
//! as root without a password (kiln runs `sudo -n`); the firewall admitting kiln's address
//! to kiln's port; the login user neither removed nor given a shell that runs nothing.

pub mod keys;
pub mod net;
pub mod nft;
pub mod sshd;
pub mod sudoers;

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::desired::DesiredHost;
use crate::facts::{FactQuery, HostFacts, PathKind, SshEndpoints};
use crate::resource::file::FileState;
use crate::resource::Kind;

use super::Lockout;
pub use keys::PublicKey;

/// The key kiln authenticates with, as the controller knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KilnKey {
    /// Read from the private key file itself, or from the `.pub` beside it (`from`).
    Known { key: PublicKey, from: String },
    /// Not known; the text says why (no key named, the file unreadable, ...).
    Unknown(String),
}

/// Where the host saw kiln's connection come from.
enum Seen<'a> {
    Session(&'a SshEndpoints),
    /// The fact was read, and the script ran in no SSH session.
    NoSession,
    /// An offline plan: no host was read.
    Offline,
    /// The fact was not asked for.
    NotRead,
}

/// The fact the check needs besides the host's own: the SSH session, when a rule kiln
/// writes admits SSH by source address (or names the address sshd listens on). Asked
/// only then, so a host whose spec restricts nothing by address reads nothing more.
pub fn queries(host: &DesiredHost, key: &KilnKey) -> Vec<FactQuery> {
    let mut c = Check::new(host, key, None);
    c.seen = Seen::NotRead;
    c.run();
    if c.needs_source {
        vec![FactQuery::SshSession]
    } else {
        vec![]
    }
}

/// The check for `host`: `facts` is `None` for an offline plan.
pub fn check(host: &DesiredHost, key: &KilnKey, facts: Option<&HostFacts>) -> Lockout {
    let mut c = Check::new(host, key, facts);
    c.run();
    c.out
}

struct Check<'a> {
    host: &'a DesiredHost,
    user: &'a str,
    key: &'a KilnKey,
    facts: Option<&'a HostFacts>,
    seen: Seen<'a>,
    /// Managed path → content (`None`: kiln removes it).
    files: BTreeMap<&'a str, Option<&'a str>>,
    out: Lockout,
    needs_source: bool,
}

impl<'a> Check<'a> {
    fn new(host: &'a DesiredHost, key: &'a KilnKey, facts: Option<&'a HostFacts>) -> Check<'a> {
        let mut files = BTreeMap::new();
        for r in &host.resources {
            if let Kind::File(f) = &r.kind {
                let content = match f.state {
                    FileState::Absent => None,
                    FileState::Present => match &f.content {
                        Some(c) => Some(c.as_str()),
                        // A file kept as it is (no content): not written by kiln.
                        None => continue,
                    },
                };
                files.insert(f.path.as_str(), content);
            }
        }
        let seen = match facts {
            None => Seen::Offline,
            Some(f) => match &f.ssh_session {
                None => Seen::NotRead,
                Some(s) => match &s.seen {
                    Some(e) => Seen::Session(e),
                    None => Seen::NoSession,
                },
            },
        };
        Check {
            host,
            user: &host.connection.user,
            key,
            facts,
            seen,
            files,
            out: Lockout::default(),
            needs_source: false,
        }
    }

    fn run(&mut self) {
        self.account();
        self.sshd();
        self.authorized_keys();
        self.sudo();
        self.firewall();
    }

    fn reason(&mut self, r: String) {
        self.out.reasons.push(r);
    }

    fn not_checked(&mut self, n: String) {
        self.out.not_checked.push(n);
    }

    /// The address the host sees kiln connect from.
    fn source(&self) -> Option<IpAddr> {
        match &self.seen {
            Seen::Session(e) => net::parse_ip(&e.client),
            _ => None,
        }
    }

    /// The port the host's sshd sees kiln connect to (the spec's port, unless a NAT or a
    /// jump host maps it).
    fn port(&self) -> u16 {
        match &self.seen {
            Seen::Session(e) => e.server_port,
            _ => self.host.connection.port,
        }
    }

    /// Why the source address is not known (`needs_source` is set: a live plan asks).
    fn source_unknown(&mut self) -> &'static str {
        self.needs_source = true;
        match self.seen {
            Seen::Offline => "kiln's source address is not known offline",
            Seen::NoSession => "the host saw no SSH session ($SSH_CONNECTION unset)",
            Seen::NotRead | Seen::Session(_) => "kiln's source address was not read",
        }
    }

    /// The login user's `user` resource, if kiln manages the account.
    fn account_resource(&self) -> Option<&'a crate::resource::User> {
        self.host.resources.iter().find_map(|r| match &r.kind {
            Kind::User(u) if u.name == self.user => Some(u),
            _ => None,
        })
    }

    /// The login user's groups as far as they are known (primary group by Debian's
    /// convention, the managed account's groups, the host's when read); `None` when
    /// nothing is known of an account kiln does not manage.
    fn groups(&self) -> Option<Vec<String>> {
        let managed = self.account_resource();
        let fact = self
            .facts
            .and_then(|f| f.users.get(self.user))
            .and_then(|u| u.as_ref());
        if managed.is_none() && fact.is_none() && self.user != "root" {
            return None;
        }
        let mut g = vec![self.user.to_string()];
        g.extend(managed.iter().flat_map(|u| u.groups.iter().cloned()));
        g.extend(fact.iter().flat_map(|u| u.groups.iter().cloned()));
        g.sort();
        g.dedup();
        Some(g)
    }

    fn home(&self) -> String {
        if self.user == "root" {
            return "/root".into();
        }
        if let Some(u) = self.account_resource() {
            return u.home();
        }
        self.facts
            .and_then(|f| f.users.get(self.user))
            .and_then(|u| u.as_ref())
            .map(|u| u.home.clone())
            .unwrap_or_else(|| format!("/home/{}", self.user))
    }

    // ---------------------------------------------------------------------------------
    // The account

    fn account(&mut self) {
        let Some(u) = self.account_resource() else {
            return;
        };
        if !u.present {
            self.reason(format!(
                "the user {} kiln logs in as would be removed (user:{})",
                self.user, self.user
            ));
        } else if [
            "/usr/sbin/nologin",
            "/sbin/nologin",
            "/bin/false",
            "/usr/bin/false",
        ]
        .contains(&u.shell.as_str())
        {
            self.reason(format!(
                "the login shell of {} would be {}, and kiln runs its commands through it (user:{})",
                self.user, u.shell, self.user
            ));
        }
    }

    // ---------------------------------------------------------------------------------
    // sshd

    fn sshd_config(&self) -> Option<sshd::Sshd> {
        let main = self.files.get(sshd::MAIN).copied().flatten();
        let dropins: Vec<(&str, &str)> = self
            .files
            .iter()
            .filter(|(p, _)| sshd::is_dropin(p))
            .filter_map(|(p, c)| c.map(|c| (*p, c)))
            .collect();
        (main.is_some() || !dropins.is_empty()).then(|| sshd::effective(main, &dropins))
    }

    fn sshd(&mut self) {
        let Some(s) = self.sshd_config() else {
            return;
        };
        let user = self.user.to_string();
        self.sshd_listen(&s);
        if let Some(p) = &s.permit_root_login {
            let v = p.value.to_ascii_lowercase();
            if user == "root" && (v == "no" || v == "forced-commands-only") {
                self.reason(format!(
                    "sshd would refuse root logins (PermitRootLogin {} in {}), and kiln logs in as root",
                    p.value, p.file
                ));
            }
        }
        if let Some(p) = &s.pubkey_authentication {
            if p.value.eq_ignore_ascii_case("no") {
                self.reason(format!(
                    "sshd would refuse public keys (PubkeyAuthentication no in {}), and kiln logs in with a key",
                    p.file
                ));
            }
        }
        if let Some(m) = &s.authentication_methods {
            let ok = m.value.eq_ignore_ascii_case("any")
                || m.value
                    .split_whitespace()
                    .any(|list| list.eq_ignore_ascii_case("publickey"));
            if !ok {
                self.reason(format!(
                    "sshd would require AuthenticationMethods {} (in {}), and kiln authenticates with one key and nothing else",
                    m.value, m.file
                ));
            }
        }
        self.sshd_users(&s);
        self.sshd_groups(&s);
        for c in &s.conditional {
            self.not_checked(format!(
                "sshd's {c} applies to some connections only: not checked"
            ));
        }
    }

    fn sshd_listen(&mut self, s: &sshd::Sshd) {
        let port = self.port();
        let ports: Vec<u16> = if s.ports.is_empty() {
            vec![22]
        } else {
            s.ports
                .iter()
                .filter_map(|p| p.value.parse().ok())
                .collect()
        };
        let files = |v: &[sshd::Setting]| {
            let mut f: Vec<&str> = v.iter().map(|s| s.file.as_str()).collect();
            f.dedup();
            f.join(", ")
        };
        let list = |v: &[u16]| v.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
        if s.listen.is_empty() {
            if !s.ports.is_empty() && !ports.contains(&port) {
                self.reason(format!(
                    "sshd would listen only on port {} (Port in {}), and kiln connects to port {port}",
                    list(&ports),
                    files(&s.ports)
                ));
            }
            return;
        }
        // (address, port) pairs sshd listens on.
        let mut endpoints: Vec<(String, u16)> = vec![];
        for l in &s.listen {
            let (addr, own) = sshd::listen_parts(&l.value);
            match own {
                Some(p) => endpoints.push((addr, p)),
                None => endpoints.extend(ports.iter().map(|p| (addr.clone(), *p))),
            }
        }
        let shown = endpoints
            .iter()
            .map(|(a, p)| {
                if a.contains(':') {
                    format!("[{a}]:{p}")
                } else {
                    format!("{a}:{p}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let on_port: Vec<&String> = endpoints
            .iter()
            .filter(|(_, p)| *p == port)
            .map(|(a, _)| a)
            .collect();
        if on_port.is_empty() {
            self.reason(format!(
                "sshd would listen only on {shown} (ListenAddress in {}), and kiln connects to port {port}",
                files(&s.listen)
            ));
            return;
        }
        let wildcard = |a: &str| matches!(a, "0.0.0.0" | "::" | "*" | "");
        if on_port.iter().any(|a| wildcard(a)) {
            return;
        }
        let server = match &self.seen {
            Seen::Session(e) => net::parse_ip(&e.server),
            _ => None,
        };
        let Some(server) = server else {
            let why = self
                .source_unknown()
                .replace("source address", "address at the host");
            self.not_checked(format!(
                "sshd would listen only on {shown} (ListenAddress in {}): {why}, so whether it is one of them was not checked",
                files(&s.listen)
            ));
            return;
        };
        let ips: Vec<Option<IpAddr>> = on_port.iter().map(|a| net::parse_ip(a)).collect();
        if ips.contains(&Some(server)) {
            return;
        }
        if ips.iter().any(Option::is_none) {
            self.not_checked(format!(
                "sshd would listen only on {shown} (ListenAddress in {}), which names a host: not checked",
                files(&s.listen)
            ));
            return;
        }
        self.reason(format!(
            "sshd would listen only on {shown} (ListenAddress in {}), and kiln connects to {}",
            files(&s.listen),
            if server.is_ipv6() {
                format!("[{server}]:{port}")
            } else {
                format!("{server}:{port}")
            }
        ));
    }

    /// Does `pattern` (`user` or `user@host`) match the login user from kiln's address?
    /// `None`: its host part cannot be judged.
    fn user_pattern(&mut self, pattern: &str) -> Option<bool> {
        let (u, h) = match pattern.split_once('@') {
            Some((u, h)) => (u, Some(h)),
            None => (pattern, None),
        };
        if !net::wildcard(u, self.user) {
            return Some(false);
        }
        match (h, self.source()) {
            (None, _) => Some(true),
            (Some(h), Some(src)) => net::pattern_list_admits(h, src),
            (Some(_), None) => None,
        }
    }

    fn sshd_users(&mut self, s: &sshd::Sshd) {
        let user = self.user.to_string();
        let from = |c: &Check| c.source().map(|a| format!(" from {a}")).unwrap_or_default();
        for d in &s.deny_users {
            match self.user_pattern(&d.value) {
                Some(true) => {
                    let f = from(self);
                    self.reason(format!(
                        "sshd would deny {user}{f} (DenyUsers {} in {}), and kiln logs in as {user}",
                        d.value, d.file
                    ));
                }
                Some(false) => {}
                None => {
                    let why = self.source_unknown();
                    self.not_checked(format!(
                        "sshd's DenyUsers {} (in {}) depends on where kiln connects from: {why}",
                        d.value, d.file
                    ));
                }
            }
        }
        if s.allow_users.is_empty() {
            return;
        }
        let mut admitted = false;
        let mut undecided = false;
        for a in &s.allow_users {
            match self.user_pattern(&a.value) {
                Some(true) => admitted = true,
                Some(false) => {}
                None => undecided = true,
            }
        }
        let patterns: Vec<&str> = s.allow_users.iter().map(|a| a.value.as_str()).collect();
        let file = &s.allow_users[0].file;
        if admitted {
        } else if undecided {
            let why = self.source_unknown();
            self.not_checked(format!(
                "sshd would admit only AllowUsers {} (in {file}), which depends on where kiln connects from: {why}",
                patterns.join(" ")
            ));
        } else {
            let f = from(self);
            self.reason(format!(
                "sshd would admit only AllowUsers {} (in {file}), and kiln logs in as {user}{f}",
                patterns.join(" ")
            ));
        }
    }

    fn sshd_groups(&mut self, s: &sshd::Sshd) {
        if s.allow_groups.is_empty() && s.deny_groups.is_empty() {
            return;
        }
        let user = self.user.to_string();
        let Some(groups) = self.groups() else {
            self.not_checked(format!(
                "sshd's AllowGroups/DenyGroups: the groups of {user} (an account kiln does not manage) are not known: not checked"
            ));
            return;
        };
        let member = |p: &str| groups.iter().any(|g| net::wildcard(p, g));
        for d in &s.deny_groups {
            if member(&d.value) {
                self.reason(format!(
                    "sshd would deny the members of {} (DenyGroups in {}), and kiln logs in as {user}, one of them",
                    d.value, d.file
                ));
            }
        }
        if !s.allow_groups.is_empty() && !s.allow_groups.iter().any(|a| member(&a.value)) {
            let patterns: Vec<&str> = s.allow_groups.iter().map(|a| a.value.as_str()).collect();
            self.reason(format!(
                "sshd would admit only the members of AllowGroups {} (in {}), and kiln logs in as {user}, in {}",
                patterns.join(" "),
                s.allow_groups[0].file,
                groups.join(", ")
            ));
        }
    }

    // ---------------------------------------------------------------------------------
    // authorized_keys

    /// The files sshd reads the login user's keys from (`AuthorizedKeysFile`).
    fn authorized_files(&self, s: Option<&sshd::Sshd>) -> Vec<String> {
        let setting = s
            .and_then(|s| s.authorized_keys_file.as_ref())
            .map(|a| a.value.clone())
            .unwrap_or_else(|| ".ssh/authorized_keys .ssh/authorized_keys2".into());
        let home = self.home();
        setting
            .split_whitespace()
            .filter(|f| *f != "none" && !f.contains("%U"))
            .map(|f| {
                let f = f
                    .replace("%h", &home)
                    .replace("%u", self.user)
                    .replace("%%", "%");
                if f.starts_with('/') {
                    f
                } else {
                    format!("{}/{f}", home.trim_end_matches('/'))
                }
            })
            .collect()
    }

    fn authorized_keys(&mut self) {
        let s = self.sshd_config();
        let paths = self.authorized_files(s.as_ref());
        // Only a file kiln writes is judged, and the first one sshd reads must be one.
        let Some(first) = paths.first() else {
            return;
        };
        if !self.files.contains_key(first.as_str()) {
            return;
        }
        let user = self.user.to_string();
        if let Some(cmd) = s.as_ref().and_then(|s| s.authorized_keys_command.as_ref()) {
            self.not_checked(format!(
                "{first} ({user}'s authorized_keys): sshd would also ask AuthorizedKeysCommand {} (in {}): not checked",
                cmd.value, cmd.file
            ));
            return;
        }
        let (key, from) = match self.key {
            KilnKey::Known { key, from } => (key.clone(), from.clone()),
            KilnKey::Unknown(why) => {
                let why = why.clone();
                self.not_checked(format!(
                    "{first} ({user}'s authorized_keys) is written by kiln, and {why}: whether it keeps kiln's key was not checked"
                ));
                return;
            }
        };
        if key.is_certificate() {
            self.not_checked(format!(
                "kiln authenticates with a certificate ({from}), which sshd admits through its CA, not {first}: not checked"
            ));
            return;
        }
        let managed: Vec<(String, Option<&str>)> = paths
            .iter()
            .filter_map(|p| self.files.get(p.as_str()).map(|c| (p.clone(), *c)))
            .collect();
        let found = managed.iter().find_map(|(p, c)| {
            c.and_then(|c| {
                keys::authorized_keys(c)
                    .into_iter()
                    .find(|a| a.key == key)
                    .map(|a| (p.clone(), a))
            })
        });
        let Some((path, line)) = found else {
            let what = match self.files.get(first.as_str()) {
                Some(None) => "would be removed".to_string(),
                _ => "would not hold kiln's key".to_string(),
            };
            self.reason(format!(
                "{first} ({user}'s authorized_keys) {what}, and kiln logs in with {} (read from {from})",
                key.describe()
            ));
            return;
        };
        if let Some(cmd) = line.option("command") {
            self.reason(format!(
                "kiln's key in {path} would carry command=\"{}\": sshd would run that instead of kiln's commands",
                cmd.unwrap_or_default()
            ));
        }
        if let Some(Some(list)) = line.option("from") {
            match self.source() {
                Some(src) => {
                    if net::pattern_list_admits(list, src) == Some(false) {
                        self.reason(format!(
                            "kiln's key in {path} would be admitted only from=\"{list}\", and kiln connects from {src}"
                        ));
                    }
                }
                None => {
                    let why = self.source_unknown();
                    self.not_checked(format!(
                        "kiln's key in {path} would be admitted only from=\"{list}\": {why}, so whether it is admitted was not checked"
                    ));
                }
            }
        }
    }

    // ---------------------------------------------------------------------------------
    // sudo

    fn sudo(&mut self) {
        if self.user == "root" {
            return;
        }
        let sudoers: Vec<(&'a str, Option<&'a str>)> = self
            .files
            .iter()
            .filter(|(p, _)| **p == sudoers::MAIN || sudoers::is_dropin(p))
            .map(|(p, c)| (*p, *c))
            .collect();
        if sudoers.is_empty() {
            return;
        }
        let user = self.user.to_string();
        let groups = self.groups().unwrap_or_else(|| vec![user.clone()]);
        let decide = |files: &[(&str, &str)]| {
            let main = files.iter().find(|(p, _)| *p == sudoers::MAIN).map(|f| f.1);
            let dropins: Vec<(&str, &str)> = files
                .iter()
                .filter(|(p, _)| *p != sudoers::MAIN)
                .copied()
                .collect();
            sudoers::decision(main, &dropins, &user, &groups)
        };
        let desired: Vec<(&str, &str)> = sudoers
            .iter()
            .filter_map(|(p, c)| c.map(|c| (*p, c)))
            .collect();
        match decide(&desired) {
            Some(d) if d.nopasswd => return,
            Some(d) => {
                self.reason(format!(
                    "sudo would ask {user} for a password or refuse ({}: `{}`), and kiln runs sudo -n",
                    d.file, d.rule
                ));
                return;
            }
            None => {}
        }
        // The files kiln writes grant nothing to the user: kiln's sudo -n works today
        // through another rule, unless it is one of these files' current content.
        let Some(facts) = self.facts else {
            self.not_checked(format!(
                "the sudoers files kiln writes do not let {user} run commands as root without a password; whether another rule does is not known offline, so kiln's sudo -n was not checked"
            ));
            return;
        };
        let mut current: Vec<(&str, String)> = vec![];
        for (path, want) in &sudoers {
            let fact = facts.path(path);
            match fact.kind {
                PathKind::Missing => {}
                _ if fact.matches == Some(true) => {
                    if let Some(w) = want {
                        current.push((path, w.to_string()));
                    }
                }
                _ => match fact.content {
                    Some(c) => current.push((path, c)),
                    None => {
                        self.not_checked(format!(
                            "the sudoers files kiln writes do not let {user} run commands as root without a password, and what {path} holds today was not read: kiln's sudo -n was not checked"
                        ));
                        return;
                    }
                },
            }
        }
        let now: Vec<(&str, &str)> = current.iter().map(|(p, c)| (*p, c.as_str())).collect();
        if let Some(d) = decide(&now).filter(|d| d.nopasswd) {
            self.reason(format!(
                "sudoers would no longer let {user} run commands as root without a password ({} grants it today: `{}`), and kiln runs sudo -n",
                d.file, d.rule
            ));
        }
    }

    // ---------------------------------------------------------------------------------
    // The firewall

    fn firewall(&mut self) {
        let Some(Some(text)) = self.files.get(nft::PATH).copied() else {
            return;
        };
        let port = self.port();
        let source = self.source();
        let Some(v) = nft::judge(text, nft::Packet { source, port }) else {
            return;
        };
        let fw = format!("the firewall ({})", nft::PATH);
        match v {
            nft::Verdict::Admits => {}
            nft::Verdict::Refuses { from } if from.is_empty() => self.reason(format!(
                "{fw} would admit no new SSH connection on port {port}, the port kiln connects to"
            )),
            nft::Verdict::Refuses { from } => {
                let who = match source {
                    Some(s) => format!(", and kiln connects from {s}"),
                    None => String::new(),
                };
                self.reason(format!(
                    "{fw} admits SSH (port {port}) only from {}{who}",
                    from.join(", ")
                ))
            }
            nft::Verdict::NeedsSource { from } => {
                let why = self.source_unknown();
                self.not_checked(format!(
                    "{fw} admits SSH (port {port}) only from {}: {why}, so whether kiln is admitted was not checked",
                    from.join(", ")
                ));
            }
            nft::Verdict::Uncertain(rule) => self.not_checked(format!(
                "{fw}: its rule `{}` is beyond what kiln judges, so whether it admits kiln was not checked",
                rule.trim()
            )),
        }
    }
}

#[cfg(test)]
mod tests;

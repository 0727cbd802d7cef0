//! Addresses for the lockout check: an address as hosts print it, CIDR networks, and
//! OpenSSH's pattern lists (`*`, `?`, `!`, and `addr/len` where sshd takes CIDR).

use std::net::IpAddr;

/// An address as sshd or nft write it: IPv4, IPv6 (brackets and a `%zone` allowed), an
/// IPv4-mapped IPv6 address taken as the IPv4 one (how a dual-stack socket shows it).
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_start_matches('[').trim_end_matches(']');
    let s = s.split('%').next().unwrap_or(s);
    match s.parse::<IpAddr>().ok()? {
        IpAddr::V6(v6) => Some(
            v6.to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
        ),
        v4 => Some(v4),
    }
}

/// A network: `10.0.0.0/8`, `2001:db8::/32`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub net: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().ok()?)),
            None => (s.trim(), None),
        };
        let net = parse_ip(addr)?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Cidr { net, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// OpenSSH's wildcard match: `*` any run of characters, `?` one.
pub fn wildcard(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Does a comma-separated pattern list (sshd's `from=`, the host part of `AllowUsers
/// user@host`) admit the address `addr`? A pattern is an address wildcard or `addr/len`; a
/// `!` pattern that matches denies whatever else matched (as OpenSSH's
/// `match_host_and_ip`). Host names cannot be judged from an address: a list that names
/// any gives `None` unless an address pattern already decided.
pub fn pattern_list_admits(list: &str, addr: IpAddr) -> Option<bool> {
    let text = addr.to_string();
    let mut admitted = false;
    let mut names = false;
    for raw in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (negated, p) = match raw.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, raw),
        };
        let matched = if p.contains('/') {
            Cidr::parse(p).is_some_and(|c| c.contains(addr))
        } else if p
            .chars()
            .all(|c| c.is_ascii_hexdigit() || ".:*?".contains(c))
        {
            wildcard(p, &text)
        } else {
            names = true;
            false
        };
        if matched && negated {
            return Some(false);
        }
        admitted |= matched;
    }
    if admitted {
        Some(true)
    } else if names {
        None
    } else {
        Some(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        parse_ip(s).unwrap()
    }

    #[test]
    fn networks_contain_their_addresses_only() {
        let n = Cidr::parse("198.51.100.0/24").unwrap();
        assert!(n.contains(ip("198.51.100.7")));
        assert!(!n.contains(ip("198.51.101.7")));
        assert!(!n.contains(ip("10.233.0.1")));
        assert!(Cidr::parse("10.233.0.1")
            .unwrap()
            .contains(ip("10.233.0.1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("192.0.2.1")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")));
        assert!(!v6.contains(ip("2001:db9::5")));
        // One family never contains the other's addresses.
        assert!(!v6.contains(ip("10.0.0.1")));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("example.com").is_none());
    }

    #[test]
    fn mapped_and_bracketed_addresses_are_plain_ones() {
        assert_eq!(ip("::ffff:10.233.0.1"), ip("10.233.0.1"));
        assert_eq!(ip("[2001:db8::1]"), ip("2001:db8::1"));
        assert_eq!(ip("fe80::1%eth0"), ip("fe80::1"));
    }

    #[test]
    fn wildcards_as_openssh() {
        assert!(wildcard("*", "deploy"));
        assert!(wildcard("dep*", "deploy"));
        assert!(wildcard("d?ploy", "deploy"));
        assert!(!wildcard("d?ploy", "dploy"));
        assert!(wildcard("10.233.0.*", "10.233.0.1"));
        assert!(!wildcard("admin", "deploy"));
    }

    #[test]
    fn pattern_lists_with_negation_cidr_and_names() {
        let a = ip("10.233.0.1");
        assert_eq!(pattern_list_admits("10.233.0.0/24", a), Some(true));
        assert_eq!(pattern_list_admits("192.0.2.*,10.233.0.?", a), Some(true));
        assert_eq!(
            pattern_list_admits("10.233.0.0/24,!10.233.0.1", a),
            Some(false)
        );
        assert_eq!(pattern_list_admits("198.51.100.0/24", a), Some(false));
        // A host name could be this address: not judged.
        assert_eq!(pattern_list_admits("bastion.example.com", a), None);
        assert_eq!(
            pattern_list_admits("bastion.example.com,10.233.0.1", a),
            Some(true)
        );
    }
}

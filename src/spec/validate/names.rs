//! The grammars of single values: user, group, package and unit names, paths, host names,
//! addresses, URLs… Each is the receiving tool's own grammar (useradd, apt, systemd, ssh),
//! not a stricter one.
//!
//! Most are one [`Word`]: which characters may start a value and fill it, and how long it
//! may be, with the message that names the value when it does not fit. The few that parse
//! (paths, addresses, networks, unit names) are written out.

use std::net::IpAddr;
use std::ops::RangeInclusive;

/// The grammar of a word: the class of its first character, the class of every character,
/// its length in bytes and, rarely, a rule on the whole word. `message` is what is wrong
/// with a value that does not fit, `{}` standing for the value.
pub struct Word {
    pub first: fn(char) -> bool,
    pub chars: fn(char) -> bool,
    pub len: RangeInclusive<usize>,
    pub also: fn(&str) -> bool,
    pub message: &'static str,
}

/// Any length a word may have (it is never empty).
const ANY_LEN: RangeInclusive<usize> = 1..=usize::MAX;

impl Word {
    /// A word of `len` bytes, every character (the first too) of class `chars`.
    const fn new(
        chars: fn(char) -> bool,
        len: RangeInclusive<usize>,
        message: &'static str,
    ) -> Word {
        Word {
            first: |_| true,
            chars,
            len,
            also: |_| true,
            message,
        }
    }

    pub fn matches(&self, s: &str) -> bool {
        self.len.contains(&s.len())
            && s.chars().next().is_some_and(self.first)
            && s.chars().all(self.chars)
            && (self.also)(s)
    }

    /// The message for a value that does not fit.
    pub fn error(&self, s: &str) -> String {
        self.message.replacen("{}", &shown(s), 1)
    }

    pub fn check(&self, s: &str) -> Result<(), String> {
        if self.matches(s) {
            Ok(())
        } else {
            Err(self.error(s))
        }
    }
}

// ---------------------------------------------------------------------------------------
// The words

/// useradd's default NAME_REGEX without its `$` (`^[a-z_][a-z0-9_-]*`).
const USER: Word = Word {
    first: |c| c.is_ascii_lowercase() || c == '_',
    chars: |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-',
    ..Word::new(
        |_| true,
        ANY_LEN,
        "`{}` is not a user or group name (useradd's NAME_REGEX `^[a-z_][a-z0-9_-]*[$]?$`)",
    )
};

/// A Debian package name without its `:arch` (`^[a-z0-9][a-z0-9+.-]+$`).
const PACKAGE: Word = Word {
    first: |c| c.is_ascii_lowercase() || c.is_ascii_digit(),
    ..Word::new(
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '.' | '-'),
        2..=usize::MAX,
        "`{}` is not a Debian package name (`^[a-z0-9][a-z0-9+.-]+$`, optionally `:arch`)",
    )
};

/// The `:arch` of a package name (its message names both, see [`package_name`]).
const ARCH: Word = Word {
    first: |c| c != '-',
    ..Word::new(
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-',
        ANY_LEN,
        "`{}` is not a Debian architecture",
    )
};

const VERSION: Word = Word {
    first: |c| c.is_ascii_alphanumeric(),
    ..Word::new(
        |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '~' | ':' | '-' | '*'),
        ANY_LEN,
        "`{}` is not a Debian version (letters, digits and `.+~:-*`, starting with a letter or digit)",
    )
};

/// One label of a DNS name: not starting or ending with `-`, at most 63.
const LABEL: Word = Word {
    first: |c| c != '-',
    also: |s| !s.ends_with('-'),
    ..Word::new(
        |c| c.is_ascii_alphanumeric() || c == '-',
        1..=63,
        "`{}` is not a host name label",
    )
};

const SSH_USER: Word = Word {
    first: |c| c != '-',
    ..Word::new(
        |c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'),
        1..=32,
        "`{}` is not an ssh user name (letters, digits, `_.-`, not starting with `-`)",
    )
};

/// The local part of an email address.
const EMAIL_LOCAL: Word = Word {
    first: |c| !matches!(c, '-' | '.'),
    ..Word::new(
        |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '%' | '+' | '-'),
        1..=64,
        "`{}` is not an email address",
    )
};

const WORD: Word = Word {
    first: |c| !matches!(c, '-' | '.'),
    ..Word::new(
        |c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'),
        1..=64,
        "`{}` is not a plain name (letters, digits, `_.-`, not starting with `-` or `.`)",
    )
};

const SIZE: Word = Word {
    first: |c| c.is_ascii_digit(),
    ..Word::new(
        |c| c.is_ascii_alphanumeric() || c == '/' || c == '.',
        1..=32,
        "`{}` is not a size or duration (a number and a unit, like `512M` or `6h`)",
    )
};

const LOCALE: Word = Word {
    first: |c| c.is_ascii_alphabetic(),
    ..Word::new(
        |c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@' | '-'),
        1..=64,
        "`{}` is not a locale name (like `en_US.UTF-8`)",
    )
};

const TIMEZONE: Word = Word {
    first: |c| !matches!(c, '/' | '-' | '.'),
    also: |s| {
        !s.ends_with('/') && !s.contains("//") && !s.split('/').any(|c| c == ".." || c == ".")
    },
    ..Word::new(
        |c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '/'),
        1..=64,
        "`{}` is not a time zone name (like `Europe/Berlin`)",
    )
};

const URL_PATH: Word = Word {
    first: |c| c == '/',
    ..Word::new(
        |c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '~' | '%' | '-'),
        ANY_LEN,
        "`{}` is not a URL path (`/`, then letters, digits and `/._~%-`)",
    )
};

/// A host of the environment: a [`WORD`] named as a host.
const HOST_NAME: Word = Word {
    message: "host name `{}` must be letters, digits and `_.-` (not starting with `-` or `.`)",
    ..WORD
};

const SECRET_NAME: Word = Word {
    first: |c| c != '-',
    ..Word::new(
        |c| c.is_ascii_alphanumeric() || c == '_' || c == '-',
        ANY_LEN,
        "secret name `{}` must be letters, digits, `_` and `-`",
    )
};

/// POSIX: `[A-Za-z_][A-Za-z0-9_]*`.
const ENV_VAR: Word = Word {
    first: |c| c.is_ascii_alphabetic() || c == '_',
    ..Word::new(
        |c| c.is_ascii_alphanumeric() || c == '_',
        ANY_LEN,
        "`{}` is not an environment variable name",
    )
};

const APT_WORD: Word = Word {
    first: |c| c != '-',
    ..Word::new(
        |c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/'),
        ANY_LEN,
        "`{}` is not an apt suite or component",
    )
};

const SQL_NAME: Word = Word::new(
    |c| c.is_ascii_alphanumeric() || c == '_',
    1..=64,
    "`{}` is not a database or account name (letters, digits, `_`)",
);

const SQL_HOST: Word = Word::new(
    |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '%' | ':' | '/'),
    1..=255,
    "`{}` is not an account host pattern",
);

// ---------------------------------------------------------------------------------------
// The checks (a `Check` each, for the formats table and the validators)

/// useradd's default NAME_REGEX `^[a-z_][a-z0-9_-]*[$]?$`, at most 32 characters.
pub fn user_name(s: &str) -> Result<(), String> {
    USER.check(s.strip_suffix('$').unwrap_or(s))
        .map_err(|_| USER.error(s))?;
    if s.len() > 32 {
        return Err(format!(
            "`{}` is longer than 32 characters (useradd's limit)",
            shown(s)
        ));
    }
    Ok(())
}

/// The owner or group of a path: a name as [`user_name`], or a numeric id.
pub fn owner(s: &str) -> Result<(), String> {
    if !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(());
    }
    user_name(s)
}

/// A Debian package name (`^[a-z0-9][a-z0-9+.-]+$`, Debian Policy 5.6.1) with an optional
/// `:arch` qualifier.
pub fn package_name(s: &str) -> Result<(), String> {
    let (name, arch) = match s.split_once(':') {
        Some((n, a)) => (n, Some(a)),
        None => (s, None),
    };
    if !PACKAGE.matches(name) {
        return Err(PACKAGE.error(s));
    }
    match arch {
        Some(arch) if !ARCH.matches(arch) => Err(format!("`{}`: {}", shown(s), ARCH.error(arch))),
        _ => Ok(()),
    }
}

/// A version pin for `apt-get install NAME=VERSION` (Debian Policy 5.6.12, plus apt's `*`).
pub fn package_version(s: &str) -> Result<(), String> {
    VERSION.check(s)
}

/// Suffixes systemd knows (`systemd.unit(5)`).
const UNIT_SUFFIXES: &[&str] = &[
    "service",
    "socket",
    "timer",
    "target",
    "path",
    "mount",
    "automount",
    "swap",
    "slice",
    "scope",
    "device",
];

/// A systemd unit name (`systemd.unit(5)`): `[A-Za-z0-9:_.\@-]`, at most 255 characters,
/// no `/`; a name without a known suffix is a `.service` (as `systemctl` reads it).
pub fn unit_name(s: &str) -> Result<(), String> {
    let full = crate::facts::unit_name(s);
    let bad = |why: &str| Err(format!("`{}` is not a systemd unit name: {why}", shown(s)));
    if s.is_empty() {
        return bad("it is empty");
    }
    if s.contains('/') {
        return bad("it contains `/`");
    }
    if s.contains("..") {
        return bad("it contains `..`");
    }
    if s.starts_with('-') || s.starts_with('.') {
        return bad("it starts with `-` or `.`");
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '\\' | '@' | '-')))
    {
        return bad(&format!("{c:?} is not allowed (only `A-Za-z0-9:_.\\@-`)"));
    }
    if full.len() > 255 {
        return bad("it is longer than 255 characters");
    }
    let (stem, suffix) = full.rsplit_once('.').unwrap_or((&full, ""));
    if stem.is_empty() || !UNIT_SUFFIXES.contains(&suffix) {
        return bad("no valid unit suffix");
    }
    Ok(())
}

/// An absolute, normalised path: starts with `/`, no `.` or `..` component, no `//`, no
/// trailing `/`, no control character (NUL, newline).
pub fn abs_path(s: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("path `{}` {why}", shown(s)));
    if !s.starts_with('/') {
        return bad("must be absolute");
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return bad(&format!("contains the control character {c:?}"));
    }
    if s.len() > 4096 {
        return bad("is longer than PATH_MAX");
    }
    if s == "/" {
        return Ok(());
    }
    if s.contains("//") {
        return bad("is not normalised (`//`)");
    }
    if s.ends_with('/') {
        return bad("is not normalised (trailing `/`)");
    }
    if s.split('/').any(|c| c == "..") {
        return bad("climbs with `..`");
    }
    if s.split('/').any(|c| c == ".") {
        return bad("is not normalised (`.` component)");
    }
    Ok(())
}

/// Directories whose purge would wreck the system: `/`, every top-level system directory,
/// and a few that hold the packaged system below them.
pub fn purge_allowed(path: &str) -> Result<(), String> {
    const TOP: &[&str] = &[
        "etc", "usr", "var", "boot", "root", "home", "bin", "sbin", "opt", "srv", "run", "proc",
        "sys", "dev", "tmp", "mnt", "media",
    ];
    const DEEPER: &[&str] = &[
        "/usr/bin",
        "/usr/sbin",
        "/usr/lib",
        "/usr/local",
        "/usr/share",
        "/var/lib",
        "/var/log",
        "/var/cache",
        "/etc/systemd",
        "/etc/systemd/system",
    ];
    let p = path.trim_end_matches('/');
    let refuse = p.is_empty()
        || p.strip_prefix('/')
            .map(|top| !top.contains('/') && (TOP.contains(&top) || top.starts_with("lib")))
            .unwrap_or(false)
        || DEEPER.contains(&p);
    if refuse {
        Err(format!(
            "`purge = true` on `{}` would remove everything kiln does not manage in a system directory; purge only a directory of your own",
            shown(path)
        ))
    } else {
        Ok(())
    }
}

/// A DNS host name (RFC 1123 labels): `[A-Za-z0-9-]` labels of 1–63, not starting or
/// ending with `-`, at most 253 characters.
pub fn hostname(s: &str) -> Result<(), String> {
    let t = s.strip_suffix('.').unwrap_or(s);
    if !t.is_empty() && t.len() <= 253 && t.split('.').all(|l| LABEL.matches(l)) {
        Ok(())
    } else {
        Err(format!("`{}` is not a host name", shown(s)))
    }
}

/// A domain of a site or certificate: a host name, optionally a `*.` wildcard.
pub fn domain(s: &str) -> Result<(), String> {
    hostname(s.strip_prefix("*.").unwrap_or(s))
        .map_err(|_| format!("`{}` is not a domain name", shown(s)))
}

/// A host's address: an IP address or a host name (nothing ssh could read as an option).
pub fn address(s: &str) -> Result<(), String> {
    if s.parse::<IpAddr>().is_ok() || hostname(s).is_ok() {
        Ok(())
    } else {
        Err(format!(
            "`{}` is neither an IP address nor a host name",
            shown(s)
        ))
    }
}

/// A login name for ssh: letters, digits, `_.-`, not starting with `-`, at most 32.
pub fn ssh_user(s: &str) -> Result<(), String> {
    SSH_USER.check(s)
}

/// An email address as ACME accounts take it, without anything a shell would read:
/// `local@domain`, local part of letters, digits and `._%+-`.
pub fn email(s: &str) -> Result<(), String> {
    match s.rsplit_once('@') {
        Some((local, dom))
            if EMAIL_LOCAL.matches(local) && dom.contains('.') && hostname(dom).is_ok() =>
        {
            Ok(())
        }
        _ => Err(EMAIL_LOCAL.error(s)),
    }
}

/// A TCP/UDP port, 1–65535 (as a number or its decimal text).
pub fn port(s: &str) -> Result<(), String> {
    match s.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(()),
        _ => Err(format!("`{}` is not a port (1–65535)", shown(s))),
    }
}

/// An IP address or a network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`).
pub fn cidr(s: &str) -> Result<(), String> {
    let bad = || {
        Err(format!(
            "`{}` is not an IP address or CIDR network",
            shown(s)
        ))
    };
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s, None),
    };
    let Ok(ip) = ip.parse::<IpAddr>() else {
        return bad();
    };
    if let Some(len) = len {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        match len.parse::<u8>() {
            Ok(l) if l <= max && !len.starts_with('+') => {}
            _ => return bad(),
        }
    }
    Ok(())
}

/// A peer of a firewall rule: a host name (of the environment or DNS), an IP address or a
/// CIDR network.
pub fn network(s: &str) -> Result<(), String> {
    if cidr(s).is_ok() || hostname(s).is_ok() {
        Ok(())
    } else {
        Err(format!(
            "`{}` is neither a host name, an IP address nor a CIDR network",
            shown(s)
        ))
    }
}

/// A word that goes into a file name, a config value or a SQL identifier as is:
/// `[A-Za-z0-9_.-]`, not starting with `-` or `.`, at most 64.
pub fn word(s: &str) -> Result<(), String> {
    WORD.check(s)
}

/// A URL for apt sources, downloads and ACME directories: a scheme, then no whitespace,
/// quote, backslash or shell metacharacter.
pub fn url(s: &str) -> Result<(), String> {
    let scheme_ok = ["http://", "https://", "file:/", "ftp://", "s3://"]
        .iter()
        .any(|p| s.starts_with(p));
    let chars_ok = s.chars().all(|c| {
        c.is_ascii_graphic()
            && !matches!(
                c,
                '"' | '\'' | '`' | '\\' | '$' | ';' | '|' | '&' | '<' | '>' | '(' | ')'
            )
    });
    if scheme_ok && chars_ok && s.len() > 8 {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a URL (http(s)://…, no spaces, quotes or shell characters)",
            shown(s)
        ))
    }
}

/// A size or duration as the configs take it: `512M`, `20m`, `1month`, `6h`, `20r/s`.
pub fn size(s: &str) -> Result<(), String> {
    SIZE.check(s)
}

/// A locale name (`en_US.UTF-8`, `sr_RS@latin`): it goes into /etc/locale.gen and a
/// quoted `locale -a` guard.
pub fn locale(s: &str) -> Result<(), String> {
    LOCALE.check(s)
}

/// A tz database name (`Europe/Berlin`, `Etc/GMT+5`): a relative path under
/// /usr/share/zoneinfo that cannot climb out of it.
pub fn timezone(s: &str) -> Result<(), String> {
    TIMEZONE.check(s)
}

/// The path part of a URL that a health check appends to `http://127.0.0.1:PORT`.
pub fn url_path(s: &str) -> Result<(), String> {
    URL_PATH.check(s)
}

/// One line of a config file (a systemd `OnCalendar=`, an env file, php.ini): no control
/// character (a newline would add a directive), no quote, backslash, `$` or backtick.
pub fn line(s: &str) -> Result<(), String> {
    match s
        .chars()
        .find(|c| c.is_control() || matches!(c, '"' | '\\' | '$' | '`'))
    {
        None => Ok(()),
        Some(c) => Err(format!(
            "`{}` holds {c:?}, which a one-line config value cannot carry",
            shown(s)
        )),
    }
}

// ---------------------------------------------------------------------------------------
// Of the environment

/// The name of a host in the environment: it becomes `Host ENV-NAME` in ssh-config and the
/// host part of `after = ["NAME:type:name"]`.
pub fn host_name(s: &str) -> Result<(), String> {
    HOST_NAME.check(s)
}

/// A secret's name is also a file name (`generate` keeps the value under it).
pub fn secret_name(s: &str) -> Result<(), String> {
    SECRET_NAME.check(s)
}

/// `generate = N`: a length between 8 and 256 (checked at load, so `--offline` sees it).
pub fn generate_length(s: &str) -> Result<(), String> {
    match s.parse::<u32>() {
        Ok(n) if (8..=256).contains(&n) => Ok(()),
        _ => Err(format!("`generate` is a length between 8 and 256, not {s}")),
    }
}

/// An environment variable name (POSIX: `[A-Za-z_][A-Za-z0-9_]*`).
pub fn env_var(s: &str) -> Result<(), String> {
    ENV_VAR.check(s)
}

/// A file ssh is given (`-i`, `UserKnownHostsFile`): nothing it could read as an option or
/// that breaks a config line.
pub fn key_file(s: &str) -> Result<(), String> {
    if s.is_empty() || s.starts_with('-') || s.chars().any(|c| c.is_control() || c == '"') {
        Err(format!(
            "`{}` is not a usable file name (empty, leading `-`, a quote or a control character)",
            shown(s)
        ))
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Of resources

/// A suite or component of an apt source: one word of the deb822 file.
pub fn apt_word(s: &str) -> Result<(), String> {
    APT_WORD.check(s)
}

/// A symlink target may be relative; it still holds no control character, and an
/// absolute one is normalised.
pub fn link_target(s: &str) -> Result<(), String> {
    if s.starts_with('/') {
        return abs_path(s);
    }
    if s.is_empty() || s.chars().any(|c| c.is_control()) {
        return Err(format!(
            "symlink target `{}` is empty or holds a control character",
            shown(s)
        ));
    }
    Ok(())
}

/// A database or account name as the Galera steps quote it: `[A-Za-z0-9_]`, at most 64.
pub fn sql_name(s: &str) -> Result<(), String> {
    SQL_NAME.check(s)
}

/// The host part of a MariaDB account: a name, an address or a pattern with `%`/`_`.
pub fn sql_host(s: &str) -> Result<(), String> {
    SQL_HOST.check(s)
}

/// A value shown in a message: control characters escaped, long values cut.
pub fn shown(s: &str) -> String {
    let mut out: String = s.escape_debug().collect();
    if out.chars().count() > 80 {
        out = out.chars().take(77).collect::<String>() + "...";
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_follow_useradd() {
        for ok in ["alice", "_svc", "www-data", "a1_b-c", "machine$", "x"] {
            assert!(user_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "-x",
            "Bad Name",
            "Root",
            "1abc",
            "",
            "a/b",
            "a$b",
            "a\nb",
            "abcdefghijklmnopqrstuvwxyzabcdefg",
        ] {
            assert!(user_name(bad).is_err(), "{bad:?}");
        }
        assert!(owner("0").is_ok() && owner("33").is_ok() && owner("-R").is_err());
    }

    #[test]
    fn package_names_follow_debian_policy() {
        for ok in ["nginx", "php8.2-fpm", "g++", "libc6:amd64", "0ad"] {
            assert!(package_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "-oAPT::Get=1",
            "a",
            "Nginx",
            "nginx pkg",
            "ngi_nx",
            "x:",
            "x:-a",
            "",
        ] {
            assert!(package_name(bad).is_err(), "{bad:?}");
        }
        for ok in ["1.2.3-1", "1:2.0~rc1+dfsg-3", "1.22*"] {
            assert!(package_version(ok).is_ok(), "{ok}");
        }
        for bad in ["-1", "", "1 2", "1;reboot"] {
            assert!(package_version(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unit_names_follow_systemd() {
        for ok in [
            "nginx",
            "nginx.service",
            "kiln-certs.timer",
            "getty@tty1.service",
            "php8.2-fpm",
        ] {
            assert!(unit_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "../../cron.d/evil",
            "a/b.service",
            "-x",
            "a b",
            "x.foo..service",
            "",
            ".service",
        ] {
            assert!(unit_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn paths_are_absolute_and_normalised() {
        for ok in ["/", "/etc/nginx/nginx.conf", "/srv/app-1/.env"] {
            assert!(abs_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "etc/x",
            "/etc/../x",
            "/etc//x",
            "/etc/x/",
            "/a/./b",
            "/a\nb",
            "/a\0b",
            "",
        ] {
            assert!(abs_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn purge_refused_on_system_directories() {
        for bad in [
            "/", "/etc", "/usr", "/lib64", "/lib", "/var/lib", "/tmp", "/home",
        ] {
            assert!(purge_allowed(bad).is_err(), "{bad}");
        }
        for ok in [
            "/etc/nginx/sites-enabled",
            "/etc/kiln/tls/certs.d",
            "/srv/app",
        ] {
            assert!(purge_allowed(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn addresses_and_network_values() {
        for ok in ["192.0.2.1", "2001:db8::1", "db1", "web-1.example.com"] {
            assert!(address(ok).is_ok(), "{ok}");
        }
        for bad in [
            "-oProxyCommand=x",
            "a b",
            "a\nb",
            "",
            "a;b",
            "$(x)",
            "-x.example.com",
        ] {
            assert!(address(bad).is_err(), "{bad:?}");
        }
        assert!(email("ops@example.com").is_ok());
        for bad in [
            "a@b.c; touch /tmp/x",
            "a@b",
            "@b.c",
            "-a@b.c",
            "a$(x)@b.c",
            "a b@c.d",
        ] {
            assert!(email(bad).is_err(), "{bad:?}");
        }
        assert!(domain("*.example.com").is_ok() && domain("$(touch x).example.com").is_err());
        assert!(port("22").is_ok() && port("0").is_err() && port("65536").is_err());
        for ok in ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"] {
            assert!(cidr(ok).is_ok(), "{ok}");
        }
        for bad in ["10.0.0.0/33", "10.0.0/8", "any", "10.0.0.0/8; x"] {
            assert!(cidr(bad).is_err(), "{bad:?}");
        }
        assert!(url("https://deb.debian.org/debian").is_ok());
        assert!(url("http://x/$(id)").is_err() && url("deb.debian.org").is_err());
    }
}

//! The `certs` fact: the public certificates of a live directory (the `tls` module's
//! `/etc/kiln/tls/live/NAME/fullchain.pem`), so that kiln decides on the controller, in the
//! pure plan, whether a certificate is to issue, renew, stand in for or delete — the rules
//! of the host-side `kiln-certs check` and `kiln-certs placeholders --check`, without
//! starting openssl on every plan.
//!
//! Section `@@kiln:certs <index> <live dir>`: `now <epoch>` (the host's clock, which the
//! host-side script judged by too), then for each directory `NAME` under the live
//! directory `entry NAME`, followed by `key yes` when `NAME/privkey.pem` is a non-empty
//! file (a `test -s`: the key is never read) and `fullchain <base64 PEM>` when
//! `NAME/fullchain.pem` is non-empty (`fullchain large` above [`MAX_FULLCHAIN_BYTES`]);
//! then `renewal NAME` for each `NAME.conf` of the renewal directory (certbot's
//! `/etc/letsencrypt/renewal`), when the query names one. A name of other characters than
//! letters, digits, `.`, `_` and `-` travels base64-encoded (`entry64`, `renewal64`), so
//! nothing in it can forge a marker or a line; the others cost the host no process.
//!
//! The decision ([`CertsFact::due`]) parses the certificates with `x509-parser`: which are
//! missing, placeholders, for other names or within the renewal window, and which
//! directories or renewals no declared certificate names any more (stale).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{not_mine, FactKind};
use crate::facts::section::{
    decode_base64, key_value, malformed, missing_line, parse_num, FactParseError, RawSection,
};
use crate::facts::{FactQuery, FactRules, HostFacts};
use crate::shell::quote as sh_quote;

/// A fullchain larger than this is not sent (a real chain is a few KiB).
pub const MAX_FULLCHAIN_BYTES: u64 = 65536;
/// [`MAX_FULLCHAIN_BYTES`] as base64 characters.
const MAX_B64: u64 = MAX_FULLCHAIN_BYTES.div_ceil(3) * 4;

/// What a live directory holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertsFact {
    /// The host's clock (seconds since the epoch) when the script ran.
    pub now: i64,
    /// Directory name → what it holds.
    pub live: BTreeMap<String, LiveCert>,
    /// Names of the renewal directory's `NAME.conf` files.
    pub renewal: BTreeSet<String>,
}

/// One `live/NAME/` directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveCert {
    /// `privkey.pem` is a non-empty file (never read).
    pub key: bool,
    /// `fullchain.pem`'s PEM text, when non-empty.
    pub fullchain: Option<String>,
    /// `fullchain.pem` is larger than [`MAX_FULLCHAIN_BYTES`] and was not sent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub large: bool,
}

/// A certificate the spec declares (an entry of the `tls` module's `certificates`).
/// Other keys of such an entry (the names of its secrets) are not read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertDecl {
    pub name: String,
    #[serde(default)]
    pub domains: Vec<String>,
    #[serde(default = "acme")]
    pub source: String,
}

fn acme() -> String {
    "acme".into()
}

/// Which host-side check the decision stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertsCheck {
    /// `kiln-certs check`: something to issue, renew or delete.
    Sync,
    /// `kiln-certs placeholders --check`: an ACME certificate without its files.
    Placeholders,
}

/// The rules a decision is made by (from the module's `due.certs` table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertsRules {
    pub check: CertsCheck,
    /// Renew when at most this many whole days are left.
    pub renew_days: i64,
}

impl CertsFact {
    /// Why the command standing for `rules.check` is due, one reason per certificate or
    /// stale name (`NAME: why`); empty when nothing is due. The rules of the host-side
    /// script: missing files; for ACME certificates a placeholder, other DNS names than
    /// declared, or at most `renew_days` whole days left (by the host's clock); stale:
    /// a live directory or renewal that no declared certificate names.
    pub fn due(&self, declared: &[CertDecl], rules: CertsRules) -> Vec<String> {
        let mut why = Vec::new();
        for d in declared {
            let live = self.live.get(&d.name);
            let present = live.is_some_and(|l| l.key && (l.fullchain.is_some() || l.large));
            match rules.check {
                CertsCheck::Placeholders => {
                    if d.source == "acme" && !present {
                        why.push(format!("{}: missing", d.name));
                    }
                }
                CertsCheck::Sync => {
                    let reason = match live {
                        _ if !present => Some("missing".to_string()),
                        _ if d.source != "acme" => None,
                        Some(l) => judge(l, d, self.now, rules.renew_days),
                        None => None,
                    };
                    if let Some(r) = reason {
                        why.push(format!("{}: {r}", d.name));
                    }
                }
            }
        }
        if rules.check == CertsCheck::Sync {
            let names: BTreeSet<&str> = declared.iter().map(|d| d.name.as_str()).collect();
            let stale: BTreeSet<&String> = self
                .renewal
                .iter()
                .chain(self.live.keys())
                .filter(|n| !names.contains(n.as_str()))
                .collect();
            for n in stale {
                why.push(format!("{n}: no longer in the spec"));
            }
        }
        why
    }
}

/// Why an ACME certificate that has both files must be issued again, or `None`.
fn judge(live: &LiveCert, decl: &CertDecl, now: i64, renew_days: i64) -> Option<String> {
    let Some(pem) = &live.fullchain else {
        return Some("fullchain.pem too large to read".into());
    };
    let leaf = match Leaf::parse(pem.as_bytes()) {
        Ok(leaf) => leaf,
        Err(e) => return Some(format!("unreadable certificate ({e})")),
    };
    if leaf.placeholder {
        return Some("placeholder".into());
    }
    let want: BTreeSet<&str> = decl.domains.iter().map(String::as_str).collect();
    if leaf
        .dns_names
        .iter()
        .map(String::as_str)
        .collect::<BTreeSet<_>>()
        != want
    {
        return Some("names differ".into());
    }
    // As the shell did: whole days, the division truncating toward zero.
    let days = (leaf.not_after - now) / 86400;
    (days <= renew_days).then(|| format!("expires in {days} days"))
}

/// What the decision reads of a fullchain's first certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    pub not_after: i64,
    /// Sorted, without duplicates: the subjectAltName's DNS names.
    pub dns_names: BTreeSet<String>,
    /// The subject names `kiln placeholder` (the stand-in `kiln-certs` makes).
    pub placeholder: bool,
}

impl Leaf {
    /// Parses the first PEM certificate of `pem`.
    pub fn parse(pem: &[u8]) -> Result<Leaf, String> {
        use x509_parser::extensions::GeneralName;
        let block = x509_parser::pem::Pem::iter_from_buffer(pem)
            .next()
            .ok_or("no PEM block")?
            .map_err(|e| e.to_string())?;
        if block.label != "CERTIFICATE" {
            return Err(format!("a {} block, not a certificate", block.label));
        }
        let cert = block.parse_x509().map_err(|e| e.to_string())?;
        let mut dns_names = BTreeSet::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::DNSName(n) = name {
                    dns_names.insert(n.to_string());
                }
            }
        }
        Ok(Leaf {
            not_after: cert.validity().not_after.timestamp(),
            dns_names,
            placeholder: cert.subject().to_string().contains("kiln placeholder"),
        })
    }
}

pub(crate) struct Certs;

fn dirs(q: &FactQuery) -> (&str, Option<&str>) {
    match q {
        FactQuery::Certs { live, renewal } => (live, renewal.as_deref()),
        other => not_mine("certs", other),
    }
}

impl FactKind for Certs {
    fn section(&self) -> &'static str {
        "certs"
    }

    fn key(&self, q: &FactQuery) -> String {
        match dirs(q) {
            (live, None) => format!("certs:{live}"),
            (live, Some(renewal)) => format!("certs:{live}:{renewal}"),
        }
    }

    fn label<'a>(&self, q: &'a FactQuery) -> Option<&'a str> {
        Some(dirs(q).0)
    }

    fn script(&self, queries: &[&FactQuery], s: &mut String) {
        let (live, renewal) = dirs(queries[0]);
        s.push_str("\tprintf 'now %s\\n' \"$(date +%s)\"\n");
        s.push_str(&format!("\tfor kiln_d in {}/*; do\n", sh_quote(live)));
        s.push_str(&format!(
            r#"		[ -d "$kiln_d" ] || continue
		kiln_n=${{kiln_d##*/}}
		case $kiln_n in
		*[!A-Za-z0-9._-]*) printf 'entry64 %s\n' "$(printf '%s' "$kiln_n" | base64 -w0)" ;;
		*) printf 'entry %s\n' "$kiln_n" ;;
		esac
		[ -s "$kiln_d/privkey.pem" ] && [ -f "$kiln_d/privkey.pem" ] && printf 'key yes\n'
		if [ -s "$kiln_d/fullchain.pem" ] && [ -f "$kiln_d/fullchain.pem" ] \
			&& kiln_c=$(base64 -w0 <"$kiln_d/fullchain.pem" 2>/dev/null); then
			if [ "${{#kiln_c}}" -gt {MAX_B64} ]; then
				printf 'fullchain large\n'
			else
				printf 'fullchain %s\n' "$kiln_c"
			fi
		fi
	done
"#
        ));
        if let Some(renewal) = renewal {
            s.push_str(&format!(
                "\tfor kiln_r in {}/*.conf; do\n",
                sh_quote(renewal)
            ));
            s.push_str(
                r#"		[ -e "$kiln_r" ] || continue
		kiln_r=${kiln_r##*/}
		kiln_r=${kiln_r%.conf}
		case $kiln_r in
		*[!A-Za-z0-9._-]*) printf 'renewal64 %s\n' "$(printf '%s' "$kiln_r" | base64 -w0)" ;;
		*) printf 'renewal %s\n' "$kiln_r" ;;
		esac
	done
"#,
            );
        }
    }

    fn parse(
        &self,
        queries: &[&FactQuery],
        section: &RawSection<'_>,
        facts: &mut HostFacts,
    ) -> Result<(), FactParseError> {
        let mut fact = CertsFact::default();
        let mut now = None;
        let mut current: Option<String> = None;
        let text_of = |line: usize, text: &str, value: &str| {
            String::from_utf8(decode_base64(section, line, text, value)?)
                .map_err(|_| malformed(section, line, "not UTF-8", text))
        };
        for &(line, text) in &section.body {
            match key_value(text) {
                ("", "") => {}
                ("now", value) => now = Some(parse_num(section, line, text, value)?),
                (k @ ("entry" | "entry64"), value) => {
                    let name = match k {
                        "entry" => value.to_string(),
                        _ => text_of(line, text, value)?,
                    };
                    fact.live.insert(name.clone(), LiveCert::default());
                    current = Some(name);
                }
                ("renewal", value) => {
                    fact.renewal.insert(value.to_string());
                }
                ("renewal64", value) => {
                    fact.renewal.insert(text_of(line, text, value)?);
                }
                (k @ ("key" | "fullchain"), value) => {
                    let entry = current
                        .as_ref()
                        .and_then(|n| fact.live.get_mut(n))
                        .ok_or_else(|| malformed(section, line, "before any entry", text))?;
                    match (k, value) {
                        ("key", "yes") => entry.key = true,
                        ("fullchain", "large") => entry.large = true,
                        ("fullchain", v) => entry.fullchain = Some(text_of(line, text, v)?),
                        _ => return Err(malformed(section, line, "unexpected line", text)),
                    }
                }
                _ => return Err(malformed(section, line, "unexpected line", text)),
            }
        }
        fact.now = now.ok_or_else(|| missing_line(section, "now"))?;
        facts.certs.insert(self.key(queries[0]), fact);
        Ok(())
    }

    fn fact_json(
        &self,
        facts: &HostFacts,
        q: &FactQuery,
        _: &FactRules,
    ) -> serde_json::Result<serde_json::Value> {
        // The files, not the clock: a saved plan is stale when a certificate changed.
        let fact = facts.certs.get(&self.key(q));
        serde_json::to_value(fact.map(|f| (&f.live, &f.renewal)))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    use super::*;
    use crate::facts::kinds::fixture::run_sh;
    use crate::facts::parse::parse_facts;
    use crate::facts::script::fact_script;

    /// A self-signed certificate made by the openssl CLI for `names`, valid `days` days,
    /// with subject CN `cn`; returns the fullchain text (leaf, then a second certificate
    /// as a chain would have) and the key's text.
    fn make_cert(dir: &Path, cn: &str, names: &[&str], days: u32) -> (String, String) {
        let san: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
        let (crt, key) = (dir.join("c.pem"), dir.join("k.pem"));
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .arg("ec_paramgen_curve:P-256")
            .args(["-nodes", "-days", &days.to_string(), "-subj"])
            .arg(format!("/CN={cn}"))
            .arg("-addext")
            .arg(format!("subjectAltName={}", san.join(",")))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&crt)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pem = std::fs::read_to_string(&crt).unwrap();
        (
            format!("{pem}{pem}"),
            std::fs::read_to_string(&key).unwrap(),
        )
    }

    fn decl(name: &str, domains: &[&str]) -> CertDecl {
        CertDecl {
            name: name.into(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            source: "acme".into(),
        }
    }

    const SYNC: CertsRules = CertsRules {
        check: CertsCheck::Sync,
        renew_days: 30,
    };
    const PLACEHOLDERS: CertsRules = CertsRules {
        check: CertsCheck::Placeholders,
        renew_days: 30,
    };

    /// A live directory on this machine read by the real fact script.
    fn read(live: &Path, renewal: &Path) -> CertsFact {
        let q = FactQuery::Certs {
            live: live.to_str().unwrap().into(),
            renewal: Some(renewal.to_str().unwrap().into()),
        };
        let out = run_sh(&fact_script(std::slice::from_ref(&q)));
        let facts = parse_facts(std::slice::from_ref(&q), &out).expect(&out);
        facts.certs[&q.key()].clone()
    }

    fn install(live: &Path, name: &str, fullchain: &str, key: &str) {
        std::fs::create_dir_all(live.join(name)).unwrap();
        std::fs::write(live.join(name).join("fullchain.pem"), fullchain).unwrap();
        std::fs::write(live.join(name).join("privkey.pem"), key).unwrap();
    }

    #[test]
    fn the_script_sends_certificates_and_never_a_key() {
        let tmp = tempfile::tempdir().unwrap();
        let (live, renewal) = (tmp.path().join("live"), tmp.path().join("renewal"));
        std::fs::create_dir_all(&renewal).unwrap();
        let (chain, key) = make_cert(tmp.path(), "web", &["a.test", "b.test"], 90);
        install(&live, "web", &chain, &key);
        std::fs::create_dir_all(live.join("nokey")).unwrap();
        std::fs::write(live.join("nokey/fullchain.pem"), &chain).unwrap();
        std::fs::write(renewal.join("web.conf"), "x").unwrap();
        std::fs::write(renewal.join("old.conf"), "x").unwrap();
        let q = FactQuery::Certs {
            live: live.to_str().unwrap().into(),
            renewal: Some(renewal.to_str().unwrap().into()),
        };
        let out = run_sh(&fact_script(std::slice::from_ref(&q)));
        let key_b64 = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(&key)
        };
        let key_body = key.lines().nth(1).unwrap();
        assert!(!out.contains(&key_b64) && !out.contains(key_body), "{out}");
        let fact = read(&live, &renewal);
        assert!(fact.now > 1_700_000_000);
        assert!(fact.live["web"].key);
        assert_eq!(fact.live["web"].fullchain.as_deref(), Some(chain.as_str()));
        assert!(!fact.live["nokey"].key);
        assert_eq!(
            fact.renewal.iter().map(String::as_str).collect::<Vec<_>>(),
            ["old", "web"]
        );
        let leaf = Leaf::parse(chain.as_bytes()).unwrap();
        assert_eq!(
            leaf.dns_names
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            ["a.test", "b.test"]
        );
        assert!(!leaf.placeholder);
    }

    #[test]
    fn renewal_window_boundaries_are_the_shell_scripts() {
        let tmp = tempfile::tempdir().unwrap();
        let (live, renewal) = (tmp.path().join("live"), tmp.path().join("none"));
        let (chain, key) = make_cert(tmp.path(), "web", &["a.test"], 90);
        install(&live, "web", &chain, &key);
        let mut fact = read(&live, &renewal);
        let end = Leaf::parse(chain.as_bytes()).unwrap().not_after;
        let d = [decl("web", &["a.test"])];
        let at = |fact: &mut CertsFact, secs: i64| {
            fact.now = end - secs;
            fact.due(&d, SYNC)
        };
        const DAY: i64 = 86400;
        assert_eq!(at(&mut fact, 31 * DAY), Vec::<String>::new());
        assert_eq!(at(&mut fact, 31 * DAY - 1), ["web: expires in 30 days"]);
        assert_eq!(at(&mut fact, 29 * DAY), ["web: expires in 29 days"]);
        assert_eq!(at(&mut fact, 89 * DAY), Vec::<String>::new());
        // Expired: negative days, due.
        assert_eq!(at(&mut fact, -2 * DAY), ["web: expires in -2 days"]);
        // The placeholder check says nothing about expiry.
        fact.now = end;
        assert!(fact.due(&d, PLACEHOLDERS).is_empty());
    }

    #[test]
    fn names_placeholders_missing_and_stale() {
        let tmp = tempfile::tempdir().unwrap();
        let (live, renewal) = (tmp.path().join("live"), tmp.path().join("renewal"));
        std::fs::create_dir_all(&renewal).unwrap();
        let (chain, key) = make_cert(tmp.path(), "web", &["a.test", "b.test"], 90);
        install(&live, "web", &chain, &key);
        let (ph, phkey) = make_cert(tmp.path(), "kiln placeholder", &["p.test"], 2);
        install(&live, "new", &ph, &phkey);
        install(&live, "gone", &chain, &key);
        std::fs::write(renewal.join("web.conf"), "x").unwrap();
        std::fs::write(renewal.join("retired.conf"), "x").unwrap();
        let fact = read(&live, &renewal);

        let web_ok = decl("web", &["b.test", "a.test", "a.test"]);
        let declared = [
            web_ok.clone(),
            decl("new", &["p.test"]),
            decl("absent", &["x.test"]),
        ];
        assert_eq!(
            fact.due(&declared, SYNC),
            [
                "new: placeholder",
                "absent: missing",
                "gone: no longer in the spec",
                "retired: no longer in the spec",
            ]
        );
        // Placeholders: only a declared ACME certificate without its files.
        assert_eq!(fact.due(&declared, PLACEHOLDERS), ["absent: missing"]);
        // Names: one more, one fewer.
        let more = [decl("web", &["a.test", "b.test", "c.test"])];
        let fewer = [decl("web", &["a.test"])];
        for d in [&more[..], &fewer[..]] {
            assert_eq!(fact.due(d, SYNC)[0], "web: names differ");
        }
        // Everything declared, in date, nothing stale: not due.
        let all = [
            web_ok.clone(),
            decl("gone", &["a.test", "b.test"]),
            decl("retired", &[]),
        ];
        let mut without_placeholder = fact.clone();
        without_placeholder.live.remove("new");
        let due = without_placeholder.due(&all, SYNC);
        assert_eq!(due, ["retired: missing"]);
        // A provided certificate is judged by its files only.
        let provided = CertDecl {
            source: "provided".into(),
            ..decl("new", &["other.test"])
        };
        assert!(fact
            .due(std::slice::from_ref(&provided), PLACEHOLDERS)
            .is_empty());
        assert_eq!(
            fact.due(std::slice::from_ref(&provided), SYNC),
            [
                "gone: no longer in the spec",
                "retired: no longer in the spec",
                "web: no longer in the spec"
            ]
        );
    }

    #[test]
    fn a_key_without_a_chain_or_a_broken_file_is_due() {
        let tmp = tempfile::tempdir().unwrap();
        let live = tmp.path().join("live");
        let (chain, key) = make_cert(tmp.path(), "web", &["a.test"], 90);
        install(&live, "web", &chain, &key);
        install(&live, "cut", &chain[..chain.len() / 3], &key);
        install(&live, "empty", "", &key);
        let fact = read(&live, &tmp.path().join("none"));
        let d = [
            decl("web", &["a.test"]),
            decl("cut", &["a.test"]),
            decl("empty", &["a.test"]),
        ];
        let due = fact.due(&d, SYNC);
        assert!(due[0].starts_with("cut: unreadable certificate"), "{due:?}");
        assert_eq!(due[1], "empty: missing");
        assert_eq!(due.len(), 2);
        assert_eq!(fact.due(&d, PLACEHOLDERS), ["empty: missing"]);
    }

    #[test]
    fn a_broken_chain_is_not_a_reason_to_issue_again() {
        // As `kiln-certs check`: the chain is the health check's (`kiln-certs status`)
        // business; a certificate in date for its names is not issued again for it.
        let tmp = tempfile::tempdir().unwrap();
        let live = tmp.path().join("live");
        let (chain, key) = make_cert(tmp.path(), "web", &["a.test"], 90);
        let leaf_only = &chain[..chain.len() / 2];
        install(&live, "web", &format!("{leaf_only}garbage\n"), &key);
        let fact = read(&live, &tmp.path().join("none"));
        assert!(fact.due(&[decl("web", &["a.test"])], SYNC).is_empty());
    }

    /// The host-side script as the `tls` module installs it, with its directories moved
    /// under `root` (`certs.d`, `live`, `renewal`).
    fn kiln_certs_script(root: &Path) -> std::path::PathBuf {
        let template = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/tls/kiln-certs.sh.j2"),
        )
        .unwrap();
        let r = root.to_str().unwrap();
        let text = template
            .replace("/etc/kiln/tls/certs.d", &format!("{r}/certs.d"))
            .replace("/etc/kiln/tls/live", &format!("{r}/live"))
            .replace("/etc/letsencrypt/renewal", &format!("{r}/renewal"))
            .replace("{{ params.renew_days }}", "30")
            .replace(
                "{% if params.acme_ca_template %}export REQUESTS_CA_BUNDLE=/etc/kiln/tls/acme-ca.pem\n{% endif %}",
                "",
            );
        let text = regex_free_params(&text);
        let path = root.join("kiln-certs");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `{{ params.X }}` left in the template (server, email, ...) become a word.
    fn regex_free_params(text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(i) = rest.find("{{") {
            out.push_str(&rest[..i]);
            let j = rest[i..].find("}}").unwrap() + i + 2;
            out.push('x');
            rest = &rest[j..];
        }
        out.push_str(rest);
        assert!(!out.contains("{%"), "{out}");
        out
    }

    /// kiln's decision and the host-side script's `check` and `placeholders --check` agree
    /// on the same files, with the script's own clock (29 and 31 days left).
    #[test]
    fn agrees_with_the_host_side_kiln_certs() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let script = kiln_certs_script(root);
        let (live, renewal, conf) = (
            root.join("live"),
            root.join("renewal"),
            root.join("certs.d"),
        );
        let (c29, k) = make_cert(root, "x", &["a.test", "b.test"], 30);
        let (c31, _) = make_cert(root, "x", &["a.test", "b.test"], 32);
        let (ph, _) = make_cert(root, "kiln placeholder", &["a.test", "b.test"], 2);
        let (other, _) = make_cert(root, "x", &["a.test"], 90);
        let web = decl("web", &["a.test", "b.test"]);
        type Case<'a> = (&'a str, Box<dyn Fn() + 'a>, Vec<CertDecl>);
        let cases: Vec<Case<'_>> = vec![
            (
                "31 days left",
                Box::new(|| install(&live, "web", &c31, &k)),
                vec![web.clone()],
            ),
            (
                "29 days left",
                Box::new(|| install(&live, "web", &c29, &k)),
                vec![web.clone()],
            ),
            (
                "placeholder",
                Box::new(|| install(&live, "web", &ph, &k)),
                vec![web.clone()],
            ),
            (
                "names differ",
                Box::new(|| install(&live, "web", &other, &k)),
                vec![web.clone()],
            ),
            ("missing", Box::new(|| ()), vec![web.clone()]),
            (
                "no key",
                Box::new(|| {
                    install(&live, "web", &c31, &k);
                    std::fs::write(live.join("web/privkey.pem"), "").unwrap();
                }),
                vec![web.clone()],
            ),
            (
                "stale live",
                Box::new(|| {
                    install(&live, "web", &c31, &k);
                    install(&live, "gone", &c31, &k);
                }),
                vec![web.clone()],
            ),
            (
                "stale renewal",
                Box::new(|| {
                    install(&live, "web", &c31, &k);
                    std::fs::write(renewal.join("gone.conf"), "").unwrap();
                }),
                vec![web.clone()],
            ),
            (
                "provided, other names",
                Box::new(|| install(&live, "web", &other, &k)),
                vec![CertDecl {
                    source: "provided".into(),
                    ..web.clone()
                }],
            ),
            (
                "provided, missing",
                Box::new(|| ()),
                vec![CertDecl {
                    source: "provided".into(),
                    ..web.clone()
                }],
            ),
        ];
        for (what, setup, declared) in cases {
            for d in [&live, &renewal, &conf] {
                let _ = std::fs::remove_dir_all(d);
                std::fs::create_dir_all(d).unwrap();
            }
            setup();
            for d in &declared {
                std::fs::write(
                    conf.join(format!("{}.conf", d.name)),
                    format!(
                        "NAME={}\nSOURCE={}\nDOMAINS=\"{}\"\n",
                        d.name,
                        d.source,
                        d.domains.join(" ")
                    ),
                )
                .unwrap();
            }
            let fact = read(&live, &renewal);
            for (args, rules) in [
                (&["check"][..], SYNC),
                (&["placeholders", "--check"][..], PLACEHOLDERS),
            ] {
                let out = Command::new("sh").arg(&script).args(args).output().unwrap();
                let due = fact.due(&declared, rules);
                let expect_due = match rules.check {
                    CertsCheck::Sync => !["31 days left", "provided, other names"].contains(&what),
                    CertsCheck::Placeholders => ["missing", "no key"].contains(&what),
                };
                assert_eq!(!due.is_empty(), expect_due, "{what}, {args:?}: {due:?}");
                assert_eq!(
                    !out.status.success(),
                    !due.is_empty(),
                    "{what}, {args:?}: the script says {:?} ({}), kiln {due:?}",
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr),
                );
            }
        }
    }

    #[test]
    fn odd_names_travel_base64_encoded() {
        let tmp = tempfile::tempdir().unwrap();
        let live = tmp.path().join("live");
        std::fs::create_dir_all(live.join("a\n@@kiln:end")).unwrap();
        let fact = read(&live, &tmp.path().join("none"));
        assert!(fact.live.contains_key("a\n@@kiln:end"));
    }
}

//! The Galera node fact: what a MariaDB Galera node looks like right now, read by the
//! host's fact script (section `@@kiln:galera <index> <cluster>`) and, with the same shell
//! function, by the cluster orchestrator's live probes at apply time.
//!
//! Cheap by design: one `systemctl show`, one `sed` over `grastate.dat`, and — only when
//! the server is active — ONE `mariadb` client call over the unix socket as root.
//!
//! # Section body (every line is `key value`, values after a fixed key)
//!
//! * `active <ActiveState of mariadb.service>` — always first.
//! * `grastate_uuid <uuid>`, `grastate_seqno <n>`, `grastate_safe <0|1>` — when
//!   `/var/lib/mysql/grastate.dat` exists.
//! * `status <Variable_name> <value>` — `wsrep_cluster_status`, `wsrep_local_state_comment`,
//!   `wsrep_cluster_size`, `wsrep_cluster_state_uuid`, `wsrep_last_committed`.
//! * `var <name> <value>` — `wsrep_on`, `wsrep_cluster_name`.
//! * `database <name>`, `user <user>@<host>` — when the node is active.
//! * `sql_error` — active, but the SQL query failed.
//! * `schema <hex>` — the schema digest kiln wrote after it last created databases and users.
//! * `config_newer yes|no` — whether a file in the query's `config` list was modified after
//!   the running server started (more than 2 s after), so a restart is still owed even when
//!   the run that wrote it died before restarting.

use serde::{Deserialize, Serialize};

use crate::facts::section::{malformed, FactParseError, RawSection};
use crate::facts::{FactQuery, FactRules, HostFacts};
use crate::shell::quote as sh_quote;

/// Where kiln records the digest of the databases and users it last ensured.
pub const SCHEMA_DIR: &str = "/var/lib/kiln/galera";

/// `grastate.dat` as the node left it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grastate {
    pub uuid: String,
    /// -1 after a crash (or while the server runs).
    pub seqno: i64,
    pub safe_to_bootstrap: bool,
}

/// One Galera node's live state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GaleraFact {
    /// `mariadb.service` ActiveState: `active`, `activating`, `inactive`, `failed` ...
    pub active_state: String,
    pub grastate: Option<Grastate>,
    /// `wsrep_on` (None when the server is not active or the query failed).
    pub wsrep_on: Option<bool>,
    pub cluster_name: Option<String>,
    /// `Primary`, `non-Primary`, `Disconnected`.
    pub cluster_status: Option<String>,
    /// `Synced`, `Donor/Desynced`, `Joining`, `Joined` ...
    pub local_state: Option<String>,
    pub cluster_size: Option<u32>,
    pub cluster_state_uuid: Option<String>,
    /// `wsrep_last_committed`: not part of the fingerprint-relevant view (see [`stable`]).
    #[serde(skip)]
    pub last_committed: Option<i64>,
    pub databases: Vec<String>,
    /// `user@host`.
    pub users: Vec<String>,
    pub sql_error: bool,
    pub schema_digest: Option<String>,
    pub config_newer: bool,
}

impl GaleraFact {
    pub fn active(&self) -> bool {
        self.active_state == "active"
    }
    /// Running with wsrep on and part of a Primary component.
    pub fn primary(&self) -> bool {
        self.active()
            && self.wsrep_on == Some(true)
            && self.cluster_status.as_deref() == Some("Primary")
    }
    pub fn synced(&self) -> bool {
        self.primary() && self.local_state.as_deref() == Some("Synced")
    }
}

/// The shell function printing one section body; `$1` is the cluster name, the other
/// arguments are config files. Shared by the fact script and the orchestrator's probes.
pub const SHELL_FN: &str = r#"kiln_galera() {
	kiln_gc=$1; shift
	kiln_ga=$(systemctl show -p ActiveState --value mariadb.service 2>/dev/null)
	printf 'active %s\n' "${kiln_ga:-unknown}"
	if [ -r /var/lib/mysql/grastate.dat ]; then
		sed -n -e 's/^uuid:[[:space:]]*\([0-9a-fA-F-]*\).*/grastate_uuid \1/p' \
			-e 's/^seqno:[[:space:]]*\(-\{0,1\}[0-9]*\).*/grastate_seqno \1/p' \
			-e 's/^safe_to_bootstrap:[[:space:]]*\([01]\).*/grastate_safe \1/p' /var/lib/mysql/grastate.dat 2>/dev/null
	fi
	kiln_gup=
	if [ "$kiln_ga" = active ] && command -v mariadb >/dev/null 2>&1; then
		if kiln_gq=$(timeout 10 mariadb --protocol=socket -uroot -N -B -e "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_cluster_status','wsrep_local_state_comment','wsrep_cluster_size','wsrep_cluster_state_uuid','wsrep_last_committed','Uptime'); SELECT 'var', 'wsrep_on', IF(@@wsrep_on,'ON','OFF'); SELECT 'var', 'wsrep_cluster_name', @@wsrep_cluster_name; SELECT 'database', SCHEMA_NAME FROM information_schema.SCHEMATA; SELECT 'user', CONCAT(User, '@', Host) FROM mysql.user" 2>/dev/null); then
			printf '%s\n' "$kiln_gq" | while IFS='	' read -r kiln_k kiln_v kiln_w; do
				case $kiln_k in
				Uptime) ;;
				var) printf 'var %s %s\n' "$kiln_v" "$kiln_w" ;;
				database|user) printf '%s %s\n' "$kiln_k" "$kiln_v" ;;
				wsrep_*) printf 'status %s %s\n' "$kiln_k" "$kiln_v" ;;
				esac
			done
			kiln_gup=$(printf '%s\n' "$kiln_gq" | sed -n 's/^Uptime	//p')
		else
			echo sql_error
		fi
	fi
	if [ -r "__SCHEMA_DIR__/$kiln_gc.schema" ]; then
		printf 'schema %s\n' "$(tr -cd '0-9a-f' < "__SCHEMA_DIR__/$kiln_gc.schema")"
	fi
	kiln_gn=no
	if [ -n "$kiln_gup" ]; then
		kiln_gs=$(( $(date +%s) - kiln_gup + 2 ))
		for kiln_gf in "$@"; do
			kiln_gm=$(stat -c %Y -- "$kiln_gf" 2>/dev/null) || continue
			[ "$kiln_gm" -gt "$kiln_gs" ] && kiln_gn=yes
		done
	fi
	printf 'config_newer %s\n' "$kiln_gn"
}
"#;

/// The shell function with its constants filled in.
pub fn shell_fn() -> String {
    SHELL_FN.replace("__SCHEMA_DIR__", SCHEMA_DIR)
}

/// The call printing one section body.
pub fn shell_call(cluster: &str, config: &[String]) -> String {
    let mut s = format!("kiln_galera {}", sh_quote(cluster));
    for c in config {
        s.push(' ');
        s.push_str(&sh_quote(c));
    }
    s
}

/// Parses one section body. Errors name the offending line.
pub fn parse(lines: &[&str]) -> Result<GaleraFact, String> {
    let mut f = GaleraFact::default();
    let mut uuid = None;
    let mut seqno = None;
    let mut safe = None;
    for line in lines {
        if line.trim().is_empty() {
            continue;
        }
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "active" => f.active_state = value.to_string(),
            "grastate_uuid" => uuid = Some(value.to_string()),
            "grastate_seqno" => {
                seqno = Some(
                    value
                        .parse::<i64>()
                        .map_err(|_| format!("not a seqno: {line:?}"))?,
                )
            }
            "grastate_safe" => safe = Some(value == "1"),
            "status" => {
                let (name, v) = value.split_once(' ').unwrap_or((value, ""));
                match name {
                    "wsrep_cluster_status" => f.cluster_status = Some(v.to_string()),
                    "wsrep_local_state_comment" => f.local_state = Some(v.to_string()),
                    "wsrep_cluster_size" => f.cluster_size = v.parse().ok(),
                    "wsrep_cluster_state_uuid" => f.cluster_state_uuid = Some(v.to_string()),
                    "wsrep_last_committed" => f.last_committed = v.parse().ok(),
                    _ => {}
                }
            }
            "var" => {
                let (name, v) = value.split_once(' ').unwrap_or((value, ""));
                match name {
                    "wsrep_on" => f.wsrep_on = Some(v == "ON"),
                    "wsrep_cluster_name" => f.cluster_name = Some(v.to_string()),
                    _ => {}
                }
            }
            "database" => f.databases.push(value.to_string()),
            "user" => f.users.push(value.to_string()),
            "sql_error" => f.sql_error = true,
            "schema" => f.schema_digest = Some(value.to_string()).filter(|s| !s.is_empty()),
            "config_newer" => f.config_newer = value == "yes",
            _ => return Err(format!("unexpected line {line:?}")),
        }
    }
    if f.active_state.is_empty() {
        return Err("no `active` line".into());
    }
    if let Some(uuid) = uuid {
        f.grastate = Some(Grastate {
            uuid,
            seqno: seqno.unwrap_or(-1),
            safe_to_bootstrap: safe.unwrap_or(false),
        });
    }
    f.databases.sort();
    f.users.sort();
    Ok(f)
}

/// A `--wsrep_start_position=UUID:SEQNO` line from `galera_recovery`. With
/// `wsrep_gtid_mode` (mariadb-galera's binary logs) MariaDB appends the node's GTID
/// position: `UUID:SEQNO,DOMAIN-SERVER-SEQ[,…]`; the Galera position is what comes before.
pub fn parse_recovered_position(out: &str) -> Option<(String, i64)> {
    out.split_whitespace().find_map(|w| {
        let pos = w.strip_prefix("--wsrep_start_position=")?;
        let pos = pos.split(',').next()?;
        let (uuid, seqno) = pos.rsplit_once(':')?;
        Some((uuid.to_string(), seqno.parse().ok()?))
    })
}

/// The kind: section `@@kiln:galera <index> <cluster>`, one [`shell_call`] of the
/// [`shell_fn`] defined before the script's main function.
pub(crate) struct Galera;

fn cluster_config(q: &FactQuery) -> (&str, &[String]) {
    match q {
        FactQuery::Galera { cluster, config } => (cluster, config),
        other => super::not_mine("galera", other),
    }
}

impl super::FactKind for Galera {
    fn section(&self) -> &'static str {
        "galera"
    }

    fn key(&self, q: &FactQuery) -> String {
        format!("galera:{}", cluster_config(q).0)
    }

    fn shell_functions(&self) -> Option<String> {
        Some(shell_fn())
    }

    fn script(&self, queries: &[&FactQuery], s: &mut String) {
        let (cluster, config) = cluster_config(queries[0]);
        s.push('\t');
        s.push_str(&shell_call(cluster, config));
        s.push('\n');
    }

    fn parse(
        &self,
        queries: &[&FactQuery],
        section: &RawSection<'_>,
        facts: &mut HostFacts,
    ) -> Result<(), FactParseError> {
        let fact = parse(&section.lines())
            .map_err(|e| malformed(section, section.line, "galera section", &e))?;
        facts
            .galera
            .insert(cluster_config(queries[0]).0.to_string(), fact);
        Ok(())
    }

    fn fact_json(
        &self,
        facts: &HostFacts,
        q: &FactQuery,
        _: &FactRules,
    ) -> serde_json::Result<serde_json::Value> {
        serde_json::to_value(facts.galera.get(cluster_config(q).0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_synced_node() {
        let out = "active active\ngrastate_uuid 5f0b2b6e-1111-11ef-9a00-000000000000\ngrastate_seqno -1\ngrastate_safe 0\n\
                   status wsrep_cluster_size 3\nstatus wsrep_cluster_state_uuid 5f0b2b6e-1111-11ef-9a00-000000000000\n\
                   status wsrep_cluster_status Primary\nstatus wsrep_last_committed 17\nstatus wsrep_local_state_comment Synced\n\
                   var wsrep_on ON\nvar wsrep_cluster_name lab\ndatabase mysql\ndatabase app\nuser root@localhost\n\
                   schema abc123\nconfig_newer no\n";
        let lines: Vec<&str> = out.lines().collect();
        let f = parse(&lines).unwrap();
        assert!(f.synced());
        assert_eq!(f.cluster_size, Some(3));
        assert_eq!(f.databases, vec!["app", "mysql"]);
        assert_eq!(f.last_committed, Some(17));
        assert_eq!(f.grastate.as_ref().unwrap().seqno, -1);
        assert_eq!(f.schema_digest.as_deref(), Some("abc123"));
        // last_committed moves with every write: it is not part of the fingerprint.
        let json = serde_json::to_string(&f).unwrap();
        assert!(!json.contains("last_committed"));
    }

    #[test]
    fn parses_a_stopped_node_and_rejects_junk() {
        let f = parse(&[
            "active inactive",
            "grastate_uuid u",
            "grastate_seqno 42",
            "grastate_safe 1",
            "config_newer no",
        ])
        .unwrap();
        assert!(!f.active());
        assert_eq!(
            f.grastate,
            Some(Grastate {
                uuid: "u".into(),
                seqno: 42,
                safe_to_bootstrap: true
            })
        );
        assert!(parse(&["active inactive", "bogus 1"]).is_err());
        assert!(parse(&["config_newer no"]).is_err());
    }

    #[test]
    fn recovered_position() {
        let out = "WSREP: Recovered position 5f0b:12\n--wsrep_start_position=5f0b2b6e-1111-11ef-9a00-000000000000:1234\n";
        assert_eq!(
            parse_recovered_position(out),
            Some(("5f0b2b6e-1111-11ef-9a00-000000000000".into(), 1234))
        );
        assert_eq!(parse_recovered_position("nothing"), None);
        // With wsrep_gtid_mode, as MariaDB 10.11 prints it.
        let out = "WSREP: Recovered position 5441ad30-ee9d-11f1-919f-f73c6c271dc6:21,1000-1-7\n--wsrep_start_position=5441ad30-ee9d-11f1-919f-f73c6c271dc6:21,1000-1-7\n";
        assert_eq!(
            parse_recovered_position(out),
            Some(("5441ad30-ee9d-11f1-919f-f73c6c271dc6".into(), 21))
        );
        assert_eq!(
            parse_recovered_position("--wsrep_start_position=5441ad30:x,1000-1-7"),
            None
        );
    }

    #[test]
    fn shell_runs_without_mariadb() {
        use std::io::Write;
        let script = format!(
            "{}\n{}\n",
            shell_fn(),
            shell_call("lab", &["/etc/hostname".into()])
        );
        let mut child = std::process::Command::new("sh")
            .arg("-s")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let f = parse(&lines).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(!f.active_state.is_empty());
        assert!(!f.config_newer);
    }
}

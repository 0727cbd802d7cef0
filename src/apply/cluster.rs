//! Executes the Galera steps of a plan (see `cluster::galera`): after the hosts' own
//! scripts wrote packages and configuration, one step at a time across hosts, over the
//! same transports, with waits and timeouts and one line of output per step.
//!
//! Every step re-reads the live state it depends on first; in particular a bootstrap is
//! refused when any node is already in a Primary component, whatever the plan said.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::cluster::galera::{schema_digest, steps_of, GaleraOp, GaleraStep};
use crate::engine::{Connections, Loaded};
use crate::facts::galera::{self as gf, GaleraFact};
use crate::plan::{Plan, Step};
use crate::resource::galera::GaleraUser;
use crate::shell::quote as sh_quote;
use crate::transport::Transport;
use crate::ui::Paint;

/// How long a node may take to become Synced after a start (a full state transfer of a
/// big database takes a while).
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(1800);

/// The plan without its cluster steps: what the hosts' own scripts run.
pub fn host_changes_only(plan: &Plan) -> Plan {
    let mut p = plan.clone();
    for h in &mut p.hosts {
        h.changes
            .retain(|c| !c.steps.iter().any(|s| matches!(s, Step::Galera(_))));
    }
    p
}

const HELPERS: &str = r#"set -u
export LC_ALL=C PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
kiln_q() { timeout 10 mariadb --protocol=socket -uroot -N -B -e "$1" 2>/dev/null; }
kiln_st() { kiln_q "SHOW GLOBAL STATUS LIKE '$1'" | cut -f2; }
kiln_journal() { journalctl -u mariadb.service -n 15 --no-pager -o cat 2>/dev/null | sed 's/^/  | /'; }
# $1 = minimum cluster size, $2 = seconds
kiln_wait_synced() {
	kiln_i=0; kiln_s=; kiln_l=; kiln_z=
	while [ "$kiln_i" -lt "$2" ]; do
		kiln_a=$(systemctl show -p ActiveState --value mariadb.service)
		case $kiln_a in
		active)
			kiln_s=$(kiln_st wsrep_cluster_status); kiln_l=$(kiln_st wsrep_local_state_comment); kiln_z=$(kiln_st wsrep_cluster_size)
			if [ "$kiln_s" = Primary ] && [ "$kiln_l" = Synced ] && [ "${kiln_z:-0}" -ge "$1" ]; then
				echo "Synced, Primary, cluster size $kiln_z after ${kiln_i} s"
				return 0
			fi ;;
		failed|inactive)
			echo "mariadb is $kiln_a"; kiln_journal; return 1 ;;
		esac
		sleep 1; kiln_i=$((kiln_i+1))
	done
	echo "timed out after $2 s (ActiveState $kiln_a, status ${kiln_s:-?}, state ${kiln_l:-?}, size ${kiln_z:-?})"
	kiln_journal
	return 1
}
# $1 = seconds: wait until no client connection is left (other than kiln's and the server's own)
kiln_wait_idle() {
	kiln_i=0; kiln_c=0
	while [ "$kiln_i" -lt "$1" ]; do
		kiln_c=$(kiln_q "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() AND COMMAND <> 'Daemon' AND USER NOT IN ('system user', 'event_scheduler', 'root', 'mysql', 'mariadb.sys')")
		if [ "${kiln_c:-0}" -eq 0 ]; then
			echo "no client connection left after ${kiln_i} s"
			return 0
		fi
		sleep 1; kiln_i=$((kiln_i+1))
	done
	echo "$kiln_c client connection(s) still open after $1 s (persistent connections?): restarting anyway"
}
# Before a restart: the node's health check (module option `health`) answers 503, so the
# proxies of the galera-endpoint module move their connections to another node first.
# The drain ends with this script, however it ends (and counts as stale after 15 minutes).
kiln_drain() {
	systemctl is-active -q kiln-galera-health.socket || return 0
	mkdir -p /run/kiln && : > /run/kiln/galera-drain || return 1
	trap 'rm -f /run/kiln/galera-drain' EXIT
	trap 'exit 1' HUP INT TERM
	echo "drained: its health check answers 503 and proxies move to another node (${DRAIN_SECS} s)"
	sleep "$DRAIN_SECS"
	kiln_wait_idle 30
}
"#;

/// How long a drained node waits before its restart: proxies must have seen its health
/// check fail by then (galera-endpoint: fall x check_interval_ms + 1 s stays below this).
pub const DRAIN_SECS: u64 = 5;

/// Where the executor's progress lines go: standard output for people, standard error
/// when standard output carries a document (`kiln apply --format json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Stdout,
    Stderr,
}

impl Progress {
    fn line(self, text: std::fmt::Arguments<'_>) {
        match self {
            Progress::Stdout => println!("{text}"),
            Progress::Stderr => eprintln!("{text}"),
        }
    }
}

struct Exec<'a> {
    loaded: &'a Loaded,
    transports: BTreeMap<String, Arc<dyn Transport>>,
    recovered: BTreeMap<String, (String, i64)>,
    paint: &'a Paint,
    holder: String,
    progress: Progress,
}

impl Exec<'_> {
    async fn run(&self, host: &str, script: &str, timeout: Duration) -> Result<String> {
        let t = self
            .transports
            .get(host)
            .with_context(|| format!("no connection to {host}"))?;
        let out = t
            // One function called with stdin from /dev/null: no command can swallow the
            // rest of the script, and a script cut short in transit runs nothing.
            .run(
                &format!(
                    "{}{HELPERS}kiln_lock 60 {}\nkiln_main() {{\n{script}\n}}\nkiln_main </dev/null\n",
                    crate::shell::LOCK,
                    sh_quote(&self.holder)
                ),
                timeout,
                None,
            )
            .await
            .with_context(|| format!("{host}: running the step"))?;
        let redactor = self.loaded.env.redactor();
        let text = redactor
            .redact(out.stdout.trim_end())
            .lines()
            .map(|l| match l.strip_prefix("@@kiln:waiting ") {
                Some(h) => format!("waiting up to 60 s for this host's lock, held by {h}"),
                None => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        if let (Some(75), Some(h)) = (
            out.status,
            text.lines().find_map(|l| l.strip_prefix("@@kiln:locked ")),
        ) {
            bail!("{host}: another run held this host's lock for 60 s: {h}");
        }
        if out.status != Some(0) {
            let err = redactor.redact(out.stderr.trim());
            bail!(
                "{host}: exit {:?}\n{text}{}{err}",
                out.status,
                if err.is_empty() { "" } else { "\n" }
            );
        }
        Ok(text)
    }

    async fn probe(&self, host: &str, cluster: &str) -> Result<GaleraFact> {
        let script = format!("{}{}\n", gf::shell_fn(), gf::shell_call(cluster, &[]));
        let out = self.run(host, &script, Duration::from_secs(60)).await?;
        let lines: Vec<&str> = out.lines().collect();
        gf::parse(&lines).map_err(|e| anyhow!("{host}: reading its state: {e}"))
    }

    async fn probe_all(&self, g: &GaleraStep) -> Result<BTreeMap<String, GaleraFact>> {
        let mut out = BTreeMap::new();
        for n in &g.nodes {
            out.insert(n.clone(), self.probe(n, &g.cluster).await?);
        }
        Ok(out)
    }

    fn say(&self, line: &str) {
        self.progress
            .line(format_args!("      {}", self.paint.dim(line)));
    }

    async fn stop(&self, host: &str) -> Result<()> {
        let out = self
            .run(
                host,
                "systemctl stop mariadb.service || { kiln_journal; exit 1; }\nprintf 'mariadb is %s\\n' \"$(systemctl show -p ActiveState --value mariadb.service)\"\n",
                Duration::from_secs(900),
            )
            .await?;
        self.say(&format!("{host}: {out}"));
        Ok(())
    }

    async fn bootstrap(&self, g: &GaleraStep, host: &str, set_safe: bool) -> Result<()> {
        // Never a second Primary: re-check every node right before.
        let live = self.probe_all(g).await?;
        if let Some((n, f)) = live.iter().find(|(_, f)| f.primary()) {
            bail!(
                "refusing to bootstrap {host}: {n} is already in a Primary component ({}); make a new plan",
                f.cluster_state_uuid.as_deref().unwrap_or("?")
            );
        }
        if let Some((n, _)) = live
            .iter()
            .find(|(_, f)| f.active() || f.active_state == "activating")
        {
            bail!("refusing to bootstrap {host}: mariadb is running on {n}; make a new plan");
        }
        let mut script = String::new();
        if set_safe {
            script.push_str("sed -i 's/^safe_to_bootstrap:.*/safe_to_bootstrap: 1/' /var/lib/mysql/grastate.dat || exit 1\necho 'set safe_to_bootstrap: 1'\n");
        }
        script
            .push_str("galera_new_cluster || { kiln_journal; exit 1; }\nkiln_wait_synced 1 300\n");
        let out = self.run(host, &script, Duration::from_secs(900)).await?;
        for l in out.lines() {
            self.say(&format!("{host}: {l}"));
        }
        Ok(())
    }

    async fn join(&self, g: &GaleraStep, host: &str) -> Result<()> {
        let live = self.probe_all(g).await?;
        let me = &live[host];
        if me.synced() {
            self.say(&format!("{host}: already Synced"));
            return Ok(());
        }
        let primary: Vec<&String> = live
            .iter()
            .filter(|(n, f)| *n != host && f.primary())
            .map(|(n, _)| n)
            .collect();
        if primary.is_empty() {
            bail!("{host} cannot join: no node is in a Primary component");
        }
        if me.active() && me.wsrep_on != Some(true) {
            bail!("{host} runs mariadb without wsrep (a standalone server started since the plan was made); make a new plan");
        }
        let want = primary.len() + 1;
        let secs = SYNC_TIMEOUT.as_secs();
        let script = if me.active_state == "activating" || me.active() {
            format!(
                "echo 'already {}; waiting until Synced'\nkiln_wait_synced {want} {secs}\n",
                if me.active() { "running" } else { "starting" }
            )
        } else {
            format!("systemctl start mariadb.service || {{ kiln_journal; exit 1; }}\nkiln_wait_synced {want} {secs}\n")
        };
        let out = self
            .run(host, &script, SYNC_TIMEOUT + Duration::from_secs(600))
            .await?;
        for l in out.lines() {
            self.say(&format!("{host}: {l}"));
        }
        Ok(())
    }

    async fn restart(&self, g: &GaleraStep, host: &str) -> Result<()> {
        let size = g.nodes.len();
        let live = self.probe_all(g).await?;
        if size == 1 {
            self.stop(host).await?;
            return self.bootstrap(g, host, false).await;
        }
        let uuid = live[host].cluster_state_uuid.clone();
        for (n, f) in &live {
            if !f.synced() || f.cluster_state_uuid != uuid || f.cluster_size != Some(size as u32) {
                bail!(
                    "refusing to restart {host}: the cluster is not at full strength ({n}: {} {} size {}), so taking {host} down could lose quorum",
                    f.cluster_status.as_deref().unwrap_or(&f.active_state),
                    f.local_state.as_deref().unwrap_or("-"),
                    f.cluster_size.map(|s| s.to_string()).unwrap_or("-".into())
                );
            }
        }
        let secs = SYNC_TIMEOUT.as_secs();
        let out = self
            .run(
                host,
                &format!("DRAIN_SECS={DRAIN_SECS}\nkiln_drain || exit 1\nsystemctl restart mariadb.service || {{ kiln_journal; exit 1; }}\nkiln_wait_synced {size} {secs}\n"),
                SYNC_TIMEOUT + Duration::from_secs(600),
            )
            .await?;
        for l in out.lines() {
            self.say(&format!("{host}: {l}"));
        }
        Ok(())
    }

    async fn recover(&mut self, g: &GaleraStep, host: &str) -> Result<()> {
        let f = self.probe(host, &g.cluster).await?;
        if f.active() || f.active_state == "activating" {
            bail!(
                "{host}: mariadb is running ({}); galera_recovery needs it stopped",
                f.active_state
            );
        }
        let out = self
            .run(
                host,
                "galera_recovery 2>&1 | tail -n 5\n",
                Duration::from_secs(600),
            )
            .await?;
        let pos = gf::parse_recovered_position(&out).or_else(|| {
            f.grastate
                .as_ref()
                .filter(|g| g.seqno >= 0)
                .map(|g| (g.uuid.clone(), g.seqno))
        });
        let Some((uuid, seqno)) = pos else {
            bail!("{host}: galera_recovery printed no position:\n{out}");
        };
        self.say(&format!("{host}: recovered position {uuid}:{seqno}"));
        self.recovered.insert(host.to_string(), (uuid, seqno));
        Ok(())
    }

    async fn start_recovered(&mut self, g: &GaleraStep, candidates: &[String]) -> Result<()> {
        let mut best: Option<(&String, &(String, i64))> = None;
        for c in candidates {
            let pos = self.recovered.get(c).with_context(|| {
                format!("{c}: no recovered position (its recover step did not run)")
            })?;
            if best.map(|(_, b)| pos.1 > b.1).unwrap_or(true) {
                best = Some((c, pos));
            }
        }
        let (chosen, (uuid, seqno)) = best.context("no candidates")?;
        let rivals: Vec<&String> = candidates
            .iter()
            .filter(|c| self.recovered[*c].1 == *seqno && &self.recovered[*c].0 != uuid)
            .collect();
        if !rivals.is_empty() {
            bail!("{chosen} and {} have the same seqno {seqno} but different state UUIDs; refusing to pick one", rivals.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "));
        }
        let table: Vec<String> = candidates
            .iter()
            .map(|c| format!("{c} {}", self.recovered[c].1))
            .collect();
        self.say(&format!(
            "bootstrapping from {chosen}: highest recovered seqno {seqno} ({})",
            table.join(", ")
        ));
        let chosen = chosen.clone();
        self.bootstrap(g, &chosen, true).await?;
        for c in candidates.iter().filter(|c| **c != chosen) {
            self.say(&format!("{c}: joining"));
            self.join(g, c).await?;
        }
        Ok(())
    }

    async fn schema(
        &self,
        g: &GaleraStep,
        databases: &[String],
        users: &[GaleraUser],
        digest: &str,
    ) -> Result<()> {
        let key = crate::plan::seal::load_key()?;
        let now = schema_digest(&key, databases, users, &self.loaded.env.secrets)
            .map_err(|e| anyhow!(e))?;
        if now != digest {
            bail!("the databases, users or their passwords changed since the plan was made; make the plan again");
        }
        let live = self.probe_all(g).await?;
        let on = if live[&g.host].synced() {
            g.host.clone()
        } else {
            live.iter()
                .find(|(_, f)| f.synced())
                .map(|(n, _)| n.clone())
                .context("no Synced node to create databases and users on")?
        };
        let sql = schema_sql(databases, users, &self.loaded.env.secrets)?;
        // The SQL (with passwords) travels inside the script on stdin, never in arguments.
        let script = format!(
            "{}echo 'databases and users ensured'\n",
            crate::shell::heredoc(
                "mariadb --protocol=socket -uroot",
                " || exit 1",
                &sql,
                "KILN_SQL_END"
            )
        );
        let out = self.run(&on, &script, Duration::from_secs(300)).await?;
        self.say(&format!("{on}: {out}"));
        for n in &g.nodes {
            let f = format!("{}/{}.schema", gf::SCHEMA_DIR, g.cluster);
            self.run(
                n,
                &format!(
                    "mkdir -p {dir} && printf '%s\\n' {d} > {f}.tmp && mv -f {f}.tmp {f}\n",
                    dir = sh_quote(gf::SCHEMA_DIR),
                    d = sh_quote(digest),
                    f = sh_quote(&f)
                ),
                Duration::from_secs(60),
            )
            .await?;
        }
        Ok(())
    }
}

fn sql_str(s: &str) -> String {
    let mut o = String::from("'");
    for c in s.chars() {
        match c {
            '\'' => o.push_str("''"),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\0' => o.push_str("\\0"),
            c => o.push(c),
        }
    }
    o.push('\'');
    o
}

fn sql_ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

/// The SQL that ensures databases and users; idempotent.
pub fn schema_sql(
    databases: &[String],
    users: &[GaleraUser],
    secrets: &BTreeMap<String, crate::spec::SecretValue>,
) -> Result<String> {
    let mut sql = String::new();
    for d in databases {
        sql.push_str(&format!(
            "CREATE DATABASE IF NOT EXISTS {};\n",
            sql_ident(d)
        ));
    }
    for u in users {
        let who = format!("{}@{}", sql_str(&u.name), sql_str(&u.host));
        if u.password_secret.is_empty() {
            // No password anywhere: only the system user of the same name, over the socket.
            sql.push_str(&format!(
                "CREATE USER IF NOT EXISTS {who} IDENTIFIED VIA unix_socket;\n"
            ));
            sql.push_str(&format!("ALTER USER {who} IDENTIFIED VIA unix_socket;\n"));
        } else {
            let pw = secrets
                .get(&u.password_secret)
                .with_context(|| format!("secret `{}` is not defined", u.password_secret))?;
            let pw = sql_str(pw.expose());
            sql.push_str(&format!(
                "CREATE USER IF NOT EXISTS {who} IDENTIFIED BY {pw};\n"
            ));
            sql.push_str(&format!("ALTER USER {who} IDENTIFIED BY {pw};\n"));
        }
        for g in &u.grants {
            if g.contains(';') {
                bail!("grant `{g}` of user {}@{} contains `;`", u.name, u.host);
            }
            sql.push_str(&format!("GRANT {g} TO {who};\n"));
        }
    }
    Ok(sql)
}

/// Runs every cluster's steps in order. `failed_hosts` are hosts whose own apply failed:
/// a cluster with such a node is not touched. Returns false when a cluster step failed.
pub async fn execute(
    loaded: &Loaded,
    plan: &Plan,
    conns: &mut Connections,
    failed_hosts: &BTreeSet<String>,
    paint: &Paint,
    progress: Progress,
) -> bool {
    let mut ok = true;
    for (cluster, steps) in steps_of(plan) {
        let Some(first) = steps.first() else { continue };
        let start = Instant::now();
        progress.line(format_args!(
            "\n{} {} step{}",
            paint.bold(&format!("Galera cluster {cluster}:")),
            steps.len(),
            if steps.len() == 1 { "" } else { "s" }
        ));
        if let Some(h) = first.nodes.iter().find(|n| failed_hosts.contains(*n)) {
            progress.line(format_args!(
                "  {} the apply of {h} failed, so the cluster steps do not run",
                paint.red("skipped:")
            ));
            ok = false;
            continue;
        }
        let mut exec = Exec {
            loaded,
            transports: BTreeMap::new(),
            recovered: BTreeMap::new(),
            paint,
            holder: crate::engine::holder(),
            progress,
        };
        let mut connected = true;
        for n in &first.nodes {
            match connect(loaded, conns, n).await {
                Ok(t) => {
                    exec.transports.insert(n.clone(), t);
                }
                Err(e) => {
                    progress.line(format_args!("  {} {n}: {e:#}", paint.red("unreachable:")));
                    connected = false;
                }
            }
        }
        if !connected {
            ok = false;
            continue;
        }
        let summaries = plan.cluster_step_summaries();
        for g in &steps {
            let t = Instant::now();
            progress.line(format_args!(
                "  [{}/{}] {} galera_node[{cluster}]: {}",
                g.seq,
                g.total,
                paint.bold(&g.who()),
                summaries
                    .get(&(cluster.clone(), g.seq))
                    .copied()
                    .unwrap_or_default()
            ));
            let r = match &g.op {
                GaleraOp::Stop => exec.stop(&g.host).await,
                GaleraOp::Bootstrap { set_safe } => exec.bootstrap(g, &g.host, *set_safe).await,
                GaleraOp::Recover => exec.recover(g, &g.host).await,
                GaleraOp::StartRecovered { candidates } => {
                    exec.start_recovered(g, candidates).await
                }
                GaleraOp::Join => exec.join(g, &g.host).await,
                GaleraOp::Restart => exec.restart(g, &g.host).await,
                GaleraOp::Schema {
                    databases,
                    users,
                    digest,
                } => exec.schema(g, databases, users, digest).await,
            };
            match r {
                Ok(()) => progress.line(format_args!(
                    "      {} ({:.1} s)",
                    paint.green("ok"),
                    t.elapsed().as_secs_f64()
                )),
                Err(e) => {
                    let msg = loaded.env.redactor().redact(&format!("{e:#}"));
                    let mut lines = msg.lines();
                    progress.line(format_args!(
                        "      {} {}",
                        paint.red("FAILED:"),
                        lines.next().unwrap_or_default()
                    ));
                    for l in lines {
                        progress.line(format_args!("        {l}"));
                    }
                    progress.line(format_args!("      later cluster steps not run"));
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            progress.line(format_args!(
                "  {} cluster {cluster} done in {:.1} s",
                paint.green("✓"),
                start.elapsed().as_secs_f64()
            ));
        }
    }
    ok
}

async fn connect(
    loaded: &Loaded,
    conns: &mut Connections,
    host: &str,
) -> Result<Arc<dyn Transport>> {
    let conn = loaded
        .desired
        .host(host)
        .map(|d| d.connection.clone())
        .with_context(|| format!("{host} is not in this run"))?;
    conns.get(host, &conn).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_sql_quotes_and_never_needs_arguments() {
        let mut secrets = BTreeMap::new();
        secrets.insert(
            "pw".to_string(),
            crate::spec::SecretValue::new("it's\\a\nsecret"),
        );
        let sql = schema_sql(
            &["app`x".into()],
            &[GaleraUser {
                name: "app".into(),
                host: "10.%".into(),
                password_secret: "pw".into(),
                grants: vec!["ALL PRIVILEGES ON `app`.*".into()],
            }],
            &secrets,
        )
        .unwrap();
        assert!(sql.contains("CREATE DATABASE IF NOT EXISTS `app``x`;"));
        assert!(sql.contains("IDENTIFIED BY 'it''s\\\\a\\nsecret';"));
        assert!(sql.contains("GRANT ALL PRIVILEGES ON `app`.* TO 'app'@'10.%';"));
        assert!(!sql.lines().any(|l| l == "KILN_SQL_END"));
    }

    #[test]
    fn an_account_without_password_logs_in_over_the_socket_only() {
        let sql = schema_sql(
            &[],
            &[GaleraUser {
                name: "prometheus".into(),
                host: "localhost".into(),
                password_secret: String::new(),
                grants: vec!["PROCESS, REPLICATION CLIENT ON *.*".into()],
            }],
            &BTreeMap::new(),
        )
        .unwrap();
        assert!(sql.contains(
            "CREATE USER IF NOT EXISTS 'prometheus'@'localhost' IDENTIFIED VIA unix_socket;"
        ));
        assert!(sql.contains("ALTER USER 'prometheus'@'localhost' IDENTIFIED VIA unix_socket;"));
        assert!(!sql.contains("IDENTIFIED BY"));
    }
}

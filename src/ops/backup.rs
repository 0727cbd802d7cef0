//! `kiln backup ENV` and `kiln restore ENV`: drive `kiln-backup` (installed by the `backup`
//! module) on the environment's backup host. A backup is the host's own systemd unit,
//! started and waited for, so a run from kiln and a run from the timer are the same thing
//! (same lock, same failed state when it fails). A restore runs the tool on the backup host,
//! or on `--into HOST` with the tool, its configuration and credentials sent on stdin (never
//! in arguments). Output passes through the environment's redactor.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::desired::DesiredHost;
use crate::engine::load;
use crate::resource::Kind;
use crate::transport::Transport;

/// A backup or restore may take long on real data.
const TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// The files a restore on another host needs, as the backup module renders them.
const TOOL_FILES: [&str; 4] = [
    "/usr/local/sbin/kiln-backup",
    "/usr/local/lib/kiln/kiln_s3.py",
    "/etc/kiln/backup/backup.json",
    "/etc/kiln/backup/s3.env",
];

/// The backups' age identity, when the module encrypts them (sent like the tool's files).
const AGE_IDENTITY: &str = "/etc/kiln/backup/age-identity";

/// The Galera cluster a host is a node of: the `cluster` of its galera_node resource.
pub fn galera_cluster(h: &DesiredHost) -> Option<&str> {
    h.resources.iter().find_map(|r| match &r.kind {
        Kind::GaleraNode(g) => Some(g.cluster.as_str()),
        _ => None,
    })
}

/// The environment's Galera clusters in host order, each with its nodes.
pub fn clusters(hosts: &[DesiredHost]) -> Vec<(&str, Vec<&DesiredHost>)> {
    let mut out: Vec<(&str, Vec<&DesiredHost>)> = vec![];
    for h in hosts {
        if let Some(c) = galera_cluster(h) {
            match out.iter_mut().find(|(name, _)| *name == c) {
                Some((_, nodes)) => nodes.push(h),
                None => out.push((c, vec![h])),
            }
        }
    }
    out
}

/// The hosts `kiln backup` and `kiln restore` may drive, in order: the only host running
/// the `backup` module, or with several (a cluster's peers, each ready to take over the
/// binlog archive), the module's `peers` in their order. The first one that answers is used.
///
/// With several Galera clusters in the environment, each cluster's nodes that run the
/// module back up that cluster: `cluster` names which (none given is an error naming them,
/// so a restore never goes into the cluster it was not meant for). With one cluster (or
/// none) every backup host serves it, and `cluster`, when given, must name it.
pub fn backup_hosts<'a>(
    hosts: &'a [DesiredHost],
    cluster: Option<&str>,
) -> Result<Vec<&'a DesiredHost>> {
    let all: Vec<&DesiredHost> = hosts
        .iter()
        .filter(|h| h.resources.iter().any(|r| r.module == "backup"))
        .collect();
    if all.is_empty() {
        bail!("no host of this environment runs the `backup` module");
    }
    let known = clusters(hosts);
    let names = || {
        known
            .iter()
            .map(|(c, _)| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(c) = cluster {
        if !known.iter().any(|(name, _)| *name == c) {
            if known.is_empty() {
                bail!("--cluster {c}: this environment has no Galera cluster");
            }
            bail!(
                "--cluster {c}: no such Galera cluster here (clusters: {})",
                names()
            );
        }
    }
    let with: Vec<&DesiredHost> = if known.len() <= 1 {
        all
    } else {
        let Some(c) = cluster else {
            let groups: Vec<String> = known
                .iter()
                .map(|(c, _)| {
                    let hs: Vec<&str> = all
                        .iter()
                        .filter(|h| galera_cluster(h) == Some(*c))
                        .map(|h| h.name.as_str())
                        .collect();
                    if hs.is_empty() {
                        format!("`{c}`: no backup host")
                    } else {
                        format!("`{c}`: {}", hs.join(", "))
                    }
                })
                .collect();
            bail!(
                "this environment has {} Galera clusters ({}): say which one with --cluster NAME",
                known.len(),
                groups.join("; ")
            );
        };
        let with: Vec<&DesiredHost> = all
            .into_iter()
            .filter(|h| galera_cluster(h) == Some(c))
            .collect();
        if with.is_empty() {
            bail!("no node of Galera cluster `{c}` runs the `backup` module");
        }
        with
    };
    let first = with[0];
    if with.len() == 1 {
        return Ok(with);
    }
    // The peers as the module rendered them into the host's backup.json.
    let config: serde_json::Value = first
        .resources
        .iter()
        .find_map(|r| match &r.kind {
            Kind::File(f) if f.path == "/etc/kiln/backup/backup.json" => f.content.clone(),
            _ => None,
        })
        .and_then(|c| serde_json::from_str(&c).ok())
        .unwrap_or_default();
    let peers: Vec<String> = config["binlog"]["peers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if peers.is_empty() {
        bail!(
            "more than one host runs the `backup` module ({}): list them in its `peers` \
             (the first one leads) or keep one",
            with.iter()
                .map(|h| h.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let mut ordered: Vec<&DesiredHost> = peers
        .iter()
        .filter_map(|p| with.iter().copied().find(|h| &h.name == p))
        .collect();
    for h in with {
        if !ordered.iter().any(|o| o.name == h.name) {
            ordered.push(h);
        }
    }
    Ok(ordered)
}

/// The nodes a restore into `target` waits for and takes out of the cluster: the other
/// nodes of `target`'s own Galera cluster (none when it is no node). Nodes of another
/// cluster in the environment are never touched.
pub fn restore_peers<'a>(hosts: &'a [DesiredHost], target: &DesiredHost) -> Vec<&'a DesiredHost> {
    cluster_of(hosts, target)
        .into_iter()
        .filter(|h| h.name != target.name)
        .collect()
}

/// Every node of `h`'s Galera cluster, `h` included (none when it is no node).
fn cluster_of<'a>(hosts: &'a [DesiredHost], h: &DesiredHost) -> Vec<&'a DesiredHost> {
    match galera_cluster(h) {
        Some(c) => hosts
            .iter()
            .filter(|x| galera_cluster(x) == Some(c))
            .collect(),
        None => vec![],
    }
}

/// Connects to the first of `hosts` that answers, saying which were skipped and why.
async fn connect_first<'a>(
    env: &crate::spec::Environment,
    hosts: &[&'a DesiredHost],
) -> Result<(&'a DesiredHost, Arc<dyn Transport>)> {
    let mut last = None;
    for h in hosts {
        match connect(env, h).await {
            Ok(t) => return Ok((h, t)),
            Err(e) => {
                println!(
                    "{} ({}) does not answer: {e:#}",
                    h.name, h.connection.address
                );
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("no backup host")))
}

async fn connect(env: &crate::spec::Environment, h: &DesiredHost) -> Result<Arc<dyn Transport>> {
    crate::engine::connector(env)
        .connect(&h.name, &h.connection)
        .await
}

/// Runs a script, printing its stdout lines as they come (redacted); returns its status.
async fn stream(
    t: &dyn Transport,
    script: &str,
    redactor: &crate::spec::Redactor,
) -> Result<Option<i32>> {
    let print = |l: &str| println!("{}", redactor.redact(l));
    let out = t.run(script, TIMEOUT, Some(&print)).await?;
    for l in out.stderr.lines().filter(|l| !l.trim().is_empty()) {
        eprintln!("{}", redactor.redact(l));
    }
    Ok(out.status)
}

pub async fn backup(env_arg: &str, cluster: Option<&str>) -> Result<i32> {
    let loaded = load(env_arg, None)?;
    let hosts = backup_hosts(&loaded.desired.hosts, cluster)?;
    let redactor = loaded.env.redactor();
    let (host, t) = connect_first(&loaded.env, &hosts).await?;
    println!("backup on {} ({})", host.name, host.connection.address);
    let script = r#"set -u
if ! systemctl cat kiln-backup.service >/dev/null 2>&1; then
  echo "kiln-backup.service is not installed on this host: run kiln apply first"; exit 3
fi
since=$(date '+%Y-%m-%d %H:%M:%S')
systemctl reset-failed kiln-backup.service 2>/dev/null
systemctl start kiln-backup.service; rc=$?
id=$(systemctl show -p InvocationID --value kiln-backup.service)
out=$(journalctl -q -o cat "_SYSTEMD_INVOCATION_ID=$id" 2>/dev/null)
[ -n "$out" ] || out=$(journalctl -q -o cat -u kiln-backup.service --since "$since" 2>/dev/null)
printf '%s\n' "$out" | grep -v '^$'
[ $rc -eq 0 ] || echo "kiln-backup.service failed (exit $rc): systemctl status kiln-backup.service"
exit $rc
"#;
    let status = stream(t.as_ref(), script, &redactor).await?;
    Ok(if status == Some(0) { 0 } else { 1 })
}

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// Environment name under environments/, or a path to a .toml file.
    pub env: String,
    /// A backup timestamp (YYYYMMDDTHHMMSSZ, see `kiln-backup list`) restored as it was
    /// taken, or `latest`: the newest backup rolled forward through the binlog archive to
    /// its last archived second.
    #[arg(long, default_value = "latest", conflicts_with = "to_time")]
    pub from: String,
    /// Point in time (UTC, "YYYY-MM-DD HH:MM:SS"): the newest backup taken before it, then
    /// the archived binary logs replayed up to and including that second.
    #[arg(long, value_name = "TIME", value_parser = parse_to_time)]
    pub to_time: Option<String>,
    /// Restore on this host instead of the backup host.
    #[arg(long)]
    pub into: Option<String>,
    /// The Galera cluster whose backups are restored (its nodes that run the `backup`
    /// module), when the environment has several; by default the one `--into` is a node of.
    /// Only that cluster's nodes are stopped and waited for.
    #[arg(long, value_name = "NAME", conflicts_with = "from_env")]
    pub cluster: Option<String>,
    /// Databases only: leave the media bucket alone.
    #[arg(long)]
    pub no_media: bool,
    /// From the backup's physical copy (mariadb-backup) instead of its logical dump: the
    /// server's data directory is replaced (the old one kept beside it), a Galera node
    /// starts a new cluster from it and the other nodes rejoin by full state transfer; the
    /// archived binary logs are replayed after it as usual. A new base backup follows.
    #[arg(long, conflicts_with = "from_env")]
    pub physical: bool,
    /// Seed this environment from another's latest point (its backup + binlog archive),
    /// anonymised on the source's backup host, in a scratch server, before anything reaches
    /// this environment (see --anonymize). Replaces every non-system database here.
    #[arg(long, value_name = "SRC", conflicts_with_all = ["to_time", "into"])]
    pub from_env: Option<String>,
    /// With --from-env: the anonymisation rules (TOML; default: the environment's
    /// `[seed] anonymize`).
    #[arg(long, value_name = "RULES", requires = "from_env")]
    pub anonymize: Option<std::path::PathBuf>,
    /// With --from-env: copy the source's data as it is (no anonymisation).
    #[arg(long, requires = "from_env", conflicts_with = "anonymize")]
    pub no_anonymize: bool,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// `--to-time`: checked here, so a malformed time is a usage error before any host is
/// contacted.
fn parse_to_time(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let shape = b.len() == 19
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b' ',
            13 | 16 => *c == b':',
            _ => c.is_ascii_digit(),
        });
    let num = |r: std::ops::Range<usize>| s[r].parse::<u32>().unwrap_or(99);
    if !shape
        || !(1..=12).contains(&num(5..7))
        || !(1..=31).contains(&num(8..10))
        || num(11..13) > 23
        || num(14..16) > 59
        || num(17..19) > 59
    {
        return Err(format!(
            "`{s}`: expected \"YYYY-MM-DD HH:MM:SS\" (UTC), e.g. \"2026-12-01 14:05:00\""
        ));
    }
    Ok(s.to_string())
}

fn confirm(what: &str) -> Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!("refusing to restore without --yes: standard input is not a terminal");
    }
    print!("{what}\nOnly 'yes' is accepted: ");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim() == "yes")
}

pub async fn restore(args: RestoreArgs) -> Result<i32> {
    let loaded = load(&args.env, None)?;
    if let Some(src) = &args.from_env {
        if args.from != "latest" {
            bail!("--from-env seeds from the source's latest point; --from does not apply");
        }
        let rules = if let Some(f) = &args.anonymize {
            Some(crate::spec::anonymize::load(f)?)
        } else if args.no_anonymize {
            None
        } else {
            match loaded.env.seed()? {
                Some(s) if s.rules.is_some() && &s.from_env == src => s.rules,
                _ => bail!(
                    "--from-env {src}: say how the data is anonymised: --anonymize RULES.toml \
                     (or `[seed] anonymize` in {}), or --no-anonymize to copy it as it is",
                    loaded.env.name
                ),
            }
        };
        return seed(&loaded, src, rules.as_ref(), args.yes).await;
    }
    let into = match &args.into {
        Some(name) => Some(
            loaded
                .desired
                .host(name)
                .ok_or_else(|| anyhow!("no host `{name}` in this environment"))?,
        ),
        None => None,
    };
    // The backups of the named cluster; without --cluster, those of the cluster `--into`
    // names a node of (with several clusters, one must be named).
    let cluster = args
        .cluster
        .as_deref()
        .or_else(|| into.and_then(galera_cluster));
    let sources = backup_hosts(&loaded.desired.hosts, cluster)?;
    let redactor = loaded.env.redactor();
    // Without --into: the first backup host that answers restores (the first peer may be
    // the host that was lost).
    let (source, target, t) = match into {
        None => {
            let (h, t) = connect_first(&loaded.env, &sources).await?;
            (h, h, t)
        }
        Some(target) => (sources[0], target, connect(&loaded.env, target).await?),
    };
    let media = if args.no_media { "" } else { " and media" };
    let point = match &args.to_time {
        Some(t) => format!("the databases as of {t} UTC"),
        None if args.from == "latest" => "the latest point (backup + binlog archive)".into(),
        None => format!("backup `{}`", args.from),
    };
    if !args.yes
        && !confirm(&format!(
            "{}",
            if args.physical {
                format!("Restore {point} of {} into {} from the physical copy: MariaDB there is stopped and its data directory replaced (the old one kept beside it){media}; the other nodes of its cluster rejoin by full state transfer.", source.name, target.name)
            } else {
                format!("Restore {point} of {} into {}: its databases (with a backup of the whole server, every database but the system ones) are dropped and loaded again{media}.", source.name, target.name)
            }
        ))?
    {
        println!("nothing restored");
        return Ok(1);
    }
    let mut tool_args = match &args.to_time {
        Some(t) => format!("restore --to-time {}", crate::shell::quote(t)),
        None => format!("restore --from {}", crate::shell::quote(&args.from)),
    };
    if args.no_media {
        tool_args.push_str(" --no-media");
    }
    if args.physical {
        tool_args.push_str(" --physical");
    }
    let script = if target.name == source.name {
        format!("set -u\nexec /usr/local/sbin/kiln-backup {tool_args}\n")
    } else {
        // The tool, its configuration and credentials as the backup module renders them
        // for the backup host, written to a private directory on the target for this run.
        let mut s = String::from(
            "set -eu\numask 077\nd=$(mktemp -d /tmp/kiln-restore.XXXXXX)\ntrap 'rm -rf \"$d\"' EXIT\n",
        );
        let identity = rendered(source, AGE_IDENTITY);
        if let Some(id) = &identity {
            s.push_str(&crate::shell::heredoc(
                "cat > \"$d/age-identity\"",
                "",
                id,
                "KILN_RESTORE_EOF",
            ));
        }
        for path in TOOL_FILES {
            let content = rendered(source, path)
                .ok_or_else(|| anyhow!("{}: no {path} in the spec", source.name))?;
            let name = path.rsplit('/').next().unwrap_or(path);
            s.push_str(&crate::shell::heredoc(
                &format!("cat > \"$d/{}\"", name),
                "",
                &content,
                "KILN_RESTORE_EOF",
            ));
        }
        let age = if identity.is_some() {
            "KILN_BACKUP_AGE_IDENTITY=\"$d/age-identity\" "
        } else {
            ""
        };
        s.push_str(&format!(
            "set +e\n{age}KILN_BACKUP_CONFIG=\"$d/backup.json\" KILN_BACKUP_CREDENTIALS=\"$d/s3.env\" KILN_BACKUP_LIB=\"$d\" python3 \"$d/kiln-backup\" {tool_args}\n"
        ));
        s
    };
    println!(
        "restore {point} from {}'s backups into {} ({})",
        source.name, target.name, target.connection.address
    );
    if !settle_cluster(&loaded, &cluster_of(&loaded.desired.hosts, target)).await? {
        return Ok(1);
    }
    // Into one node alone: the other nodes of its Galera cluster leave it for the restore
    // and rejoin afterwards by state transfer from the restored node.
    let others = restore_peers(&loaded.desired.hosts, target);
    let stopped = match stop_nodes(&loaded, &others, &target.name).await {
        Ok(stopped) => stopped,
        Err(stopped) => {
            println!("nothing restored: the other nodes could not leave the cluster");
            start_nodes(&loaded, &stopped).await;
            return Ok(1);
        }
    };
    let status = stream(t.as_ref(), &script, &redactor).await;
    let rejoined = start_nodes(&loaded, &stopped).await;
    let ok = matches!(status?, Some(0)) && rejoined;
    if ok && args.physical && target.name == source.name {
        // The data directory was replaced: a Galera cluster formed from it is a new history
        // whose binary logs continue no earlier backup, so a base backup starts its
        // point-in-time recovery now (as after a rebuild).
        println!("a new base backup of the restored data (a new history begins)");
        return backup(&args.env, cluster).await;
    }
    Ok(if ok { 0 } else { 1 })
}

/// The non-empty lines a remote script printed, standard output first.
fn output_lines(out: &crate::transport::RunOutput) -> impl Iterator<Item = &str> {
    out.stdout
        .lines()
        .chain(out.stderr.lines())
        .filter(|l| !l.trim().is_empty())
}

/// How long a node may take to stop (a clean leave of the cluster).
const STOP: Duration = Duration::from_secs(300);

/// How long a node may take to start and rejoin: a full state transfer (SST) of a large
/// database takes as long as copying it.
const REJOIN: Duration = Duration::from_secs(3 * 3600);

/// Stops MariaDB on a node, bounded: exit 0 when it stopped, 3 when it was not running.
fn stop_script() -> String {
    format!(
        r#"set -u
if [ "$(systemctl show -p ActiveState --value mariadb.service 2>/dev/null)" != active ]; then
  exit 3
fi
if timeout {stop} systemctl stop mariadb.service; then
  exit 0
fi
echo "MariaDB did not stop within {stop} s: $(systemctl show -p ActiveState,SubState --value mariadb.service | tr '\n' ' ')"
exit 1
"#,
        stop = STOP.as_secs()
    )
}

/// Stops MariaDB on `nodes` (those that run it), one after another, so that the restore
/// goes into `target` alone: it applies the dump and the binary logs once, not once per
/// node through Galera, and no other node's `debian-start` can take the locks the restore
/// needs. Returns the nodes it stopped, or, when one could not be stopped, those it had
/// stopped until then (to be started again). A node that does not answer is skipped: it
/// is not in the cluster either, and joins by state transfer whenever it comes back.
async fn stop_nodes<'a>(
    loaded: &crate::engine::Loaded,
    nodes: &[&'a DesiredHost],
    target: &str,
) -> Result<Vec<&'a DesiredHost>, Vec<&'a DesiredHost>> {
    let script = stop_script();
    let redactor = loaded.env.redactor();
    let mut stopped = Vec::new();
    for &h in nodes {
        let Ok(t) = connect(&loaded.env, h).await else {
            println!(
                "{}: does not answer; it rejoins by state transfer when it is back",
                h.name
            );
            continue;
        };
        match t.run(&script, STOP + Duration::from_secs(30), None).await {
            Ok(out) if out.status == Some(0) => {
                println!(
                    "{}: MariaDB stopped (the restore goes into {target} alone; {} rejoins by state transfer)",
                    h.name, h.name
                );
                stopped.push(h);
            }
            Ok(out) if out.status == Some(3) => {
                println!("{}: MariaDB is not running; left as it is", h.name);
            }
            Ok(out) => {
                for l in output_lines(&out) {
                    println!("{}: {}", h.name, redactor.redact(l));
                }
                return Err(stopped);
            }
            Err(e) => {
                println!("{}: {}", h.name, redactor.redact(&format!("{e:#}")));
                return Err(stopped);
            }
        }
    }
    Ok(stopped)
}

/// Starts MariaDB on a node and waits until it is Synced, bounded; says how it rejoined.
fn rejoin_script() -> String {
    format!(
        r#"set -u
t0=$(date +%s)
if ! timeout {rejoin} systemctl start mariadb.service; then
  echo "MariaDB did not start: $(systemctl show -p ActiveState,SubState --value mariadb.service | tr '\n' ' ')"
  exit 1
fi
n=0
while :; do
  s=$(mariadb -N -B -e "SHOW GLOBAL STATUS LIKE 'wsrep_local_state_comment'" 2>/dev/null | cut -f2)
  [ "$s" = Synced ] && break
  n=$((n+1))
  if [ $n -ge 600 ]; then
    echo "started, but not Synced after 600 s (state: ${{s:-no answer}})"
    exit 1
  fi
  sleep 1
done
# IST or SST: Galera logs "SST received: UUID:SEQNO" either way (an IST bypasses the
# snapshot and reports the joiner's own saved position); a real snapshot is a position other
# than the one the joiner found saved at its start.
how=$(journalctl -u mariadb.service --since "@$t0" -o cat 2>/dev/null | awk '
  match($0, /Found saved state: [0-9a-f-]+:-?[0-9]+/) {{ saved = substr($0, RSTART + 19, RLENGTH - 19) }}
  match($0, /SST received: [0-9a-f-]+:-?[0-9]+/) {{ got = substr($0, RSTART + 14, RLENGTH - 14) }}
  END {{
    if (got == "") print "by state transfer"
    else if (got == saved) print "by IST (the write sets it missed)"
    else print "by SST (a full copy from the donor)"
  }}')
echo "rejoined ${{how:-by state transfer}}, Synced $(( $(date +%s) - t0 )) s after its start"
"#,
        rejoin = REJOIN.as_secs()
    )
}

/// Starts MariaDB again on the nodes `stop_nodes` stopped, one at a time (a donor serves
/// one full state transfer at a time), each until it is Synced. Called whatever became of
/// the restore. True when every one rejoined; otherwise says which did not, and that `kiln
/// apply` starts it (the Galera module's steps bring a stopped node back).
async fn start_nodes(loaded: &crate::engine::Loaded, nodes: &[&DesiredHost]) -> bool {
    let script = rejoin_script();
    let redactor = loaded.env.redactor();
    let mut all = true;
    for &h in nodes {
        let out = match connect(&loaded.env, h).await {
            Ok(t) => {
                t.run(&script, REJOIN + Duration::from_secs(660), None)
                    .await
            }
            Err(e) => Err(e),
        };
        match out {
            Ok(out) if out.status == Some(0) => {
                for l in output_lines(&out) {
                    println!("{}: {}", h.name, redactor.redact(l));
                }
            }
            other => {
                all = false;
                match other {
                    Ok(out) => {
                        for l in output_lines(&out) {
                            println!("{}: {}", h.name, redactor.redact(l));
                        }
                    }
                    Err(e) => println!("{}: {}", h.name, redactor.redact(&format!("{e:#}"))),
                }
                println!(
                    "{}: did not rejoin the cluster; `kiln apply {}` starts it again",
                    h.name, loaded.env.name
                );
            }
        }
    }
    all
}

/// A file as the backup module renders it for a host.
fn rendered(h: &DesiredHost, path: &str) -> Option<String> {
    h.resources.iter().find_map(|r| match &r.kind {
        Kind::File(f) if f.path == path => f.content.clone(),
        _ => None,
    })
}

/// `kiln restore DST --from-env SRC` (and the first `kiln apply` of an environment with a
/// `[seed]`): SRC's backup host restores SRC's latest point into its private scratch
/// server, applies the anonymisation there and writes the result, encrypted for DST, into
/// DST's bucket as a backup (it gets DST's bucket configuration and credentials for this
/// run only, in a private directory, on stdin). DST then restores that backup like any
/// other. SRC's raw data never leaves SRC's host; DST's hosts never get SRC's credentials.
pub async fn seed(
    dst: &crate::engine::Loaded,
    src_name: &str,
    rules: Option<&crate::spec::anonymize::Rules>,
    yes: bool,
) -> Result<i32> {
    if src_name == dst.env.name {
        bail!("an environment cannot seed itself");
    }
    let src_arg = crate::spec::resolve_env_path(src_name);
    let src_arg = if src_arg.exists() {
        src_arg
    } else {
        dst.env.file.with_file_name(format!("{src_name}.toml"))
    };
    let src = load(&src_arg.to_string_lossy(), None)?;
    let key = match rules {
        Some(r) if r.tables > 0 => {
            let name = dst
                .env
                .seed()?
                .map(|s| s.key_secret)
                .unwrap_or_else(|| "anonymize_key".into());
            let v = dst.env.secrets.get(&name).ok_or_else(|| {
                anyhow!(
                    "{}: the anonymisation is keyed by the secret `{name}`: declare it (`[secrets.{name}] generate = 32`)",
                    dst.env.name
                )
            })?;
            v.expose().to_string()
        }
        _ => String::new(),
    };
    // A seed is the whole source environment's data into the whole destination: one
    // Galera cluster on each side (with several, backup_hosts says which there are).
    let one = "--from-env copies an environment with one Galera cluster (or none)";
    let src_hosts = backup_hosts(&src.desired.hosts, None).context(one)?;
    let dst_hosts = backup_hosts(&dst.desired.hosts, None).context(one)?;
    let mut files = vec![];
    for path in ["/etc/kiln/backup/backup.json", "/etc/kiln/backup/s3.env"] {
        let c = rendered(dst_hosts[0], path)
            .ok_or_else(|| anyhow!("{}: no {path} in the spec", dst_hosts[0].name))?;
        let c = if path.ends_with(".json") {
            endpoints_by_address(&c, &dst.desired.hosts)?
        } else {
            c
        };
        files.push((path.rsplit('/').next().unwrap_or(path), c));
    }
    let rules_json = rules
        .map(|r| r.json.clone())
        .unwrap_or_else(|| serde_json::json!({"media": "copy", "tables": []}));
    let how = match rules {
        Some(r) => format!(
            "anonymised by {} ({} table rule(s), media: {})",
            r.file.display(),
            r.tables,
            r.media
        ),
        None => "NOT anonymised (--no-anonymize)".into(),
    };
    if !yes
        && !confirm(&format!(
            "Seed {}: every database but the system ones is replaced by {src_name}'s latest point, {how}.",
            dst.env.name
        ))?
    {
        println!("nothing seeded");
        return Ok(1);
    }
    let redactor = crate::spec::Redactor::new(
        src.env
            .secrets
            .values()
            .chain(dst.env.secrets.values())
            .cloned(),
    );
    let mut script = String::from(
        "set -eu\numask 077\nd=$(mktemp -d /tmp/kiln-seed.XXXXXX)\ntrap 'rm -rf \"$d\"' EXIT\n",
    );
    for (name, content) in &files {
        script.push_str(&crate::shell::heredoc(
            &format!("cat > \"$d/dst-{name}\""),
            "",
            content,
            "KILN_SEED_EOF",
        ));
    }
    script.push_str(&crate::shell::heredoc(
        "cat > \"$d/rules.json\"",
        "",
        &rules_json.to_string(),
        "KILN_SEED_EOF",
    ));
    script.push_str(&crate::shell::heredoc(
        "cat > \"$d/key\"",
        "",
        &key,
        "KILN_SEED_EOF",
    ));
    script.push_str(
        "set +e\n/usr/local/sbin/kiln-backup seed-export --to-config \"$d/dst-backup.json\" --to-credentials \"$d/dst-s3.env\" --rules \"$d/rules.json\" --key-file \"$d/key\"\n",
    );
    let (sh, st) = connect_first(&src.env, &src_hosts).await?;
    println!(
        "seed {} from {src_name}: {} ({}) restores {src_name}'s latest point into a scratch server, {how}",
        dst.env.name, sh.name, sh.connection.address
    );
    let seeded = std::sync::Mutex::new(None::<String>);
    let print = |l: &str| {
        if let Some(s) = l.strip_prefix("SEEDED ") {
            *seeded.lock().expect("lock") = Some(s.trim().to_string());
        }
        println!("{}", redactor.redact(l));
    };
    let out = st.run(&script, TIMEOUT, Some(&print)).await?;
    for l in out.stderr.lines().filter(|l| !l.trim().is_empty()) {
        eprintln!("{}", redactor.redact(l));
    }
    let stamp = seeded.lock().expect("lock").clone();
    let stamp = match (out.status, stamp) {
        (Some(0), Some(s)) if s.len() == 16 && s.chars().all(|c| c.is_ascii_alphanumeric()) => s,
        _ => {
            println!(
                "seed failed on {}: nothing was changed in {}",
                sh.name, dst.env.name
            );
            return Ok(1);
        }
    };
    if !settle_cluster(dst, &cluster_of(&dst.desired.hosts, dst_hosts[0])).await? {
        return Ok(1);
    }
    let (dh, dt) = connect_first(&dst.env, &dst_hosts).await?;
    println!(
        "restore the seed backup {stamp} into {} ({})",
        dh.name, dh.connection.address
    );
    let dred = dst.env.redactor();
    let status = stream(
        dt.as_ref(),
        &format!(
            "set -u\n/usr/local/sbin/kiln-backup restore --from {stamp} && /usr/local/sbin/kiln-backup seeded --mark {stamp} --from {}\n",
            crate::shell::quote(&src.env.name)
        ),
        &dred,
    )
    .await?;
    if status != Some(0) {
        println!(
            "restoring the seed backup failed: run `kiln restore {} --from {stamp} --yes` again",
            dst.env.name
        );
        return Ok(1);
    }
    // A new base backup: the seeded data is this environment's new history.
    println!("new base backup of {}", dst.env.name);
    backup(&dst.env.file.to_string_lossy(), None).await
}

/// DST's backup configuration as SRC's host must read it: an endpoint that names a host of
/// DST (`http://storage:9000`, resolved by DST's hosts through their /etc/hosts) gets that
/// host's address, since on SRC's host the same name is SRC's own storage.
fn endpoints_by_address(json: &str, hosts: &[DesiredHost]) -> Result<String> {
    let mut v: serde_json::Value = serde_json::from_str(json)?;
    let fix = |e: &mut serde_json::Value| {
        let Some(url) = e.as_str() else { return };
        let Some((scheme, rest)) = url.split_once("://") else {
            return;
        };
        let (hostport, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => (h, Some(p)),
            _ => (hostport, None),
        };
        if let Some(h) = hosts.iter().find(|h| h.name == host) {
            let addr = &h.connection.address;
            let addr = if addr.contains(':') {
                format!("[{addr}]")
            } else {
                addr.clone()
            };
            *e = serde_json::Value::String(match port {
                Some(p) => format!("{scheme}://{addr}:{p}{path}"),
                None => format!("{scheme}://{addr}{path}"),
            });
        }
    };
    fix(&mut v["endpoint"]);
    if v["replica"].is_object() {
        fix(&mut v["replica"]["endpoint"]);
    }
    Ok(serde_json::to_string_pretty(&v)?)
}

/// For `kiln apply` of an environment with `[seed]`: seeds it when its bucket records no
/// seed yet (a rebuilt host does not seed again: the record is in the bucket).
pub async fn seed_if_new(loaded: &crate::engine::Loaded) -> Result<i32> {
    let Some(s) = loaded.env.seed()? else {
        return Ok(0);
    };
    let hosts = backup_hosts(&loaded.desired.hosts, None)
        .context("`[seed]` seeds an environment with one Galera cluster (or none)")?;
    let (h, t) = connect_first(&loaded.env, &hosts).await?;
    let out = t
        .run(
            "/usr/local/sbin/kiln-backup seeded",
            Duration::from_secs(120),
            None,
        )
        .await?;
    if out.status == Some(0) {
        println!(
            "seed: {} was seeded already ({})",
            loaded.env.name,
            loaded.env.redactor().redact(out.stdout.trim())
        );
        return Ok(0);
    }
    if out.status != Some(4) {
        bail!(
            "seed: cannot tell on {} whether {} was seeded: {}",
            h.name,
            loaded.env.name,
            loaded.env.redactor().redact(out.stderr.trim())
        );
    }
    seed(loaded, &s.from_env, s.rules.as_ref(), true).await
}

/// How long a restore waits for Debian's debian-start on the database nodes.
const SETTLE: Duration = Duration::from_secs(600);

/// Waits, bounded, until no `debian-start` runs on a node.
fn settle_script() -> String {
    format!(
        r#"set -u
n=0
while pgrep -f '/etc/mysql/debian-start|mysql_upgrade|mariadb-upgrade' >/dev/null; do
  [ $n -eq 0 ] && echo "$(hostname): waiting for Debian's debian-start (mysql_upgrade) to finish"
  n=$((n+1))
  if [ $n -ge {} ]; then
    echo "$(hostname): gave up after $n s: debian-start still runs: $(pgrep -a -f 'mysql_upgrade|mariadb-upgrade' | head -1)"
    exit 1
  fi
  sleep 1
done
[ $n -gt 0 ] && echo "$(hostname): debian-start finished after $n s"
exit 0
"#,
        SETTLE.as_secs()
    )
}

/// Waits (at most `SETTLE`, saying for what) until Debian's `debian-start` — run by every
/// MariaDB start; on a node that joined by state transfer it runs `mysql_upgrade`, whose
/// `ALTER TABLE mysql.event` and a replicated `DROP DATABASE` wait on each other for ever
/// — is over on every node of the restoring node's cluster (`nodes`), not only the one that
/// restores: a write set the restore sends must be applied everywhere. A node that does not
/// answer is skipped (it is not in the cluster either). Returns false when it gave up.
async fn settle_cluster(loaded: &crate::engine::Loaded, nodes: &[&DesiredHost]) -> Result<bool> {
    let script = settle_script();
    let redactor = loaded.env.redactor();
    for &h in nodes {
        let Ok(t) = connect(&loaded.env, h).await else {
            println!("{}: does not answer; not waited for", h.name);
            continue;
        };
        let out = t
            .run(&script, SETTLE + Duration::from_secs(30), None)
            .await?;
        for l in out.stdout.lines().filter(|l| !l.trim().is_empty()) {
            println!("{}", redactor.redact(l));
        }
        if out.status != Some(0) {
            println!("nothing restored: {} is not ready", h.name);
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scripts a restore runs on the Galera nodes pass shellcheck and dash's parser
    /// (`.ci/run` installs shellcheck; without it this test fails).
    #[test]
    fn node_scripts_pass_shellcheck() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        for (name, script) in [
            ("settle", settle_script()),
            ("stop", stop_script()),
            ("rejoin", rejoin_script()),
        ] {
            for (tool, args) in [
                ("shellcheck", &["-s", "sh", "-f", "gcc", "-"][..]),
                ("dash", &["-n"][..]),
            ] {
                let mut child = Command::new(tool)
                    .args(args)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap_or_else(|e| panic!("{tool}: {e}"));
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(script.as_bytes())
                    .unwrap();
                let out = child.wait_with_output().unwrap();
                assert!(
                    out.status.success(),
                    "{tool} on the {name} script:\n{}{}\n---\n{script}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }

    fn host(name: &str, address: &str) -> DesiredHost {
        DesiredHost {
            name: name.into(),
            connection: crate::desired::Connection {
                address: address.into(),
                port: 22,
                user: "root".into(),
                key: None,
                provider: crate::spec::Provider::Static,
            },
            roles: vec![],
            resources: vec![],
            checks: vec![],
        }
    }

    #[test]
    fn endpoints_naming_a_host_get_its_address() {
        let hosts = [host("storage", "10.0.0.7"), host("storage2", "10.0.0.8")];
        let json = r#"{"endpoint": "http://storage:9000", "replica": {"endpoint": "https://storage2/s3"}, "bucket": "b"}"#;
        let v: serde_json::Value =
            serde_json::from_str(&endpoints_by_address(json, &hosts).unwrap()).unwrap();
        assert_eq!(v["endpoint"], "http://10.0.0.7:9000");
        assert_eq!(v["replica"]["endpoint"], "https://10.0.0.8/s3");
        assert_eq!(v["bucket"], "b");
        // Not a host of the environment, or no replica: unchanged.
        let json = r#"{"endpoint": "https://s3.example.com", "replica": {"endpoint": ""}}"#;
        let v: serde_json::Value =
            serde_json::from_str(&endpoints_by_address(json, &hosts).unwrap()).unwrap();
        assert_eq!(v["endpoint"], "https://s3.example.com");
        assert_eq!(v["replica"]["endpoint"], "");
    }
}

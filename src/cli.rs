//! Command-line types (clap) and the dispatch to `ops`. Nothing else lives here.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::ops;
use crate::ui::ColorChoice;

/// The environment variables kiln reads, listed at the end of `kiln --help`.
pub const ENV_HELP: &str = "\
Environment variables:
  KILN_ROOT        Directory holding environments/, modules/ and templates/ (default: .)
  KILN_PATH        Directories (colon-separated) searched first for modules/ and templates/
  KILN_SSH_USER    SSH user for every non-lab host (CI drift runs with their own account)
  KILN_SSH_KEY     SSH private key for every non-lab host (with KILN_SSH_USER)
  KILN_TRANSPORT   russh (default) or openssh: as --transport
  KILN_LAB_DIR     The lab's state directory (default /var/lib/kiln/lab)
  KILN_RECORD_DIR  Record every host's answers there as tapes (redacted) for tests
  KILN_JUICEFS     The juicefs binary the lab's object-storage stand-in runs
  NO_COLOR         Set and non-empty: no colour with --color auto
  XDG_STATE_HOME   Where kiln keeps this machine's private state (default ~/.local/state)
  KILN_AGE_IDENTITY  The age identity file that decrypts `age` secrets (outside the repository)
Secrets named with `env = \"VAR\"` in an environment are read from that variable.";

/// kiln — declare Debian servers in TOML, see exactly what differs, apply it idempotently.
///
/// Exit codes: 0 success / no changes; 2 changes or drift (plan --detailed-exitcode, drift,
/// verify); 1 error (bad spec, unreachable or failed host).
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, long_about, after_help = ENV_HELP)]
pub struct Cli {
    /// When to colour output: auto (a terminal and NO_COLOR unset), always or never.
    #[arg(
        long,
        value_enum,
        default_value = "auto",
        global = true,
        value_name = "WHEN"
    )]
    pub color: ColorChoice,
    /// How hosts are reached over SSH: russh (in process, the default; a host needing what
    /// russh lacks, e.g. ProxyJump, goes through OpenSSH with a note) or openssh (the
    /// system's ssh, a master per host).
    #[arg(
        long,
        value_enum,
        default_value = "russh",
        global = true,
        env = "KILN_TRANSPORT",
        value_name = "IMPL"
    )]
    pub transport: TransportChoice,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum TransportChoice {
    Openssh,
    Russh,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read the live hosts and show what apply would change (file diffs included, secrets never).
    Plan(ops::plan::PlanArgs),
    /// Apply an environment (plans first and asks) or exactly a saved plan.
    Apply(ops::apply::ApplyArgs),
    /// Plan several environments (all by default) for CI: exit 0 clean, 2 drift, 1 error.
    Drift {
        /// Environment names or paths (default: every environments/*.toml).
        envs: Vec<String>,
        /// Report format: human, json or markdown.
        #[arg(long, value_enum, default_value = "human")]
        format: ops::drift::DriftFormat,
        #[command(flatten)]
        select: ops::plan::TargetArgs,
    },
    /// Re-plan (must be empty), then run the modules' health checks.
    Verify {
        /// Environment name under environments/, or a path to a .toml file.
        env: String,
        /// Only these hosts or roles (comma-separated).
        #[arg(long)]
        limit: Option<String>,
        /// Output: human, or json (the plan and every check's result; never a secret).
        #[arg(long, value_enum, default_value = "human")]
        format: ops::plan::Format,
    },
    /// Local Debian 12 hosts (systemd-nspawn) for an environment's `lab` hosts.
    Lab {
        /// What to do with the lab hosts.
        #[arg(value_enum)]
        action: ops::lab::LabAction,
        /// Environment name under environments/, or a path to a .toml file.
        env: String,
        /// Hosts (for `destroy`).
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
    /// Show a value of the merged environment and the file and line that set it (through
    /// `extends`), or the module default it falls back to.
    Explain {
        /// Environment name under environments/, or a path to a .toml file.
        env: String,
        /// A key path: `hosts.web.address`, `modules.nginx.sites[0].domains`, `ssh.user`.
        key: String,
        /// Output: human, or json (`key`, `value`, `set_by`, `overrides`, `default_of`).
        #[arg(long, value_enum, default_value = "human")]
        format: ops::plan::Format,
    },
    /// Write environments/DST.toml: extends SRC, overriding only hosts, domains, the ACME
    /// directory (staging), secrets and cluster size.
    Clone {
        /// The environment to copy (name or path).
        src: String,
        /// The new environment's name (written as environments/DST.toml).
        dst: String,
        /// FROM=TO: `api.example.com=api.qa.example.com` or a parent domain `example.com=qa.example.com`.
        #[arg(long = "domain-map")]
        domain_map: Vec<String>,
        /// `lab` (new lab containers; `lab@10.233.0.50` to choose the first address) or a
        /// TOML file `[hosts] web = "10.0.0.5"` (hosts not listed are left out).
        #[arg(long, default_value = "lab")]
        hosts: String,
        /// Leave a host out (its references, e.g. a cluster node, go too).
        #[arg(long)]
        drop: Vec<String>,
        /// Replace an existing DST file.
        #[arg(long)]
        force: bool,
        /// Seed the copy's databases (and media) with SRC's latest point: written as
        /// `[seed]`, done by the first full `kiln apply DST`.
        #[arg(long)]
        with_data: bool,
        /// With --with-data: anonymisation rules (TOML) applied on SRC's backup host before
        /// DST can read the data.
        #[arg(long, value_name = "RULES", requires = "with_data")]
        anonymize: Option<PathBuf>,
        /// With --with-data: copy the data as it is.
        #[arg(long, requires = "with_data", conflicts_with = "anonymize")]
        no_anonymize: bool,
        /// MODULE.KEY=VALUE: a module parameter of the copy's own (VALUE in TOML; a bare
        /// word is a string), e.g. `--set 'monitoring.webhook_urls=["http://qa-alerts:9099/"]'`.
        /// Parameters that belong to one environment (where alerts go) are not inherited:
        /// without --set the copy gets the module's default.
        #[arg(long, value_name = "MODULE.KEY=VALUE")]
        set: Vec<String>,
    },
    /// Secrets encrypted with age in the repository: `set` one from standard input,
    /// `rekey` all after `age_recipients` changed.
    Secret {
        #[command(subcommand)]
        action: ops::secret::SecretAction,
    },
    /// Disaster recovery: create missing hosts through their provider, apply the full plan,
    /// verify, and print the timeline of the phases (the measured RTO).
    Rebuild {
        /// Environment name under environments/, or a path to a .toml file.
        env: String,
        /// Only these hosts are expected to be gone (default: any missing host).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Also write the timeline as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Seconds to wait for each phase of a new EC2 instance (running, host keys in its
        /// console, SSH); default 300, 600 and 300.
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
        /// Do not ask for confirmation (required without a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// EC2 instances for an environment's `provider = "ec2"` hosts (found by their
    /// kiln:env/kiln:host tags, created when missing).
    Ec2 {
        /// What to do with the instances.
        #[arg(value_enum)]
        action: ops::ec2::Ec2Action,
        /// Environment name under environments/, or a path to a .toml file.
        env: String,
        /// Only these hosts (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// `up`: do not wait for SSH (instances running and host keys recorded).
        #[arg(long)]
        no_ssh: bool,
        /// `up`: seconds each phase may take (running, host keys, SSH); default 300/600/300.
        #[arg(long)]
        timeout: Option<u64>,
        /// `status`: human, or json (one document: each host's instance, state, address,
        /// AMI, type and tags; instances tagged with the environment that are no host of it).
        #[arg(long, value_enum, default_value = "human")]
        format: ops::plan::Format,
    },
    /// Terminate a host's EC2 instance (asks unless --yes). Only instances tagged as kiln's
    /// own for this environment and host are ever terminated.
    Destroy {
        /// Environment name under environments/, or a path to a .toml file.
        env: String,
        /// The ec2 host whose instance(s) to terminate.
        #[arg(long)]
        host: Option<String>,
        /// One instance by id; refused unless it is tagged as a host of this environment.
        #[arg(long)]
        instance: Option<String>,
        /// Do not ask for confirmation (required without a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// SSH to a host with the environment's key and known_hosts.
    Ssh {
        /// Environment name under environments/, or a path to a .toml file.
        env: String,
        /// The host (as named in the environment).
        host: String,
        /// A command to run instead of a login shell (after `--`).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Print an OpenSSH config block for the environment's hosts.
    SshConfig {
        /// Environment name under environments/, or a path to a .toml file.
        env: String,
    },
    /// Print the resource graph as Graphviz DOT.
    Graph {
        /// Environment name under environments/, or a path to a .toml file.
        env: String,
        /// Only these hosts or roles (comma-separated).
        #[arg(long)]
        limit: Option<String>,
    },
    /// Run a backup now on the environment's backup host (the `backup` module) and wait.
    Backup {
        /// Environment name under environments/, or a path to a .toml file.
        env: String,
        /// The Galera cluster to back up (through its nodes that run the `backup` module),
        /// when the environment has several.
        #[arg(long, value_name = "NAME")]
        cluster: Option<String>,
    },
    /// Restore databases (and media) from a backup, after checking its manifest.
    Restore(ops::backup::RestoreArgs),
    /// List the modules along the module path (KILN_PATH, an environment's modules_path and
    /// repository, KILN_ROOT or .): name and description, and which directory each is from.
    Modules {
        /// Use this environment's module path (its `modules_path` and repository too).
        #[arg(long, value_name = "ENV")]
        env: Option<String>,
    },
    /// Show a module: its description, parameters (type, default, format, description)
    /// and health checks.
    Module {
        #[command(subcommand)]
        action: ModuleAction,
    },
    /// Print a shell completion script (e.g. `kiln completions bash > /etc/bash_completion.d/kiln`).
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff; `kiln man | man -l -`), or write every page to a directory.
    Man {
        /// Write kiln.1 and one page per subcommand (kiln-plan.1, …) into this directory.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ModuleAction {
    /// A module's description, parameters and health checks (like ansible-doc).
    Show {
        /// The module's name (`kiln modules` lists them).
        name: String,
        /// Look it up along this environment's module path (its `modules_path` and
        /// repository too).
        #[arg(long, value_name = "ENV")]
        env: Option<String>,
    },
}

pub fn run(cli: Cli) -> anyhow::Result<i32> {
    crate::ui::set_color(cli.color);
    crate::transport::select(match cli.transport {
        TransportChoice::Openssh => crate::transport::Kind::OpenSsh,
        TransportChoice::Russh => crate::transport::Kind::Russh,
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()?;
    match cli.command {
        Command::Plan(args) => rt.block_on(ops::plan::run(args)),
        Command::Apply(args) => rt.block_on(ops::apply::run(args)),
        Command::Drift {
            envs,
            format,
            select,
        } => rt.block_on(ops::drift::run(envs, format, select)),
        Command::Verify { env, limit, format } => {
            rt.block_on(ops::verify::run(&env, limit.as_deref(), format))
        }
        Command::Lab { action, env, hosts } => rt.block_on(ops::lab::run(action, &env, &hosts)),
        Command::Explain { env, key, format } => ops::explain::run(&env, &key, format),
        Command::Clone {
            src,
            dst,
            domain_map,
            hosts,
            drop,
            force,
            with_data,
            anonymize,
            no_anonymize,
            set,
        } => {
            let command = format!(
                "kiln {}",
                std::env::args().skip(1).collect::<Vec<_>>().join(" ")
            );
            ops::clone::run(
                ops::clone::CloneArgs {
                    src,
                    dst,
                    domain_map,
                    hosts,
                    drop,
                    force,
                    with_data,
                    anonymize: anonymize.map(|p| p.to_string_lossy().into_owned()),
                    no_anonymize,
                    set,
                },
                &command,
            )
        }
        Command::Secret { action } => ops::secret::run(action),
        Command::Rebuild {
            env,
            hosts,
            json,
            timeout,
            yes,
        } => rt.block_on(ops::rebuild::run(
            &env,
            &hosts,
            json.as_deref(),
            timeout,
            yes,
        )),
        Command::Ec2 {
            action,
            env,
            hosts,
            no_ssh,
            timeout,
            format,
        } => rt.block_on(ops::ec2::run(action, &env, &hosts, no_ssh, timeout, format)),
        Command::Destroy {
            env,
            host,
            instance,
            yes,
        } => rt.block_on(ops::ec2::destroy(
            &env,
            host.as_deref(),
            instance.as_deref(),
            yes,
        )),
        Command::Ssh { env, host, command } => ops::ssh::ssh(&env, &host, &command),
        Command::SshConfig { env } => ops::ssh::ssh_config(&env),
        Command::Graph { env, limit } => ops::graph::run(&env, limit.as_deref()),
        Command::Backup { env, cluster } => {
            rt.block_on(ops::backup::backup(&env, cluster.as_deref()))
        }
        Command::Restore(args) => rt.block_on(ops::backup::restore(args)),
        Command::Modules { env } => ops::modules::list(env.as_deref()),
        Command::Module {
            action: ModuleAction::Show { name, env },
        } => ops::modules::show(&name, env.as_deref()),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "kiln", &mut std::io::stdout());
            Ok(0)
        }
        Command::Man { dir } => {
            use clap::CommandFactory;
            match dir {
                Some(dir) => {
                    std::fs::create_dir_all(&dir)?;
                    clap_mangen::generate_to(Cli::command(), &dir)?;
                    println!("Man pages written to {}", dir.display());
                }
                None => clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?,
            }
            Ok(0)
        }
    }
}

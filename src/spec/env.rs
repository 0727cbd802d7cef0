//! The environment file format (`environments/*.toml`). Every table denies unknown keys so
//! a typo is an error with its position, not a silently ignored setting.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvSpec {
    #[serde(default)]
    pub description: Option<String>,
    /// Name of another environment in the same directory to inherit from.
    #[serde(default)]
    pub extends: Option<String>,
    /// Directories looked in for modules (each holding `modules/` and `templates/`), after
    /// `KILN_PATH` and before this environment's own repository; relative to the file that
    /// sets it (`spec::module_path`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules_path: Vec<String>,
    #[serde(default)]
    pub ssh: SshSpec,
    /// How packages are installed on every host of the environment.
    #[serde(default)]
    pub apt: AptSpec,
    #[serde(default)]
    pub hosts: IndexMap<String, HostSpec>,
    #[serde(default)]
    pub roles: IndexMap<String, RoleSpec>,
    /// Variables visible to every template as `vars.NAME`.
    #[serde(default)]
    pub vars: toml::Table,
    /// Module parameters for the whole environment: `[modules.nginx] worker_connections = 512`.
    #[serde(default)]
    pub modules: IndexMap<String, toml::Table>,
    /// Secret references: `[secrets.db_password] env = "KILN_DB_PASSWORD"` or `file = "/etc/kiln/db"`.
    #[serde(default)]
    pub secrets: IndexMap<String, SecretRef>,
    /// The age identity file that decrypts `age` secrets (`~` expanded; outside the
    /// repository). `KILN_AGE_IDENTITY` takes precedence.
    #[serde(default)]
    pub age_identity: Option<String>,
    /// The age recipients (`age1…` public keys) `kiln secret set` and `kiln secret rekey`
    /// encrypt this environment's `age` secrets to.
    #[serde(default)]
    pub age_recipients: Vec<String>,
    /// `[seed]`: this environment's databases start as a copy of another's latest point,
    /// anonymised (`kiln clone --with-data`); `kiln apply` seeds them once.
    #[serde(default)]
    pub seed: Option<SeedSpec>,
}

/// `[seed] from_env = "prod"`, `anonymize = "qa.anonymize.toml"` (beside the environment
/// file), `key_secret = "anonymize_key"` (the secret keying the fakes).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedSpec {
    pub from_env: String,
    #[serde(default)]
    pub anonymize: Option<String>,
    #[serde(default)]
    pub key_secret: Option<String>,
    /// Copy the data as it is, with no anonymisation (a choice that must be written).
    #[serde(default)]
    pub no_anonymize: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshSpec {
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    /// Private key file (`~` expanded); the user's agent and ~/.ssh/config work too.
    #[serde(default)]
    pub key: Option<String>,
    /// known_hosts file, relative to the environment file; default `<env>.known_hosts`
    /// beside it.
    #[serde(default)]
    pub known_hosts: Option<String>,
    /// Accept and record unknown host keys (never changed ones). Off by default; lab hosts
    /// have their keys recorded when they are created.
    #[serde(default)]
    pub accept_new: Option<bool>,
    #[serde(default)]
    pub connect_timeout: Option<u64>,
    /// How many hosts are worked on at once (default 16).
    #[serde(default)]
    pub parallel: Option<usize>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AptSpec {
    /// apt's lists are refreshed before an install when the last successful
    /// `apt-get update` is older than this many seconds (default 86400, one day), when a
    /// list the sources call for is missing, or when a repository changed. Like Ansible's
    /// `cache_valid_time` and pyinfra's `cache_time`, the age is read from
    /// /var/lib/apt/periodic/update-success-stamp (kiln touches it after each update), else
    /// from the newest list.
    #[serde(default)]
    pub lists_max_age: Option<u64>,
    /// Install Recommends (default false: `--no-install-recommends`, the smaller server).
    /// Ansible's and pyinfra's apt modules install them unless told otherwise.
    #[serde(default)]
    pub recommends: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// Addresses you already have.
    #[default]
    Static,
    /// Local Debian 12 containers made by `kiln lab up`.
    Lab,
    /// EC2 instances found by their `kiln:env`/`kiln:host` tags, made by `kiln ec2 up`.
    Ec2,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub provider: Provider,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Other names of this host (its sites' domains). The lab writes them into its hosts'
    /// /etc/hosts; modules may use them (`host.aliases`).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// In an environment that `extends` another: leave this host of the parent out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub omit: bool,
    /// Host variables, overriding the environment's `vars`.
    #[serde(default)]
    pub vars: toml::Table,
    /// Module parameters for this host only, overriding the environment's.
    #[serde(default)]
    pub modules: IndexMap<String, toml::Table>,
    /// How to create the instance of a `provider = "ec2"` host (see `spec::ec2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ec2: Option<super::ec2::Ec2Spec>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSpec {
    #[serde(default)]
    pub description: Option<String>,
    pub modules: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    #[serde(default)]
    pub env: Option<String>,
    #[serde(default)]
    pub file: Option<String>,
    /// Generate a random value of this many characters once and keep it under
    /// `$XDG_STATE_HOME/kiln/secrets/ENV/NAME` (0600): for labs and QA copies.
    #[serde(default)]
    pub generate: Option<u32>,
    /// A file `kiln lab up` provides (an artifact's pin): a plain name in the lab's
    /// artifacts directory (`$KILN_LAB_DIR/artifacts`). Not a credential, so `kiln clone`
    /// shares it, and it follows `KILN_LAB_DIR` wherever the lab lives.
    #[serde(default)]
    pub lab_artifact: Option<String>,
    /// A file encrypted with age, committed in the repository: a path relative to the
    /// environment file that sets it, inside that file's directory tree
    /// (`secrets/db.age`). Decrypted in memory with the identity (`spec::age`).
    #[serde(default)]
    pub age: Option<String>,
}

//! Modules as data (`modules/<name>.toml`): typed parameters with defaults, resources
//! (templated tables, expanded per host by the desired stage) and health checks. Their
//! templates live under `templates/<name>/` of the same root of the module path
//! (`spec::module_path`).

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::source::SourceFile;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleSpec {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub params: IndexMap<String, ParamSpec>,
    /// Resource tables. Every string is a minijinja template; a string that is exactly one
    /// `{{ expression }}` keeps the expression's type (a list stays a list). The keys
    /// `for_each` (an expression giving a list; each element is `item`) and `when` (an
    /// expression) are handled before the table is read as its `type`.
    #[serde(default)]
    pub resource: Vec<toml::Table>,
    #[serde(default)]
    pub check: Vec<CheckSpec>,
    /// What the module listens on and who may connect: the firewall openings derived for
    /// every host of the module (`desired::inbound`), rendered by debian-base's firewall.
    #[serde(default)]
    pub listen: Vec<ListenSpec>,
}

/// One port a module serves to other hosts (`[[listen]]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenSpec {
    /// The port: a number, or a template giving one (`"{{ params.port }}"`).
    pub port: toml::Value,
    /// `tcp` (the default) or `udp`.
    #[serde(default)]
    pub proto: Option<String>,
    /// An expression giving who may connect, a list of: environment host names, role
    /// names (`role:NAME` or a bare role name), `module:NAME` (every host of the
    /// environment running that module), addresses and networks, or `any`. Each is turned
    /// into addresses from the environment; the host itself is left out; an empty result
    /// opens nothing.
    pub from: String,
    /// An expression: the port is opened only when it holds.
    #[serde(default)]
    pub when: Option<String>,
    /// What the port serves (a comment in the firewall).
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamType {
    String,
    Int,
    Bool,
    List,
    Map,
    Any,
}

impl ParamType {
    pub fn accepts(self, v: &toml::Value) -> bool {
        matches!(
            (self, v),
            (ParamType::Any, _)
                | (ParamType::String, toml::Value::String(_))
                | (ParamType::Int, toml::Value::Integer(_))
                | (ParamType::Bool, toml::Value::Boolean(_))
                | (ParamType::List, toml::Value::Array(_))
                | (ParamType::Map, toml::Value::Table(_))
        )
    }
    pub fn name(self) -> &'static str {
        match self {
            ParamType::String => "a string",
            ParamType::Int => "an integer",
            ParamType::Bool => "a boolean",
            ParamType::List => "a list",
            ParamType::Map => "a table",
            ParamType::Any => "any value",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    #[serde(rename = "type")]
    pub ty: ParamType,
    #[serde(default)]
    pub default: Option<toml::Value>,
    #[serde(default)]
    pub description: Option<String>,
    /// The grammar every scalar of the value must follow (`spec::validate::FORMATS`:
    /// `email`, `domain`, `port`, `cidr`, `name`, `path`, …; a trailing `?` also accepts
    /// ""), checked at the environment key that set it, before any host is contacted.
    #[serde(default)]
    pub format: Option<String>,
    /// For tables inside the value: a key listed here is checked with its own format
    /// (`fields = { domains = "domain", name = "word" }`).
    #[serde(default)]
    pub fields: IndexMap<String, String>,
    /// The schema of the entries of a list (or the values of a table, and the tables in
    /// their lists): the keys an entry may have and their types
    /// (`entry = { name = "string", domains = "list", hsts = "bool" }`). Any other key is
    /// refused at the environment key that wrote it, with the allowed ones listed. Empty:
    /// entries are not checked (free-form tables such as `env`).
    #[serde(default)]
    pub entry: IndexMap<String, ParamType>,
    /// The value belongs to the one environment that sets it (where its alerts go, say):
    /// a copy made by `kiln clone` does not inherit it but gets the module's default, unless
    /// `kiln clone --set MODULE.KEY=VALUE` gives it its own.
    #[serde(default)]
    pub per_environment: bool,
    /// Another parameter of the module that, when set (not empty), is read instead of this
    /// one: a `secret` default of this one then need not be a declared secret (the backup
    /// module's `access_key_secret` is not read when `access_key` gives the key itself).
    #[serde(default)]
    pub replaced_by: Option<String>,
}

/// A health check `kiln verify` runs on each host of the module (templated like resources).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    pub name: String,
    /// Shell run on the host; exit 0 is healthy.
    pub run: String,
    /// Seconds before the check counts as failed (default 30).
    #[serde(default)]
    pub timeout: Option<u64>,
    /// Retries one second apart before failing (services that are still starting).
    #[serde(default)]
    pub retries: Option<u32>,
    /// Show the last lines of its output even when it passes (a state worth seeing, such
    /// as which node a proxy sends the writes to).
    #[serde(default)]
    pub report: bool,
}

#[derive(Debug, Clone)]
pub struct Module {
    pub name: String,
    pub source: SourceFile,
    pub spec: ModuleSpec,
    /// The root of the module path it was found in (holds its `modules/` and
    /// `templates/`).
    pub root: std::path::PathBuf,
}

impl Module {
    /// Its parameters' names, for an error that lists them (`a, b, c`).
    pub fn param_names(&self) -> String {
        self.spec
            .params
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `templates/<name>/` beside the module's own `modules/`.
    pub fn templates_dir(&self) -> std::path::PathBuf {
        self.root.join("templates").join(&self.name)
    }
}

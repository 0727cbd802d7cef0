//! `galera_node`: marks a host as a node of a MariaDB Galera cluster. It changes nothing
//! by itself on its host: the cluster's decisions (first formation, recovery, joins,
//! rolling restarts, databases and users) need every node's state at once, so they are
//! made by [`crate::cluster::galera`] over all hosts' facts, and executed by
//! `apply::cluster` after the hosts' own scripts wrote packages and configuration.
//!
//! ```toml
//! [[resource]]
//! type = "galera_node"
//! cluster = "lab"
//! nodes = ["db1", "db2", "db3"]          # host names (or addresses) in bootstrap preference order
//! restart_on = ["/etc/mysql/mariadb.conf.d/60-galera.cnf"]
//! databases = ["app"]
//! users = [{ name = "app", host = "10.233.0.%", password_secret = "db_app", grants = ["ALL PRIVILEGES ON `app`.*"] }]
//! ```

use serde::{Deserialize, Serialize};

use crate::facts::{FactQuery, HostFacts};

use super::Planned;

/// A database user of the cluster (carried by the Galera schema step, so it is defined there).
pub use crate::plan::step::galera::GaleraUser;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GaleraNode {
    pub cluster: String,
    /// Every node of the cluster (environment host names, or addresses of its hosts), in
    /// the order a first formation bootstraps and joins them. The expected cluster size is
    /// its length.
    pub nodes: Vec<String>,
    /// Configuration files whose change needs a (rolling) restart of the node.
    #[serde(default)]
    pub restart_on: Vec<String>,
    #[serde(default)]
    pub databases: Vec<String>,
    #[serde(default)]
    pub users: Vec<GaleraUser>,
}

impl GaleraNode {
    pub fn facts(&self) -> Vec<FactQuery> {
        vec![
            FactQuery::Galera {
                cluster: self.cluster.clone(),
                config: self.restart_on.clone(),
            },
            FactQuery::Package {
                name: "mariadb-server".into(),
            },
        ]
    }

    /// Nothing per host: see the module documentation.
    pub fn plan(&self, _facts: &HostFacts) -> Option<Planned> {
        None
    }
}

//! Connections: the one place transports to hosts are opened (through a `Connector`) and
//! kept for the rest of a run.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;

use crate::desired::Connection;
use crate::spec::Environment;
use crate::transport::recorded::Recorder;
use crate::transport::russh::RusshConnector;
use crate::transport::ssh::SshConnector;
use crate::transport::{Connector, Kind, Transport};

/// Open connections, by host name, and the `Connector` that opens new ones.
#[derive(Clone)]
pub struct Connections {
    connector: Arc<dyn Connector>,
    pub by_host: HashMap<String, Arc<dyn Transport>>,
    /// Time each section of the fact scripts on the host (`kiln plan --timings`).
    pub timings: bool,
    /// Print a line when each host's facts are read (`kiln apply` without a terminal).
    pub progress_lines: bool,
}

impl Connections {
    pub fn new(connector: Arc<dyn Connector>) -> Connections {
        Connections {
            connector,
            by_host: HashMap::new(),
            timings: false,
            progress_lines: false,
        }
    }

    /// Real SSH connections with the environment's `[ssh]` settings. With
    /// `KILN_RECORD_DIR` set, every host's answers are also recorded there as tapes for
    /// `transport::recorded` (redacted, 0600).
    pub fn ssh(env: &Environment) -> Connections {
        let ssh = connector(env);
        match std::env::var_os("KILN_RECORD_DIR") {
            Some(dir) => Connections::new(Arc::new(Recorder::new(
                ssh,
                PathBuf::from(dir),
                env.redactor(),
            ))),
            None => Connections::new(ssh),
        }
    }

    pub fn connector(&self) -> Arc<dyn Connector> {
        self.connector.clone()
    }

    /// The open transport to `name`, or a new one through `conn`.
    pub async fn get(&mut self, name: &str, conn: &Connection) -> Result<Arc<dyn Transport>> {
        if let Some(t) = self.by_host.get(name) {
            return Ok(t.clone());
        }
        let t = self.connector.connect(name, conn).await?;
        self.by_host.insert(name.to_string(), t.clone());
        Ok(t)
    }
}

/// The SSH connector for an environment: its known_hosts, `[ssh] accept_new` (never for lab
/// hosts: their keys are recorded when they are created) and connect timeout, through the
/// transport chosen with `--transport` (`transport::selected`).
pub fn connector(env: &Environment) -> Arc<dyn Connector> {
    let openssh = SshConnector::for_env(env);
    match crate::transport::selected() {
        Kind::OpenSsh => Arc::new(openssh),
        Kind::Russh => Arc::new(RusshConnector { openssh }),
    }
}

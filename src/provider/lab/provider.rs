//! The lab as a [`HostProvider`]: the synchronous lab functions run on a blocking thread.

use anyhow::{bail, Result};

use crate::provider::{HostProvider, HostReport, HostState, Progress, Provisioned};
use crate::spec::Provider;
use crate::transport::BoxFuture;

use super::LabConfig;

/// One environment's lab hosts.
pub struct LabProvider {
    cfg: LabConfig,
}

impl LabProvider {
    pub fn new(cfg: LabConfig) -> LabProvider {
        LabProvider { cfg }
    }

    /// Runs `work` with the configuration and a `log` on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        progress: Progress,
        work: impl FnOnce(&LabConfig, &mut dyn FnMut(&str)) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let cfg = self.cfg.clone();
        tokio::task::spawn_blocking(move || {
            let mut log = |m: &str| progress(m);
            work(&cfg, &mut log)
        })
        .await?
    }
}

impl HostProvider for LabProvider {
    fn kind(&self) -> Provider {
        Provider::Lab
    }

    fn status(&self) -> BoxFuture<'_, Result<Vec<HostReport>>> {
        Box::pin(async move {
            Ok(super::status(&self.cfg)?
                .into_iter()
                .map(|s| HostReport {
                    detail: match s.pid {
                        Some(pid) => format!("{} (pid {pid})", s.address),
                        None => s.address.to_string(),
                    },
                    name: s.name,
                    state: s.state,
                })
                .collect())
        })
    }

    /// Brings the lab up when a host in `only` (or any, when empty) is not running; a
    /// host that is down but not named is refused, as `lab up` would start it too.
    fn ensure<'a>(
        &'a self,
        only: &'a [String],
        progress: Progress,
    ) -> BoxFuture<'a, Result<Provisioned>> {
        Box::pin(async move {
            let status = super::status(&self.cfg)?;
            let named = |n: &String| only.is_empty() || only.contains(n);
            let gone: Vec<String> = status
                .iter()
                .filter(|s| s.state != HostState::Running && named(&s.name))
                .map(|s| s.name.clone())
                .collect();
            let unexpected: Vec<String> = status
                .iter()
                .filter(|s| s.state != HostState::Running && !named(&s.name))
                .map(|s| s.name.clone())
                .collect();
            if !unexpected.is_empty() {
                bail!(
                    "hosts {} are down too but not named with --host; name them or run without --host",
                    unexpected.join(", ")
                );
            }
            if gone.is_empty() {
                return Ok(Provisioned {
                    created: vec![],
                    detail: "every lab host exists and runs".into(),
                });
            }
            self.blocking(progress, |cfg, log| super::up(cfg, log))
                .await?;
            Ok(Provisioned {
                detail: format!(
                    "lab: created {} (new host keys recorded in {})",
                    gone.join(", "),
                    self.cfg.known_hosts.display()
                ),
                created: gone,
            })
        })
    }

    fn delete<'a>(&'a self, name: &'a str, progress: Progress) -> BoxFuture<'a, Result<()>> {
        let name = name.to_string();
        Box::pin(self.blocking(progress, move |cfg, log| {
            super::delete_host(cfg, &name, log)
        }))
    }

    fn addresses(&self) -> BoxFuture<'_, Result<Vec<(String, String)>>> {
        Box::pin(async move {
            Ok(self
                .cfg
                .hosts
                .iter()
                .map(|h| (h.name.clone(), h.address.to_string()))
                .collect())
        })
    }
}

//! EC2 as a [`HostProvider`].

use std::sync::Arc;

use anyhow::{bail, Result};

use crate::provider::{known_hosts, HostProvider, HostReport, HostState, Progress, Provisioned};
use crate::spec::{Environment, Provider};
use crate::transport::{BoxFuture, Connector};

use super::{ec2_hosts, Ec2, Timeouts};

/// One environment's ec2 hosts.
pub struct Ec2Provider {
    env: Environment,
    timeouts: Timeouts,
    /// How [`super::wait_for_ssh`] reaches the instances.
    connector: Arc<dyn Connector>,
}

impl Ec2Provider {
    pub fn new(env: Environment, timeouts: Timeouts, connector: Arc<dyn Connector>) -> Ec2Provider {
        Ec2Provider {
            env,
            timeouts,
            connector,
        }
    }

    /// The ec2 hosts among `only` (all of them when empty).
    fn selected(&self, only: &[String]) -> Vec<String> {
        self.env
            .spec
            .hosts
            .iter()
            .filter(|(n, h)| h.provider == Provider::Ec2 && (only.is_empty() || only.contains(n)))
            .map(|(n, _)| n.clone())
            .collect()
    }
}

impl HostProvider for Ec2Provider {
    fn kind(&self) -> Provider {
        Provider::Ec2
    }

    fn status(&self) -> BoxFuture<'_, Result<Vec<HostReport>>> {
        Box::pin(async move {
            let ec2 = Ec2::from_env().await;
            let mut out = vec![];
            for h in ec2_hosts(&self.env, None)? {
                let region = ec2.region(h.spec.region.as_deref())?;
                let live = ec2.find(&region, &self.env.name, &h.name).await?;
                let state = if live.is_empty() {
                    HostState::Missing
                } else if live.iter().any(|i| i.state == "running") {
                    HostState::Running
                } else {
                    HostState::Stopped
                };
                out.push(HostReport {
                    name: h.name.clone(),
                    state,
                    detail: live
                        .iter()
                        .map(|i| i.describe())
                        .collect::<Vec<_>>()
                        .join("; "),
                });
            }
            Ok(out)
        })
    }

    /// Finds or creates the instance of each selected host ([`super::ensure`]); nothing
    /// (and no AWS call) when none of `only` is an ec2 host.
    fn ensure<'a>(
        &'a self,
        only: &'a [String],
        progress: Progress,
    ) -> BoxFuture<'a, Result<Provisioned>> {
        Box::pin(async move {
            let hosts = self.selected(only);
            if hosts.is_empty() {
                return Ok(Provisioned::default());
            }
            let log = |m: &str| progress(m);
            let ensured = super::ensure(
                &self.env,
                Some(&hosts),
                self.timeouts,
                self.connector.as_ref(),
                &log,
            )
            .await?;
            let created: Vec<&super::Ensured> = ensured.iter().filter(|e| e.created).collect();
            Ok(Provisioned {
                detail: if created.is_empty() {
                    "ec2: every instance exists and runs".to_string()
                } else {
                    format!(
                        "ec2: created {} (host keys from the console output)",
                        created
                            .iter()
                            .map(|e| format!("{} ({})", e.host, e.instance_id))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
                created: created.iter().map(|e| e.host.clone()).collect(),
            })
        })
    }

    /// Terminates the instances tagged as this environment's host `name` (re-checked by
    /// [`Ec2::terminate`]) and forgets their addresses' host keys.
    fn delete<'a>(&'a self, name: &'a str, progress: Progress) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let Some(h) = ec2_hosts(&self.env, Some(&[name.to_string()]))?.pop() else {
                bail!("no ec2 host `{name}`");
            };
            let ec2 = Ec2::from_env().await;
            let region = ec2.region(h.spec.region.as_deref())?;
            let port = crate::desired::connection(&self.env, name, None).port;
            let path = self.env.known_hosts();
            for i in ec2.find(&region, &self.env.name, name).await? {
                ec2.terminate(&region, &i.id, &self.env.name, name).await?;
                progress(&format!("{name}: terminating {}", i.id));
                for a in [&i.private_ip, &i.public_ip].into_iter().flatten() {
                    known_hosts::edit(&path, &[known_hosts::host_name(a, port)], &[])?;
                }
            }
            Ok(())
        })
    }

    /// Each ec2 host's instance address (`no-instance.HOST.ec2.kiln.invalid` when it has
    /// none); an error names every host whose address cannot be told.
    fn addresses(&self) -> BoxFuture<'_, Result<Vec<(String, String)>>> {
        Box::pin(async move {
            let wanted = ec2_hosts(&self.env, None)?;
            let ec2 = Ec2::from_env().await;
            let mut out = vec![];
            let mut errors = vec![];
            for (name, r) in super::addresses::lookup(&ec2, &self.env.name, &wanted).await? {
                match r {
                    Ok(a) => out.push((name, a)),
                    Err(e) => errors.push(format!("{e:#}")),
                }
            }
            if !errors.is_empty() {
                bail!("{}", errors.join("\n"));
            }
            Ok(out)
        })
    }
}

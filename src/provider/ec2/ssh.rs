//! Waiting until each instance answers SSH.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::spec::Environment;

use super::instances::*;

/// Connects to each instance with strict host key checking (the keys recorded by
/// [`super::record_host_keys`]) until `true` runs, or `timeout` passes.
pub async fn wait_for_ssh(
    env: &Environment,
    connector: &dyn crate::transport::Connector,
    ensured: &[Ensured],
    timeout: Duration,
    log: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    for e in ensured {
        let mut conn = crate::desired::connection(env, &e.host, None);
        conn.address = e.address.clone();
        let start = Instant::now();
        loop {
            let res = async {
                // Dropping the transport closes its session.
                let t = connector.connect(&e.host, &conn).await?;
                let out = t.run("true", Duration::from_secs(30), None).await?;
                if out.status != Some(0) {
                    bail!("`true` exited with {:?}: {}", out.status, out.stderr.trim());
                }
                Ok(())
            }
            .await;
            match res {
                Ok(()) => {
                    log(&format!(
                        "{}: SSH answers at {} after {:.0} s",
                        e.host,
                        e.address,
                        start.elapsed().as_secs_f64()
                    ));
                    break;
                }
                Err(err) if start.elapsed() > timeout => {
                    bail!(
                        "host {}: SSH to {} did not answer within {} s: {err:#}",
                        e.host,
                        e.address,
                        timeout.as_secs()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(5)).await,
            }
        }
    }
    Ok(())
}

//! The EC2 API as kiln uses it: instances found by their tags, created, waited for,
//! terminated; one client per region.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use aws_sdk_ec2::error::DisplayErrorContext;
use aws_sdk_ec2::types::{Filter, InstanceType, ResourceType, Tag, TagSpecification};
use aws_sdk_ec2::Client;
use base64::Engine;

use crate::spec::ec2::{Connect, TAG_ENV, TAG_HOST};

use super::Ec2Host;

/// The instance states that count as "the host exists".
pub const LIVE_STATES: &[&str] = &["pending", "running", "stopping", "stopped"];

/// What kiln knows about one instance (from DescribeInstances).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Instance {
    pub id: String,
    pub state: String,
    pub region: String,
    pub ami: String,
    pub instance_type: String,
    pub subnet: Option<String>,
    pub security_groups: Vec<String>,
    pub private_ip: Option<String>,
    pub public_ip: Option<String>,
    pub tags: BTreeMap<String, String>,
}

impl Instance {
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }

    /// Tagged as kiln's own instance of `host` in `env`.
    pub fn is_kilns(&self, env: &str, host: &str) -> bool {
        self.tag(TAG_ENV) == Some(env) && self.tag(TAG_HOST) == Some(host)
    }

    pub fn address(&self, connect: Connect) -> Option<&str> {
        match connect {
            Connect::Private => self.private_ip.as_deref(),
            Connect::Public => self.public_ip.as_deref(),
        }
    }

    /// `i-0abc (running; kiln:env=prod, kiln:host=web1, Name=prod-web1)`
    pub fn describe(&self) -> String {
        let tags = self
            .tags
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "{} ({}; {})",
            self.id,
            self.state,
            if tags.is_empty() {
                "no tags".to_string()
            } else {
                tags
            }
        )
    }

    fn from_sdk(i: &aws_sdk_ec2::types::Instance, region: &str) -> Instance {
        Instance {
            id: i.instance_id().unwrap_or_default().to_string(),
            state: i
                .state()
                .and_then(|s| s.name())
                .map(|n| n.as_str().to_string())
                .unwrap_or_else(|| "unknown".into()),
            region: region.to_string(),
            ami: i.image_id().unwrap_or_default().to_string(),
            instance_type: i
                .instance_type()
                .map(|t| t.as_str().to_string())
                .unwrap_or_default(),
            subnet: i.subnet_id().map(str::to_string),
            security_groups: i
                .security_groups()
                .iter()
                .filter_map(|g| g.group_id().map(str::to_string))
                .collect(),
            private_ip: i.private_ip_address().map(str::to_string),
            public_ip: i.public_ip_address().map(str::to_string),
            tags: i
                .tags()
                .iter()
                .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
                .collect(),
        }
    }
}

/// EC2 clients, one per region, from the usual AWS configuration.
pub struct Ec2 {
    sdk: aws_config::SdkConfig,
    clients: std::sync::Mutex<HashMap<String, Client>>,
}

fn sdk_err<E: std::error::Error>(what: &str, e: E) -> anyhow::Error {
    anyhow!("{what}: {}", DisplayErrorContext(e))
}

impl Ec2 {
    /// Reads region, endpoint and credentials from the environment and profiles.
    pub async fn from_env() -> Ec2 {
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await;
        Ec2 {
            sdk,
            clients: Default::default(),
        }
    }

    /// The region a host's instance lives in: its `ec2.region`, else the configured one.
    pub fn region(&self, spec_region: Option<&str>) -> Result<String> {
        spec_region
            .map(str::to_string)
            .or_else(|| self.sdk.region().map(|r| r.to_string()))
            .ok_or_else(|| {
                anyhow!("no AWS region: set `ec2.region` on the host, or AWS_REGION (or a profile's region)")
            })
    }

    pub fn client(&self, region: &str) -> Client {
        let mut clients = self.clients.lock().expect("not poisoned");
        clients
            .entry(region.to_string())
            .or_insert_with(|| {
                let conf = aws_sdk_ec2::config::Builder::from(&self.sdk)
                    .region(aws_sdk_ec2::config::Region::new(region.to_string()))
                    .build();
                Client::from_conf(conf)
            })
            .clone()
    }

    /// Instances matching `filters` (all pages).
    pub async fn describe(&self, region: &str, filters: Vec<Filter>) -> Result<Vec<Instance>> {
        let client = self.client(region);
        let mut out = vec![];
        let mut token: Option<String> = None;
        loop {
            let resp = client
                .describe_instances()
                .set_filters(Some(filters.clone()))
                .set_next_token(token.clone())
                .send()
                .await
                .map_err(|e| sdk_err(&format!("DescribeInstances in {region}"), e))?;
            for r in resp.reservations() {
                for i in r.instances() {
                    out.push(Instance::from_sdk(i, region));
                }
            }
            token = resp.next_token().map(str::to_string);
            if token.as_deref().map(str::is_empty).unwrap_or(true) {
                break;
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// The live instances tagged as `host` of `env`.
    pub async fn find(&self, region: &str, env: &str, host: &str) -> Result<Vec<Instance>> {
        self.describe(
            region,
            vec![
                filter(&format!("tag:{TAG_ENV}"), &[env]),
                filter(&format!("tag:{TAG_HOST}"), &[host]),
                filter("instance-state-name", LIVE_STATES),
            ],
        )
        .await
    }

    /// Every live instance tagged with `kiln:env = env`.
    pub async fn find_env(&self, region: &str, env: &str) -> Result<Vec<Instance>> {
        self.describe(
            region,
            vec![
                filter(&format!("tag:{TAG_ENV}"), &[env]),
                filter("instance-state-name", LIVE_STATES),
            ],
        )
        .await
    }

    /// One instance by id (any state); `None` when EC2 does not know it.
    pub async fn get(&self, region: &str, id: &str) -> Result<Option<Instance>> {
        let resp = self
            .client(region)
            .describe_instances()
            .instance_ids(id)
            .send()
            .await;
        match resp {
            Ok(r) => Ok(r
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .map(|i| Instance::from_sdk(i, region))
                .find(|i| i.id == id)),
            Err(e) => {
                let code = e.as_service_error().and_then(|s| {
                    aws_sdk_ec2::error::ProvideErrorMetadata::code(s).map(str::to_string)
                });
                if code.as_deref() == Some("InvalidInstanceID.NotFound")
                    || code.as_deref() == Some("InvalidInstanceID.Malformed")
                {
                    Ok(None)
                } else {
                    Err(sdk_err(&format!("DescribeInstances {id} in {region}"), e))
                }
            }
        }
    }

    /// Launches one instance for `host` of `env`, tagged as kiln's.
    pub async fn create(&self, region: &str, env: &str, host: &Ec2Host) -> Result<Instance> {
        let spec = &host.spec;
        let mut tags: Vec<(String, String)> = vec![];
        if !spec.tags.keys().any(|k| k == "Name") {
            tags.push(("Name".into(), format!("{env}-{}", host.name)));
        }
        tags.extend(spec.tags.iter().map(|(k, v)| (k.clone(), v.clone())));
        tags.push((TAG_ENV.into(), env.into()));
        tags.push((TAG_HOST.into(), host.name.clone()));
        let tag_spec = |rt: ResourceType| {
            let mut b = TagSpecification::builder().resource_type(rt);
            for (k, v) in &tags {
                b = b.tags(Tag::builder().key(k).value(v).build());
            }
            b.build()
        };
        let resp = self
            .client(region)
            .run_instances()
            .image_id(&spec.ami)
            .instance_type(InstanceType::from(spec.instance_type.as_str()))
            .subnet_id(&spec.subnet)
            .set_security_group_ids(Some(spec.security_groups.clone()))
            .key_name(&spec.key_name)
            .min_count(1)
            .max_count(1)
            .tag_specifications(tag_spec(ResourceType::Instance))
            .tag_specifications(tag_spec(ResourceType::Volume))
            .send()
            .await
            .map_err(|e| {
                sdk_err(
                    &format!("RunInstances for {env}/{} in {region}", host.name),
                    e,
                )
            })?;
        let i = resp
            .instances()
            .first()
            .ok_or_else(|| anyhow!("RunInstances returned no instance"))?;
        Ok(Instance::from_sdk(i, region))
    }

    /// Polls until every instance runs: a stopped one is started (once), a stopping one
    /// waited for and then started; one that is shutting down or terminated is an error.
    pub async fn wait_running(
        &self,
        region: &str,
        ids: &[String],
        timeout: Duration,
    ) -> Result<Vec<Instance>> {
        let start = Instant::now();
        let mut delay = Duration::from_millis(500);
        let mut started: Vec<String> = vec![];
        loop {
            let mut out = vec![];
            let mut waiting = vec![];
            for id in ids {
                match self.get(region, id).await? {
                    Some(i) if i.state == "running" => out.push(i),
                    Some(i) if i.state == "pending" || i.state == "stopping" => {
                        waiting.push(i.describe())
                    }
                    Some(i) if i.state == "stopped" && !started.contains(&i.id) => {
                        self.client(region)
                            .start_instances()
                            .instance_ids(&i.id)
                            .send()
                            .await
                            .map_err(|e| sdk_err(&format!("StartInstances {id} in {region}"), e))?;
                        started.push(i.id.clone());
                        waiting.push(format!("{} (starting)", i.id));
                    }
                    Some(i) if i.state == "stopped" => waiting.push(i.describe()),
                    // Just launched: eventual consistency may not show it yet.
                    None => waiting.push(format!("{id} (not visible yet)")),
                    Some(i) => bail!("instance {} will not run: {}", i.id, i.describe()),
                }
            }
            if waiting.is_empty() {
                return Ok(out);
            }
            if start.elapsed() > timeout {
                bail!(
                    "not running after {} s: {}",
                    timeout.as_secs(),
                    waiting.join(", ")
                );
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// The instance's console output, decoded (empty when EC2 has none yet).
    pub async fn console_output(&self, region: &str, id: &str) -> Result<String> {
        let resp = self
            .client(region)
            .get_console_output()
            .instance_id(id)
            .send()
            .await
            .map_err(|e| sdk_err(&format!("GetConsoleOutput {id} in {region}"), e))?;
        let Some(b64) = resp.output().filter(|s| !s.is_empty()) else {
            return Ok(String::new());
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .context("console output is not base64")?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Terminates `id` only if EC2 says it is tagged `kiln:env = env` and
    /// `kiln:host = host` (read again here, right before the call).
    pub async fn terminate(&self, region: &str, id: &str, env: &str, host: &str) -> Result<()> {
        let Some(i) = self.get(region, id).await? else {
            bail!("no instance {id} in {region}");
        };
        if !i.is_kilns(env, host) {
            bail!(
                "refusing to terminate {}: it is not tagged {TAG_ENV}={env}, {TAG_HOST}={host}",
                i.describe()
            );
        }
        self.client(region)
            .terminate_instances()
            .instance_ids(id)
            .send()
            .await
            .map_err(|e| sdk_err(&format!("TerminateInstances {id} in {region}"), e))?;
        Ok(())
    }
}

fn filter(name: &str, values: &[&str]) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.iter().map(|v| v.to_string()).collect()))
        .build()
}

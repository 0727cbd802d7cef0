//! The EC2 provider against moto's EC2 API server (PyPI `moto[server]`, pinned in
//! tests/moto-requirements.txt, installed into tests/.venv-moto by `.ci/run`'s `ec2_venv`
//! stage). The server is started here on 127.0.0.1 at a free port and killed by pid at
//! the end. A missing venv FAILS this test: it is not skipped.
//!
//! Not covered here, honestly: moto runs no machines, so there is no SSH to wait for
//! (`provider::ec2::wait_for_ssh` is not called) and its console output is a fixed sample
//! without cloud-init's host keys (so `record_host_keys` is shown to refuse, and its parser
//! is unit-tested on a cloud-init sample in `src/provider/ec2.rs`).

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use aws_sdk_ec2::types::{InstanceType, ResourceType, Tag, TagSpecification};
use kiln::provider::ec2::{self, Ec2, Instance};
use kiln::spec::Environment;

const REGION: &str = "eu-west-1";

/// The moto server, killed by its pid when dropped.
struct Moto {
    child: Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_moto(log: &Path) -> Moto {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/.venv-moto");
    let server = venv.join("bin/moto_server");
    assert!(
        server.exists(),
        "{} is missing: the EC2 provider tests need moto's server. Create the venv with \
         `python3 -m venv tests/.venv-moto && tests/.venv-moto/bin/pip install -r \
         tests/moto-requirements.txt` (the `ec2 venv` stage of .ci/run does this)",
        server.display()
    );
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let out = std::fs::File::create(log).expect("moto log");
    let child = std::process::Command::new(&server)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("start moto_server");
    let mut moto = Moto { child, port };
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = moto.child.try_wait().expect("moto status") {
            panic!(
                "moto_server exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "moto_server did not listen on 127.0.0.1:{port} within 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    moto.port = port;
    moto
}

fn set_aws_env(port: u16, home: &Path) {
    // Only loopback, dummy credentials, no profile of whoever runs the tests.
    for (k, v) in [
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_REGION", REGION.into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        (
            "AWS_CONFIG_FILE",
            home.join("aws-config").display().to_string(),
        ),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            home.join("aws-credentials").display().to_string(),
        ),
    ] {
        std::env::set_var(k, v);
    }
    std::env::remove_var("AWS_PROFILE");
    std::env::remove_var("AWS_SESSION_TOKEN");
    std::env::remove_var("AWS_ENDPOINT_URL_EC2");
}

struct Net {
    ami: String,
    subnet: String,
    sgs: Vec<String>,
}

async fn make_network(c: &aws_sdk_ec2::Client) -> Net {
    let vpc = c
        .create_vpc()
        .cidr_block("10.77.0.0/16")
        .send()
        .await
        .expect("CreateVpc");
    let vpc = vpc.vpc().and_then(|v| v.vpc_id()).unwrap().to_string();
    let subnet = c
        .create_subnet()
        .vpc_id(&vpc)
        .cidr_block("10.77.1.0/24")
        .send()
        .await
        .expect("CreateSubnet");
    let subnet = subnet
        .subnet()
        .and_then(|s| s.subnet_id())
        .unwrap()
        .to_string();
    let mut sgs = vec![];
    for name in ["kiln-web", "kiln-ssh"] {
        let sg = c
            .create_security_group()
            .vpc_id(&vpc)
            .group_name(name)
            .description(name)
            .send()
            .await
            .expect("CreateSecurityGroup");
        sgs.push(sg.group_id().unwrap().to_string());
    }
    let images = c
        .describe_images()
        .owners("amazon")
        .send()
        .await
        .expect("DescribeImages");
    let ami = images
        .images()
        .iter()
        .filter_map(|i| i.image_id())
        .find(|id| {
            id.strip_prefix("ami-")
                .map(|h| h.chars().all(|c| c.is_ascii_hexdigit()))
                .unwrap_or(false)
        })
        .expect("moto has an AMI")
        .to_string();
    Net { ami, subnet, sgs }
}

fn env_text(net: &Net) -> String {
    format!(
        r#"description = "EC2 provider test against moto"

[hosts.web1]
provider = "ec2"

[hosts.web1.ec2]
ami = "{ami}"
instance_type = "t3.small"
subnet = "{subnet}"
security_groups = ["{sg0}", "{sg1}"]
key_name = "ops"
tags = {{ team = "platform", cost = "web" }}

[hosts.db1]
provider = "ec2"

[hosts.db1.ec2]
ami = "{ami}"
instance_type = "m5.large"
subnet = "{subnet}"
security_groups = ["{sg0}"]
key_name = "ops"
region = "{REGION}"
connect = "private"
"#,
        ami = net.ami,
        subnet = net.subnet,
        sg0 = net.sgs[0],
        sg1 = net.sgs[1],
    )
}

fn kiln() -> Command {
    Command::cargo_bin("kiln").expect("kiln binary")
}

async fn all_instances(c: &aws_sdk_ec2::Client) -> Vec<aws_sdk_ec2::types::Instance> {
    c.describe_instances()
        .send()
        .await
        .expect("DescribeInstances")
        .reservations()
        .iter()
        .flat_map(|r| r.instances().to_vec())
        .collect()
}

fn state_of(all: &[aws_sdk_ec2::types::Instance], id: &str) -> String {
    all.iter()
        .find(|i| i.instance_id() == Some(id))
        .and_then(|i| i.state())
        .and_then(|s| s.name())
        .map(|n| n.as_str().to_string())
        .unwrap_or_else(|| "absent".into())
}

/// The live (not terminated) instance the SDK lists for a host, by kiln's host tag.
fn sdk_instance<'a>(
    all: &'a [aws_sdk_ec2::types::Instance],
    host: &str,
) -> &'a aws_sdk_ec2::types::Instance {
    let live: Vec<_> = all
        .iter()
        .filter(|i| sdk_tag(i, "kiln:host") == Some(host))
        .filter(|i| {
            let s = i.state().and_then(|s| s.name()).map(|n| n.as_str());
            s != Some("terminated") && s != Some("shutting-down")
        })
        .collect();
    assert_eq!(live.len(), 1, "{host}: {live:?}");
    live[0]
}

fn sdk_tag<'a>(i: &'a aws_sdk_ec2::types::Instance, key: &str) -> Option<&'a str> {
    i.tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

fn run_out(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("run kiln");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ec2_provider_against_moto() {
    let dir = tempfile::tempdir().expect("tempdir");
    let moto = start_moto(&dir.path().join("moto.log"));
    set_aws_env(moto.port, dir.path());
    let log = |m: &str| eprintln!("ec2: {m}");

    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let c = aws_sdk_ec2::Client::new(&sdk);
    let net = make_network(&c).await;

    let envs = dir.path().join("environments");
    std::fs::create_dir_all(&envs).unwrap();
    let env_file = envs.join("ec2test.toml");
    std::fs::write(&env_file, env_text(&net)).unwrap();
    let env = Environment::load(&env_file).expect("valid environment");
    let ec2c = Ec2::from_env().await;

    // --- create: both hosts launched with kiln's tags and the declared settings.
    let first = ec2::ensure_instances(&ec2c, &env, None, Duration::from_secs(60), &log)
        .await
        .expect("ensure creates the instances");
    assert_eq!(first.len(), 2);
    assert!(first.iter().all(|e| e.created), "{first:?}");
    let by_host = |h: &str| -> Instance {
        first
            .iter()
            .find(|e| e.host == h)
            .map(|e| e.instance.clone())
            .unwrap()
    };
    let web = by_host("web1");
    let db = by_host("db1");
    assert_eq!(web.state, "running");
    assert_eq!(web.ami, net.ami);
    assert_eq!(web.instance_type, "t3.small");
    assert_eq!(web.subnet.as_deref(), Some(net.subnet.as_str()));
    let mut sgs = web.security_groups.clone();
    sgs.sort();
    let mut want = net.sgs.clone();
    want.sort();
    assert_eq!(sgs, want);
    assert_eq!(web.tag("kiln:env"), Some("ec2test"));
    assert_eq!(web.tag("kiln:host"), Some("web1"));
    assert_eq!(web.tag("team"), Some("platform"));
    assert_eq!(web.tag("cost"), Some("web"));
    assert_eq!(web.tag("Name"), Some("ec2test-web1"));
    assert_eq!(db.instance_type, "m5.large");
    assert_eq!(db.security_groups, vec![net.sgs[0].clone()]);
    assert_eq!(db.tag("kiln:host"), Some("db1"));
    for e in &first {
        assert!(
            e.address.starts_with("10.77.1."),
            "{}: private address {} from the subnet",
            e.host,
            e.address
        );
    }
    // The SDK's own view agrees (tags, AMI, type): read back independently.
    let all = all_instances(&c).await;
    assert_eq!(all.len(), 2);
    for (host, kind) in [("web1", "t3.small"), ("db1", "m5.large")] {
        let i = sdk_instance(&all, host);
        assert_eq!(i.image_id(), Some(net.ami.as_str()), "{host}: {i:?}");
        assert_eq!(
            i.instance_type().map(|t| t.as_str()),
            Some(kind),
            "{host}: {i:?}"
        );
        assert_eq!(sdk_tag(i, "kiln:env"), Some("ec2test"), "{host}: {i:?}");
        assert_eq!(
            sdk_tag(i, "Name"),
            Some(format!("ec2test-{host}").as_str()),
            "{host}: {i:?}"
        );
    }
    assert_eq!(
        sdk_tag(sdk_instance(&all, "web1"), "team"),
        Some("platform")
    );

    // --- idempotency: a second ensure creates nothing and returns the same ids.
    let second = ec2::ensure_instances(&ec2c, &env, None, Duration::from_secs(60), &log)
        .await
        .expect("second ensure");
    assert!(second.iter().all(|e| !e.created), "{second:?}");
    let ids = |v: &[ec2::Ensured]| {
        let mut x: Vec<(String, String)> = v
            .iter()
            .map(|e| (e.host.clone(), e.instance_id.clone()))
            .collect();
        x.sort();
        x
    };
    assert_eq!(ids(&first), ids(&second));
    assert_eq!(all_instances(&c).await.len(), 2, "no instance was created");
    // The CLI's `up` finds them too (and creates nothing).
    let (code, out, err) = run_out(kiln().args(["ec2", "up"]).arg(&env_file).args([
        "--no-ssh",
        "--host",
        "db1",
        "--timeout",
        "2",
    ]));
    // moto's console has no cloud-init keys: `up` stops there, after finding db1.
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(err.contains("db1: found"), "{err}");
    assert!(err.contains("printed no SSH host keys"), "{err}");
    assert_eq!(all_instances(&c).await.len(), 2, "no instance was created");

    // --- host keys: the console output is read and decoded; moto's sample has no keys.
    let console = ec2c.console_output(REGION, &web.id).await.expect("console");
    assert!(console.contains("Linux version"), "{console}");
    assert!(ec2::parse_console_host_keys(&console).is_empty());
    let err = ec2::record_host_keys(&ec2c, &env, &first[..1], Duration::from_secs(1), &log)
        .await
        .expect_err("no keys on moto's console");
    assert!(
        format!("{err:#}").contains("printed no SSH host keys"),
        "{err:#}"
    );
    assert!(!env.known_hosts().exists(), "nothing recorded blindly");

    // --- addresses for plan/apply/ssh come from the instances.
    let mut env2 = env.clone();
    ec2::fill_addresses_blocking(&mut env2, None).expect("addresses");
    for e in &first {
        assert_eq!(
            env2.spec.hosts[&e.host].address.as_deref(),
            Some(e.address.as_str())
        );
    }
    let (code, out, err) = run_out(kiln().args(["ssh-config"]).arg(&env_file));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&first[0].address), "{out}");

    // --- status lists both hosts running.
    let (code, out, err) = run_out(kiln().args(["ec2", "status"]).arg(&env_file));
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains(&web.id) && out.contains(&db.id), "{out}");
    // The same as one JSON document: each host's instance, state, address, AMI, type, tags.
    let status_json = |args: &[&str]| {
        let (code, out, err) = run_out(
            kiln()
                .args(["ec2", "status"])
                .arg(&env_file)
                .args(args)
                .args(["--format", "json"]),
        );
        let v: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("one JSON document ({e}): {out}\nstderr: {err}"));
        (code, v)
    };
    let (code, v) = status_json(&[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["environment"], "ec2test", "{v:#}");
    assert_eq!(v["all_running"], true, "{v:#}");
    assert_eq!(v["untracked"].as_array().map(Vec::len), Some(0), "{v:#}");
    let hosts = v["hosts"].as_array().expect("hosts");
    assert_eq!(hosts.len(), 2, "{v:#}");
    for (h, (i, kind)) in hosts.iter().zip([(&web, "t3.small"), (&db, "m5.large")]) {
        let name = i.tag("kiln:host").unwrap_or_default();
        assert_eq!(h["name"], name, "{h:#}");
        assert_eq!(h["instance_id"], i.id.as_str(), "{h:#}");
        assert_eq!(h["state"], "running", "{h:#}");
        assert_eq!(h["region"], REGION, "{h:#}");
        assert_eq!(h["ami"], net.ami.as_str(), "{h:#}");
        assert_eq!(h["instance_type"], kind, "{h:#}");
        assert_eq!(h["tags"]["kiln:env"], "ec2test", "{h:#}");
        assert_eq!(h["tags"]["kiln:host"], name, "{h:#}");
        let private = i.private_ip.as_deref().expect("a private address");
        assert_eq!(h["private_ip"], private, "{h:#}");
        // Both hosts connect to the private address (the default, and db1's `connect`).
        assert_eq!(h["address"], private, "{h:#}");
    }
    assert_eq!(hosts[0]["tags"]["team"], "platform");
    // --host narrows it.
    let (code, v) = status_json(&["--host", "db1"]);
    assert_eq!(code, 0);
    assert_eq!(v["hosts"].as_array().map(Vec::len), Some(1), "{v:#}");
    assert_eq!(v["hosts"][0]["name"], "db1");

    // --- an instance made by hand in the same region and subnet: not kiln's.
    let foreign = c
        .run_instances()
        .image_id(&net.ami)
        .instance_type(InstanceType::T3Micro)
        .subnet_id(&net.subnet)
        .min_count(1)
        .max_count(1)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .tags(Tag::builder().key("Name").value("hand-made").build())
                .tags(Tag::builder().key("kiln:env").value("ec2test").build())
                .build(),
        )
        .send()
        .await
        .expect("RunInstances by hand");
    let foreign = foreign.instances()[0].instance_id().unwrap().to_string();
    // Tagged with the environment but no host: still refused.
    let (code, out, err) =
        run_out(
            kiln()
                .args(["destroy"])
                .arg(&env_file)
                .args(["--instance", &foreign, "--yes"]),
        );
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(err.contains("refusing to terminate"), "{err}");
    assert!(err.contains(&foreign), "{err}");
    // Claimed for a host it is not tagged with: refused by the provider itself too.
    let err = ec2c
        .terminate(REGION, &foreign, "ec2test", "web1")
        .await
        .expect_err("not kiln's");
    assert!(format!("{err:#}").contains("refusing"), "{err:#}");
    // Another host's instance named with --host web1: refused.
    let (code, _, err) = run_out(kiln().args(["destroy"]).arg(&env_file).args([
        "--host",
        "web1",
        "--instance",
        &db.id,
        "--yes",
    ]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("refusing to terminate"), "{err}");
    // Without --yes and without a terminal: nothing is terminated.
    let (code, out, err) = run_out(
        kiln()
            .args(["destroy"])
            .arg(&env_file)
            .args(["--host", "web1"])
            .write_stdin(""),
    );
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(out.contains(&web.id), "names the instance: {out}");
    assert!(err.contains("without --yes"), "{err}");
    let all = all_instances(&c).await;
    assert_eq!(state_of(&all, &web.id), "running");

    // --- destroy web1: only its instance is terminated.
    let (code, out, err) = run_out(
        kiln()
            .args(["destroy"])
            .arg(&env_file)
            .args(["--host", "web1", "--yes"]),
    );
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains(&web.id) && out.contains("kiln:host=web1"),
        "{out}"
    );
    let all = all_instances(&c).await;
    let gone = state_of(&all, &web.id);
    assert!(
        gone == "shutting-down" || gone == "terminated",
        "web1 is {gone}"
    );
    assert_eq!(state_of(&all, &db.id), "running");
    assert_eq!(state_of(&all, &foreign), "running", "the hand-made one");
    // Status now says web1 is missing (exit 2) and notes the hand-made instance.
    let (code, out, _) = run_out(kiln().args(["ec2", "status"]).arg(&env_file));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("web1") && out.contains("missing"), "{out}");
    assert!(out.contains(&foreign), "{out}");
    // So does the JSON, with the same exit code.
    let (code, v) = status_json(&[]);
    assert_eq!(code, 2, "{v:#}");
    assert_eq!(v["all_running"], false, "{v:#}");
    let web_status = &v["hosts"][0];
    assert_eq!(web_status["name"], "web1", "{v:#}");
    assert_eq!(web_status["state"], "missing", "{v:#}");
    assert!(web_status["instance_id"].is_null(), "{v:#}");
    assert!(
        web_status["note"]
            .as_str()
            .is_some_and(|n| n.contains("kiln ec2 up ec2test")),
        "{v:#}"
    );
    assert_eq!(v["hosts"][1]["state"], "running", "{v:#}");
    let untracked = v["untracked"].as_array().expect("untracked");
    assert_eq!(untracked.len(), 1, "{v:#}");
    assert_eq!(untracked[0]["instance_id"], foreign.as_str(), "{v:#}");
    assert_eq!(untracked[0]["tags"]["Name"], "hand-made", "{v:#}");
    assert!(
        untracked[0]["note"]
            .as_str()
            .is_some_and(|n| n.contains("is not an ec2 host of")),
        "{v:#}"
    );
    // `up` has no JSON form.
    let (code, _, err) = run_out(
        kiln()
            .args(["ec2", "up"])
            .arg(&env_file)
            .args(["--format", "json"]),
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("--format json is for `kiln ec2 status`"),
        "{err}"
    );
    // Plan/apply/ssh see web1 without an instance as unreachable, db1 still at its address.
    let mut env3 = env.clone();
    ec2::fill_addresses_blocking(&mut env3, None).expect("a missing instance is no error");
    assert_eq!(
        env3.spec.hosts["web1"].address.as_deref(),
        Some("no-instance.web1.ec2.kiln.invalid")
    );
    assert_eq!(
        env3.spec.hosts["db1"].address.as_deref(),
        Some(
            first
                .iter()
                .find(|e| e.host == "db1")
                .unwrap()
                .address
                .as_str()
        )
    );
    // Destroying it again finds nothing to do.
    let (code, out, _) = run_out(
        kiln()
            .args(["destroy"])
            .arg(&env_file)
            .args(["--host", "web1", "--yes"]),
    );
    assert_eq!(code, 0);
    assert!(out.contains("nothing to destroy"), "{out}");

    // --- `kiln rebuild`: a new web1 instance with the declared AMI, type and tags, db1
    // kept; moto's console prints no host keys, so rebuild stops there, trusting no key
    // and connecting to nothing.
    let (code, out, err) =
        run_out(
            kiln()
                .arg("rebuild")
                .arg(&env_file)
                .args(["--yes", "--timeout", "2"]),
        );
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(err.contains("printed no SSH host keys"), "{err}");
    let all = all_instances(&c).await;
    let new_web = sdk_instance(&all, "web1");
    let new_id = new_web.instance_id().unwrap_or_default().to_string();
    assert_ne!(new_id, web.id, "a new instance for web1");
    assert_eq!(new_web.image_id(), Some(net.ami.as_str()));
    assert_eq!(
        new_web.instance_type().map(|t| t.as_str()),
        Some("t3.small")
    );
    assert_eq!(sdk_tag(new_web, "kiln:host"), Some("web1"));
    assert_eq!(sdk_tag(new_web, "team"), Some("platform"));
    assert_eq!(state_of(&all, &db.id), "running");
    assert_eq!(
        all.iter()
            .filter(|i| sdk_tag(i, "kiln:host") == Some("db1"))
            .count(),
        1,
        "db1 kept, not duplicated"
    );
    assert!(!env.known_hosts().exists(), "no host key recorded blindly");
    // A second rebuild finds web1's new instance: nothing more is created.
    let (code, _, err) =
        run_out(
            kiln()
                .arg("rebuild")
                .arg(&env_file)
                .args(["--yes", "--timeout", "2"]),
        );
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        all_instances(&c)
            .await
            .iter()
            .filter(|i| sdk_tag(i, "kiln:host") == Some("web1"))
            .filter(
                |i| state_of(std::slice::from_ref(i), i.instance_id().unwrap_or_default())
                    == "running"
            )
            .count(),
        1
    );
    let third = ec2::ensure_instances(&ec2c, &env, None, Duration::from_secs(60), &log)
        .await
        .expect("third ensure");
    let w = third.iter().find(|e| e.host == "web1").unwrap();
    let d = third.iter().find(|e| e.host == "db1").unwrap();
    assert!(!w.created && w.instance_id == new_id, "{w:?}");
    assert!(!d.created && d.instance_id == db.id);

    // --- a stopped instance is the host's: started again, not replaced.
    c.stop_instances()
        .instance_ids(&db.id)
        .send()
        .await
        .expect("StopInstances");
    let fourth = ec2::ensure_instances(&ec2c, &env, None, Duration::from_secs(60), &log)
        .await
        .expect("ensure after a stop");
    let d = fourth.iter().find(|e| e.host == "db1").unwrap();
    assert!(!d.created && d.instance_id == db.id, "{d:?}");
    assert_eq!(d.instance.state, "running");
    assert_eq!(state_of(&all_instances(&c).await, &db.id), "running");

    // --- a bad spec: file:line:col and key, exit 1, and no AWS call made anything.
    let before = all_instances(&c).await.len();
    let bad = envs.join("bad.toml");
    std::fs::write(
        &bad,
        env_text(&net)
            .replace(&format!("ami = \"{}\"", net.ami), "ami = \"debian-12\"")
            .replacen("key_name = \"ops\"\n", "", 1)
            .replace("cost = \"web\"", "\"kiln:host\" = \"x\""),
    )
    .unwrap();
    let (code, _, err) = run_out(kiln().args(["ec2", "up"]).arg(&bad).arg("--no-ssh"));
    assert_eq!(code, 1, "{err}");
    let bad_s = bad.display().to_string();
    assert!(
        err.contains(&format!("{bad_s}:7:")) && err.contains("hosts.web1.ec2.ami"),
        "ami error with position and key: {err}"
    );
    assert!(err.contains("hosts.web1.ec2.key_name"), "{err}");
    assert!(err.contains("hosts.web1.ec2.tags"), "{err}");
    // An unknown key in the ec2 table.
    std::fs::write(
        &bad,
        env_text(&net).replace(
            "instance_type = \"t3.small\"",
            "instance_typ = \"t3.small\"",
        ),
    )
    .unwrap();
    let (code, _, err) = run_out(kiln().args(["ec2", "up"]).arg(&bad).arg("--no-ssh"));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("{bad_s}:8:")) && err.contains("instance_typ"),
        "{err}"
    );
    assert_eq!(all_instances(&c).await.len(), before, "nothing launched");

    drop(moto);
}

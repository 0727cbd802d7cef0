//! The lab suites' harness (tests/common), checked without a lab: commands run under a
//! time limit, and the teardown check's judgement of the shared bridge.

mod common;

use std::time::{Duration, Instant};

use common::{bridge_verdict, local, local_timeout, status_hosts, TIMED_OUT};

#[test]
fn a_command_within_its_limit_gives_its_code_and_output() {
    let r = local("sh", &["-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (3, "out\n", "err\n")
    );
    assert!(!r.timed_out());
}

#[test]
fn a_hanging_command_is_killed_at_its_limit_and_says_so() {
    let t = Instant::now();
    let r = local_timeout("sh", &["-c", "echo started; sleep 60"], 1);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(r.code, TIMED_OUT, "{}", r.all());
    assert!(r.timed_out());
    assert_eq!(
        r.stdout, "started\n",
        "the output read before the limit is kept"
    );
    assert!(
        r.stderr
            .ends_with("TIMED OUT after 1 s: sh -c 'echo started; sleep 60'\n"),
        "{}",
        r.stderr
    );
}

/// The whole process group goes: what the command started in the background too.
#[test]
fn at_the_limit_what_the_command_started_is_killed_too() {
    let r = local_timeout("sh", &["-c", "sleep 60 & echo $!; wait"], 1);
    assert_eq!(r.code, TIMED_OUT, "{}", r.all());
    let pid = r.stdout.trim();
    assert!(!pid.is_empty(), "{}", r.all());
    let gone = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(") ")
                    .next()
                    .is_some_and(|rest| rest.starts_with('Z'))
            })
            .unwrap_or(true)
    };
    let t = Instant::now();
    while !gone() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        gone(),
        "the background sleep (pid {pid}) survived the limit"
    );
}

/// A command that exits while something it started keeps its output open is not waited
/// for beyond the limit.
#[test]
fn output_held_open_after_exit_ends_at_the_limit() {
    let r = local_timeout("sh", &["-c", "sleep 60 & echo bye"], 1);
    assert_eq!(r.code, TIMED_OUT, "{}", r.all());
    assert_eq!(r.stdout, "bye\n");
    assert!(
        r.stderr
            .contains("(it exited with 0, but a process it started kept its output open)"),
        "{}",
        r.stderr
    );
}

/// Both pipes are read while the command runs: a command writing more than a pipe holds
/// to each never blocks.
#[test]
fn a_full_pipe_never_blocks() {
    let r = local_timeout(
        "sh",
        &[
            "-c",
            "head -c 1000000 /dev/zero | tr '\\0' e >&2; head -c 1000000 /dev/zero | tr '\\0' o",
        ],
        60,
    );
    assert_eq!(r.code, 0, "{}", r.stderr.len());
    assert_eq!((r.stdout.len(), r.stderr.len()), (1_000_000, 1_000_000));
}

#[test]
fn the_bridge_goes_only_with_its_last_interface() {
    // Gone: always fine.
    assert!(bridge_verdict(false, "").is_ok());
    // Kept while a host of another environment is attached.
    let attached = "624: vkc90a8f59@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue master kilnbr0 state UP mode DEFAULT group default qlen 1000\\    link/ether 36:85:29:c4:13:a1 brd ff:ff:ff:ff:ff:ff link-netns kiln-c90a8f59\n\
                    625: vk7ddd8938@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue master kilnbr0 state UP\n";
    let kept = bridge_verdict(true, attached).expect("kept for other hosts");
    assert!(
        kept.contains("2 interface(s)") && kept.contains("vkc90a8f59, vk7ddd8938"),
        "{kept}"
    );
    // Left with nothing attached: the last down should have removed it.
    let err = bridge_verdict(true, "").expect_err("an unused bridge left behind");
    assert!(err.contains("no interface attached"), "{err}");
    assert!(bridge_verdict(true, "\n").is_err());
}

#[test]
fn lab_names_follow_the_provider() {
    // src/provider/lab/host.rs: sha256("ENV/NAME"), first 4 bytes, hex.
    let n = common::lab_names("pitrtest", "storage");
    assert_eq!(n.machine, "pitrtest-storage");
    assert_eq!(n.cgroup, "kiln-lab-pitrtest-storage");
    // `printf pitrtest/storage | sha256sum`: c90a8f59…
    assert_eq!(n.netns, "kiln-c90a8f59");
    assert_eq!(n.veth, "vkc90a8f59");
}

#[test]
fn status_lines_name_the_hosts() {
    let out = "db1              10.233.0.41     running (pid 12)\nstorage          10.233.0.42     missing\na-very-long-host-name 10.233.0.43 stopped\n";
    assert_eq!(
        status_hosts(out),
        ["db1", "storage", "a-very-long-host-name"]
    );
    assert!(status_hosts("lab `x` is up: a (10.233.0.2)\n").is_empty());
}

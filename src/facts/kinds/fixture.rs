//! Test fixtures shared by the kinds' tests: real fact-script output captured on a Debian
//! 12 machine, and running a generated script the way a host does.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::facts::parse::parse_facts;
use crate::facts::{FactQuery, HostFacts};

const OTHER_SHA: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const HELLO_SHA: &str = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";

pub(crate) fn path(p: &str, expect: Option<&str>, sensitive: bool) -> FactQuery {
    FactQuery::Path {
        path: p.into(),
        expect_sha256: expect.map(String::from),
        sensitive,
    }
}

pub(crate) fn package(name: &str) -> FactQuery {
    FactQuery::Package { name: name.into() }
}

/// The queries whose script produced [`CAPTURE`], in a shuffled order on purpose:
/// the parser must sort them the way the script did.
pub(crate) fn capture_queries() -> Vec<FactQuery> {
    let f = |name: &str| format!("/tmp/kiln-fixture/{name}");
    vec![
        FactQuery::Pending,
        package("dpkg"),
        package("kiln-no-such-package"),
        package("kiln-fixture-rc"),
        package("kiln-fixture-held"),
        FactQuery::AptLists,
        path(&f("plain.conf"), Some(HELLO_SHA), false),
        path(&f("differs.conf"), Some(OTHER_SHA), false),
        path(&f("secret.key"), Some(OTHER_SHA), true),
        path(&f("blob.bin"), Some(OTHER_SHA), false),
        path(&f("absent"), Some(OTHER_SHA), false),
        path(&f("dir"), None, false),
        path(&f("link"), None, false),
        path(&f("suid"), None, false),
        FactQuery::User {
            name: "postgres".into(),
        },
        FactQuery::User {
            name: "root".into(),
        },
        FactQuery::User {
            name: "kiln-nobody".into(),
        },
        FactQuery::Group {
            name: "ssl-cert".into(),
        },
        FactQuery::Group {
            name: "kiln-nogroup".into(),
        },
        FactQuery::Guard {
            command: "test -d /tmp/kiln-fixture/dir".into(),
            sensitive_of: None,
        },
        FactQuery::Guard {
            command: "grep -q nomatch /tmp/kiln-fixture/plain.conf".into(),
            sensitive_of: None,
        },
    ]
}

/// Output of the fact script for [`capture_queries`], captured on a Debian 12 machine
/// with two throw-away packages built for it (one removed to `rc`, one held).
pub(crate) const CAPTURE: &str = "\
        @@kiln:begin\n\
        @@kiln:packages\n\
        dpkg\tamd64\t1.21.22\tii\x20\n\
        kiln-fixture-held\tall\t1.2-3\thi\x20\n\
        kiln-fixture-rc\tall\t1.2-3\trc\x20\n\
        @@kiln:apt-lists\n\
        now 1795355498\n\
        arch amd64\n\
        list 1795355062.0000000000 deb.debian.org_debian_dists_bookworm_InRelease\n\
        list 1795355062.0000000000 deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages.lz4\n\
        list 1754661485.0000000000 deb.debian.org_debian_dists_bookworm-updates_InRelease\n\
        list 1754661485.0000000000 deb.debian.org_debian_dists_bookworm-updates_main_binary-amd64_Packages.lz4\n\
        release deb.debian.org_debian_dists_bookworm_InRelease:Architectures: all amd64 arm64\n\
        release deb.debian.org_debian_dists_bookworm_InRelease:Components: main contrib non-free-firmware non-free\n\
        source list L2V0Yy9hcHQvc291cmNlcy5saXN0 \n\
        source sources L2V0Yy9hcHQvc291cmNlcy5saXN0LmQvZGViaWFuLnNvdXJjZXM= VHlwZXM6IGRlYgpVUklzOiBodHRwOi8vZGViLmRlYmlhbi5vcmcvZGViaWFuClN1aXRlczogYm9va3dvcm0gYm9va3dvcm0tdXBkYXRlcwpDb21wb25lbnRzOiBtYWluCg==\n\
        @@kiln:path 5 /tmp/kiln-fixture/absent\n\
        missing\n\
        @@kiln:path 6 /tmp/kiln-fixture/blob.bin\n\
        size 9\n\
        mode 81a4\n\
        uid 0\n\
        gid 0\n\
        owner root\n\
        group root\n\
        ctime 1795355491.351509126\n\
        sha256 d84a72bd7042f6281ce2fae7560880dde4b3ec138d5aa40a08815d463b39c183\n\
        matches no\n\
        content //5iaW5hcnkK\n\
        @@kiln:path 7 /tmp/kiln-fixture/differs.conf\n\
        size 11\n\
        mode 81a0\n\
        uid 0\n\
        gid 103\n\
        owner root\n\
        group ssl-cert\n\
        ctime 1795355491.349908112\n\
        sha256 ae7ea37f433fb97005c5025e69e5fcefe0ea3c808e5d3a1dd0c3499958dfe539\n\
        matches no\n\
        content bGlzdGVuIDgwOwo=\n\
        @@kiln:path 8 /tmp/kiln-fixture/dir\n\
        size 4096\n\
        mode 41e8\n\
        uid 0\n\
        gid 0\n\
        owner root\n\
        group root\n\
        ctime 1795355491.351509126\n\
        @@kiln:path 9 /tmp/kiln-fixture/link\n\
        size 10\n\
        mode a1ff\n\
        uid 0\n\
        gid 0\n\
        owner root\n\
        group root\n\
        ctime 1795355491.351509126\n\
        target cGxhaW4uY29uZg==\n\
        @@kiln:path 10 /tmp/kiln-fixture/plain.conf\n\
        size 6\n\
        mode 81a4\n\
        uid 0\n\
        gid 0\n\
        owner root\n\
        group root\n\
        ctime 1795355491.346525914\n\
        sha256 5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03\n\
        matches yes\n\
        @@kiln:path 11 /tmp/kiln-fixture/secret.key\n\
        size 7\n\
        mode 8180\n\
        uid 0\n\
        gid 0\n\
        owner root\n\
        group root\n\
        ctime 1795355491.351509126\n\
        matches no\n\
        @@kiln:path 12 /tmp/kiln-fixture/suid\n\
        size 10\n\
        mode 89ed\n\
        uid 0\n\
        gid 0\n\
        owner root\n\
        group root\n\
        ctime 1795355491.357167161\n\
        sha256 a8076d3d28d21e02012b20eaf7dbf75409a6277134439025f282e368e3305abf\n\
        @@kiln:user 13 kiln-nobody\n\
        @@kiln:user 14 postgres\n\
        passwd postgres:x:101:104:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash\n\
        groups postgres ssl-cert\n\
        @@kiln:user 15 root\n\
        passwd root:x:0:0:root:/root:/bin/bash\n\
        groups root\n\
        @@kiln:group 16 kiln-nogroup\n\
        @@kiln:group 17 ssl-cert\n\
        group ssl-cert:x:103:postgres\n\
        @@kiln:guard 18\n\
        status 1\n\
        @@kiln:guard 19\n\
        status 0\n\
        @@kiln:pending\n\
        handler reload@nginx.service\n\
        handler restart@getty@tty1.service\n\
        @@kiln:end\n\
";
/// [`CAPTURE`] parsed.
pub(crate) fn captured() -> HostFacts {
    parse_facts(&capture_queries(), CAPTURE).expect("capture parses")
}

/// Runs `script` with `sh -s`, the way kiln runs it on a host.
pub(crate) fn run_sh(script: &str) -> String {
    let mut sh = Command::new("sh");
    sh.arg("-s");
    run_piped(sh, script)
}

/// Runs `cmd` with `script` on its standard input; its standard output, after asserting
/// that it succeeded.
pub(crate) fn run_piped(cmd: Command, script: &str) -> String {
    run_piped_both(cmd, script).0
}

/// [`run_piped`], with its standard error too.
pub(crate) fn run_piped_both(mut cmd: Command, script: &str) -> (String, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8(out.stdout).expect("utf-8 output"),
        String::from_utf8(out.stderr).expect("utf-8 errors"),
    )
}

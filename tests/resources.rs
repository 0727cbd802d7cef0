//! Fixture tests of every resource type's pure plan function: desired state + `HostFacts`
//! (+ `Predicted`) in, `Option<Planned>` or `Conflict` out. No host is touched.
//!
//! Each type has at least: the no-op case (converged facts → `None`), the create case from
//! a bare host, an update case, and where the type has them, remove/absent and conflict.

use kiln::facts::{
    AptListsFact, GroupFact, HostFacts, PackageFact, PathFact, PathKind, ServiceFact, UserFact,
};
use kiln::plan::{Action, Content, HandlerAction, OnChange, Shown, Step, SystemctlVerb};
use kiln::resource::file::{sha256_hex, FileState};
use kiln::resource::package::PackageState;
use kiln::resource::{
    AptRepo, Command, Conflict, Directory, File, Group, Kind, Package, Planned, Predicted, Service,
    Symlink, Unit, User,
};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Parses one resource table the way a module declares it (defaults applied by serde).
fn kind(toml_text: &str) -> Kind {
    toml::from_str::<Kind>(toml_text).unwrap_or_else(|e| panic!("bad fixture: {e}\n{toml_text}"))
}

fn plan(k: &Kind, facts: &HostFacts) -> Result<Option<Planned>, Conflict> {
    k.plan(facts, &Predicted::default())
}

fn planned(k: &Kind, facts: &HostFacts) -> Planned {
    match plan(k, facts) {
        Ok(Some(p)) => p,
        other => panic!("expected a change for {}, got {other:?}", k.id()),
    }
}

fn no_change(k: &Kind, facts: &HostFacts) {
    match plan(k, facts) {
        Ok(None) => {}
        other => panic!("expected no change for {}, got {other:?}", k.id()),
    }
}

fn conflict(k: &Kind, facts: &HostFacts) -> Conflict {
    match plan(k, facts) {
        Err(c) => c,
        other => panic!("expected a conflict for {}, got {other:?}", k.id()),
    }
}

fn installed(version: &str) -> PackageFact {
    PackageFact {
        version: Some(version.into()),
        status: "ii".into(),
    }
}

fn fresh_lists() -> Option<AptListsFact> {
    Some(lists_aged(Some(600)))
}

/// Lists with one Packages list and no sources to compare with, refreshed `age` seconds
/// ago by a tool (None: no update-success stamp).
fn lists_aged(age: Option<u64>) -> AptListsFact {
    let now = 1_000_000;
    AptListsFact {
        now,
        stamp: age.map(|a| now - a),
        arch: "amd64".into(),
        lists: [(
            "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages".to_string(),
            1,
        )]
        .into(),
        ..AptListsFact::default()
    }
}

fn path_fact(kind: PathKind, owner: &str, group: &str, mode: &str) -> PathFact {
    PathFact {
        kind,
        owner: Some(owner.into()),
        group: Some(group.into()),
        mode: Some(mode.into()),
        ..PathFact::missing()
    }
}

/// A regular file as the fact script reports it when its content matches the expectation.
fn file_same(content: &str, owner: &str, group: &str, mode: &str) -> PathFact {
    PathFact {
        size: Some(content.len() as u64),
        sha256: Some(sha256_hex(content.as_bytes())),
        matches: Some(true),
        ctime: Some("1700000000.000000001".into()),
        ..path_fact(PathKind::File, owner, group, mode)
    }
}

/// A regular (non-sensitive, small) file whose content differs: hash, `matches no` and the
/// current content come back.
fn file_differs(old: &str, owner: &str, group: &str, mode: &str) -> PathFact {
    PathFact {
        size: Some(old.len() as u64),
        sha256: Some(sha256_hex(old.as_bytes())),
        matches: Some(false),
        content: Some(old.into()),
        ctime: Some("1700000000.000000001".into()),
        ..path_fact(PathKind::File, owner, group, mode)
    }
}

fn with_path(path: &str, fact: PathFact) -> HostFacts {
    let mut f = HostFacts::default();
    f.paths.insert(path.into(), fact);
    f
}

fn service_fact(load: &str, active: &str, file_state: &str) -> ServiceFact {
    ServiceFact {
        load_state: load.into(),
        active_state: active.into(),
        unit_file_state: file_state.into(),
    }
}

fn has_write_file(p: &Planned) -> bool {
    p.steps.iter().any(|s| matches!(s, Step::WriteFile { .. }))
}

// ---------------------------------------------------------------------------------------
// package
// ---------------------------------------------------------------------------------------

#[test]
fn package_present_and_installed_is_noop() {
    let k = kind("type = 'package'\nname = 'nginx'");
    let mut facts = HostFacts::default();
    facts.packages.insert("nginx".into(), installed("1.22.1-9"));
    facts.apt_lists = fresh_lists();
    no_change(&k, &facts);
    // Even with stale lists: nothing to install means no update either.
    facts.apt_lists = None;
    no_change(&k, &facts);
}

#[test]
fn package_missing_with_fresh_lists_installs_without_update() {
    let k = kind("type = 'package'\nname = 'nginx'");
    let mut facts = HostFacts::default();
    facts
        .packages
        .insert("nginx".into(), PackageFact::default());
    facts.apt_lists = fresh_lists();
    let p = planned(&k, &facts);
    assert_eq!(p.action, Action::Create);
    assert_eq!(
        p.steps,
        vec![Step::AptInstall {
            packages: vec!["nginx".into()],
            recommends: false,
        }]
    );
    assert_eq!(p.attributes.len(), 1);
    assert_eq!(p.attributes[0].name, "version");
    assert_eq!(p.attributes[0].old, Shown::Absent);
    assert_eq!(p.attributes[0].new, Shown::KnownAfterApply);
}

#[test]
fn package_missing_updates_lists_only_when_missing_or_stale() {
    let k = kind("type = 'package'\nname = 'curl'");
    let cases: Vec<(Option<AptListsFact>, bool)> = vec![
        // never read (a bare host's first plan can not say): refresh
        (None, true),
        // a fresh image has no lists at all
        (
            Some(AptListsFact {
                now: 5,
                ..AptListsFact::default()
            }),
            true,
        ),
        // lists, but no tool ever recorded an update: the image's lists
        (Some(lists_aged(None)), true),
        // older than 24 h
        (Some(lists_aged(Some(24 * 3600 + 1))), true),
        (Some(lists_aged(Some(3 * 24 * 3600))), true),
        // exactly 24 h is not older than 24 h
        (Some(lists_aged(Some(24 * 3600))), false),
        (Some(lists_aged(Some(0))), false),
    ];
    for (lists, want_update) in cases {
        let facts = HostFacts {
            apt_lists: lists.clone(),
            ..HostFacts::default()
        };
        let p = planned(&k, &facts);
        assert_eq!(p.action, Action::Create);
        let expected = if want_update {
            vec![
                Step::AptUpdate,
                Step::AptInstall {
                    packages: vec!["curl".into()],
                    recommends: false,
                },
            ]
        } else {
            vec![Step::AptInstall {
                packages: vec!["curl".into()],
                recommends: false,
            }]
        };
        assert_eq!(p.steps, expected, "lists: {lists:?}");
    }
}

#[test]
fn package_lists_max_age_and_recommends_come_from_the_environment() {
    let k = kind("type = 'package'\nname = 'curl'");
    let facts = HostFacts {
        apt_lists: Some(lists_aged(Some(7200))),
        ..HostFacts::default()
    };
    // Two hours old: fresh for the default day.
    assert_eq!(planned(&k, &facts).steps.len(), 1);
    let predicted = Predicted {
        apt: kiln::desired::AptSettings {
            lists_max_age_secs: 3600,
            recommends: true,
        },
        ..Predicted::default()
    };
    let p = k.plan(&facts, &predicted).unwrap().unwrap();
    assert_eq!(
        p.steps,
        vec![
            Step::AptUpdate,
            Step::AptInstall {
                packages: vec!["curl".into()],
                recommends: true,
            }
        ]
    );
}

#[test]
fn package_missing_updates_lists_when_a_repository_changed_in_this_plan() {
    let k = kind("type = 'package'\nname = 'grafana'");
    let facts = HostFacts {
        apt_lists: fresh_lists(),
        ..HostFacts::default()
    };
    let predicted = Predicted {
        apt_sources_changed: true,
        ..Predicted::default()
    };
    let p = k.plan(&facts, &predicted).unwrap().unwrap();
    assert_eq!(
        p.steps,
        vec![
            Step::AptUpdate,
            Step::AptInstall {
                packages: vec!["grafana".into()],
                recommends: false,
            }
        ]
    );
}

#[test]
fn package_removed_from_dpkg_but_config_left_counts_as_missing() {
    let k = kind("type = 'package'\nname = 'nginx'");
    let mut facts = HostFacts::default();
    facts.packages.insert(
        "nginx".into(),
        PackageFact {
            version: None,
            status: "rc".into(),
        },
    );
    facts.apt_lists = fresh_lists();
    assert_eq!(planned(&k, &facts).action, Action::Create);
}

#[test]
fn package_pinned_version_mismatch_updates_to_name_eq_version() {
    let k = kind("type = 'package'\nname = 'nginx'\nversion = '1.22.1-9+deb12u1'");
    let mut facts = HostFacts::default();
    facts.packages.insert("nginx".into(), installed("1.22.1-9"));
    facts.apt_lists = fresh_lists();
    let p = planned(&k, &facts);
    assert_eq!(p.action, Action::Update);
    assert_eq!(
        p.steps,
        vec![Step::AptInstall {
            packages: vec!["nginx=1.22.1-9+deb12u1".into()],
            recommends: false,
        }]
    );
    assert_eq!(p.attributes[0].name, "version");
    assert_eq!(p.attributes[0].old, Shown::Value("1.22.1-9".into()));
    assert_eq!(p.attributes[0].new, Shown::Value("1.22.1-9+deb12u1".into()));
    assert!(p.summary.contains("1.22.1-9") && p.summary.contains("1.22.1-9+deb12u1"));

    // Pinned and already at that version: nothing.
    facts
        .packages
        .insert("nginx".into(), installed("1.22.1-9+deb12u1"));
    no_change(&k, &facts);

    // Pinned and missing: installs name=version, version shown.
    facts.packages.clear();
    let p = planned(&k, &facts);
    assert_eq!(p.action, Action::Create);
    assert_eq!(
        p.steps,
        vec![Step::AptInstall {
            packages: vec!["nginx=1.22.1-9+deb12u1".into()],
            recommends: false,
        }]
    );
    assert_eq!(p.attributes[0].new, Shown::Value("1.22.1-9+deb12u1".into()));
}

#[test]
fn package_absent_and_installed_is_removed() {
    let k = kind("type = 'package'\nname = 'telnet'\nstate = 'absent'");
    let mut facts = HostFacts::default();
    facts
        .packages
        .insert("telnet".into(), installed("0.17+2.4-2"));
    let p = planned(&k, &facts);
    assert_eq!(p.action, Action::Remove);
    assert_eq!(
        p.steps,
        vec![Step::AptRemove {
            packages: vec!["telnet".into()]
        }]
    );
    assert_eq!(p.attributes[0].old, Shown::Value("0.17+2.4-2".into()));
    assert_eq!(p.attributes[0].new, Shown::Absent);
}

#[test]
fn package_absent_and_not_installed_is_noop() {
    let k = kind("type = 'package'\nname = 'telnet'\nstate = 'absent'");
    no_change(&k, &HostFacts::default());
    let mut facts = HostFacts::default();
    facts.packages.insert(
        "telnet".into(),
        PackageFact {
            version: None,
            status: "rc".into(),
        },
    );
    no_change(&k, &facts);
    // Removing never needs the lists.
    if let Kind::Package(p) = &k {
        assert_eq!(p.state, PackageState::Absent);
        assert!(!k.facts().contains(&kiln::facts::FactQuery::AptLists));
    }
}

// ---------------------------------------------------------------------------------------
// apt_repo
// ---------------------------------------------------------------------------------------

const KEY: &str =
    "-----BEGIN PGP PUBLIC KEY BLOCK-----\nmDMEZfixture\n-----END PGP PUBLIC KEY BLOCK-----\n";

fn apt_repo() -> (AptRepo, Kind) {
    let r = AptRepo {
        name: "grafana".into(),
        uri: "https://apt.grafana.com".into(),
        suites: vec!["stable".into()],
        components: vec!["main".into()],
        key: Some(KEY.into()),
        keyring: None,
    };
    (r.clone(), Kind::AptRepo(r))
}

fn converged_repo_facts(r: &AptRepo) -> HostFacts {
    let mut f = HostFacts::default();
    f.paths.insert(
        r.key_path(),
        file_same(r.key.as_deref().unwrap(), "root", "root", "0644"),
    );
    f.paths.insert(
        r.sources_path(),
        file_same(&r.sources_content(), "root", "root", "0644"),
    );
    f
}

#[test]
fn apt_repo_converged_is_noop() {
    let (r, k) = apt_repo();
    no_change(&k, &converged_repo_facts(&r));
}

#[test]
fn apt_repo_on_bare_host_writes_key_and_sources_then_updates() {
    let (r, k) = apt_repo();
    let p = planned(&k, &HostFacts::default());
    assert_eq!(p.action, Action::Create);
    assert_eq!(p.steps.len(), 3, "{:?}", p.steps);
    match &p.steps[0] {
        Step::WriteFile {
            path,
            content: Content::Text { text },
            mode,
            ..
        } => {
            assert_eq!(path, "/etc/apt/keyrings/kiln-grafana.asc");
            assert_eq!(text, KEY);
            assert_eq!(mode, "0644");
        }
        other => panic!("{other:?}"),
    }
    match &p.steps[1] {
        Step::WriteFile {
            path,
            content: Content::Text { text },
            ..
        } => {
            assert_eq!(path, "/etc/apt/sources.list.d/kiln-grafana.sources");
            assert_eq!(text, &r.sources_content());
            assert!(text.contains("URIs: https://apt.grafana.com\n"));
            assert!(text.contains("Suites: stable\n"));
            assert!(text.contains("Signed-By: /etc/apt/keyrings/kiln-grafana.asc\n"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(p.steps[2], Step::AptUpdate);
}

#[test]
fn apt_repo_changed_sources_is_update_with_diff() {
    let (mut r, _) = apt_repo();
    let facts = converged_repo_facts(&r);
    let old = r.sources_content();
    r.suites = vec!["beta".into()];
    let mut facts = facts;
    facts
        .paths
        .insert(r.sources_path(), file_differs(&old, "root", "root", "0644"));
    let p = planned(&Kind::AptRepo(r.clone()), &facts);
    assert_eq!(p.action, Action::Update);
    let diff = p.diff.expect("diff of the sources file");
    assert!(diff.lines().any(|l| l == "-Suites: stable"), "{diff}");
    assert!(diff.lines().any(|l| l == "+Suites: beta"), "{diff}");
    // Only the sources file is rewritten, then the lists refreshed.
    assert_eq!(p.steps.len(), 2);
    assert!(matches!(&p.steps[0], Step::WriteFile { path, .. } if *path == r.sources_path()));
    assert_eq!(p.steps[1], Step::AptUpdate);
}

/// SRC BUG (see report): when a directory sits where the `.sources` file belongs, the
/// conflict from the inner `File::plan` is dropped and the repository reports converged.
#[test]
fn apt_repo_directory_in_place_of_sources_is_not_reported_converged() {
    let (r, k) = apt_repo();
    let mut facts = converged_repo_facts(&r);
    facts.paths.insert(
        r.sources_path(),
        path_fact(PathKind::Directory, "root", "root", "0755"),
    );
    let result = plan(&k, &facts);
    assert!(
        !matches!(result, Ok(None)),
        "a directory at {} must not count as a configured repository (expected a conflict), got {result:?}",
        r.sources_path()
    );
}

// ---------------------------------------------------------------------------------------
// group
// ---------------------------------------------------------------------------------------

#[test]
fn group_existing_is_noop() {
    let k = kind("type = 'group'\nname = 'deploy'");
    let mut facts = HostFacts::default();
    facts.groups.insert(
        "deploy".into(),
        Some(GroupFact {
            gid: 1001,
            members: vec![],
        }),
    );
    no_change(&k, &facts);
}

#[test]
fn group_missing_is_created_with_gid_known_after_apply() {
    let k = kind("type = 'group'\nname = 'deploy'\nsystem = true");
    let mut facts = HostFacts::default();
    facts.groups.insert("deploy".into(), None);
    let p = planned(&k, &facts);
    assert_eq!(p.action, Action::Create);
    assert_eq!(
        p.steps,
        vec![Step::GroupAdd {
            name: "deploy".into(),
            gid: None,
            system: true
        }]
    );
    assert_eq!(p.attributes[0].name, "gid");
    assert_eq!(p.attributes[0].new, Shown::KnownAfterApply);

    // With a fixed gid the value is known.
    let k = kind("type = 'group'\nname = 'deploy'\ngid = 2000");
    let p = planned(&k, &HostFacts::default());
    assert_eq!(p.attributes[0].new, Shown::Value("2000".into()));
    assert!(matches!(
        p.steps[0],
        Step::GroupAdd {
            gid: Some(2000),
            ..
        }
    ));
}

#[test]
fn group_not_present_but_existing_is_removed() {
    let k = kind("type = 'group'\nname = 'old'\npresent = false");
    let mut facts = HostFacts::default();
    facts.groups.insert(
        "old".into(),
        Some(GroupFact {
            gid: 1002,
            members: vec!["bob".into()],
        }),
    );
    let p = planned(&k, &facts);
    assert_eq!(p.action, Action::Remove);
    assert_eq!(p.steps, vec![Step::GroupDel { name: "old".into() }]);
    // Already gone: nothing.
    facts.groups.insert("old".into(), None);
    no_change(&k, &facts);
}

// ---------------------------------------------------------------------------------------
// user
// ---------------------------------------------------------------------------------------

fn alice_fact(groups: &[&str]) -> UserFact {
    UserFact {
        uid: 1001,
        gid: 1001,
        home: "/home/alice".into(),
        shell: "/bin/bash".into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

#[test]
fn user_converged_is_noop() {
    let k = kind("type = 'user'\nname = 'alice'\ngroups = ['sudo']");
    let mut facts = HostFacts::default();
    facts
        .users
        .insert("alice".into(), Some(alice_fact(&["adm", "sudo"])));
    // Groups beyond the declared ones are left alone.
    no_change(&k, &facts);
}

#[test]
fn user_missing_is_created_with_uid_known_after_apply() {
    let k = kind("type = 'user'\nname = 'alice'\ngroups = ['sudo', 'adm']");
    let mut facts = HostFacts::default();
    facts.users.insert("alice".into(), None);
    let p = planned(&k, &facts);
    assert_eq!(p.action, Action::Create);
    let uid = p.attributes.iter().find(|a| a.name == "uid").expect("uid");
    assert_eq!(uid.old, Shown::Absent);
    assert_eq!(uid.new, Shown::KnownAfterApply);
    assert_eq!(
        p.steps,
        vec![Step::UserAdd {
            name: "alice".into(),
            uid: None,
            home: "/home/alice".into(),
            shell: "/bin/bash".into(),
            system: false,
            groups: vec!["sudo".into(), "adm".into()],
            create_home: true,
        }]
    );
    // A fixed uid is shown as its value.
    let k = kind("type = 'user'\nname = 'svc'\nuid = 990\nhome = '/srv/svc'\nsystem = true\ncreate_home = false");
    let p = planned(&k, &HostFacts::default());
    let uid = p.attributes.iter().find(|a| a.name == "uid").expect("uid");
    assert_eq!(uid.new, Shown::Value("990".into()));
    assert!(matches!(
        &p.steps[0],
        Step::UserAdd { uid: Some(990), home, system: true, create_home: false, .. } if home == "/srv/svc"
    ));
}

#[test]
fn user_missing_supplementary_group_is_update() {
    let k = kind("type = 'user'\nname = 'alice'\ngroups = ['sudo', 'docker']");
    let mut facts = HostFacts::default();
    facts
        .users
        .insert("alice".into(), Some(alice_fact(&["adm", "sudo"])));
    let p = planned(&k, &facts);
    assert_eq!(p.action, Action::Update);
    assert_eq!(
        p.steps,
        vec![Step::UserMod {
            name: "alice".into(),
            home: None,
            shell: None,
            // Existing groups kept (usermod -G replaces the list), missing one added.
            groups: Some(vec!["adm".into(), "docker".into(), "sudo".into()]),
        }]
    );
    let g = p
        .attributes
        .iter()
        .find(|a| a.name == "groups")
        .expect("groups");
    assert_eq!(g.old, Shown::Value("adm,sudo".into()));
    assert_eq!(g.new, Shown::Value("adm,docker,sudo".into()));
}

#[test]
fn user_shell_change_is_update_with_only_shell() {
    let k = kind("type = 'user'\nname = 'alice'\nshell = '/bin/zsh'");
    let mut facts = HostFacts::default();
    facts.users.insert("alice".into(), Some(alice_fact(&[])));
    let p = planned(&k, &facts);
    assert_eq!(p.action, Action::Update);
    assert_eq!(
        p.steps,
        vec![Step::UserMod {
            name: "alice".into(),
            home: None,
            shell: Some("/bin/zsh".into()),
            groups: None,
        }]
    );
}

#[test]
fn user_not_present_is_removed_when_it_exists() {
    let k = kind("type = 'user'\nname = 'alice'\npresent = false");
    let mut facts = HostFacts::default();
    facts.users.insert("alice".into(), Some(alice_fact(&[])));
    let p = planned(&k, &facts);
    assert_eq!(p.action, Action::Remove);
    assert_eq!(
        p.steps,
        vec![Step::UserDel {
            name: "alice".into()
        }]
    );
    facts.users.insert("alice".into(), None);
    no_change(&k, &facts);
}

// ---------------------------------------------------------------------------------------
// directory
// ---------------------------------------------------------------------------------------

#[test]
fn directory_converged_is_noop() {
    let k = kind("type = 'directory'\npath = '/srv/app'\nowner = 'app'\nmode = '0750'");
    let facts = with_path(
        "/srv/app",
        path_fact(PathKind::Directory, "app", "root", "0750"),
    );
    no_change(&k, &facts);
}

#[test]
fn directory_missing_is_created() {
    let k = kind("type = 'directory'\npath = '/srv/app'");
    let p = planned(&k, &HostFacts::default());
    assert_eq!(p.action, Action::Create);
    assert_eq!(
        p.steps,
        vec![Step::MakeDir {
            path: "/srv/app".into(),
            owner: "root".into(),
            group: "root".into(),
            mode: "0755".into()
        }]
    );
    assert_eq!(p.attributes.len(), 3);
}

#[test]
fn directory_mode_change_is_update_of_that_attribute() {
    let k = kind("type = 'directory'\npath = '/srv/app'\nmode = '0700'");
    let facts = with_path(
        "/srv/app",
        path_fact(PathKind::Directory, "root", "root", "0755"),
    );
    let p = planned(&k, &facts);
    assert_eq!(p.action, Action::Update);
    assert_eq!(p.summary, "mode");
    assert_eq!(p.attributes.len(), 1);
    assert_eq!(p.attributes[0].old, Shown::Value("0755".into()));
    assert_eq!(p.attributes[0].new, Shown::Value("0700".into()));
    assert!(matches!(&p.steps[..], [Step::MakeDir { mode, .. }] if mode == "0700"));
}

#[test]
fn directory_with_file_or_symlink_in_the_way_is_conflict() {
    let k = kind("type = 'directory'\npath = '/srv/app'");
    for kind_in_way in [PathKind::File, PathKind::Symlink, PathKind::Other] {
        let facts = with_path("/srv/app", path_fact(kind_in_way, "root", "root", "0644"));
        let c = conflict(&k, &facts);
        assert_eq!(c.resource, k.id());
        assert!(c.message.contains("not a directory"), "{c}");
    }
}

// ---------------------------------------------------------------------------------------
// file
// ---------------------------------------------------------------------------------------

const MOTD_OLD: &str = "Welcome\nline two\nold line\nline four\n";
const MOTD_NEW: &str = "Welcome\nline two\nnew line\nline four\n";

fn motd(content: &str) -> Kind {
    Kind::File(File::text("/etc/motd", content, "0644"))
}

#[test]
fn file_identical_content_and_attrs_is_noop() {
    let k = motd(MOTD_NEW);
    // As the fact script reports it (matches yes)...
    no_change(
        &k,
        &with_path("/etc/motd", file_same(MOTD_NEW, "root", "root", "0644")),
    );
    // ...and from the hash alone (no expectation was sent).
    let mut fact = file_same(MOTD_NEW, "root", "root", "0644");
    fact.matches = None;
    no_change(&k, &with_path("/etc/motd", fact));
}

#[test]
fn file_missing_is_created_with_content_diff() {
    let k = motd(MOTD_NEW);
    let p = planned(&k, &HostFacts::default());
    assert_eq!(p.action, Action::Create);
    assert!(!p.sensitive);
    assert_eq!(
        p.steps,
        vec![Step::WriteFile {
            path: "/etc/motd".into(),
            content: Content::Text {
                text: MOTD_NEW.into()
            },
            owner: "root".into(),
            group: "root".into(),
            mode: "0644".into(),
        }]
    );
    let diff = p.diff.expect("diff");
    assert!(diff.lines().any(|l| l == "+new line"), "{diff}");
    assert!(!diff
        .lines()
        .any(|l| l.starts_with('-') && !l.starts_with("---")));
}

#[test]
fn file_content_change_is_update_with_unified_diff() {
    let k = motd(MOTD_NEW);
    let facts = with_path("/etc/motd", file_differs(MOTD_OLD, "root", "root", "0644"));
    let p = planned(&k, &facts);
    assert_eq!(p.action, Action::Update);
    assert_eq!(p.summary, "content");
    assert!(p.attributes.is_empty(), "{:?}", p.attributes);
    assert!(has_write_file(&p));
    let diff = p.diff.expect("diff");
    let lines: Vec<&str> = diff.lines().collect();
    assert!(lines.contains(&"-old line"), "{diff}");
    assert!(lines.contains(&"+new line"), "{diff}");
    assert!(lines.contains(&"--- /etc/motd (on host)"), "{diff}");
    assert!(lines.contains(&"+++ /etc/motd (planned)"), "{diff}");
    assert!(lines.iter().any(|l| l.starts_with("@@ ")), "{diff}");
    // Context lines are kept.
    assert!(lines.contains(&" line two"), "{diff}");
}

#[test]
fn file_content_and_mode_change_names_both() {
    let k = motd(MOTD_NEW);
    let facts = with_path("/etc/motd", file_differs(MOTD_OLD, "root", "root", "0600"));
    let p = planned(&k, &facts);
    assert_eq!(p.summary, "content, mode");
    assert!(has_write_file(&p));
    assert_eq!(p.attributes.len(), 1);
    assert_eq!(p.attributes[0].name, "mode");
}

#[test]
fn file_only_mode_differs_is_set_attrs_without_write() {
    let k = motd(MOTD_NEW);
    let facts = with_path("/etc/motd", file_same(MOTD_NEW, "root", "root", "0600"));
    let p = planned(&k, &facts);
    assert_eq!(p.action, Action::Update);
    assert_eq!(p.summary, "mode");
    assert!(!has_write_file(&p), "{:?}", p.steps);
    assert_eq!(
        p.steps,
        vec![Step::SetAttrs {
            path: "/etc/motd".into(),
            owner: Some("root".into()),
            group: Some("root".into()),
            mode: Some("0644".into()),
        }]
    );
    assert_eq!(p.attributes.len(), 1);
    assert_eq!(p.attributes[0].name, "mode");
    assert_eq!(p.attributes[0].old, Shown::Value("0600".into()));
    assert!(p.diff.is_none());
}

#[test]
fn file_large_or_binary_difference_shows_hashes() {
    let k = motd(MOTD_NEW);
    let mut fact = file_differs(MOTD_OLD, "root", "root", "0644");
    fact.content = None; // too large to be sent back
    let p = planned(&k, &with_path("/etc/motd", fact));
    assert!(p.diff.is_none());
    let sha = p
        .attributes
        .iter()
        .find(|a| a.name == "sha256")
        .expect("sha256");
    assert_eq!(sha.old, Shown::Value(sha256_hex(MOTD_OLD.as_bytes())));
    assert_eq!(sha.new, Shown::Value(sha256_hex(MOTD_NEW.as_bytes())));
}

const SECRET: &str = "hunter2-S3cr3t-fixture-7f3a";

fn secret_file() -> Kind {
    let mut f = File::text(
        "/etc/app/db.conf",
        &format!("user=app\npassword={SECRET}\n"),
        "0600",
    );
    f.sensitive = true;
    Kind::File(f)
}

fn assert_no_secret(p: &Planned) {
    assert!(p.sensitive);
    assert!(p.diff.is_none(), "sensitive file got a diff: {:?}", p.diff);
    let attrs = format!("{:?}", p.attributes);
    assert!(!attrs.contains(SECRET), "secret in attributes: {attrs}");
    assert!(!attrs.contains("hunter2"), "secret in attributes: {attrs}");
    assert!(!p.summary.contains(SECRET));
    assert!(!format!("{:?}", p.reason).contains(SECRET));
    let content = p
        .attributes
        .iter()
        .find(|a| a.name == "content")
        .expect("content attribute");
    assert_eq!(content.old, Shown::Sensitive);
    assert_eq!(content.new, Shown::Sensitive);
}

#[test]
fn file_sensitive_difference_is_sensitive_without_diff() {
    let k = secret_file();
    // Sensitive: no hash, no content, only "differs".
    let fact = PathFact {
        matches: Some(false),
        size: Some(40),
        ctime: Some("1700000000.5".into()),
        ..path_fact(PathKind::File, "root", "root", "0600")
    };
    let p = planned(&k, &with_path("/etc/app/db.conf", fact.clone()));
    assert_eq!(p.action, Action::Update);
    assert_no_secret(&p);
    assert!(has_write_file(&p));

    // Sensitive and matching: nothing.
    let same = PathFact {
        matches: Some(true),
        ..fact
    };
    no_change(&k, &with_path("/etc/app/db.conf", same));
}

#[test]
fn file_sensitive_missing_is_create_without_diff() {
    let k = secret_file();
    let p = planned(&k, &HostFacts::default());
    assert_eq!(p.action, Action::Create);
    assert_no_secret(&p);
}

#[test]
fn file_sensitive_never_diffs_even_if_old_content_came_back() {
    // A careless fact reader returned the content; the plan must still not show it.
    let k = secret_file();
    let mut fact = file_differs("password=old-secret-value\n", "root", "root", "0600");
    fact.sha256 = None;
    let p = planned(&k, &with_path("/etc/app/db.conf", fact));
    assert_no_secret(&p);
    assert!(!format!("{:?}", p.attributes).contains("old-secret-value"));
}

#[test]
fn file_symlink_in_the_way_is_replaced() {
    let k = motd(MOTD_NEW);
    let mut fact = path_fact(PathKind::Symlink, "root", "root", "0777");
    fact.link_target = Some("/run/motd.dynamic".into());
    let p = planned(&k, &with_path("/etc/motd", fact));
    assert_eq!(p.action, Action::Update);
    assert!(has_write_file(&p));
    assert!(p.summary.contains("symlink"));
}

#[test]
fn file_directory_in_the_way_is_conflict() {
    let k = motd(MOTD_NEW);
    let facts = with_path(
        "/etc/motd",
        path_fact(PathKind::Directory, "root", "root", "0755"),
    );
    let c = conflict(&k, &facts);
    assert_eq!(c.resource, "file:/etc/motd");
    assert_eq!(c.resource, k.id());
    assert!(c.message.contains("not a regular file"), "{c}");
}

#[test]
fn file_absent_and_present_is_removed_with_diff_of_old_content() {
    let mut f = File::text("/etc/nginx/sites-enabled/default", "", "0644");
    f.content = None;
    f.state = FileState::Absent;
    let k = Kind::File(f);
    // Absent files send no expectation.
    assert!(matches!(
        &k.facts()[..],
        [kiln::facts::FactQuery::Path {
            expect_sha256: None,
            ..
        }]
    ));
    let mut fact = file_differs("server {}\n", "root", "root", "0644");
    fact.matches = None;
    let p = planned(&k, &with_path("/etc/nginx/sites-enabled/default", fact));
    assert_eq!(p.action, Action::Remove);
    assert_eq!(
        p.steps,
        vec![Step::RemovePath {
            path: "/etc/nginx/sites-enabled/default".into()
        }]
    );
    let diff = p.diff.expect("diff");
    assert!(diff.lines().any(|l| l == "-server {}"), "{diff}");

    // A symlink declared absent as a file is removed too.
    let mut link = path_fact(PathKind::Symlink, "root", "root", "0777");
    link.link_target = Some("/etc/nginx/sites-available/default".into());
    let p = planned(&k, &with_path("/etc/nginx/sites-enabled/default", link));
    assert_eq!(p.action, Action::Remove);
}

#[test]
fn file_absent_and_missing_is_noop_and_directory_is_conflict() {
    let k = kind("type = 'file'\npath = '/etc/x.conf'\nstate = 'absent'");
    no_change(&k, &HostFacts::default());
    let c = conflict(
        &k,
        &with_path(
            "/etc/x.conf",
            path_fact(PathKind::Directory, "root", "root", "0755"),
        ),
    );
    assert_eq!(c.resource, "file:/etc/x.conf");
}

#[test]
fn file_absent_and_missing_but_packages_installed_in_plan_is_removed_after_them() {
    // A package installed earlier in this plan may ship the file (nginx's
    // sites-enabled/default): removal is planned, and said to be known after apply.
    let k = kind("type = 'file'\npath = '/etc/nginx/sites-enabled/default'\nstate = 'absent'");
    // The file's own module installs packages in this plan (the builder sets `module`).
    let mut predicted = Predicted::default();
    predicted.packages_installed.insert("nginx".into());
    predicted.modules_installing.insert("web".into());
    predicted.module = "web".into();
    let p = k
        .plan(&HostFacts::default(), &predicted)
        .unwrap()
        .expect("planned");
    assert_eq!(p.action, Action::Remove);
    assert_eq!(
        p.steps,
        vec![Step::RemovePath {
            path: "/etc/nginx/sites-enabled/default".into()
        }]
    );
    assert!(p.reason.unwrap().contains("known after apply"));
    // Nothing installed in this plan: nothing to do.
    no_change(&k, &HostFacts::default());
}

#[test]
fn file_owner_change_is_set_attrs() {
    let k = kind("type = 'file'\npath = '/srv/a'\ncontent = 'x'\nowner = 'app'\ngroup = 'app'");
    let p = planned(
        &k,
        &with_path("/srv/a", file_same("x", "root", "root", "0644")),
    );
    assert_eq!(p.summary, "owner, group");
    assert!(!has_write_file(&p));
    assert!(matches!(&p.steps[..], [Step::SetAttrs { .. }]));
}

// ---------------------------------------------------------------------------------------
// symlink
// ---------------------------------------------------------------------------------------

fn link_fact(target: &str) -> PathFact {
    PathFact {
        link_target: Some(target.into()),
        ..path_fact(PathKind::Symlink, "root", "root", "0777")
    }
}

const SITE_LINK: &str = "type = 'symlink'\npath = '/etc/nginx/sites-enabled/kiln'\ntarget = '/etc/nginx/sites-available/kiln'";

#[test]
fn symlink_correct_is_noop() {
    let k = kind(SITE_LINK);
    no_change(
        &k,
        &with_path(
            "/etc/nginx/sites-enabled/kiln",
            link_fact("/etc/nginx/sites-available/kiln"),
        ),
    );
}

#[test]
fn symlink_missing_is_created() {
    let k = kind(SITE_LINK);
    let p = planned(&k, &HostFacts::default());
    assert_eq!(p.action, Action::Create);
    assert_eq!(
        p.steps,
        vec![Step::Symlink {
            path: "/etc/nginx/sites-enabled/kiln".into(),
            target: "/etc/nginx/sites-available/kiln".into()
        }]
    );
}

#[test]
fn symlink_wrong_target_is_update() {
    let k = kind(SITE_LINK);
    let p = planned(
        &k,
        &with_path(
            "/etc/nginx/sites-enabled/kiln",
            link_fact("/etc/nginx/sites-available/old"),
        ),
    );
    assert_eq!(p.action, Action::Update);
    assert_eq!(
        p.attributes[0].old,
        Shown::Value("/etc/nginx/sites-available/old".into())
    );
    assert_eq!(
        p.attributes[0].new,
        Shown::Value("/etc/nginx/sites-available/kiln".into())
    );
}

#[test]
fn symlink_over_file_needs_force_and_never_replaces_a_directory() {
    let file = with_path(
        "/etc/nginx/sites-enabled/kiln",
        file_same("x", "root", "root", "0644"),
    );
    let k = kind(SITE_LINK);
    let c = conflict(&k, &file);
    assert_eq!(c.resource, k.id());
    assert!(c.message.contains("force"), "{c}");

    let forced = kind(&format!("{SITE_LINK}\nforce = true"));
    let p = planned(&forced, &file);
    assert_eq!(p.action, Action::Update);
    assert!(matches!(&p.steps[..], [Step::Symlink { .. }]));

    let dir = with_path(
        "/etc/nginx/sites-enabled/kiln",
        path_fact(PathKind::Directory, "root", "root", "0755"),
    );
    let c = conflict(&forced, &dir);
    assert_eq!(c.resource, forced.id());
}

// ---------------------------------------------------------------------------------------
// unit
// ---------------------------------------------------------------------------------------

const UNIT_V1: &str = "[Unit]\nDescription=app\n[Service]\nExecStart=/usr/bin/app\n";
const UNIT_V2: &str = "[Unit]\nDescription=app\n[Service]\nExecStart=/usr/bin/app --fast\n";

fn unit(content: &str) -> Kind {
    Kind::Unit(Unit {
        name: "app".into(),
        content: Some(content.into()),
        template: None,
        sensitive: false,
    })
}

#[test]
fn unit_converged_is_noop() {
    let k = unit(UNIT_V1);
    assert_eq!(k.id(), "unit:app.service");
    no_change(
        &k,
        &with_path(
            "/etc/systemd/system/app.service",
            file_same(UNIT_V1, "root", "root", "0644"),
        ),
    );
}

#[test]
fn unit_missing_is_created_then_daemon_reload() {
    let k = unit(UNIT_V1);
    let p = planned(&k, &HostFacts::default());
    assert_eq!(p.action, Action::Create);
    assert!(matches!(
        &p.steps[0],
        Step::WriteFile { path, .. } if path == "/etc/systemd/system/app.service"
    ));
    assert_eq!(p.steps.last(), Some(&Step::DaemonReload));
}

#[test]
fn unit_changed_steps_end_with_daemon_reload() {
    let k = unit(UNIT_V2);
    let p = planned(
        &k,
        &with_path(
            "/etc/systemd/system/app.service",
            file_differs(UNIT_V1, "root", "root", "0644"),
        ),
    );
    assert_eq!(p.action, Action::Update);
    assert_eq!(p.steps.len(), 2);
    assert!(matches!(&p.steps[0], Step::WriteFile { .. }));
    assert_eq!(p.steps.last(), Some(&Step::DaemonReload));
    let diff = p.diff.expect("diff");
    assert!(diff.lines().any(|l| l == "-ExecStart=/usr/bin/app"));
    assert!(diff.lines().any(|l| l == "+ExecStart=/usr/bin/app --fast"));

    // Mode only: SetAttrs, still followed by daemon-reload.
    let p = planned(
        &k,
        &with_path(
            "/etc/systemd/system/app.service",
            file_same(UNIT_V2, "root", "root", "0755"),
        ),
    );
    assert!(matches!(&p.steps[0], Step::SetAttrs { .. }));
    assert_eq!(p.steps.last(), Some(&Step::DaemonReload));
}

/// SRC BUG (see report): the conflict names `unit:app` while the resource id is
/// `unit:app.service` (src/resource/unit.rs builds it from the raw name).
#[test]
fn unit_directory_in_the_way_is_conflict_naming_the_resource_id() {
    let k = unit(UNIT_V1);
    let c = conflict(
        &k,
        &with_path(
            "/etc/systemd/system/app.service",
            path_fact(PathKind::Directory, "root", "root", "0755"),
        ),
    );
    assert_eq!(c.resource, k.id());
}

// ---------------------------------------------------------------------------------------
// command
// ---------------------------------------------------------------------------------------

#[test]
fn command_creates_existing_is_noop() {
    let k = kind("type = 'command'\nname = 'init-db'\nrun = 'app init'\ncreates = '/srv/app/db'");
    no_change(
        &k,
        &with_path(
            "/srv/app/db",
            path_fact(PathKind::Directory, "app", "app", "0750"),
        ),
    );
    no_change(
        &k,
        &with_path("/srv/app/db", file_same("", "app", "app", "0640")),
    );
}

#[test]
fn command_creates_missing_runs_with_creates_recheck() {
    let k = kind("type = 'command'\nname = 'init-db'\nrun = 'app init'\ncreates = '/srv/app/db'");
    let p = planned(&k, &HostFacts::default());
    assert_eq!(p.action, Action::Run);
    assert_eq!(p.summary, "init-db");
    assert_eq!(
        p.steps,
        vec![Step::Shell {
            command: "app init".into(),
            creates: Some("/srv/app/db".into())
        }]
    );
    assert!(p.reason.unwrap().contains("/srv/app/db does not exist"));
}

#[test]
fn command_unless_guard_true_is_noop_false_runs() {
    let k = kind("type = 'command'\nname = 'locale'\nrun = 'locale-gen'\nunless = 'locale -a | grep -q en_US'");
    let mut facts = HostFacts::default();
    facts
        .guards
        .insert("locale -a | grep -q en_US".into(), true);
    no_change(&k, &facts);

    facts
        .guards
        .insert("locale -a | grep -q en_US".into(), false);
    let p = planned(&k, &facts);
    assert_eq!(p.action, Action::Run);
    assert_eq!(
        p.steps,
        vec![Step::Shell {
            command: "locale-gen".into(),
            creates: None
        }]
    );
    assert!(p.reason.unwrap().contains("failed"));

    // A guard that was not read counts as not satisfied.
    assert!(plan(&k, &HostFacts::default()).unwrap().is_some());
}

#[test]
fn command_due_by_certs_is_decided_from_the_fact_and_asks_for_it() {
    let k = kind(
        "type = 'command'\nname = 'sync'\nrun = 'kiln-certs sync'\n\
         [due.certs]\ncheck = 'sync'\nlive = '/l'\nrenewal = '/r'\nrenew_days = 30\n\
         certificates = [{ name = 'web', domains = ['a.test'], cert_secret = 'ignored' }]",
    );
    let query = kiln::facts::FactQuery::Certs {
        live: "/l".into(),
        renewal: Some("/r".into()),
    };
    assert_eq!(k.facts(), vec![query.clone()]);
    // Not read (an offline plan): a bare host, so the certificate is missing.
    let p = planned(&k, &HostFacts::default());
    assert_eq!(p.action, Action::Run);
    assert_eq!(p.reason.as_deref(), Some("due: web: missing"));
    // Only a stale renewal left on the host: due for it, and the declared one is missing.
    let mut facts = HostFacts::default();
    let mut fact = kiln::facts::CertsFact::default();
    fact.renewal.insert("old".into());
    facts.certs.insert(query.key(), fact);
    let p = planned(&k, &facts);
    assert_eq!(
        p.reason.as_deref(),
        Some("due: web: missing; old: no longer in the spec")
    );
    // Nothing declared, nothing on the host: not due.
    let empty = kind(
        "type = 'command'\nname = 'sync'\nrun = 'x'\n\
         [due.certs]\ncheck = 'sync'\nlive = '/l'\nrenewal = '/r'\ncertificates = []",
    );
    facts.certs.insert(query.key(), Default::default());
    no_change(&empty, &facts);
}

// ---------------------------------------------------------------------------------------
// service
// ---------------------------------------------------------------------------------------

const NGINX: &str = "type = 'service'\nname = 'nginx'\nenabled = true\nrunning = true\ncheck = 'nginx -t -q'\non_change = 'reload'";

fn svc_facts(load: &str, active: &str, file_state: &str) -> HostFacts {
    let mut f = HostFacts::default();
    f.services.insert(
        "nginx.service".into(),
        service_fact(load, active, file_state),
    );
    f
}

#[test]
fn service_running_and_enabled_as_desired_is_noop() {
    let k = kind(NGINX);
    assert_eq!(k.id(), "service:nginx.service");
    no_change(&k, &svc_facts("loaded", "active", "enabled"));
    // A service that is not told to run or enable is left as it is.
    let k = kind("type = 'service'\nname = 'nginx'");
    no_change(&k, &svc_facts("loaded", "inactive", "disabled"));
}

#[test]
fn service_not_loaded_and_nothing_installed_is_conflict() {
    let k = kind(NGINX);
    for facts in [HostFacts::default(), svc_facts("not-found", "inactive", "")] {
        let c = conflict(&k, &facts);
        assert_eq!(c.resource, "service:nginx.service");
        assert_eq!(c.resource, k.id());
        assert!(c.message.contains("does not exist"), "{c}");
    }
}

#[test]
fn service_not_loaded_but_package_installed_in_plan_is_known_after_apply() {
    let k = kind(NGINX);
    let facts = svc_facts("not-found", "inactive", "");
    let mut predicted = Predicted::default();
    predicted.packages_installed.insert("nginx".into());
    let p = k.plan(&facts, &predicted).unwrap().expect("planned");
    assert_eq!(p.action, Action::Create);
    let reason = p.reason.expect("reason");
    assert!(reason.contains("known after apply"), "{reason}");
    assert_eq!(
        p.steps,
        vec![
            Step::Systemctl {
                verb: SystemctlVerb::Enable,
                unit: "nginx.service".into()
            },
            Step::Handler {
                unit: "nginx.service".into(),
                action: HandlerAction::Start,
                check: Some("nginx -t -q".into())
            },
        ]
    );

    // Same when the unit file itself is written earlier in this plan.
    let mut predicted = Predicted::default();
    predicted.units_changed.insert("nginx.service".into());
    let p = k.plan(&facts, &predicted).unwrap().expect("planned");
    assert!(p.reason.unwrap().contains("known after apply"));
}

#[test]
fn service_stopped_but_desired_running_with_check_starts_through_handler() {
    let k = kind(NGINX);
    let p = planned(&k, &svc_facts("loaded", "inactive", "enabled"));
    assert_eq!(p.action, Action::Update);
    assert_eq!(
        p.steps,
        vec![Step::Handler {
            unit: "nginx.service".into(),
            action: HandlerAction::Start,
            check: Some("nginx -t -q".into())
        }]
    );
    assert_eq!(p.summary, "running=true");
    assert_eq!(p.attributes[0].old, Shown::Value("false".into()));
    assert_eq!(p.attributes[0].new, Shown::Value("true".into()));

    // Without a check it is a plain start.
    let k = kind("type = 'service'\nname = 'nginx'\nrunning = true");
    let p = planned(&k, &svc_facts("loaded", "failed", "enabled"));
    assert_eq!(
        p.steps,
        vec![Step::Systemctl {
            verb: SystemctlVerb::Start,
            unit: "nginx.service".into()
        }]
    );
}

#[test]
fn service_enable_and_stop_updates() {
    let k = kind(NGINX);
    let p = planned(&k, &svc_facts("loaded", "active", "disabled"));
    assert_eq!(
        p.steps,
        vec![Step::Systemctl {
            verb: SystemctlVerb::Enable,
            unit: "nginx.service".into()
        }]
    );
    assert_eq!(p.summary, "enabled=true");

    let k = kind("type = 'service'\nname = 'apache2'\nenabled = false\nrunning = false");
    let mut facts = HostFacts::default();
    facts.services.insert(
        "apache2.service".into(),
        service_fact("loaded", "active", "enabled"),
    );
    let p = planned(&k, &facts);
    assert_eq!(
        p.steps,
        vec![
            Step::Systemctl {
                verb: SystemctlVerb::Disable,
                unit: "apache2.service".into()
            },
            Step::Systemctl {
                verb: SystemctlVerb::Stop,
                unit: "apache2.service".into()
            },
        ]
    );
    assert_eq!(p.summary, "enabled=false, running=false");
}

/// SRC BUG (see report): `ServiceFact::enabled()` counts `static` as enabled, so
/// `enabled = false` on a static unit plans `systemctl disable` — which leaves a static
/// unit static — on every run: the host never converges.
#[test]
fn service_disabled_on_a_static_unit_converges() {
    let k = kind("type = 'service'\nname = 'fixture-static'\nenabled = false");
    let mut facts = HostFacts::default();
    facts.services.insert(
        "fixture-static.service".into(),
        service_fact("loaded", "inactive", "static"),
    );
    match plan(&k, &facts) {
        Ok(Some(p))
            if p.steps.iter().any(
                |s| matches!(s, Step::Systemctl { verb, .. } if *verb == SystemctlVerb::Disable),
            ) =>
        {
            panic!(
                "plans `systemctl disable` for a static unit, which stays static: \
                 the same change is planned after every apply: {p:?}"
            )
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------
// Across types
// ---------------------------------------------------------------------------------------

/// Every type: a converged host plans nothing, and planning is deterministic.
#[test]
fn every_type_has_a_noop_case_and_is_deterministic() {
    let (repo, repo_kind) = apt_repo();
    let mut facts = converged_repo_facts(&repo);
    facts.packages.insert("nginx".into(), installed("1"));
    facts.apt_lists = fresh_lists();
    facts.groups.insert(
        "deploy".into(),
        Some(GroupFact {
            gid: 1,
            members: vec![],
        }),
    );
    facts
        .users
        .insert("alice".into(), Some(alice_fact(&["sudo"])));
    facts.paths.insert(
        "/srv/app".into(),
        path_fact(PathKind::Directory, "root", "root", "0755"),
    );
    facts.paths.insert(
        "/etc/motd".into(),
        file_same(MOTD_NEW, "root", "root", "0644"),
    );
    facts.paths.insert(
        "/etc/nginx/sites-enabled/kiln".into(),
        link_fact("/etc/nginx/sites-available/kiln"),
    );
    facts.paths.insert(
        "/etc/systemd/system/app.service".into(),
        file_same(UNIT_V1, "root", "root", "0644"),
    );
    facts.guards.insert("true".into(), true);
    facts.services.insert(
        "nginx.service".into(),
        service_fact("loaded", "active", "enabled"),
    );
    let all = vec![
        repo_kind,
        kind("type = 'package'\nname = 'nginx'"),
        kind("type = 'group'\nname = 'deploy'"),
        kind("type = 'user'\nname = 'alice'\ngroups = ['sudo']"),
        kind("type = 'directory'\npath = '/srv/app'"),
        motd(MOTD_NEW),
        kind(SITE_LINK),
        unit(UNIT_V1),
        kind("type = 'command'\nname = 'c'\nrun = 'x'\nunless = 'true'"),
        kind(NGINX),
        kind("type = 'galera_node'\ncluster = 'c'\nnodes = ['db1']"),
    ];
    let types: std::collections::BTreeSet<_> = all.iter().map(|k| k.type_name()).collect();
    assert_eq!(types.len(), kiln::resource::Kind::TYPES.len());
    for k in &all {
        no_change(k, &facts);
    }
    // From a bare host each type plans a change (or, for services, a conflict), identically twice.
    let bare = HostFacts::default();
    for k in &all {
        let a = plan(k, &bare);
        let b = plan(k, &bare);
        assert_eq!(a, b);
        match (k, a) {
            (Kind::Service(_), Err(_)) => {}
            // Its changes are cluster steps, planned over all nodes (cluster::galera).
            (Kind::GaleraNode(_), Ok(None)) => {}
            (_, Ok(Some(_))) => {}
            (_, other) => panic!("{}: {other:?}", k.id()),
        }
    }
}

#[test]
fn resources_are_built_from_struct_literals_too() {
    // The public structs are usable directly (not only through TOML).
    let k = Kind::Package(Package {
        name: "jq".into(),
        state: PackageState::Present,
        version: None,
    });
    assert_eq!(k.id(), "package:jq");
    let k = Kind::Directory(Directory {
        path: "/x".into(),
        owner: "root".into(),
        group: "root".into(),
        mode: "0755".into(),
        purge: false,
    });
    assert_eq!(k.id(), "directory:/x");
    let k = Kind::Symlink(Symlink {
        path: "/l".into(),
        target: "/t".into(),
        force: false,
    });
    assert_eq!(k.id(), "symlink:/l");
    let k = Kind::Group(Group {
        name: "g".into(),
        gid: None,
        system: false,
        present: true,
    });
    assert_eq!(k.id(), "group:g");
    let k = Kind::User(User {
        name: "u".into(),
        uid: None,
        home: None,
        shell: "/bin/sh".into(),
        groups: vec![],
        system: false,
        create_home: true,
        present: true,
    });
    assert_eq!(k.id(), "user:u");
    let k = Kind::Command(Command {
        name: "c".into(),
        run: "true".into(),
        creates: None,
        unless: None,
        due: None,
        sensitive: false,
    });
    assert_eq!(k.id(), "command:c");
    let k = Kind::Service(Service {
        name: "ssh.socket".into(),
        enabled: None,
        running: None,
        check: None,
        on_change: OnChange::Restart,
    });
    assert_eq!(k.id(), "service:ssh.socket");
}

#[test]
fn file_absent_and_missing_is_left_alone_when_only_other_modules_install_packages() {
    // Adding an unrelated package elsewhere must not plan removals (and reloads) here.
    let k = kind("type = 'file'\npath = '/etc/nginx/sites-enabled/default'\nstate = 'absent'");
    let mut predicted = Predicted::default();
    predicted.packages_installed.insert("htop".into());
    predicted.modules_installing.insert("base".into());
    predicted.module = "web".into();
    assert_eq!(k.plan(&HostFacts::default(), &predicted).unwrap(), None);
}

#[test]
fn purging_directory_removes_only_what_no_resource_declares() {
    let k = kind(
        r#"type = "directory"
path = "/etc/nginx/sites-enabled"
purge = true"#,
    );
    assert!(k.facts().iter().any(|q| matches!(q,
        kiln::facts::FactQuery::DirList { path } if path == "/etc/nginx/sites-enabled")));
    let mut facts = HostFacts::default();
    facts.paths.insert(
        "/etc/nginx/sites-enabled".into(),
        path_fact(PathKind::Directory, "root", "root", "0755"),
    );
    facts.dirs.insert(
        "/etc/nginx/sites-enabled".into(),
        Some(vec!["api.conf".into(), "default".into(), "old.conf".into()]),
    );
    let predicted = Predicted {
        managed_paths: ["/etc/nginx/sites-enabled/api.conf".to_string()]
            .into_iter()
            .collect(),
        ..Predicted::default()
    };
    let p = k.plan(&facts, &predicted).unwrap().expect("a purge");
    assert_eq!(p.action, Action::Update);
    assert_eq!(
        p.steps,
        vec![
            Step::RemovePath {
                path: "/etc/nginx/sites-enabled/default".into()
            },
            Step::RemovePath {
                path: "/etc/nginx/sites-enabled/old.conf".into()
            },
        ]
    );
    assert!(p.summary.contains("default, old.conf"), "{}", p.summary);

    // Everything declared: nothing to do.
    let all = Predicted {
        managed_paths: ["api.conf", "default", "old.conf"]
            .iter()
            .map(|n| format!("/etc/nginx/sites-enabled/{n}"))
            .collect(),
        ..Predicted::default()
    };
    assert_eq!(k.plan(&facts, &all).unwrap(), None);
    // Without purge the extra entries are left alone.
    let keep = kind(
        r#"type = "directory"
path = "/etc/nginx/sites-enabled""#,
    );
    assert_eq!(keep.plan(&facts, &predicted).unwrap(), None);
}

#[test]
fn a_name_kiln_cannot_carry_exactly_is_purged_on_the_host() {
    let k = kind(
        r#"type = "directory"
path = "/srv/media"
purge = true"#,
    );
    let mut facts = HostFacts::default();
    facts.paths.insert(
        "/srv/media".into(),
        path_fact(PathKind::Directory, "root", "root", "0755"),
    );
    // `caf\xe9.jpg` (Latin-1) arrives as `caf\u{FFFD}.jpg`: removing that path would
    // miss the file. The purge is decided by the host's glob against the kept names.
    facts.dirs.insert(
        "/srv/media".into(),
        Some(vec!["caf\u{FFFD}.jpg".into(), "keep.jpg".into()]),
    );
    let predicted = Predicted {
        managed_paths: ["/srv/media/keep.jpg".to_string()].into_iter().collect(),
        ..Predicted::default()
    };
    let p = k.plan(&facts, &predicted).unwrap().expect("a purge");
    assert_eq!(
        p.steps,
        vec![Step::PurgeDir {
            path: "/srv/media".into(),
            keep: vec!["keep.jpg".into()],
        }]
    );
}

#[test]
fn a_suite_without_lists_refreshes_them_before_installing() {
    let k = kind("type = \"package\"\nname = \"nginx\"");
    let b64 = |s: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    let sources = format!(
        "source list {} {}",
        b64("/etc/apt/sources.list"),
        b64("deb http://deb.debian.org/debian bookworm main\n\
             deb http://deb.debian.org/debian-security bookworm-security main\n")
    );
    let mut lines = vec![
        "now 1000".to_string(),
        "stamp 990".into(),
        "arch amd64".into(),
        "list 900 deb.debian.org_debian_dists_bookworm_InRelease".into(),
        "list 900 deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages".into(),
        sources,
    ];
    let parse = |lines: &[String]| {
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        kiln::facts::apt_lists::parse(&refs).unwrap()
    };
    let mut facts = HostFacts {
        apt_lists: Some(parse(&lines)),
        ..HostFacts::default()
    };
    let p = plan(&k, &facts).unwrap().expect("an install");
    assert_eq!(p.steps.first(), Some(&Step::AptUpdate), "{:?}", p.steps);
    assert_eq!(
        p.reason.as_deref(),
        Some("apt lists: bookworm-security never fetched: refreshed first")
    );
    lines.push("list 900 deb.debian.org_debian-security_dists_bookworm-security_InRelease".into());
    lines.push(
        "list 900 deb.debian.org_debian-security_dists_bookworm-security_main_binary-amd64_Packages.lz4"
            .into(),
    );
    facts.apt_lists = Some(parse(&lines));
    let p = plan(&k, &facts).unwrap().expect("an install");
    assert!(!p.steps.contains(&Step::AptUpdate), "{:?}", p.steps);
    assert_eq!(p.reason, None);
}

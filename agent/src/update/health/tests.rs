//! `update boot` against the fake node and a scripted probe: rollbacks noticed (or not)
//! across the UKI name states, trials passed, failed and timed, the checks chosen.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use kiln_contract::agent_config::HealthCheck;
use kiln_contract::boot::{Slot, STATE_DIR};
use kiln_enroll_proto::api::{ClusterJoin, EnrollAnswer, Network, NodeInfo, PeerList, Role};

use super::*;
use crate::preflight::Outcome;
use crate::sys::fake::FakeSys;
use crate::update::boot_fake::FakeBoot;
use crate::update::state::HealthFailure;

/// Answers each check from a script (the last answer repeats); unscripted: healthy.
#[derive(Default)]
struct FakeProbe {
    script: BTreeMap<HealthCheck, VecDeque<Result<String, String>>>,
    calls: Vec<HealthCheck>,
}

impl FakeProbe {
    fn answers(mut self, check: HealthCheck, answers: &[Result<&str, &str>]) -> FakeProbe {
        let list = answers
            .iter()
            .map(|a| a.map(str::to_string).map_err(str::to_string))
            .collect();
        self.script.insert(check, list);
        self
    }
}

impl Probe for FakeProbe {
    fn check(&mut self, check: HealthCheck) -> Result<String, String> {
        self.calls.push(check);
        match self.script.get_mut(&check) {
            Some(list) if list.len() > 1 => list.pop_front().unwrap_or(Ok(String::new())),
            Some(list) => list.front().cloned().unwrap_or(Ok(String::new())),
            None => Ok("fine".into()),
        }
    }
}

fn state(f: &mut FakeBoot) -> State {
    State::load(&mut **f, STATE_DIR).unwrap()
}

fn lines(f: &FakeBoot) -> Vec<&str> {
    f.lines.iter().map(String::as_str).collect()
}

/// Node B running 1.3.0 on trial as `file`, 1.2.0 in slot A.
fn trial_node(file: &str) -> FakeBoot {
    let mut f = FakeBoot::node(Slot::B, "1.3.0");
    f.files.remove("/efi/EFI/Linux/kiln-b.efi");
    f.add_uki(file, "1.3.0", Slot::B);
    f.add_uki("kiln-a.efi", "1.2.0", Slot::A);
    f.on_trial(file);
    f
}

#[test]
fn a_boot_not_on_trial_mounts_the_esp_and_passes() {
    let mut f = FakeBoot::node(Slot::A, "1.2.0");
    f.add_uki("kiln-b.efi", "1.1.0", Slot::B);
    let mut probe = FakeProbe::default();
    assert_eq!(boot(&mut f, &mut probe), 0);
    assert_eq!(
        lines(&f),
        ["kiln-update: running 1.2.0 from slot a; not on trial"]
    );
    assert!(
        f.mounts[0].starts_with("/dev/vda1 /efi vfat"),
        "{:?}",
        f.mounts
    );
    assert!(probe.calls.is_empty());
    assert!(f.writes.is_empty(), "no state written: {:?}", f.writes);
}

#[test]
fn a_rollback_is_said_once_with_the_failed_versions_own_reason() {
    let mut f = FakeBoot::node(Slot::A, "1.2.0");
    f.add_uki("kiln-b+0-3.efi", "1.3.0", Slot::B);
    let mut s = State::default();
    s.record_health_failure(
        "1.3.0",
        "preflight: sysctl: net.ipv4.ip_forward = 0 (needs 1)".into(),
        5,
    );
    s.trial_of("1.3.0", Slot::B, 1).attempt("boot-0");
    s.save(&mut *f, STATE_DIR).unwrap();
    assert_eq!(boot(&mut f, &mut FakeProbe::default()), 0);
    let want = "kiln-update: ROLLED BACK from 1.3.0 to 1.2.0: health check failed: preflight: \
                sysctl: net.ipv4.ip_forward = 0 (needs 1); 1.3.0 will not be applied again \
                automatically (kiln-agent update apply --force to retry)";
    assert_eq!(lines(&f)[0], want);
    let s = state(&mut f);
    assert_eq!(s.rejected.len(), 1);
    assert_eq!(s.rejected[0].version, "1.3.0");
    assert_eq!(s.rejected[0].when, f.now);
    assert!(s.rejected[0]
        .reason
        .starts_with("health check failed: preflight: sysctl"));
    assert_eq!(s.trial, None, "the failed trial is over");

    f.lines.clear();
    assert_eq!(boot(&mut f, &mut FakeProbe::default()), 0);
    assert!(!f.has_line("ROLLED BACK"), "{:?}", f.lines);
    assert_eq!(state(&mut f).rejected.len(), 1);
}

#[test]
fn a_rollback_without_a_recorded_failure_blames_the_boots() {
    let mut f = FakeBoot::node(Slot::A, "1.2.0");
    f.add_uki("kiln-b+0-2.efi", "1.3.0", Slot::B);
    assert_eq!(boot(&mut f, &mut FakeProbe::default()), 0);
    assert!(
        f.has_line(
            "ROLLED BACK from 1.3.0 to 1.2.0: did not reach a healthy state in 2 boots \
             (kernel panic, hang, or no root); 1.3.0 will not be applied again"
        ),
        "{:?}",
        f.lines
    );
    let s = state(&mut f);
    assert!(state::is_rejected(&s, &ImageVersion::parse("1.3.0").unwrap()).is_some());
}

#[test]
fn a_rollback_after_a_watchdog_reset_says_the_last_boot_hung() {
    // bootstatus is the watchdog(4) flag word in decimal: 32 is WDIOF_CARDRESET, and
    // other flags beside it (256 is WDIOF_KEEPALIVEPING) change nothing.
    for (bootstatus, hung) in [
        ("32\n", true),
        ("288\n", true),
        ("0\n", false),
        ("x", false),
    ] {
        let mut f = FakeBoot::node(Slot::A, "1.2.0");
        f.add_uki("kiln-b+0-1.efi", "1.3.0", Slot::B);
        f.base.files.insert(
            "/sys/class/watchdog/watchdog0/bootstatus".into(),
            bootstatus.as_bytes().to_vec(),
        );
        assert_eq!(boot(&mut f, &mut FakeProbe::default()), 0);
        let said = f.has_line(
            "ROLLED BACK from 1.3.0 to 1.2.0: did not reach a healthy state in 1 boot: the \
             last one hung and the hardware watchdog reset the machine",
        );
        assert_eq!(said, hung, "{bootstatus:?}: {:?}", f.lines);
    }
}

#[test]
fn no_rollback_is_seen_where_there_was_none() {
    let cases: [(&str, &str, Slot, &str); 5] = [
        ("kiln-b+0-3.efi", "1.1.0", Slot::B, "an older bad version"),
        (
            "kiln-b+0-0.efi",
            "1.3.0",
            Slot::B,
            "set aside untried by a downgrade",
        ),
        ("kiln-b+1-2.efi", "1.3.0", Slot::B, "still on trial"),
        ("kiln-b.efi", "1.3.0", Slot::B, "good"),
        (
            "kiln-a+0-3.efi",
            "1.3.0",
            Slot::A,
            "bad but the running slot's",
        ),
    ];
    for (file, version, slot, why) in cases {
        let mut f = FakeBoot::node(Slot::A, "1.2.0");
        f.add_uki(file, version, slot);
        assert_eq!(boot(&mut f, &mut FakeProbe::default()), 0, "{why}");
        assert!(!f.has_line("ROLLED BACK"), "{why}: {:?}", f.lines);
    }
    // Rejected already (by an earlier boot): nothing new.
    let mut f = FakeBoot::node(Slot::A, "1.2.0");
    f.add_uki("kiln-b+0-3.efi", "1.3.0", Slot::B);
    let mut s = State::default();
    s.reject(&ImageVersion::parse("1.3.0").unwrap(), "old".into(), 1);
    s.save(&mut *f, STATE_DIR).unwrap();
    f.writes.clear();
    boot(&mut f, &mut FakeProbe::default());
    assert!(!f.has_line("ROLLED BACK"));
    assert!(f.writes.is_empty());
}

#[test]
fn a_healthy_trial_is_marked_good() {
    let mut f = trial_node("kiln-b+2-1.efi");
    let mut probe = FakeProbe::default().answers(
        HealthCheck::Preflight,
        &[
            Err("containerd: no socket"),
            Err("containerd: no socket"),
            Ok("12 checks passed"),
        ],
    );
    assert_eq!(boot(&mut f, &mut probe), 0);
    assert_eq!(
        lines(&f),
        [
            "kiln-update: 1.3.0 is on trial (attempt 1 of 3): waiting up to 600 s for it to be \
             healthy: preflight",
            "kiln-update: 1.3.0 is healthy after 10 s; marking it good",
            "kiln-update: renamed /efi/EFI/Linux/kiln-b+2-1.efi to /efi/EFI/Linux/kiln-b.efi \
             (/usr/lib/systemd/systemd-bless-boot is not in the image)",
        ]
    );
    assert_eq!(f.slept, [POLL, POLL]);
    assert_eq!(state(&mut f).trial, None);
    assert!(f.uki_files().contains(&"kiln-b.efi".to_string()));

    // With systemd-bless-boot in the image, it does the renaming.
    let mut f = trial_node("kiln-b+2-1.efi");
    f.files.insert(BLESS_BOOT.into(), Vec::new());
    assert_eq!(boot(&mut f, &mut FakeProbe::default()), 0);
    assert!(f.renames.is_empty());
    assert!(f.has_line("1.3.0 is healthy after 0 s; marking it good"));
}

#[test]
fn an_unhealthy_trial_records_why_and_fails_to_reboot() {
    let mut f = trial_node("kiln-b+1-2.efi");
    f.files.insert(
        kiln_contract::agent_config::PATH.into(),
        b"[update]\nimage = \"qemu\"\nversion = \"1.3.0\"\nhealth_timeout_secs = 150\n\
          health = [\"preflight\", \"cluster\"]\n"
            .to_vec(),
    );
    let mut probe = FakeProbe::default().answers(
        HealthCheck::Cluster,
        &[Err("not joined: phase waiting-server")],
    );
    assert_eq!(boot(&mut f, &mut probe), 1);
    assert_eq!(f.elapsed, Duration::from_secs(150));
    let l = lines(&f);
    assert_eq!(
        l[0],
        "kiln-update: 1.3.0 is on trial (attempt 2 of 3): waiting up to 150 s for it to be \
         healthy: preflight, cluster"
    );
    assert_eq!(
        &l[1..3],
        [
            "kiln-update: waiting for health (60 s of 150 s): cluster: not joined: phase \
             waiting-server",
            "kiln-update: waiting for health (120 s of 150 s): cluster: not joined: phase \
             waiting-server",
        ]
    );
    assert_eq!(
        l[3],
        "kiln-update: 1.3.0 FAILED its health check: cluster: not joined: phase \
         waiting-server; rebooting (attempt 2 of 3)"
    );
    let s = state(&mut f);
    assert_eq!(
        s.last_health_failure("1.3.0").map(|h| h.reason.as_str()),
        Some("cluster: not joined: phase waiting-server")
    );
    let t = s.trial.unwrap();
    assert_eq!((t.version.as_str(), t.slot.as_str()), ("1.3.0", "b"));
    assert_eq!(t.attempts.len(), 1);
    assert_eq!(t.attempts[0].boot_id, "boot-1");
    assert_eq!(t.attempts[0].result, "failed");
    assert!(f.renames.is_empty(), "nothing marked good");

    // The last try says the node falls back; the next boot's attempt is its own.
    let mut f = trial_node("kiln-b+0-3.efi");
    f.files.insert(
        "/proc/sys/kernel/random/boot_id".into(),
        b"boot-2\n".to_vec(),
    );
    let mut s = State::default();
    s.trial_of("1.3.0", Slot::B, 7).attempt("boot-1").result = "failed".into();
    s.save(&mut *f, STATE_DIR).unwrap();
    let mut probe = FakeProbe::default().answers(HealthCheck::Preflight, &[Err("swap: on")]);
    assert_eq!(boot(&mut f, &mut probe), 1);
    assert!(f.has_line(
        "rebooting (attempt 3 of 3; that was its last try: systemd-boot falls back to the \
         previous version)"
    ));
    let t = state(&mut f).trial.unwrap();
    assert_eq!(t.started, 7);
    assert_eq!(t.attempts.len(), 2);
}

#[test]
fn a_boot_cut_short_during_its_check_stays_checking_in_the_trial() {
    // boot-1 hung while checking (its attempt still says so); boot-2 is healthy.
    let mut f = trial_node("kiln-b+1-2.efi");
    f.files.insert(
        "/proc/sys/kernel/random/boot_id".into(),
        b"boot-2\n".to_vec(),
    );
    let mut s = State::default();
    s.trial_of("1.3.0", Slot::B, 7).attempt("boot-1");
    s.save(&mut *f, STATE_DIR).unwrap();
    let mut probe = FakeProbe::default().answers(HealthCheck::Preflight, &[Err("x")]);
    f.files.insert(
        kiln_contract::agent_config::PATH.into(),
        b"[update]\nimage = \"q\"\nversion = \"1.3.0\"\nhealth_timeout_secs = 0\n".to_vec(),
    );
    assert_eq!(boot(&mut f, &mut probe), 1);
    let t = state(&mut f).trial.unwrap();
    let results: Vec<(&str, &str)> = t
        .attempts
        .iter()
        .map(|a| (a.boot_id.as_str(), a.result.as_str()))
        .collect();
    assert_eq!(results, [("boot-1", "checking"), ("boot-2", "failed")]);
    assert!(f.has_line("waiting up to 0 s"));
}

#[test]
fn errors_are_said_and_a_boot_not_on_trial_still_passes() {
    let mut f = FakeBoot::node(Slot::A, "1.2.0");
    f.devs.clear();
    f.files
        .insert(format!("{STATE_DIR}/state.json"), b"{broken".to_vec());
    assert_eq!(boot(&mut f, &mut FakeProbe::default()), 0);
    assert!(f.has_line("kiln-update: ERROR: finding the ESP: reading the partition table"));
    assert!(f.has_line("not the update state's JSON"));
    assert!(f.has_line("moved to /var/lib/kiln/update/state.json.damaged"));
    // The slot comes from systemd-boot's entry when the disk cannot be read.
    assert!(f.has_line("running 1.2.0 from slot a; not on trial"));
}

#[test]
fn the_checks_follow_the_image_and_the_node_config() {
    let mut s = ImageSettings::default();
    assert_eq!(health_checks(&s, false), [HealthCheck::Preflight]);
    assert_eq!(
        health_checks(&s, true),
        [HealthCheck::Preflight, HealthCheck::Overlay]
    );
    s.cluster = true;
    assert_eq!(
        health_checks(&s, true),
        [
            HealthCheck::Preflight,
            HealthCheck::Overlay,
            HealthCheck::Cluster
        ]
    );
    assert_eq!(health_timeout(&s), Duration::from_secs(600));
    s.update = Some(kiln_contract::agent_config::UpdateTable {
        image: "x".into(),
        version: "1".into(),
        tries: None,
        health_timeout_secs: Some(90),
        health: Some(vec![HealthCheck::Cluster]),
    });
    assert_eq!(health_checks(&s, true), [HealthCheck::Cluster]);
    assert_eq!(health_timeout(&s), Duration::from_secs(90));

    let mut f = FakeSys::default();
    assert!(!has_enroll_config(&mut f));
    f.files.insert(
        NODE_CONFIG.into(),
        b"[enroll]\nserver = \"https://e.example:8443\"\n".to_vec(),
    );
    assert!(has_enroll_config(&mut f));
    f.files
        .insert(NODE_CONFIG.into(), b"hostname = \"n\"\n".to_vec());
    assert!(!has_enroll_config(&mut f));
}

/// Preflight's view of a machine without containerd.
#[derive(Default)]
struct NoSocket {
    base: FakeSys,
}

crate::sys::forward!(NoSocket => base: Files, Clock, Console, Exec);
crate::sys::fake::fake_base!(NoSocket => base);

impl PreflightSys for NoSocket {
    fn connect(&mut self, path: &str) -> std::io::Result<Box<dyn preflight::Stream>> {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            path.to_string(),
        ))
    }
}

fn pass(_: &mut dyn PreflightSys) -> Outcome {
    Outcome::Pass("ok".into())
}
fn warn(_: &mut dyn PreflightSys) -> Outcome {
    Outcome::Warn("meh".into())
}
fn fail(_: &mut dyn PreflightSys) -> Outcome {
    Outcome::Fail("net.ipv4.ip_forward = 0 (needs 1)".into())
}

#[test]
fn preflight_fails_the_health_check_when_kiln_agent_preflight_would() {
    let mut f = NoSocket::default();
    let checks = [
        Check {
            name: "modules",
            run: pass,
        },
        Check {
            name: "var",
            run: warn,
        },
    ];
    assert_eq!(
        preflight_verdict(&mut f, &checks).unwrap(),
        "2 checks passed"
    );
    let checks = [
        Check {
            name: "modules",
            run: pass,
        },
        Check {
            name: "sysctl",
            run: fail,
        },
        Check {
            name: "swap",
            run: fail,
        },
    ];
    assert_eq!(
        preflight_verdict(&mut f, &checks).unwrap_err(),
        "sysctl: net.ipv4.ip_forward = 0 (needs 1); swap: net.ipv4.ip_forward = 0 (needs 1)"
    );
    // An overlay file that sets a sysctl preflight needs to something else fails the
    // real check the same way.
    f.files
        .insert("/proc/sys/net/ipv4/ip_forward".into(), b"0\n".to_vec());
    let real = preflight::CHECKS
        .iter()
        .find(|c| c.name == "sysctl")
        .copied()
        .unwrap();
    let why = preflight_verdict(&mut f, &[real]).unwrap_err();
    assert!(why.starts_with("sysctl: "), "{why}");
    assert!(why.contains("net.ipv4.ip_forward = 0 (needs 1)"), "{why}");
}

fn enrollment_json() -> Vec<u8> {
    let answer = EnrollAnswer {
        node: NodeInfo {
            name: "node-a".into(),
            address_v4: "10.77.0.2/16".parse().unwrap(),
            address_v6: "fd00:1:2::2/64".parse().unwrap(),
        },
        network: Network {
            pool_v4: "10.77.0.0/16".parse().unwrap(),
            pool_v6: "fd00:1:2::/64".parse().unwrap(),
            mtu: 1420,
            keepalive_secs: 25,
        },
        peers: PeerList {
            version: 1,
            peers: Vec::new(),
        },
        heartbeat_secs: 30,
        cluster: ClusterJoin {
            role: Role::Worker,
            labels: BTreeMap::new(),
            join: None,
        },
    };
    serde_json::to_vec(&crate::overlay::state::EnrollmentFile {
        version: 1,
        server: "https://e.example:8443".into(),
        ca_hash: "ab".repeat(32),
        answer,
    })
    .unwrap()
}

#[test]
fn the_overlay_is_up_when_enrolled_and_kiln0_runs() {
    let mut f = FakeSys::default();
    assert!(overlay_verdict(&mut f)
        .unwrap_err()
        .starts_with("not enrolled yet"));
    f.files
        .insert(crate::overlay::ENROLLMENT_PATH.into(), enrollment_json());
    assert!(overlay_verdict(&mut f)
        .unwrap_err()
        .contains("has not brought kiln0 up this boot"));
    f.files
        .insert(crate::overlay::STATUS_PATH.into(), b"{}".to_vec());
    assert_eq!(
        overlay_verdict(&mut f).unwrap_err(),
        "interface kiln0 does not exist"
    );
    f.dirs.insert(OVERLAY_IFACE.into());
    assert_eq!(overlay_verdict(&mut f).unwrap(), "kiln0 up as 10.77.0.2/16");
    f.files
        .insert(crate::overlay::ENROLLMENT_PATH.into(), b"{}".to_vec());
    assert!(overlay_verdict(&mut f).unwrap_err().contains("damaged"));
}

#[test]
fn the_cluster_is_healthy_once_joined() {
    let mut f = FakeSys::default();
    assert!(cluster_verdict(&mut f)
        .unwrap_err()
        .starts_with("kiln-cluster has not run this boot"));
    let status = |phase: Phase, err: Option<&str>| {
        serde_json::to_vec(&ClusterStatus {
            kind: Some("k3s".into()),
            role: Some("worker".into()),
            phase,
            last_error: err.map(str::to_string),
            next_retry_secs: None,
            since: 0,
        })
        .unwrap()
    };
    f.files.insert(
        CLUSTER_STATUS.into(),
        status(Phase::Failed, Some("refused")),
    );
    assert_eq!(
        cluster_verdict(&mut f).unwrap_err(),
        "not joined: phase failed (last error: refused)"
    );
    f.files
        .insert(CLUSTER_STATUS.into(), status(Phase::Joined, None));
    assert_eq!(cluster_verdict(&mut f).unwrap(), "joined (k3s)");
}

#[test]
fn a_failure_reason_outlives_later_failures_of_other_versions() {
    let mut s = State::default();
    s.record_health_failure("1.3.0", "preflight: a".into(), 1);
    s.health_failures.push(HealthFailure {
        version: "1.4.0".into(),
        reason: "b".into(),
        when: 2,
    });
    let r = Rollback {
        version: ImageVersion::parse("1.3.0").unwrap(),
        boots: 3,
    };
    assert_eq!(
        rollback_reason(&s, &r, true),
        "health check failed: preflight: a"
    );
}

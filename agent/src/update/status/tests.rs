//! `update status` against the fake node: each state of the other slot, a pending
//! update, the state file's history, and the JSON's stable shape.

use kiln_contract::boot::{Slot, STATE_DIR};
use kiln_contract::version::ImageVersion;

use super::*;
use crate::update::boot_fake::FakeBoot;
use crate::update::state::LastApply;

fn status_lines(f: &mut FakeBoot) -> Vec<String> {
    assert_eq!(status(f, false), 0);
    std::mem::take(&mut f.lines)
}

#[test]
fn says_each_state_of_the_other_slot() {
    let cases: [(Option<(&str, &str)>, &str); 5] = [
        (None, "other slot b: empty"),
        (
            Some(("kiln-b.efi", "1.1.0")),
            "other slot b: 1.1.0, good (kiln-b.efi)",
        ),
        (
            Some(("kiln-b+2-1.efi", "1.3.0")),
            "other slot b: 1.3.0, on trial: 2 of 3 tries left (kiln-b+2-1.efi)",
        ),
        (
            Some(("kiln-b+0-3.efi", "1.3.0")),
            "other slot b: 1.3.0, bad: systemd-boot gave up on it after 3 boots (kiln-b+0-3.efi)",
        ),
        (
            Some(("kiln-b+0-0.efi", "1.3.0")),
            "other slot b: 1.3.0, set aside by a downgrade (booted only when nothing else \
             boots) (kiln-b+0-0.efi)",
        ),
    ];
    for (uki, want) in cases {
        let mut f = FakeBoot::node(Slot::A, "1.2.0");
        if let Some((file, version)) = uki {
            f.add_uki(file, version, Slot::B);
        }
        let l = status_lines(&mut f);
        assert_eq!(l[0], "running: 1.2.0 in slot a (kiln-a.efi)");
        assert_eq!(l[1], want);
    }
}

#[test]
fn a_newer_version_on_trial_is_pending() {
    let mut f = FakeBoot::node(Slot::A, "1.2.0");
    f.add_uki("kiln-b+3.efi", "1.3.0", Slot::B);
    let l = status_lines(&mut f);
    assert_eq!(l[2], "pending: 1.3.0 in slot b boots at the next reboot");

    let mut f = FakeBoot::node(Slot::A, "1.2.0");
    f.add_uki("kiln-b+3.efi", "1.1.0", Slot::B);
    assert_eq!(
        status_lines(&mut f)[2],
        "pending: none",
        "older: never booted first"
    );
}

#[test]
fn a_boot_on_trial_says_so() {
    let mut f = FakeBoot::node(Slot::B, "1.3.0");
    f.files.remove("/efi/EFI/Linux/kiln-b.efi");
    f.add_uki("kiln-b+2-1.efi", "1.3.0", Slot::B);
    f.add_uki("kiln-a.efi", "1.2.0", Slot::A);
    f.on_trial("kiln-b+2-1.efi");
    let l = status_lines(&mut f);
    assert_eq!(
        l[..3],
        [
            "running: 1.3.0 in slot b (kiln-b+2-1.efi), on trial: not marked good yet",
            "other slot a: 1.2.0, good (kiln-a.efi)",
            "pending: none",
        ]
    );
}

#[test]
fn shows_the_history_and_stable_json() {
    let mut f = FakeBoot::node(Slot::A, "1.2.0");
    f.add_uki("kiln-b+0-3.efi", "1.3.0", Slot::B);
    let mut s = State {
        last_apply: Some(LastApply {
            version: "1.3.0".into(),
            from: "1.2.0".into(),
            when: 1_765_000_000,
        }),
        ..State::default()
    };
    s.record_health_failure("1.3.0", "preflight: swap: on".into(), 1_765_000_300);
    s.reject(
        &ImageVersion::parse("1.3.0").unwrap(),
        "health check failed: preflight: swap: on".into(),
        1_765_000_600,
    );
    s.save(&mut *f, STATE_DIR).unwrap();
    let l = status_lines(&mut f);
    assert_eq!(
        l[3..],
        [
            "last apply: 1.3.0 over 1.2.0 at 2025-12-06 05:46:40 UTC",
            "rejected: 1.3.0 at 2025-12-06 05:56:40 UTC: health check failed: preflight: swap: on",
            "last health failure: 1.3.0 at 2025-12-06 05:51:40 UTC: preflight: swap: on",
        ]
    );

    assert_eq!(status(&mut f, true), 0);
    let v: serde_json::Value = serde_json::from_str(&f.lines.join("\n")).unwrap();
    assert_eq!(v["schema"], 1);
    assert_eq!(v["running"]["version"], "1.2.0");
    assert_eq!(v["running"]["slot"], "a");
    assert_eq!(v["running"]["on_trial"], false);
    assert_eq!(v["other"]["slot"], "b");
    assert_eq!(v["other"]["state"], "bad");
    assert_eq!(v["other"]["version"], "1.3.0");
    assert_eq!(v["other"]["tries_left"], 0);
    assert_eq!(v["other"]["tries_done"], 3);
    assert_eq!(v["pending"], serde_json::Value::Null);
    assert_eq!(v["last_apply"]["from"], "1.2.0");
    assert_eq!(v["rejected"][0]["version"], "1.3.0");
    assert_eq!(v["last_health_failure"]["reason"], "preflight: swap: on");
    assert_eq!(v["trial"], serde_json::Value::Null);
    assert_eq!(v["errors"], serde_json::json!([]));
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    // serde_json's map sorts its keys.
    assert_eq!(
        keys,
        [
            "errors",
            "last_apply",
            "last_health_failure",
            "other",
            "pending",
            "rejected",
            "running",
            "schema",
            "trial",
        ]
    );
}

#[test]
fn a_single_slot_image_and_errors_are_reported_not_fatal() {
    let mut f = FakeBoot::node(Slot::A, "1.0");
    f.devs.clear();
    f.files.retain(|p, _| !p.contains("efivars"));
    f.files
        .insert(format!("{STATE_DIR}/state.json"), b"{broken".to_vec());
    let l = status_lines(&mut f);
    assert!(
        l[0].starts_with("running: 1.0 (slot unknown: a single-slot image"),
        "{l:?}"
    );
    assert!(
        l.iter().any(|l| l.starts_with("error: finding the ESP")),
        "{l:?}"
    );
    assert!(
        l.iter().any(|l| l.contains("not the update state's JSON")),
        "{l:?}"
    );
    // status never moves the state file aside.
    assert!(f.renames.is_empty());
}

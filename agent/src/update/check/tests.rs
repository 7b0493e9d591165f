//! Every decision of `update check`, against a fake machine with a fixed clock.

use std::collections::BTreeMap;

use kiln_contract::boot::KEYS_DIR;
use kiln_contract::channel::{encode, ChannelDoc};
use kiln_contract::signing::SecretKey;

use super::*;
use crate::sys::fake::FakeSys;
use crate::update::state::{LastApply, State};

/// 2027-01-15 08:00:00 UTC, a Friday.
const NOW: u64 = 1_800_000_000;
const CONFIG: &str = "/run/kiln/config.toml";
const URL: &str = "https://updates.example/c/homelab.channel.json";

struct Fake {
    sys: FakeSys,
    docs: BTreeMap<String, Result<Vec<u8>, String>>,
    fetched: Vec<String>,
    applied: Vec<ApplyOptions>,
    apply_code: u8,
}

crate::sys::forward!(Fake => sys: Files, Clock, Console);

impl CheckSys for Fake {
    fn fetch_document(&mut self, source: &str) -> Result<Vec<u8>, String> {
        self.fetched.push(source.to_string());
        self.docs
            .get(source)
            .cloned()
            .unwrap_or_else(|| Err(format!("cannot reach {source}")))
    }

    fn apply(&mut self, _paths: &Paths, opts: &ApplyOptions) -> u8 {
        self.applied.push(opts.clone());
        if self.apply_code == 0 {
            // What the real apply records.
            let mut s = State::load(&mut self.sys, &Paths::default().state_dir).unwrap();
            s.last_apply = Some(LastApply {
                version: "x".into(),
                from: "y".into(),
                when: NOW,
            });
            s.save(&mut self.sys, &Paths::default().state_dir).unwrap();
        }
        self.apply_code
    }
}

fn key() -> SecretKey {
    SecretKey::from_seed([0x61; 32])
}

fn doc(version: &str) -> ChannelDoc {
    ChannelDoc {
        image: "homelab".into(),
        arch: slot::running_arch().into(),
        version: version.into(),
        url: "homelab.update".into(),
        size: 1000,
        issued: NOW - 3600,
        expires: NOW + 7 * 86_400,
    }
}

fn fake(config: &str, offered: Option<ChannelDoc>) -> Fake {
    let paths = Paths::default();
    let mut sys = FakeSys::with_files([
        (CONFIG, config.as_bytes()),
        (
            paths.agent_toml.as_str(),
            b"[update]\nimage = \"homelab\"\nversion = \"1.4.0\"\n".as_slice(),
        ),
    ]);
    sys.files.insert(
        format!("{KEYS_DIR}/{}", key().public().id().file_name()),
        key().public().to_text().into_bytes(),
    );
    sys.now = NOW;
    let mut docs = BTreeMap::new();
    if let Some(d) = offered {
        docs.insert(
            URL.to_string(),
            Ok(encode(&d, &key()).unwrap().into_bytes()),
        );
    }
    Fake {
        sys,
        docs,
        fetched: Vec::new(),
        applied: Vec::new(),
        apply_code: 0,
    }
}

fn with_channel(extra: &str) -> String {
    format!("[update]\nchannel = \"{URL}\"\n{extra}")
}

fn check_now(f: &mut Fake, opts: &CheckOptions) -> Result<Outcome, CheckError> {
    check(f, &Paths::default(), CONFIG, opts)
}

fn state(f: &mut Fake) -> State {
    State::load(&mut f.sys, &Paths::default().state_dir).unwrap()
}

#[test]
fn without_a_channel_nothing_is_fetched_and_nothing_said_on_the_console() {
    for config in ["", "hostname = \"n\"\n"] {
        let mut f = fake(config, None);
        assert_eq!(
            run(&mut f, &Paths::default(), CONFIG, &CheckOptions::default()),
            0
        );
        assert!(f.fetched.is_empty());
        assert!(f.sys.lines.is_empty(), "{:?}", f.sys.lines);
        assert!(f.sys.notes[0].contains("no update channel configured"));
    }
    // No config file at all (kiln-config has not run): the same.
    let mut f = fake("", None);
    f.sys.files.remove(CONFIG);
    assert_eq!(
        check_now(&mut f, &CheckOptions::default()).unwrap(),
        Outcome::NotConfigured
    );
}

#[test]
fn a_newer_version_without_a_window_is_applied_and_rebooted_into() {
    let mut f = fake(&with_channel(""), Some(doc("1.5.0")));
    assert_eq!(
        run(&mut f, &Paths::default(), CONFIG, &CheckOptions::default()),
        0
    );
    assert_eq!(
        f.applied,
        [ApplyOptions {
            source: "https://updates.example/c/homelab.update".into(),
            reboot: true,
            allow_downgrade: false,
            force: false,
            tries: None,
        }]
    );
    assert!(f.sys.lines[0].starts_with(
        "kiln-update: applying 1.5.0 (running 1.4.0) from https://updates.example/c/homelab.update"
    ));
    let s = state(&mut f);
    let last = s.last_check.unwrap();
    assert_eq!((last.when, last.next), (NOW, NOW + 6 * 3600));
    assert!(s.last_apply.is_some(), "the apply's own record is kept");
}

#[test]
fn auto_reboot_off_applies_and_says_to_reboot() {
    let mut f = fake(&with_channel("auto_reboot = false\n"), Some(doc("1.5.0")));
    assert_eq!(
        run(&mut f, &Paths::default(), CONFIG, &CheckOptions::default()),
        0
    );
    assert!(!f.applied[0].reboot);
    assert!(f
        .sys
        .has_line("kiln-update: auto_reboot is off: reboot to start 1.5.0"));
}

#[test]
fn a_failed_apply_exits_with_its_status_and_is_retried_at_the_next_tick() {
    let mut f = fake(&with_channel(""), Some(doc("1.5.0")));
    f.apply_code = 1;
    assert_eq!(
        run(&mut f, &Paths::default(), CONFIG, &CheckOptions::default()),
        1
    );
    let last = state(&mut f).last_check.unwrap();
    assert_eq!(last.next, NOW);
    assert!(last.result.contains("failed"));
}

#[test]
fn an_equal_or_older_version_is_left_alone() {
    for (v, needle) in [
        (
            "1.4.0",
            "up to date: the channel offers 1.4.0, which this node runs",
        ),
        ("1.3.9", "offers 1.3.9, older than the running 1.4.0"),
    ] {
        let mut f = fake(&with_channel(""), Some(doc(v)));
        assert_eq!(
            run(&mut f, &Paths::default(), CONFIG, &CheckOptions::default()),
            0
        );
        assert!(f.applied.is_empty());
        assert!(f.sys.has_line(needle), "{:?}", f.sys.lines);
    }
}

#[test]
fn a_version_this_node_rolled_back_from_is_not_applied() {
    let mut f = fake(&with_channel(""), Some(doc("3.0.0")));
    let mut s = State::default();
    s.reject(
        &ImageVersion::parse("3.0.0").unwrap(),
        "health check failed: preflight".into(),
        NOW - 100,
    );
    s.save(&mut f.sys, &Paths::default().state_dir).unwrap();
    assert_eq!(
        run(&mut f, &Paths::default(), CONFIG, &CheckOptions::default()),
        0
    );
    assert!(f.applied.is_empty());
    assert!(
        f.sys.has_line(
            "kiln-update: 3.0.0 rolled back on this node (health check failed: preflight); \
             not applied automatically"
        ),
        "{:?}",
        f.sys.lines
    );
    assert!(f
        .sys
        .has_line("update apply --force https://updates.example/c/homelab.update"));
    // Not even with --now.
    let mut f2 = fake(&with_channel(""), Some(doc("3.0.0")));
    s.save(&mut f2.sys, &Paths::default().state_dir).unwrap();
    let now = CheckOptions {
        now: true,
        channel: None,
    };
    assert!(matches!(
        check_now(&mut f2, &now),
        Ok(Outcome::Rejected { .. })
    ));
}

#[test]
fn an_update_applied_already_waits_for_the_reboot() {
    let mut f = fake(&with_channel(""), Some(doc("1.5.0")));
    let s = State {
        last_apply: Some(LastApply {
            version: "1.5.0".into(),
            from: "1.4.0".into(),
            when: NOW - 10,
        }),
        ..State::default()
    };
    s.save(&mut f.sys, &Paths::default().state_dir).unwrap();
    assert_eq!(
        check_now(&mut f, &CheckOptions::default()).unwrap(),
        Outcome::Pending {
            version: "1.5.0".into()
        }
    );
    assert!(f.applied.is_empty());
}

#[test]
fn outside_the_window_it_waits_and_the_next_check_is_the_opening() {
    let mut f = fake(
        &with_channel("window = \"Sat 02:00-04:00\"\n"),
        Some(doc("1.5.0")),
    );
    assert_eq!(
        run(&mut f, &Paths::default(), CONFIG, &CheckOptions::default()),
        0
    );
    assert!(f.applied.is_empty());
    let opens = NOW + 18 * 3600;
    assert!(
        f.sys.has_line(
            "kiln-update: 1.5.0 is available (running 1.4.0); the maintenance window Sat \
             02:00-04:00 UTC opens at 2027-01-16 02:00:00 UTC: applying it then"
        ),
        "{:?}",
        f.sys.lines
    );
    assert_eq!(state(&mut f).last_check.unwrap().next, opens);

    // An hour later: not due, nothing fetched.
    f.sys.now = NOW + 3600;
    f.fetched.clear();
    assert!(matches!(
        check_now(&mut f, &CheckOptions::default()),
        Ok(Outcome::NotDue { next, .. }) if next == opens
    ));
    assert!(f.fetched.is_empty());

    // Inside the window (though check_every has not passed): applied.
    f.sys.now = opens + 1200;
    assert!(matches!(
        check_now(&mut f, &CheckOptions::default()),
        Ok(Outcome::Applied { code: 0, .. })
    ));
    assert_eq!(f.applied.len(), 1);
}

#[test]
fn now_applies_outside_the_window_and_inside_it_applies_anyway() {
    let config = with_channel("window = \"Sat 02:00-04:00\"\n");
    let mut f = fake(&config, Some(doc("1.5.0")));
    let now = CheckOptions {
        now: true,
        channel: None,
    };
    assert!(matches!(
        check_now(&mut f, &now),
        Ok(Outcome::Applied { .. })
    ));
    let mut f = fake(
        &with_channel("window = \"daily 07:00-09:00\"\n"),
        Some(doc("1.5.0")),
    );
    assert!(matches!(
        check_now(&mut f, &CheckOptions::default()),
        Ok(Outcome::Applied { .. })
    ));
}

#[test]
fn check_every_spaces_the_checks() {
    let mut f = fake(&with_channel("check_every = \"12h\"\n"), Some(doc("1.4.0")));
    assert!(matches!(
        check_now(&mut f, &CheckOptions::default()),
        Ok(Outcome::UpToDate { .. })
    ));
    f.sys.now = NOW + 11 * 3600;
    assert!(matches!(
        check_now(&mut f, &CheckOptions::default()),
        Ok(Outcome::NotDue { .. })
    ));
    let now = CheckOptions {
        now: true,
        channel: None,
    };
    assert!(matches!(
        check_now(&mut f, &now),
        Ok(Outcome::UpToDate { .. })
    ));
    f.sys.now = NOW + 11 * 3600 + 12 * 3600;
    assert!(matches!(
        check_now(&mut f, &CheckOptions::default()),
        Ok(Outcome::UpToDate { .. })
    ));
    assert_eq!(f.fetched.len(), 3);
    // A clock set back before the last check does not stop checks.
    f.sys.now = NOW - 86_400;
    assert!(!matches!(
        check_now(&mut f, &CheckOptions::default()),
        Ok(Outcome::NotDue { .. })
    ));
}

#[test]
fn refused_documents_are_errors_and_not_recorded() {
    let expired = {
        let mut d = doc("1.5.0");
        d.issued = NOW - 8 * 86_400;
        d.expires = NOW - 86_400;
        d
    };
    let mut other_arch = doc("1.5.0");
    other_arch.arch = if slot::running_arch() == "x86_64" {
        "arm64"
    } else {
        "x86_64"
    }
    .into();
    let mut other_image = doc("1.5.0");
    other_image.image = "k3s".into();
    for (d, needle) in [
        (expired, "the publisher must re-sign it"),
        (other_arch, "is the channel of arch"),
        (
            other_image,
            "is the channel of image \"k3s\", this node's image is \"homelab\"",
        ),
    ] {
        let mut f = fake(&with_channel(""), None);
        // encode has no clock: it signs an expired document, which the node refuses.
        let text = encode(&d, &key()).unwrap();
        f.docs.insert(URL.into(), Ok(text.into_bytes()));
        assert_eq!(
            run(&mut f, &Paths::default(), CONFIG, &CheckOptions::default()),
            1
        );
        assert!(
            f.sys.lines[0].starts_with("kiln-update: ERROR: "),
            "{:?}",
            f.sys.lines
        );
        assert!(f.sys.has_line(needle), "{needle}: {:?}", f.sys.lines);
        assert!(f.applied.is_empty());
        assert_eq!(state(&mut f).last_check, None);
    }
}

#[test]
fn a_bad_signature_an_unknown_key_and_an_unreachable_server_are_errors() {
    let mut f = fake(&with_channel(""), Some(doc("1.5.0")));
    let good = String::from_utf8(f.docs[URL].clone().unwrap()).unwrap();
    f.docs
        .insert(URL.into(), Ok(good.replace("1.5.0", "1.6.0").into_bytes()));
    assert_eq!(
        run(&mut f, &Paths::default(), CONFIG, &CheckOptions::default()),
        1
    );
    assert!(
        f.sys.has_line("signature does not verify"),
        "{:?}",
        f.sys.lines
    );

    let mut f = fake(&with_channel(""), None);
    let stranger = encode(&doc("1.5.0"), &SecretKey::from_seed([1; 32])).unwrap();
    f.docs.insert(URL.into(), Ok(stranger.into_bytes()));
    assert_eq!(
        run(&mut f, &Paths::default(), CONFIG, &CheckOptions::default()),
        1
    );
    assert!(f.sys.has_line("which this node does not trust"));

    let mut f = fake(&with_channel(""), None);
    assert_eq!(
        run(&mut f, &Paths::default(), CONFIG, &CheckOptions::default()),
        1
    );
    assert!(f
        .sys
        .has_line(&format!("kiln-update: ERROR: cannot reach {URL}")));

    // No keys in the image: said before anything is fetched.
    let mut f = fake(&with_channel(""), Some(doc("1.5.0")));
    f.sys.files.retain(|p, _| !p.starts_with(KEYS_DIR));
    assert_eq!(
        run(&mut f, &Paths::default(), CONFIG, &CheckOptions::default()),
        1
    );
    assert!(f.fetched.is_empty());
    assert!(f.sys.has_line("trusts no update keys"), "{:?}", f.sys.lines);
}

#[test]
fn the_channel_flag_overrides_the_config_and_resolves_paths() {
    let mut f = fake("", None);
    let text = encode(&doc("1.5.0"), &key()).unwrap();
    f.docs
        .insert("/var/tmp/c.json".into(), Ok(text.into_bytes()));
    let opts = CheckOptions {
        now: true,
        channel: Some("/var/tmp/c.json".into()),
    };
    assert!(matches!(
        check_now(&mut f, &opts),
        Ok(Outcome::Applied { .. })
    ));
    assert_eq!(f.applied[0].source, "/var/tmp/homelab.update");
}

#[test]
fn arguments_parse() {
    let a = |w: &[&str]| parse_args(&w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(a(&[]).unwrap(), CheckOptions::default());
    assert_eq!(
        a(&["--now", "--channel=http://h/c.json"]).unwrap(),
        CheckOptions {
            now: true,
            channel: Some("http://h/c.json".into())
        }
    );
    assert!(a(&["--channel"]).unwrap_err().contains("needs a value"));
    assert!(a(&["x"]).unwrap_err().contains("unknown argument"));
}

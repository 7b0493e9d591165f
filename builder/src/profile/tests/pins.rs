//! `[debian] extra_suites` and `[packages.from]`: parsing and every refusal.

use super::*;

/// MINIMAL on trixie for both arches, with containerd and runc from forky.
fn with_pins(extra_suites: &str, from: &str) -> String {
    MINIMAL
        .replace("arches = [\"amd64\"]", "arches = [\"amd64\", \"arm64\"]")
        .replace(
            "suites = [\"bookworm\"]",
            &format!("suites = [\"trixie\", \"trixie-security\"]\n{extra_suites}"),
        )
        .replace(
            "[kernel]",
            &format!(
                "[packages]\ninclude = [\"bash\", \"containerd\"]\n\
                 [packages.arch.arm64]\ninclude = [\"runc\"]\n[packages.from]\n{from}\n[kernel]"
            ),
        )
        .replace(
            "x86_64 = \"linux-image-amd64\"",
            "x86_64 = \"linux-image-amd64\"\narm64 = \"linux-image-arm64\"",
        )
}

const PINS: &str = "containerd = \"forky\"\nrunc = \"forky\"";

#[test]
fn packages_from_an_extra_suite_validate_and_apply_per_arch() {
    let p = parse(&with_pins("extra_suites = [\"forky\"]", PINS)).unwrap();
    assert_eq!(p.debian.suites, ["trixie", "trixie-security"]);
    assert_eq!(p.debian.extra_suites, ["forky"]);
    assert_eq!(
        p.packages.from,
        BTreeMap::from([
            ("containerd".to_string(), "forky".to_string()),
            ("runc".to_string(), "forky".to_string())
        ])
    );
    // runc is requested for arm64 only, so its pin applies there only.
    let pin = |n: &str| (n.to_string(), "forky".to_string());
    assert_eq!(p.pins_for(Arch::X86_64), [pin("containerd")]);
    assert_eq!(p.pins_for(Arch::Arm64), [pin("containerd"), pin("runc")]);
    assert!(
        p.resolution_inputs().ends_with(
            "extra_suites=[\"forky\"]\nfrom={\"containerd\": \"forky\", \"runc\": \"forky\"}\n"
        ),
        "{}",
        p.resolution_inputs()
    );
    // A pin changes the lock's inputs; no pins leave them as they always were.
    let moved = parse(&with_pins(
        "extra_suites = [\"forky\"]",
        "containerd = \"forky\"",
    ))
    .unwrap();
    assert_ne!(moved.resolution_inputs(), p.resolution_inputs());
    assert_eq!(
        parse(MINIMAL).unwrap().resolution_inputs(),
        "suites=[\"bookworm\"]\ncomponents=[\"main\"]\nessential=false\n\
         x86_64.packages=[]\nx86_64.kernel=Some(\"linux-image-amd64\")\nstub=systemd-boot-efi\n"
    );
    let none = parse(MINIMAL).unwrap();
    assert!(none.debian.extra_suites.is_empty() && none.packages.from.is_empty());
}

#[test]
fn bad_extra_suites_and_pins_name_the_field_the_value_and_the_fix() {
    let err = |extra: &str, from: &str| parse(&with_pins(extra, from)).unwrap_err().to_string();
    let forky = "extra_suites = [\"forky\"]";
    let e = err(forky, "containerd = \"sid\"\nrunc = \"forky\"");
    assert!(
        e.starts_with("test.toml: field `packages.from.containerd`: suite \"sid\" is not in [debian] extra_suites; add it there (extra_suites = [\"sid\"])"),
        "{e}"
    );
    let e = err(forky, "containerd = \"trixie-security\"\nrunc = \"forky\"");
    assert!(
        e.contains("field `packages.from.containerd`: \"trixie-security\" is a base suite")
            && e.contains("list that suite in [debian] extra_suites"),
        "{e}"
    );
    let e = err(
        forky,
        "containerd = \"forky\"\nrunc = \"forky\"\nctr = \"forky\"",
    );
    assert!(
        e.contains("field `packages.from.ctr`: ctr is not requested")
            && e.contains("add \"ctr\" to [packages] include"),
        "{e}"
    );
    let e = err("extra_suites = [\"forky\", \"sid\"]", PINS);
    assert!(
        e.contains("field `debian.extra_suites[1]`: no [packages.from] entry names \"sid\"")
            && e.contains("or remove it"),
        "{e}"
    );
    let e = err("extra_suites = [\"forky\"]", "");
    assert!(
        e.contains("`debian.extra_suites[0]`: no [packages.from] entry names \"forky\""),
        "{e}"
    );
    let e = err("extra_suites = [\"forky\", \"trixie\"]", PINS);
    assert!(
        e.contains("`debian.extra_suites[1]`: \"trixie\" is also in [debian] suites"),
        "{e}"
    );
    let e = err("extra_suites = [\"forky\", \"forky\"]", PINS);
    assert!(
        e.contains("`debian.extra_suites[1]`: \"forky\" is listed twice"),
        "{e}"
    );
    let e = err("extra_suites = [\"for ky\"]", PINS);
    assert!(e.contains("\"for ky\" is not a suite name"), "{e}");
    let e = err(forky, "Containerd = \"forky\"");
    assert!(
        e.contains("`packages.from.Containerd`: \"Containerd\" is not a Debian package name"),
        "{e}"
    );
    // A pin without any extra suite, and a typo in the key, are caught too.
    let e = err("", PINS);
    assert!(
        e.contains("suite \"forky\" is not in [debian] extra_suites"),
        "{e}"
    );
    let e = err("extra_suite = [\"forky\"]", PINS);
    assert!(e.contains("extra_suite"), "{e}");
    let e = err(forky, "containerd = 2");
    assert!(
        e.starts_with("test.toml: packages.from.containerd: invalid type: integer `2`")
            && e.contains("expected a string (line "),
        "{e}"
    );
}

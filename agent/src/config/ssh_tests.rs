//! `ssh_authorized_keys` through the config path: every channel's schema check, the
//! command line's one-word-per-key form, precedence, and the merged file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::ssh_key::tests::{ECDSA, ED25519, ED25519_FP};
use super::*;

fn keys_toml(lines: &[&str]) -> String {
    let quoted: Vec<String> = lines
        .iter()
        .map(|l| toml::Value::String((*l).to_string()).to_string())
        .collect();
    format!("ssh_authorized_keys = [{}]\n", quoted.join(", "))
}

#[test]
fn a_channel_with_keys_gives_them_checked() {
    let c = schema::parse_text(&format!(
        "hostname = \"n\"\n{}",
        keys_toml(&[ED25519, ECDSA])
    ))
    .unwrap();
    let keys = c.ssh_authorized_keys.clone().unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].fingerprint(), ED25519_FP);
    assert_eq!(c.summary(), "hostname=n ssh_authorized_keys=2");
    // An empty list is a setting (no key), unlike leaving the key out.
    let c = schema::parse_text("ssh_authorized_keys = []\n").unwrap();
    assert_eq!(c.ssh_authorized_keys, Some(Vec::new()));
    assert_eq!(schema::parse_text("").unwrap().ssh_authorized_keys, None);
}

#[test]
fn a_key_line_that_is_not_a_key_is_one_error_line_naming_channel_field_and_entry() {
    let text = format!(
        "hostname = \"n\"\n{}",
        keys_toml(&[ED25519, "ssh-ed25519 AAAA!"])
    );
    let f = Finding::parse("esp", "/dev/vda1:/kiln.toml", text.as_bytes());
    let lines = f.lines();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].starts_with(
            "kiln-config: ERROR: esp: /dev/vda1:/kiln.toml: ssh_authorized_keys[1]: \
             \"ssh-ed25519 AAAA!\": the key data is not base64"
        ),
        "{}",
        lines[0]
    );
    // Nothing from the channel is used, the good key and the hostname included; the
    // next channel's keys win instead.
    let next = Finding::parse(
        "cidata",
        "/dev/vdb:kiln.toml",
        keys_toml(&[ECDSA]).as_bytes(),
    );
    let m = merge(&[f, next]);
    assert_eq!(m.config.hostname, None);
    let keys = m.config.ssh_authorized_keys.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].kind, "ecdsa-sha2-nistp256");
    assert_eq!(m.sources["ssh_authorized_keys"].channel, "cidata");
}

#[test]
fn the_highest_channels_list_replaces_the_others() {
    let top = Finding::parse("esp", "e", keys_toml(&[ED25519]).as_bytes());
    let low = Finding::parse("fw_cfg", "f", keys_toml(&[ECDSA, ED25519]).as_bytes());
    let m = merge(&[top, low]);
    assert_eq!(m.config.ssh_authorized_keys.as_ref().unwrap().len(), 1);
    assert_eq!(m.sources["ssh_authorized_keys"].channel, "esp");
    // An empty list on top removes every key the lower channels give.
    let top = Finding::parse("esp", "e", b"ssh_authorized_keys = []\n");
    let low = Finding::parse("fw_cfg", "f", keys_toml(&[ECDSA]).as_bytes());
    let m = merge(&[top, low]);
    assert_eq!(m.config.ssh_authorized_keys, Some(Vec::new()));
}

#[test]
fn the_merged_file_lists_the_keys_and_reads_back() {
    let f = Finding::parse(
        "esp",
        "/dev/vda1:/kiln.toml",
        keys_toml(&[ED25519, ECDSA]).as_bytes(),
    );
    let m = merge(&[f]);
    let from = Source {
        channel: "machine-id",
        place: MACHINE_ID.to_string(),
    };
    let text = render(&m, "n", &from, Secrets::Reveal);
    assert!(
        text.contains("ssh_authorized_keys = [ # from esp: /dev/vda1:/kiln.toml\n"),
        "{text}"
    );
    let back = schema::parse_text(&text).unwrap();
    assert_eq!(back.ssh_authorized_keys, m.config.ssh_authorized_keys);
    // Without keys, the file has no such key at all.
    let text = render(&merge(&[]), "n", &from, Secrets::Reveal);
    assert!(!text.contains("ssh_authorized_keys"), "{text}");
}

#[test]
fn the_command_line_gives_one_key_per_word() {
    let line = format!(
        "quiet kiln.hostname=n kiln.ssh_authorized_keys=\"{ED25519}\" \
         kiln.ssh_authorized_keys=\"{ECDSA}\""
    );
    let table = cmdline::table(&line).unwrap().unwrap();
    let c = schema::from_table(table).unwrap();
    let keys = c.ssh_authorized_keys.unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].line(), ED25519);
    assert_eq!(keys[1].line(), ECDSA);
    let table = cmdline::table("kiln.ssh_authorized_keys=\"ssh-rsa nope\"")
        .unwrap()
        .unwrap();
    let errs = schema::from_table(table).unwrap_err();
    assert!(
        errs[0]
            .to_string()
            .starts_with("ssh_authorized_keys[0]: \"ssh-rsa nope\": "),
        "{}",
        errs[0]
    );
}

#[test]
fn unknown_keys_list_the_new_key() {
    let errs = schema::parse_text("ssh_keys = []\n").unwrap_err();
    assert!(
        errs[0].to_string().contains("ssh_authorized_keys"),
        "{}",
        errs[0]
    );
}

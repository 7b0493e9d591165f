use super::*;

const NOW: u64 = 1_800_000_000;

fn doc() -> ChannelDoc {
    ChannelDoc {
        image: "homelab".into(),
        arch: "x86_64".into(),
        version: "1.4.0".into(),
        url: "homelab-x86_64.update".into(),
        size: 123_456,
        issued: NOW - 60,
        expires: NOW + 7 * 86_400,
    }
}

fn key() -> SecretKey {
    SecretKey::from_seed([0x42; 32])
}

/// Signs `document` (any text) into an envelope, bypassing encode's checks.
fn seal(document: &str, key: &SecretKey) -> String {
    serde_json::to_string(&Envelope {
        format: FORMAT,
        key_id: key.public().id().to_string(),
        signature: base64::encode(&key.sign(&signed_message(document.as_bytes()))),
        document: document.to_string(),
    })
    .unwrap()
}

fn envelope(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}

#[test]
fn round_trips_with_the_signers_key() {
    let text = encode(&doc(), &key()).unwrap();
    assert!(text.ends_with('\n'));
    let v = envelope(&text);
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["document", "format", "key_id", "signature"]);
    assert_eq!(v["key_id"], key().public().id().to_string());
    let opened = open(
        &text,
        &[SecretKey::from_seed([1; 32]).public(), key().public()],
        NOW,
    )
    .unwrap();
    assert_eq!(opened.doc, doc());
    assert_eq!(opened.version, ImageVersion::parse("1.4.0").unwrap());
    assert_eq!(opened.key_id, key().public().id());
    // Deterministic: the same document and key give the same text.
    assert_eq!(encode(&doc(), &key()).unwrap(), text);
    // The document string is compact JSON in field order.
    assert!(v["document"]
        .as_str()
        .unwrap()
        .starts_with(r#"{"image":"homelab","arch":"x86_64","version":"1.4.0","url":"#));
}

#[test]
fn a_changed_byte_anywhere_in_the_document_is_caught() {
    let text = encode(&doc(), &key()).unwrap();
    let mut v = envelope(&text);
    let document = v["document"].as_str().unwrap().replace("1.4.0", "1.4.1");
    v["document"] = serde_json::Value::String(document);
    let err = open(&v.to_string(), &[key().public()], NOW).unwrap_err();
    assert_eq!(
        err,
        ChannelError::BadSignature {
            key_id: key().public().id()
        }
    );
    assert!(
        err.to_string().contains("sign and publish it again"),
        "{err}"
    );
    // And a flipped signature bit.
    let mut v = envelope(&text);
    let mut sig = base64::decode(v["signature"].as_str().unwrap()).unwrap();
    sig[3] ^= 1;
    v["signature"] = serde_json::Value::String(base64::encode(&sig));
    assert!(matches!(
        open(&v.to_string(), &[key().public()], NOW),
        Err(ChannelError::BadSignature { .. })
    ));
}

#[test]
fn the_signature_is_checked_before_the_document_is_parsed() {
    // Garbage signed by an untrusted key: refused for the key, never parsed.
    let other = SecretKey::from_seed([9; 32]);
    let text = seal("{not json", &other);
    let err = open(&text, &[key().public()], NOW).unwrap_err();
    assert!(matches!(err, ChannelError::UnknownKey { .. }), "{err}");
    assert!(
        err.to_string().contains(&key().public().id().to_string()),
        "{err}"
    );
    // Garbage with a bad signature from the trusted key's id.
    let mut v = envelope(&text);
    v["key_id"] = serde_json::Value::String(key().public().id().to_string());
    assert!(matches!(
        open(&v.to_string(), &[key().public()], NOW),
        Err(ChannelError::BadSignature { .. })
    ));
    // Signed garbage: now it is parsed, and refused as unreadable.
    let err = open(&seal("{not json", &key()), &[key().public()], NOW).unwrap_err();
    assert!(matches!(err, ChannelError::Document(_)), "{err}");
}

#[test]
fn unknown_fields_and_other_formats_are_refused() {
    let mut json = serde_json::to_value(doc()).unwrap();
    json["channel"] = serde_json::Value::String("beta".into());
    let err = open(&seal(&json.to_string(), &key()), &[key().public()], NOW).unwrap_err();
    assert!(
        matches!(&err, ChannelError::Document(m) if m.contains("channel")),
        "{err}"
    );

    let mut v = envelope(&encode(&doc(), &key()).unwrap());
    v["note"] = serde_json::Value::String("x".into());
    assert!(matches!(
        open(&v.to_string(), &[key().public()], NOW),
        Err(ChannelError::NotADocument(_))
    ));
    let mut v = envelope(&encode(&doc(), &key()).unwrap());
    v["format"] = 2.into();
    assert_eq!(
        open(&v.to_string(), &[key().public()], NOW),
        Err(ChannelError::Unsupported { found: 2 })
    );
    let mut v = envelope(&encode(&doc(), &key()).unwrap());
    v["key_id"] = "xyz".into();
    assert!(matches!(
        open(&v.to_string(), &[key().public()], NOW),
        Err(ChannelError::Malformed {
            field: "key_id",
            ..
        })
    ));
    let mut v = envelope(&encode(&doc(), &key()).unwrap());
    v["signature"] = "AAAA".into();
    assert!(matches!(
        open(&v.to_string(), &[key().public()], NOW),
        Err(ChannelError::Malformed {
            field: "signature",
            ..
        })
    ));
    assert!(matches!(
        open("<html>404</html>", &[key().public()], NOW),
        Err(ChannelError::NotADocument(_))
    ));
    let big = " ".repeat(MAX_TEXT + 1);
    assert_eq!(
        open(&big, &[key().public()], NOW),
        Err(ChannelError::TooLarge { len: MAX_TEXT + 1 })
    );
}

/// Signs `d` without encode's checks, so a reader's refusals can be tested.
fn signed(d: &ChannelDoc) -> String {
    seal(&d.to_json(), &key())
}

#[test]
fn bad_fields_are_refused_with_their_name() {
    type Change = fn(&mut ChannelDoc);
    let cases: [(&str, Change); 6] = [
        ("arch", |d| d.arch = "riscv64".into()),
        ("image", |d| d.image = String::new()),
        ("version", |d| d.version = "2.0-rc1".into()),
        ("url", |d| d.url = "ftp://h/x.update".into()),
        ("url", |d| d.url = "//h/x.update".into()),
        ("size", |d| d.size = 0),
    ];
    for (field, change) in cases {
        let mut d = doc();
        change(&mut d);
        let err = open(&signed(&d), &[key().public()], NOW).unwrap_err();
        assert!(
            matches!(&err, ChannelError::Invalid { field: f, .. } if *f == field),
            "{field}: {err}"
        );
        assert!(err
            .to_string()
            .starts_with(&format!("channel document field {field}: ")));
        assert!(encode(&d, &key()).is_err(), "encode signs no bad {field}");
    }
}

#[test]
fn times_are_checked() {
    let mut d = doc();
    d.expires = NOW;
    let err = open(&signed(&d), &[key().public()], NOW).unwrap_err();
    assert_eq!(
        err,
        ChannelError::Expired {
            expired_at: NOW,
            now: NOW
        }
    );
    let msg = err.to_string();
    assert!(msg.contains("must re-sign"), "{msg}");
    assert!(
        msg.contains("cannot be replayed and a frozen one is noticed"),
        "{msg}"
    );
    assert!(msg.contains("2027-01-15 08:00:00 UTC"), "{msg}");

    let mut d = doc();
    d.issued = NOW + CLOCK_SKEW + 1;
    d.expires = NOW + 86_400;
    assert!(matches!(
        open(&signed(&d), &[key().public()], NOW),
        Err(ChannelError::NotYetIssued { .. })
    ));
    d.issued = NOW + CLOCK_SKEW;
    assert!(
        open(&signed(&d), &[key().public()], NOW).is_ok(),
        "within the skew"
    );

    let mut d = doc();
    d.issued = NOW - 10;
    d.expires = d.issued + MAX_VALIDITY + 1;
    let err = open(&signed(&d), &[key().public()], NOW).unwrap_err();
    assert!(matches!(err, ChannelError::Validity { .. }), "{err}");
    assert!(encode(&d, &key()).is_err());
    d.expires = d.issued + MAX_VALIDITY;
    assert!(open(&signed(&d), &[key().public()], NOW).is_ok());
    d.expires = d.issued;
    assert!(matches!(
        encode(&d, &key()),
        Err(ChannelError::Validity { .. })
    ));
}

#[test]
fn relative_urls_resolve_against_the_documents_url() {
    let base = "https://h.example:8443/updates/homelab-x86_64.channel.json?x=1";
    assert_eq!(
        resolve_url(base, "homelab-x86_64.update"),
        "https://h.example:8443/updates/homelab-x86_64.update"
    );
    assert_eq!(
        resolve_url(base, "v2/a.update"),
        "https://h.example:8443/updates/v2/a.update"
    );
    assert_eq!(
        resolve_url(base, "/b.update"),
        "https://h.example:8443/b.update"
    );
    assert_eq!(resolve_url(base, "http://o/c.update"), "http://o/c.update");
    assert_eq!(resolve_url("http://h", "a.update"), "http://h/a.update");
    assert_eq!(
        resolve_url("/srv/c/x.channel.json", "a.update"),
        "/srv/c/a.update"
    );
    assert_eq!(resolve_url("x.channel.json", "a.update"), "a.update");
    assert!(check_url("a b.update").is_err());
    assert!(check_url("https:///x").is_err());
    assert!(check_url("HTTPS://h/x").is_ok());
}

#[test]
fn durations_parse_and_print() {
    assert_eq!(parse_duration("7d"), Some(7 * 86_400));
    assert_eq!(parse_duration("6h"), Some(6 * 3600));
    assert_eq!(parse_duration("10min"), Some(600));
    assert_eq!(parse_duration("10m"), Some(600));
    assert_eq!(parse_duration("90s"), Some(90));
    for bad in [
        "",
        "h",
        "6",
        "6 hours",
        "-1h",
        "06h",
        "1.5h",
        "99999999999999999999d",
    ] {
        assert_eq!(parse_duration(bad), None, "{bad:?}");
    }
    assert_eq!(format_duration(6 * 3600), "6h");
    assert_eq!(format_duration(600), "10min");
    assert_eq!(format_duration(86_400 * 7), "7d");
    assert_eq!(format_duration(61), "61s");
}

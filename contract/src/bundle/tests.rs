use super::*;

fn key(n: u8) -> SecretKey {
    SecretKey::from_seed([n; 32])
}

fn hex64(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn facts() -> BundleFacts {
    BundleFacts {
        image: "homelab".into(),
        arch: "x86_64".into(),
        version: "2026.5.1".into(),
        root_hash: hex64(0xab),
        kiln_version: "0.1.0".into(),
        lock_digest: hex64(0x01),
    }
}

fn parts(sizes: [u64; 3]) -> [PartDigest; 3] {
    [0, 1, 2].map(|i| PartDigest {
        size: sizes[i],
        sha256: hex64(i as u8 + 0x10),
    })
}

fn manifest() -> BundleManifest {
    plan(facts(), parts([10 << 20, 90_000, 5000])).unwrap()
}

#[test]
fn plan_lays_parts_out_aligned_after_the_header() {
    let m = manifest();
    assert_eq!(m.header_size, 4096);
    let offsets: Vec<u64> = m.parts.iter().map(|p| p.offset).collect();
    // 10 MiB is aligned; 90 000 rounds up to 90 112.
    assert_eq!(
        offsets,
        [4096, 4096 + (10 << 20), 4096 + (10 << 20) + 90_112]
    );
    assert_eq!(total_size(&m), 4096 + (10 << 20) + 90_112 + 5000);
    assert_eq!(m.part(PartKind::Uki).unwrap().size, 5000);
    let json = String::from_utf8(m.to_json()).unwrap();
    assert!(
        json.starts_with(r#"{"format":1,"image":"homelab","arch":"x86_64","version":"2026.5.1""#),
        "{json}"
    );
    assert!(
        json.contains(r#"{"kind":"root-verity","offset":"#),
        "{json}"
    );
    assert!(!json.contains(' '), "{json}");
}

#[test]
fn a_long_manifest_gets_a_larger_header_and_offsets_to_match() {
    let mut f = facts();
    f.image = "n".repeat(4050);
    let m = plan(f, parts([1, 2, 3])).unwrap();
    assert_eq!(m.header_size, 8192);
    assert_eq!(m.parts[0].offset, 8192);
    let header = encode_header(&m, &key(1)).unwrap();
    assert_eq!(header.len(), 8192);
    let v = open_header(&header, &[key(1).public()]).unwrap();
    assert_eq!(v.header_size, 8192);
    let mut f = facts();
    f.image = "n".repeat(MAX_MANIFEST as usize);
    assert!(matches!(
        plan(f, parts([1, 2, 3])),
        Err(BundleError::Invalid { .. })
    ));
}

#[test]
fn round_trip_is_deterministic_and_verifies() {
    let m = manifest();
    let k = key(7);
    let header = encode_header(&m, &k).unwrap();
    assert_eq!(header, encode_header(&m, &k).unwrap());
    assert_eq!(header.len(), 4096);
    assert_eq!(&header[..8], b"KILNUPD1");
    assert_eq!(header_len_needed(&header[..16]).unwrap(), 4096);
    // More bytes than the header (the start of the parts) are fine.
    let mut longer = header.clone();
    longer.extend_from_slice(&[0xff; 100]);
    let v = open_header(&longer, &[key(3).public(), k.public()]).unwrap();
    assert_eq!(v.manifest, m);
    assert_eq!(v.key_id, k.public().id());
    assert_eq!(v.version, ImageVersion::parse("2026.5.1").unwrap());
    assert_eq!(v.header_size, 4096);
    // The signature is over the domain and the manifest, checkable with the key alone.
    let len = u32_at(&header, 12) as usize;
    let mut sig = [0u8; 64];
    sig.copy_from_slice(&header[24..88]);
    assert!(k
        .public()
        .verify(&signed_message(&header[88..88 + len]), &sig));
    assert!(!k.public().verify(&header[88..88 + len], &sig));
}

#[test]
fn every_header_byte_flipped_is_refused() {
    let k = key(9);
    let trusted = [k.public()];
    let header = encode_header(&manifest(), &k).unwrap();
    for i in 0..header.len() {
        for bit in [0x01, 0x80] {
            let mut bad = header.clone();
            bad[i] ^= bit;
            let got = open_header(&bad, &trusted);
            assert!(got.is_err(), "byte {i} ^ {bit:#x} accepted");
        }
    }
}

#[test]
fn truncated_headers_are_refused_as_truncated() {
    let header = encode_header(&manifest(), &key(1)).unwrap();
    let trusted = [key(1).public()];
    for n in [0, 5, 8, 15] {
        assert_eq!(
            header_len_needed(&header[..n]),
            Err(BundleError::Truncated { have: n, need: 16 }),
            "{n}"
        );
    }
    for n in [16, 88, 500, 4095] {
        assert_eq!(
            open_header(&header[..n], &trusted),
            Err(BundleError::Truncated {
                have: n,
                need: 4096
            }),
            "{n}"
        );
    }
    let msg = BundleError::Truncated {
        have: 16,
        need: 4096,
    }
    .to_string();
    assert!(msg.contains("truncated"), "{msg}");
}

#[test]
fn other_files_and_formats_are_named() {
    let mut header = encode_header(&manifest(), &key(1)).unwrap();
    assert_eq!(
        header_len_needed(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0"),
        Err(BundleError::NotABundle)
    );
    assert_eq!(header_len_needed(b"KILX"), Err(BundleError::NotABundle));
    header[7] = b'2';
    assert_eq!(
        open_header(&header, &[key(1).public()]),
        Err(BundleError::Unsupported { found: '2' })
    );
}

#[test]
fn absurd_sizes_are_refused_before_reading_further() {
    let base = encode_header(&manifest(), &key(1)).unwrap();
    let with = |header_size: u32, manifest_len: u32| {
        let mut h = base[..16].to_vec();
        put_u32(&mut h, 8, header_size);
        put_u32(&mut h, 12, manifest_len);
        header_len_needed(&h)
    };
    for hs in [0, 100, 4097, MAX_HEADER as u32 + 4096, u32::MAX] {
        assert_eq!(
            with(hs, 10),
            Err(BundleError::BadHeaderSize { header_size: hs })
        );
    }
    assert_eq!(with(MAX_HEADER as u32, MAX_MANIFEST), Ok(MAX_HEADER));
    for (hs, ml) in [
        (4096, 0),
        (4096, 4096 - 87),
        (MAX_HEADER as u32, MAX_MANIFEST + 1),
    ] {
        assert_eq!(
            with(hs, ml),
            Err(BundleError::BadManifestLen {
                manifest_len: ml,
                header_size: hs
            })
        );
    }
}

#[test]
fn an_untrusted_key_is_named_with_the_trusted_ones() {
    let header = encode_header(&manifest(), &key(5)).unwrap();
    let trusted = [key(1).public(), key(2).public()];
    let err = open_header(&header, &trusted).unwrap_err();
    assert_eq!(
        err,
        BundleError::UnknownKey {
            key_id: key(5).public().id(),
            trusted: vec![key(1).public().id(), key(2).public().id()],
        }
    );
    let msg = err.to_string();
    for k in [5, 1, 2] {
        assert!(msg.contains(&key(k).public().id().to_string()), "{msg}");
    }
    assert!(!msg.contains('\n'), "{msg}");
    let none = open_header(&header, &[]).unwrap_err().to_string();
    assert!(none.contains("trusts: no key at all"), "{none}");
}

#[test]
fn a_tampered_manifest_fails_the_signature_before_it_is_parsed() {
    let k = key(4);
    let trusted = [k.public()];
    let m = manifest();
    let header = encode_header(&m, &k).unwrap();
    // A different version of the same length, keeping the old signature.
    let json = String::from_utf8(m.to_json()).unwrap();
    let forged = json.replace("2026.5.1", "2026.5.2");
    let mut bad = header.clone();
    bad[88..88 + forged.len()].copy_from_slice(forged.as_bytes());
    assert_eq!(
        open_header(&bad, &trusted),
        Err(BundleError::BadSignature {
            key_id: k.public().id()
        })
    );
    // Not even JSON: still the signature error, and an untrusted signer's garbage is
    // refused for its key, so neither reaches the parser.
    let garbage = seal(b"{{{{ not json", &key(99), 4096);
    let mut resigned = garbage.clone();
    resigned[16..24].copy_from_slice(&k.public().id().0);
    assert_eq!(
        open_header(&resigned, &trusted),
        Err(BundleError::BadSignature {
            key_id: k.public().id()
        })
    );
    assert!(matches!(
        open_header(&garbage, &trusted),
        Err(BundleError::UnknownKey { .. })
    ));
    // Signed by the trusted key but not a manifest: refused after the signature.
    let signed_garbage = seal(b"{{{{ not json", &k, 4096);
    assert!(matches!(
        open_header(&signed_garbage, &trusted),
        Err(BundleError::Manifest(_))
    ));
    let unknown_field = json.replacen("{", r#"{"extra":1,"#, 1);
    assert!(matches!(
        open_header(&seal(unknown_field.as_bytes(), &k, 4096), &trusted),
        Err(BundleError::Manifest(_))
    ));
}

/// A change to a manifest.
type Edit = dyn FnOnce(&mut BundleManifest);

/// A header signed by a trusted key around a manifest `edit` spoiled: a writer's bug or
/// a trusted signer's mistake, which the checks after the signature must still catch.
fn signed_with(edit: impl FnOnce(&mut BundleManifest)) -> Result<VerifiedHeader, BundleError> {
    let k = key(6);
    let mut m = manifest();
    edit(&mut m);
    open_header(&seal(&m.to_json(), &k, 4096), &[k.public()])
}

fn field_of(r: Result<VerifiedHeader, BundleError>) -> String {
    match r {
        Err(BundleError::Invalid { field, .. }) => field,
        other => panic!("expected an invalid field, got {other:?}"),
    }
}

#[test]
fn manifest_fields_are_checked_after_the_signature() {
    assert!(signed_with(|_| {}).is_ok());
    let cases: Vec<(&str, Box<Edit>)> = vec![
        ("format", Box::new(|m| m.format = 2)),
        ("image", Box::new(|m| m.image.clear())),
        ("arch", Box::new(|m| m.arch = "riscv64".into())),
        ("version", Box::new(|m| m.version = "2.0-rc1".into())),
        (
            "root_hash",
            Box::new(|m| m.root_hash = m.root_hash.to_uppercase()),
        ),
        (
            "root_hash",
            Box::new(|m| {
                m.root_hash.pop();
            }),
        ),
        (
            "lock_digest",
            Box::new(|m| m.lock_digest = "sha256:00".into()),
        ),
        ("kiln_version", Box::new(|m| m.kiln_version.clear())),
        // Consistent in itself, but not the size the header's field gives.
        (
            "header_size",
            Box::new(|m| {
                m.header_size = 8192;
                m.parts.iter_mut().for_each(|p| p.offset += 4096);
            }),
        ),
        ("header_size", Box::new(|m| m.header_size = 4000)),
        (
            "parts[2].sha256",
            Box::new(|m| m.parts[2].sha256 = "00".into()),
        ),
    ];
    for (want, edit) in cases {
        assert_eq!(field_of(signed_with(edit)), want);
    }
    let err = signed_with(|m| m.version = "2.0-rc1".into()).unwrap_err();
    assert!(err.to_string().contains("2.0~rc1"), "{err}");
}

#[test]
fn parts_must_be_in_order_aligned_and_apart() {
    let order = field_of(signed_with(|m| m.parts.swap(1, 2)));
    assert_eq!(order, "parts");
    assert_eq!(
        field_of(signed_with(|m| {
            m.parts.pop();
        })),
        "parts"
    );
    assert_eq!(
        field_of(signed_with(|m| {
            let extra = m.parts[2].clone();
            m.parts.push(extra);
        })),
        "parts"
    );
    assert_eq!(
        field_of(signed_with(|m| m.parts[1].offset += 512)),
        "parts[1].offset"
    );
    // Inside the header.
    assert_eq!(
        field_of(signed_with(|m| m.parts[0].offset = 0)),
        "parts[0].offset"
    );
    // Overlapping the part before: the uki moved back onto the verity part's last block.
    assert_eq!(
        field_of(signed_with(|m| m.parts[2].offset -= 8192)),
        "parts[2].offset"
    );
    assert_eq!(
        field_of(signed_with(|m| m.parts[1].size = 0)),
        "parts[1].size"
    );
    assert_eq!(
        field_of(signed_with(|m| m.parts[2].size = u64::MAX)),
        "parts[2].size"
    );
    // Gaps are allowed (only order, alignment and overlap are the format's rules).
    let gap = signed_with(|m| m.parts[2].offset += 4096).unwrap();
    assert_eq!(
        total_size(&gap.manifest),
        gap.manifest.parts[2].offset + 5000
    );
}

#[test]
fn padding_must_be_zero() {
    let k = key(2);
    let mut header = encode_header(&manifest(), &k).unwrap();
    header[4095] = 1;
    assert_eq!(
        open_header(&header, &[k.public()]),
        Err(BundleError::NonZeroPadding { offset: 4095 })
    );
}

#[test]
fn encode_refuses_what_a_reader_would_refuse() {
    let mut m = manifest();
    m.arch = "amd64".into();
    assert!(matches!(
        encode_header(&m, &key(1)),
        Err(BundleError::Invalid { .. })
    ));
    let mut f = facts();
    f.version = "v1".into();
    assert!(plan(f, parts([1, 2, 3])).is_err());
    assert!(plan(facts(), parts([1, 0, 3])).is_err());
}

//! Reading archives, and the messages the import sends.

use super::{blob_path, busybox, header, tar, REF};
use crate::grpc::proto::{self, Message, Value};
use crate::images::archive::{self, ArchiveError};
use crate::images::containerd as api;

#[test]
fn an_archive_reads_into_its_checked_image() {
    let p = busybox();
    let bytes = p.archive();
    let image = archive::read(&bytes, REF).unwrap();
    assert_eq!(image.target.digest, archive::sha256(&p.manifest));
    assert_eq!(image.target.size, p.manifest.len() as u64);
    assert_eq!(image.target.media_type, archive::MEDIA_MANIFEST);
    assert_eq!(
        image.target.annotations.get("io.containerd.image.name"),
        Some(&REF.to_string())
    );
    assert_eq!(image.manifest.data, &p.manifest[..]);
    assert_eq!(image.config.data, &p.config[..]);
    assert_eq!(image.layers.len(), 1);
    assert_eq!(image.layers[0].data, b"layer bytes");
    // Layers and config first, the manifest last.
    let order: Vec<&[u8]> = image.blobs().iter().map(|b| b.data).collect();
    assert_eq!(order, [&p.layer[..], &p.config[..], &p.manifest[..]]);
    // The only manifest is taken whatever it is named.
    assert!(archive::read(&bytes, "other/name:1").is_ok());
}

#[test]
fn tar_names_come_from_gnu_long_names_pax_paths_and_ustar_prefixes() {
    let long = format!("blobs/{}", "d".repeat(120));
    let mut bytes = header("././@LongLink", long.len() + 1, b'L');
    bytes.extend(long.as_bytes());
    bytes.push(0);
    bytes.resize(bytes.len().div_ceil(512) * 512, 0);
    bytes.extend(header("short", 1, b'0'));
    bytes.extend([b'a']);
    bytes.resize(bytes.len().div_ceil(512) * 512, 0);
    let pax = b"20 path=pax/x/y.json\n";
    bytes.extend(header("PaxHeaders/x", pax.len(), b'x'));
    bytes.extend(pax);
    bytes.resize(bytes.len().div_ceil(512) * 512, 0);
    bytes.extend(header("ignored", 1, b'0'));
    bytes.extend([b'b']);
    bytes.resize(bytes.len().div_ceil(512) * 512, 0);
    // POSIX ustar: prefix + name; and a ./ prefix dropped.
    let mut h = header("name.txt", 1, b'0');
    h[257..265].copy_from_slice(b"ustar\x0000");
    h[345..350].copy_from_slice(b"./pre");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    bytes.extend(h);
    bytes.extend([b'c']);
    bytes.resize(bytes.len().div_ceil(512) * 512, 0);
    // A folder and a symlink are not files.
    bytes.extend(header("dir/", 0, b'5'));
    bytes.extend(header("link", 0, b'2'));
    // No end blocks: tolerated.
    let files = archive::tar_files(&bytes).unwrap();
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(names, [long.as_str(), "pax/x/y.json", "pre/name.txt"]);
    assert_eq!(files["pax/x/y.json"], b"b");
}

#[test]
fn broken_tar_archives_are_named() {
    let err = archive::read(b"not a tar file", REF).unwrap_err();
    assert_eq!(
        err.to_string(),
        "not a valid tar archive: 14 bytes left at byte 0, less than a 512-byte header"
    );
    let mut bytes = busybox().archive();
    bytes[0] ^= 1;
    let err = archive::read(&bytes, REF).unwrap_err().to_string();
    assert!(
        err.starts_with("not a valid tar archive: header at byte 0: checksum"),
        "{err}"
    );
    let bytes = busybox().archive();
    // The layer's 11 bytes start at 1024 (after the folder's and its own header).
    let err = archive::read(&bytes[..1030], REF).unwrap_err().to_string();
    assert!(err.contains("the archive ends first"), "{err}");
}

#[test]
fn a_corrupted_blob_a_wrong_size_and_a_missing_blob_are_named() {
    let p = busybox();
    // A layer whose bytes changed but whose name did not.
    let bad = tar(&[
        (&blob_path(&p.layer), b"layer bytez"),
        (&blob_path(&p.config), &p.config),
        (&blob_path(&p.manifest), &p.manifest),
        ("index.json", &p.index),
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
    ]);
    match archive::read(&bad, REF).unwrap_err() {
        ArchiveError::BlobDigest { path, actual } => {
            assert_eq!(path, blob_path(&p.layer));
            assert_eq!(actual, archive::sha256(b"layer bytez"));
        }
        e => panic!("{e}"),
    }
    // A manifest that says the layer is longer than it is.
    let manifest = String::from_utf8(p.manifest.clone())
        .unwrap()
        .replace(r#""size":11"#, r#""size":12"#)
        .into_bytes();
    let index = String::from_utf8(p.index.clone())
        .unwrap()
        .replace(&archive::sha256(&p.manifest), &archive::sha256(&manifest))
        .replace(
            &format!(r#""size":{}"#, p.manifest.len()),
            &format!(r#""size":{}"#, manifest.len()),
        );
    let sized = tar(&[
        (&blob_path(&p.layer), &p.layer),
        (&blob_path(&p.config), &p.config),
        (&blob_path(&manifest), &manifest),
        ("index.json", index.as_bytes()),
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
    ]);
    assert_eq!(
        archive::read(&sized, REF).unwrap_err().to_string(),
        format!(
            "blob {} has 11 bytes, its descriptor says 12",
            archive::sha256(&p.layer)
        )
    );
    // The config left out.
    let missing = tar(&[
        (&blob_path(&p.layer), &p.layer),
        (&blob_path(&p.manifest), &p.manifest),
        ("index.json", &p.index),
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
    ]);
    assert_eq!(
        archive::read(&missing, REF).unwrap_err(),
        ArchiveError::BlobMissing(archive::sha256(&p.config))
    );
}

#[test]
fn layouts_without_their_files_or_a_named_manifest_are_refused() {
    let p = busybox();
    let no_index = tar(&[("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)]);
    assert_eq!(
        archive::read(&no_index, REF).unwrap_err(),
        ArchiveError::Missing("index.json")
    );
    let no_layout = tar(&[("index.json", &p.index)]);
    assert_eq!(
        archive::read(&no_layout, REF).unwrap_err().to_string(),
        "no oci-layout in the archive (not an OCI image layout)"
    );
    let v2 = tar(&[("oci-layout", br#"{"imageLayoutVersion":"2.0.0"}"#)]);
    assert_eq!(
        archive::read(&v2, REF).unwrap_err(),
        ArchiveError::LayoutVersion("2.0.0".into())
    );
    let bad_json = tar(&[
        ("index.json", b"{"),
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
    ]);
    assert!(archive::read(&bad_json, REF)
        .unwrap_err()
        .to_string()
        .starts_with("index.json: EOF"));
    // Two manifests, neither named REF.
    let two = String::from_utf8(p.index.clone()).unwrap();
    let entry = &two[two.find("[{").unwrap() + 1..two.rfind("}]").unwrap() + 1];
    let two = two
        .replace(entry, &format!("{entry},{entry}"))
        .replace(REF, "x/y:1");
    let bytes = tar(&[
        ("index.json", two.as_bytes()),
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
    ]);
    assert_eq!(
        archive::read(&bytes, REF).unwrap_err().to_string(),
        format!(
            "index.json has 2 manifests and none is named \"{REF}\" (annotation \
             io.containerd.image.name)"
        )
    );
    // A nested index is not an image manifest.
    let nested = String::from_utf8(p.index.clone()).unwrap().replace(
        archive::MEDIA_MANIFEST,
        "application/vnd.oci.image.index.v1+json",
    );
    let bytes = tar(&[
        ("index.json", nested.as_bytes()),
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
    ]);
    assert!(matches!(
        archive::read(&bytes, REF).unwrap_err(),
        ArchiveError::MediaType { .. }
    ));
    assert_eq!(
        archive::sha256_hex("sha256:ABC").unwrap_err().to_string(),
        "digest \"sha256:ABC\" is not sha256: and 64 hex digits"
    );
}

fn desc() -> archive::Descriptor {
    archive::read(&busybox().archive(), REF).unwrap().target
}

#[test]
fn the_requests_decode_back_to_what_containerd_reads() {
    let d = desc();
    // WriteContentRequest: action COMMIT, ref, total, expected, offset = size.
    let r = api::commit_request("kiln-images-x", &d);
    let f = proto::fields(&r).unwrap();
    assert_eq!(proto::varint_field(&f, 1), 2);
    assert_eq!(proto::string_field(&f, 2), "kiln-images-x");
    assert_eq!(proto::varint_field(&f, 3), d.size);
    assert_eq!(proto::string_field(&f, 4), d.digest);
    assert_eq!(proto::varint_field(&f, 5), d.size);
    assert!(proto::bytes_field(&f, 6).is_none(), "no data");

    // UpdateRequest: info { digest, labels }, update_mask { paths }.
    let labels = vec![
        (
            "containerd.io/gc.ref.content.config".to_string(),
            "sha256:c".to_string(),
        ),
        (
            "containerd.io/gc.ref.content.l.0".to_string(),
            "sha256:l".to_string(),
        ),
    ];
    let r = api::labels_request("sha256:m", &labels);
    let f = proto::fields(&r).unwrap();
    let info = proto::fields(proto::bytes_field(&f, 1).unwrap()).unwrap();
    assert_eq!(proto::string_field(&info, 1), "sha256:m");
    assert_eq!(proto::map_field(&info, 5).unwrap(), labels);
    let mask = proto::fields(proto::bytes_field(&f, 2).unwrap()).unwrap();
    let paths: Vec<String> = mask
        .iter()
        .map(|(n, v)| match v {
            Value::Bytes(b) if *n == 1 => String::from_utf8(b.to_vec()).unwrap(),
            _ => panic!("{n}"),
        })
        .collect();
    assert_eq!(
        paths,
        [
            "labels.containerd.io/gc.ref.content.config",
            "labels.containerd.io/gc.ref.content.l.0"
        ]
    );

    // CreateImageRequest: image { name, target { media_type, digest, size, annotations } }.
    for (r, mask) in [
        (api::create_image_request(REF, &d), None),
        (api::update_image_request(REF, &d), Some("target")),
    ] {
        let f = proto::fields(&r).unwrap();
        let image = proto::fields(proto::bytes_field(&f, 1).unwrap()).unwrap();
        assert_eq!(proto::string_field(&image, 1), REF);
        let target = proto::fields(proto::bytes_field(&image, 3).unwrap()).unwrap();
        assert_eq!(proto::string_field(&target, 1), archive::MEDIA_MANIFEST);
        assert_eq!(proto::string_field(&target, 2), d.digest);
        assert_eq!(proto::varint_field(&target, 3), d.size);
        assert_eq!(
            proto::map_field(&target, 5).unwrap(),
            [
                ("io.containerd.image.name".to_string(), REF.to_string()),
                (
                    "org.opencontainers.image.ref.name".to_string(),
                    "1.37".to_string()
                )
            ]
        );
        let got =
            proto::bytes_field(&f, 2).map(|m| proto::string_field(&proto::fields(m).unwrap(), 1));
        assert_eq!(got.as_deref(), mask);
    }

    // Leases: Create { labels }, its answer { lease { id } }, Delete { id }.
    let r = api::create_lease_request("2023-11-14T23:13:20Z");
    let f = proto::fields(&r).unwrap();
    assert_eq!(proto::string_field(&f, 1), "");
    assert_eq!(
        proto::map_field(&f, 3).unwrap(),
        [(
            "containerd.io/gc.expire".to_string(),
            "2023-11-14T23:13:20Z".to_string()
        )]
    );
    let answer = Message::new()
        .message(1, &Message::new().string(1, "abc").varint(2, 1))
        .into_bytes();
    assert_eq!(api::lease_id(&answer).unwrap(), "abc");
    assert!(api::lease_id(&[]).is_err());
    let r = api::delete_lease_request("abc");
    assert_eq!(proto::string_field(&proto::fields(&r).unwrap(), 1), "abc");
    let r = api::abort_request("kiln-images-x");
    assert_eq!(
        proto::string_field(&proto::fields(&r).unwrap(), 1),
        "kiln-images-x"
    );

    let resp = Message::new()
        .varint(1, 2)
        .varint(4, 11)
        .varint(5, 11)
        .string(6, "sha256:x")
        .into_bytes();
    assert_eq!(
        api::WriteResponse::decode(&resp).unwrap(),
        api::WriteResponse {
            action: 2,
            offset: 11,
            digest: "sha256:x".into()
        }
    );
}

//! The import and the list against a fake containerd.

use std::collections::{BTreeMap, BTreeSet};

use super::{busybox, parts, Parts, REF};
use crate::grpc::cri::{self, CriImage};
use crate::grpc::proto::{self, Message};
use crate::grpc::CallError;
use crate::images::archive;
use crate::images::containerd::{self as api, ALREADY_EXISTS, OUT_OF_RANGE};
use crate::images::import::{self, Options, CONTENT_BLOBS};
use crate::images::{list, list_lines, ImagesSys};
use crate::sys::fake::{fake_base, FakeSys};
use crate::sys::forward;

const ROOT: &str = "/var/lib/containerd";
const SOCKET: &str = "/run/containerd/containerd.sock";

/// The machine with a containerd that follows the rules `images import` relies on.
#[derive(Default)]
struct FakeImages {
    base: FakeSys,
    /// Every call: `path` and its metadata as `name=value` pairs.
    calls: Vec<(String, Vec<String>)>,
    /// The namespace's blobs and their labels.
    content: BTreeMap<String, BTreeMap<String, String>>,
    /// Images and their targets' digests.
    images: BTreeMap<String, String>,
    /// Live leases, and the blobs each holds.
    leases: BTreeMap<String, BTreeSet<String>>,
    leases_made: usize,
    /// The content sharing policy "isolated".
    isolated: bool,
    /// Blob files the garbage collector removes before the next commit of theirs.
    collect_once: BTreeSet<String>,
    /// Paths whose calls fail.
    fail: BTreeMap<String, CallError>,
    /// CRI's images.
    cri: Vec<CriImage>,
}

fake_base!(FakeImages => base);
forward!(FakeImages => base: Files, Clock, Console);

fn grpc_error(code: u32, message: &str) -> CallError {
    CallError::Grpc {
        code,
        message: message.into(),
    }
}

impl FakeImages {
    fn blob_file(digest: &str) -> String {
        format!("{ROOT}/{CONTENT_BLOBS}/{}", &digest[7..])
    }

    fn write(&mut self, req: &[u8], lease: Option<&str>) -> Result<Vec<Vec<u8>>, CallError> {
        let f = proto::fields(req).unwrap();
        assert_eq!(proto::varint_field(&f, 1), 2, "COMMIT");
        assert!(!proto::string_field(&f, 2).is_empty(), "a ref");
        let (total, expected, offset) = (
            proto::varint_field(&f, 3),
            proto::string_field(&f, 4),
            proto::varint_field(&f, 5),
        );
        if self.content.contains_key(&expected) {
            return Err(grpc_error(ALREADY_EXISTS, "content exists"));
        }
        let file = Self::blob_file(&expected);
        if self.collect_once.remove(&file) {
            self.base.files.remove(&file);
        }
        let in_store = self
            .base
            .files
            .get(&file)
            .is_some_and(|b| b.len() as u64 == total);
        // The writer a shared store opens stands at the blob's size; a new one at 0.
        let at = if in_store && !self.isolated { total } else { 0 };
        if offset != at {
            return Err(grpc_error(
                OUT_OF_RANGE,
                &format!("write @{offset} must occur at current offset {at}"),
            ));
        }
        self.content.insert(expected.clone(), BTreeMap::new());
        if let Some(l) = lease {
            self.leases.get_mut(l).unwrap().insert(expected.clone());
        }
        let resp = Message::new()
            .varint(1, 2)
            .varint(4, total)
            .varint(5, total)
            .string(6, &expected)
            .into_bytes();
        Ok(vec![resp.clone(), resp])
    }
}

impl ImagesSys for FakeImages {
    fn grpc(
        &mut self,
        socket: &str,
        path: &str,
        metadata: &[(&str, &str)],
        req: &[u8],
    ) -> Result<Vec<Vec<u8>>, CallError> {
        assert_eq!(socket, SOCKET);
        let md: Vec<String> = metadata.iter().map(|(n, v)| format!("{n}={v}")).collect();
        self.calls.push((path.to_string(), md));
        if let Some(e) = self.fail.remove(path) {
            return Err(e);
        }
        let lease = metadata
            .iter()
            .find(|(n, _)| *n == api::LEASE_HEADER)
            .map(|(_, v)| v.to_string());
        if path != cri::LIST_IMAGES_PATH {
            assert_eq!(metadata[0], (api::NAMESPACE_HEADER, "k8s.io"));
        }
        let f = proto::fields(req).unwrap();
        let one = |m: Message| Ok(vec![m.into_bytes()]);
        match path {
            api::CREATE_LEASE_PATH => {
                self.leases_made += 1;
                let id = format!("lease-{}", self.leases_made);
                self.leases.insert(id.clone(), BTreeSet::new());
                one(Message::new().message(1, &Message::new().string(1, &id)))
            }
            api::DELETE_LEASE_PATH => {
                self.leases.remove(&proto::string_field(&f, 1)).unwrap();
                one(Message::new())
            }
            api::WRITE_PATH => self.write(req, lease.as_deref()),
            api::ABORT_PATH => one(Message::new()),
            api::UPDATE_CONTENT_PATH => {
                let info = proto::fields(proto::bytes_field(&f, 1).unwrap()).unwrap();
                let digest = proto::string_field(&info, 1);
                let Some(labels) = self.content.get_mut(&digest) else {
                    return Err(grpc_error(5, "content digest not found"));
                };
                labels.extend(proto::map_field(&info, 5).unwrap());
                one(Message::new())
            }
            api::CREATE_IMAGE_PATH | api::UPDATE_IMAGE_PATH => {
                let image = proto::fields(proto::bytes_field(&f, 1).unwrap()).unwrap();
                let name = proto::string_field(&image, 1);
                let target = proto::fields(proto::bytes_field(&image, 3).unwrap()).unwrap();
                let digest = proto::string_field(&target, 2);
                let exists = self.images.contains_key(&name);
                if path == api::CREATE_IMAGE_PATH && exists {
                    return Err(grpc_error(ALREADY_EXISTS, "image exists"));
                }
                if path == api::UPDATE_IMAGE_PATH && !exists {
                    return Err(grpc_error(5, "image not found"));
                }
                self.images.insert(name, digest);
                one(Message::new())
            }
            cri::LIST_IMAGES_PATH => {
                let mut m = Message::new();
                for i in &self.cri {
                    let mut image = Message::new().string(1, &i.id).varint(4, i.size);
                    for t in &i.repo_tags {
                        image = image.repeated_string(2, t);
                    }
                    m = m.message(1, &image);
                }
                one(m)
            }
            p => panic!("unexpected call {p}"),
        }
    }
}

fn options() -> Options {
    Options {
        list: "/usr/share/kiln/images/images.list".into(),
        socket: SOCKET.into(),
        root: ROOT.into(),
        namespace: "k8s.io".into(),
    }
}

/// A machine with the busybox archive and a broken one listed.
fn node() -> (FakeImages, Parts) {
    let p = busybox();
    let mut sys = FakeImages::default();
    sys.files.insert(
        "/usr/share/kiln/images/images.list".into(),
        format!("broken.oci.tar localhost/kiln/broken:1\n\nbusybox.oci.tar {REF}\n").into_bytes(),
    );
    sys.files.insert(
        "/usr/share/kiln/images/broken.oci.tar".into(),
        b"not a tar file".to_vec(),
    );
    sys.files
        .insert("/usr/share/kiln/images/busybox.oci.tar".into(), p.archive());
    (sys, p)
}

#[test]
fn import_puts_the_blobs_in_the_store_and_the_image_in_the_namespace() {
    let (mut sys, p) = node();
    assert_eq!(import::run(&mut sys, &options()), 1);
    assert_eq!(
        sys.lines,
        [
            "kiln-images: ERROR: localhost/kiln/broken:1: /usr/share/kiln/images/broken.oci.tar: \
             not a valid tar archive: 14 bytes left at byte 0, less than a 512-byte header"
                .to_string(),
            format!("kiln-images: imported {REF}"),
        ]
    );
    // The blobs, read-only in containerd's content store folder, manifest last.
    let want: Vec<String> = [&p.layer, &p.config, &p.manifest]
        .iter()
        .map(|b| format!("{} 444", FakeImages::blob_file(&archive::sha256(b))))
        .collect();
    assert_eq!(sys.writes, want);
    assert_eq!(
        sys.files[&FakeImages::blob_file(&archive::sha256(&p.layer))],
        p.layer
    );
    assert!(sys.dirs.contains(&format!("{ROOT}/{CONTENT_BLOBS}")));
    // The calls: a lease, three commits under it, the labels, the image, the lease gone.
    let paths: Vec<&str> = sys.calls.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            api::CREATE_LEASE_PATH,
            api::WRITE_PATH,
            api::WRITE_PATH,
            api::WRITE_PATH,
            api::UPDATE_CONTENT_PATH,
            api::CREATE_IMAGE_PATH,
            api::DELETE_LEASE_PATH,
        ]
    );
    assert_eq!(sys.calls[0].1, ["containerd-namespace=k8s.io"]);
    assert_eq!(sys.calls[6].1, ["containerd-namespace=k8s.io"]);
    for (_, md) in &sys.calls[1..6] {
        assert_eq!(
            md,
            &["containerd-namespace=k8s.io", "containerd-lease=lease-1"]
        );
    }
    assert!(sys.leases.is_empty());
    assert_eq!(sys.images[REF], archive::sha256(&p.manifest));
    let labels = &sys.content[&archive::sha256(&p.manifest)];
    assert_eq!(
        labels.get("containerd.io/gc.ref.content.config"),
        Some(&archive::sha256(&p.config))
    );
    assert_eq!(
        labels.get("containerd.io/gc.ref.content.l.0"),
        Some(&archive::sha256(&p.layer))
    );
    assert_eq!(sys.content.len(), 3);
}

#[test]
fn the_next_boot_imports_again_without_writing_and_updates_the_image() {
    let (mut sys, p) = node();
    import::run(&mut sys, &options());
    let writes = sys.writes.len();
    sys.lines.clear();
    sys.calls.clear();
    assert_eq!(
        import::run(&mut sys, &options()),
        1,
        "the broken one still fails"
    );
    assert_eq!(sys.lines[1], format!("kiln-images: imported {REF}"));
    assert_eq!(
        sys.writes.len(),
        writes,
        "blobs that are there are left alone"
    );
    let paths: Vec<&str> = sys.calls.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            api::CREATE_LEASE_PATH,
            api::WRITE_PATH,
            api::WRITE_PATH,
            api::WRITE_PATH,
            api::UPDATE_CONTENT_PATH,
            api::CREATE_IMAGE_PATH,
            api::UPDATE_IMAGE_PATH,
            api::DELETE_LEASE_PATH,
        ]
    );
    assert_eq!(sys.images.len(), 1);
    assert_eq!(sys.images[REF], archive::sha256(&p.manifest));

    // A new archive under the same name: the image follows it, a damaged blob in the
    // store is replaced.
    let q = parts(REF, b"new layer");
    sys.files
        .insert("/usr/share/kiln/images/busybox.oci.tar".into(), q.archive());
    let config_file = FakeImages::blob_file(&archive::sha256(&q.config));
    sys.files.insert(config_file.clone(), b"damaged".to_vec());
    sys.lines.clear();
    import::run(&mut sys, &options());
    assert_eq!(sys.lines[1], format!("kiln-images: imported {REF}"));
    assert_eq!(sys.images[REF], archive::sha256(&q.manifest));
    assert_eq!(sys.files[&config_file], q.config);
}

#[test]
fn temporary_files_an_interrupted_write_left_are_removed() {
    let (mut sys, _) = node();
    let dir = format!("{ROOT}/{CONTENT_BLOBS}");
    let leftover = format!("{dir}/.{}.tmp", "a".repeat(64));
    let other = format!("{dir}/.notes.tmp");
    sys.files.insert(leftover.clone(), b"half a blob".to_vec());
    sys.files.insert(other.clone(), b"someone else's".to_vec());
    import::run(&mut sys, &options());
    assert!(!sys.files.contains_key(&leftover));
    assert!(sys.files.contains_key(&other));
}

#[test]
fn a_blob_the_garbage_collector_took_is_put_back() {
    let (mut sys, p) = node();
    let layer = FakeImages::blob_file(&archive::sha256(&p.layer));
    sys.collect_once.insert(layer.clone());
    assert_eq!(import::run(&mut sys, &options()), 1);
    assert_eq!(sys.lines[1], format!("kiln-images: imported {REF}"));
    assert_eq!(
        sys.writes.iter().filter(|w| w.starts_with(&layer)).count(),
        2
    );
    assert!(sys.calls.iter().any(|(p, _)| p == api::ABORT_PATH));
    assert!(sys.content.contains_key(&archive::sha256(&p.layer)));
}

#[test]
fn an_isolated_containerd_and_failing_calls_are_reported_per_image() {
    let (mut sys, p) = node();
    sys.isolated = true;
    assert_eq!(import::run(&mut sys, &options()), 1);
    assert_eq!(
        sys.lines[1],
        format!(
            "kiln-images: ERROR: {REF}: containerd did not take {} from its content store \
             ({}): is its content_sharing_policy \"isolated\"? The import needs \"shared\", \
             the default",
            archive::sha256(&p.layer),
            FakeImages::blob_file(&archive::sha256(&p.layer))
        )
    );
    // The lease is deleted whatever happened.
    assert!(sys.leases.is_empty());

    let (mut sys, _) = node();
    sys.fail.insert(
        api::CREATE_LEASE_PATH.into(),
        CallError::Io(
            "connecting",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ),
    );
    assert_eq!(import::run(&mut sys, &options()), 1);
    assert_eq!(
        sys.lines[1],
        format!(
            "kiln-images: ERROR: {REF}: containerd ({SOCKET}): creating a lease: connecting: \
             entity not found"
        )
    );

    let (mut sys, _) = node();
    sys.fail.insert(
        api::CREATE_IMAGE_PATH.into(),
        grpc_error(3, "image name must not be empty"),
    );
    sys.fail.insert(
        api::DELETE_LEASE_PATH.into(),
        grpc_error(14, "connection reset"),
    );
    assert_eq!(import::run(&mut sys, &options()), 1);
    assert_eq!(
        sys.lines[1],
        format!(
            "kiln-images: ERROR: {REF}: containerd ({SOCKET}): creating image {REF}: \
             grpc-status 3 INVALID_ARGUMENT: image name must not be empty"
        )
    );
    assert_eq!(sys.notes.len(), 1, "{:?}", sys.notes);
    assert!(
        sys.notes[0].contains("deleting lease lease-1"),
        "{:?}",
        sys.notes
    );
}

#[test]
fn a_missing_list_or_archive_and_a_line_without_a_reference_are_errors() {
    let mut sys = FakeImages::default();
    assert_eq!(import::run(&mut sys, &options()), 1);
    assert_eq!(
        sys.lines,
        ["kiln-images: ERROR: /usr/share/kiln/images/images.list: entity not found"]
    );
    let mut sys = FakeImages::default();
    sys.files.insert(
        "/usr/share/kiln/images/images.list".into(),
        b"gone.oci.tar localhost/kiln/gone:1\nlonely.oci.tar\n".to_vec(),
    );
    assert_eq!(import::run(&mut sys, &options()), 1);
    assert_eq!(
        sys.lines,
        [
            "kiln-images: ERROR: localhost/kiln/gone:1: /usr/share/kiln/images/gone.oci.tar: \
             entity not found",
            "kiln-images: ERROR: lonely.oci.tar: no reference after the file name in \
             /usr/share/kiln/images/images.list",
        ]
    );
    assert!(sys.calls.is_empty());
}

#[test]
fn list_prints_each_name_the_cri_knows() {
    let images = [
        CriImage {
            id: "sha256:b".into(),
            repo_tags: vec!["z/b:1".into(), "a/b:1".into()],
            size: 20,
            ..CriImage::default()
        },
        CriImage {
            id: "sha256:c".into(),
            size: 5,
            ..CriImage::default()
        },
    ];
    assert_eq!(
        list_lines(&images),
        [
            "<none> sha256:c 5",
            "a/b:1 sha256:b 20",
            "z/b:1 sha256:b 20"
        ]
    );
    let mut sys = FakeImages {
        cri: images.to_vec(),
        ..FakeImages::default()
    };
    assert_eq!(list(&mut sys, SOCKET), 0);
    assert_eq!(sys.lines.len(), 3);
    assert_eq!(sys.calls[0], (cri::LIST_IMAGES_PATH.to_string(), vec![]));
    sys.fail.insert(
        cri::LIST_IMAGES_PATH.into(),
        grpc_error(12, "unknown service runtime.v1.ImageService"),
    );
    assert_eq!(list(&mut sys, SOCKET), 1);
    assert_eq!(
        sys.notes,
        [format!(
            "kiln-agent images list: CRI ListImages on {SOCKET}: grpc-status 12 \
             UNIMPLEMENTED: unknown service runtime.v1.ImageService"
        )]
    );
}

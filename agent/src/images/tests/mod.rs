//! `kiln-agent images` against archives made here (tar headers written by hand) and a
//! fake containerd that decodes the agent's messages with the protobuf reader and keeps
//! the state a real one would: the content store folder (the fake's files), the
//! namespace's blobs and their labels, the images and the leases.

mod archive;
mod flow;

use super::archive as oci;

const REF: &str = "localhost/kiln/busybox:1.37";

/// A GNU tar header for a regular file (or `typeflag`) `name` of `size` bytes.
pub(super) fn header(name: &str, size: usize, typeflag: u8) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"14524137640\0");
    h[156] = typeflag;
    h[257..265].copy_from_slice(b"ustar  \0");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// A tar archive of `entries`, padded and ended as tar does.
pub(super) fn tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in entries {
        out.extend(header(name, data.len(), b'0'));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend([0u8; 1024]);
    out
}

/// The blobs and JSON documents of an archive holding one image.
pub(super) struct Parts {
    pub(super) layer: Vec<u8>,
    pub(super) config: Vec<u8>,
    pub(super) manifest: Vec<u8>,
    pub(super) index: Vec<u8>,
}

fn desc_json(media: &str, data: &[u8]) -> String {
    format!(
        r#"{{"mediaType":"{media}","digest":"{}","size":{}}}"#,
        oci::sha256(data),
        data.len()
    )
}

pub(super) fn parts(name: &str, layer: &[u8]) -> Parts {
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers"}}"#.to_vec();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{},"layers":[{}]}}"#,
        oci::MEDIA_MANIFEST,
        desc_json("application/vnd.oci.image.config.v1+json", &config),
        desc_json("application/vnd.oci.image.layer.v1.tar+gzip", layer),
    )
    .into_bytes();
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{}","size":{},"platform":{{"architecture":"amd64","os":"linux"}},"annotations":{{"io.containerd.image.name":"{name}","org.opencontainers.image.ref.name":"1.37"}}}}]}}"#,
        oci::MEDIA_MANIFEST,
        oci::sha256(&manifest),
        manifest.len()
    )
    .into_bytes();
    Parts {
        layer: layer.to_vec(),
        config,
        manifest,
        index,
    }
}

pub(super) fn blob_path(data: &[u8]) -> String {
    format!("blobs/sha256/{}", &oci::sha256(data)[7..])
}

impl Parts {
    pub(super) fn archive(&self) -> Vec<u8> {
        let (l, c, m) = (
            blob_path(&self.layer),
            blob_path(&self.config),
            blob_path(&self.manifest),
        );
        tar(&[
            ("blobs/", b""),
            (&l, &self.layer),
            (&c, &self.config),
            (&m, &self.manifest),
            ("index.json", &self.index),
            ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
        ])
    }
}

pub(super) fn busybox() -> Parts {
    parts(REF, b"layer bytes")
}

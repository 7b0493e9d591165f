//! The rest of what Debian's maintainer scripts would have done, plus the
//! fix-ups a read-only, extracted-only root needs to boot (measured in
//! docs/src/internals/environment.md: each one has a symptom without it).

use super::{FileTree, Kind, Node, TreeError};

/// What [`apply`] did, for logs and the manifest.
#[derive(Debug, Default, Clone)]
pub struct EffectsReport {
    /// Certificates put into the CA bundle.
    pub ca_certificates: usize,
}

/// The top-level merged-/usr symlinks (`bin → usr/bin`, ...), for the dirs that exist.
pub fn merged_usr_links(tree: &mut FileTree) -> Result<(), TreeError> {
    for d in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
        let target = format!("usr/{d}");
        if tree.get(&target).is_some_and(|n| n.kind == Kind::Dir) {
            tree.insert(d, Node::symlink(target, tree.epoch(), "kiln:merged-usr"))?;
        }
    }
    Ok(())
}

/// Applies the fix-ups. Idempotent.
pub fn apply(tree: &mut FileTree) -> Result<EffectsReport, TreeError> {
    let epoch = tree.epoch();
    let origin = "kiln:effects";
    merged_usr_links(tree)?;
    // Mount points the init and systemd use.
    for (dir, mode) in [
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("run", 0o755),
        ("var", 0o755),
        ("tmp", 0o1777),
    ] {
        if !tree.contains(dir) {
            tree.insert(dir, Node::dir(mode, epoch, origin))?;
        }
    }
    if let Some(t) = tree.get_mut("tmp") {
        t.mode = 0o1777;
    }
    // Empty: systemd mounts a transient machine-id over it on a read-only /etc.
    tree.insert(
        "etc/machine-id",
        Node::file(Vec::new(), 0o444, epoch, origin),
    )?;
    tree.insert(
        "etc/mtab",
        Node::symlink("../proc/self/mounts", epoch, origin),
    )?;
    if !tree.contains("etc/environment") {
        tree.insert(
            "etc/environment",
            Node::file(Vec::new(), 0o644, epoch, origin),
        )?;
    }
    if !tree.contains("etc/fstab") {
        let text = "# kiln: / is mounted read-only by the initramfs; /var and /tmp are set up there too.\n";
        tree.insert(
            "etc/fstab",
            Node::file(text.as_bytes().to_vec(), 0o644, epoch, origin),
        )?;
    }
    if tree.resolve("usr/bin/sh").is_err() {
        let target = if tree.contains("usr/bin/dash") {
            "dash"
        } else {
            "busybox"
        };
        tree.insert("usr/bin/sh", Node::symlink(target, epoch, origin))?;
    }
    let ca_certificates = ca_bundle(tree)?;
    Ok(EffectsReport { ca_certificates })
}

/// What `update-ca-certificates` does: every certificate the package ships
/// is enabled, linked under /etc/ssl/certs and concatenated into the bundle
/// TLS clients read.
fn ca_bundle(tree: &mut FileTree) -> Result<usize, TreeError> {
    let base = "usr/share/ca-certificates";
    let certs: Vec<String> = tree
        .descendants(base)
        .filter(|(p, n)| p.ends_with(".crt") && matches!(n.kind, Kind::File(_)))
        .map(|(p, _)| p[base.len() + 1..].to_string())
        .collect();
    if certs.is_empty() {
        return Ok(0);
    }
    let epoch = tree.epoch();
    let origin = "kiln:ca-certificates";
    let mut conf =
        String::from("# kiln: every certificate shipped by ca-certificates is enabled.\n");
    let mut bundle = Vec::new();
    for c in &certs {
        conf.push_str(c);
        conf.push('\n');
        let data = tree.read(&format!("{base}/{c}"))?;
        bundle.extend_from_slice(&data);
        if !data.ends_with(b"\n") {
            bundle.push(b'\n');
        }
        let name = super::file_name(c).trim_end_matches(".crt");
        tree.insert(
            &format!("etc/ssl/certs/{name}.pem"),
            Node::symlink(format!("/{base}/{c}"), epoch, origin),
        )?;
    }
    tree.insert(
        "etc/ca-certificates.conf",
        Node::file(conf.into_bytes(), 0o644, epoch, origin),
    )?;
    tree.insert(
        "etc/ssl/certs/ca-certificates.crt",
        Node::file(bundle, 0o644, epoch, origin),
    )?;
    Ok(certs.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixups_make_a_bootable_layout() {
        let mut t = FileTree::new(100);
        t.insert(
            "usr/bin/dash",
            Node::file(b"elf".to_vec(), 0o755, 1, "pkg:dash"),
        )
        .unwrap();
        t.insert("usr/lib/x", Node::file(b"".to_vec(), 0o644, 1, "pkg:x"))
            .unwrap();
        t.insert(
            "usr/share/ca-certificates/mozilla/B.crt",
            Node::file(b"-----B-----".to_vec(), 0o644, 1, "pkg:ca"),
        )
        .unwrap();
        t.insert(
            "usr/share/ca-certificates/mozilla/A.crt",
            Node::file(b"-----A-----\n".to_vec(), 0o644, 1, "pkg:ca"),
        )
        .unwrap();
        let r = apply(&mut t).unwrap();
        assert_eq!(r.ca_certificates, 2);
        assert_eq!(
            &*t.read("etc/ssl/certs/ca-certificates.crt").unwrap(),
            b"-----A-----\n-----B-----\n"
        );
        assert_eq!(&*t.read("etc/ssl/certs/A.pem").unwrap(), b"-----A-----\n");
        assert_eq!(&*t.read("bin/sh").unwrap(), b"elf");
        assert_eq!(t.get("lib").unwrap().kind, Kind::Symlink("usr/lib".into()));
        assert_eq!(t.get("tmp").unwrap().mode, 0o1777);
        assert_eq!(t.read("etc/machine-id").unwrap().len(), 0);
        assert_eq!(
            t.get("etc/mtab").unwrap().kind,
            Kind::Symlink("../proc/self/mounts".into())
        );
        // Idempotent.
        apply(&mut t).unwrap();
    }
}

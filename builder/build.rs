//! Puts the git commit kiln is built from into `kiln --version`
//! (`KILN_COMMIT`). Only the version line shows it: image manifests record
//! the package version alone, so images stay bit-identical across commits
//! that do not change them.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=KILN_COMMIT");
    let commit = std::env::var("KILN_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(git_commit)
        // A source tarball or `cargo install` from a registry has no .git.
        .unwrap_or_else(|| "unknown commit".to_string());
    println!("cargo:rustc-env=KILN_COMMIT={commit}");
}

/// The checkout's HEAD, abbreviated; `None` outside a git checkout or
/// without git. (No `-dirty` mark: cargo would have to run this script on
/// every edit to keep one true.)
fn git_commit() -> Option<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let dir = git(&["rev-parse", "--absolute-git-dir"])?;
    // Rebuild when HEAD moves: HEAD itself (a checkout) and the ref it names (a commit).
    println!("cargo:rerun-if-changed={dir}/HEAD");
    if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
        println!("cargo:rerun-if-changed={dir}/{head}");
        println!("cargo:rerun-if-changed={dir}/packed-refs");
    }
    git(&["rev-parse", "--short=12", "HEAD"])
}

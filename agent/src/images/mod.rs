//! `kiln-agent images`: the profile's container images in containerd, without `ctr`.
//!
//! `images import` is what `kiln-images.service` runs at boot: it imports the archives
//! the builder put under `/usr/share/kiln/images` ([`LIST_FILE`] lists them) into
//! containerd's `k8s.io` namespace, where the kubelet's runtime finds them
//! ([`import`]). `images list` asks containerd's CRI which images it has, the view the
//! kubelet gets.
//!
//! The import talks to containerd over its gRPC socket with the agent's own small client
//! ([`crate::grpc`]), so the image does not need containerd's 26 MiB `ctr`. It does not
//! stream the blobs over gRPC (which would need HTTP/2 flow control): it writes them into
//! containerd's content store folder and lets containerd take them from there, which
//! containerd's "shared" content sharing policy (its default, in 1.7 and 2.x) does for a
//! writer that expects a blob the store already has ([`containerd::Session::commit_shared`]).

pub mod archive;
pub mod containerd;
pub mod import;
pub mod real;
#[cfg(test)]
mod tests;

use std::io::Write;
use std::process::ExitCode;

use crate::flags::Flags;
use crate::grpc::{cri, CallError};
use crate::sys::{Clock, Console, Files};

/// The list `kiln-images.service` reads: `<file> <ref>` per line, the files in its folder
/// (the builder's `oci::LIST_FILE`).
pub const LIST_FILE: &str = "/usr/share/kiln/images/images.list";

/// containerd's root folder (its `root` setting in the image's config.toml).
pub const CONTAINERD_ROOT: &str = "/var/lib/containerd";

/// The image's containerd's socket.
pub use crate::preflight::runtime::CONTAINERD_SOCKET;

/// The namespace containerd's CRI (so the kubelet) uses.
pub const NAMESPACE: &str = "k8s.io";

/// What `images` does to the system: files (the archives, the content store), the clock
/// (the lease's expiry), the console, and gRPC calls on containerd's socket.
pub trait ImagesSys: Files + Clock + Console {
    /// One gRPC call on a fresh connection to the Unix socket `socket`: sends `request`
    /// to `path` with the metadata `metadata` and returns the response messages.
    fn grpc(
        &mut self,
        socket: &str,
        path: &str,
        metadata: &[(&str, &str)],
        request: &[u8],
    ) -> Result<Vec<Vec<u8>>, CallError>;
}

/// `kiln-agent images --help`.
pub const USAGE: &str = "\
Usage:
  kiln-agent images import [--list FILE] [--socket PATH] [--root DIR]
      import the image archives FILE lists (default /usr/share/kiln/images/images.list,
      `<file> <ref>` per line, files next to it) into containerd's k8s.io namespace, as
      kiln-images.service does at boot: check every blob's sha256 and size, put the blobs
      into containerd's content store under DIR (its root, default /var/lib/containerd)
      and register them and the image over the socket PATH (default
      /run/containerd/containerd.sock); one line per image, `kiln-images: imported <ref>`
      or `kiln-images: ERROR: <ref>: <reason>`; exit 1 when one failed
  kiln-agent images list [--socket PATH]
      the images containerd's CRI has (what the kubelet sees): `<name> <image id> <size>`
      per name, `<none>` for an image without one
";

fn usage_error(message: &str) -> ExitCode {
    let text = format!("kiln-agent images: {message}\n\n{USAGE}");
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
    ExitCode::from(2)
}

/// `kiln-agent images ...`.
pub fn main(args: &[String]) -> ExitCode {
    let mut sys = crate::sys::real::RealSys::default();
    match args.first().map(String::as_str) {
        Some("import") => {
            let mut opts = import::Options {
                list: LIST_FILE.into(),
                socket: CONTAINERD_SOCKET.into(),
                root: CONTAINERD_ROOT.into(),
                namespace: NAMESPACE.into(),
            };
            let mut flags = Flags::new(&args[1..]);
            while let Some((flag, inline)) = flags.next_flag() {
                let slot = match flag {
                    "--list" => &mut opts.list,
                    "--socket" => &mut opts.socket,
                    "--root" => &mut opts.root,
                    other => return usage_error(&format!("unknown argument {other:?}")),
                };
                match flags.value(flag, inline) {
                    Ok(v) => *slot = v,
                    Err(e) => return usage_error(&e),
                }
            }
            ExitCode::from(import::run(&mut sys, &opts))
        }
        Some("list") => {
            let mut socket = CONTAINERD_SOCKET.to_string();
            let mut flags = Flags::new(&args[1..]);
            while let Some((flag, inline)) = flags.next_flag() {
                if flag != "--socket" {
                    return usage_error(&format!("unknown argument {flag:?}"));
                }
                match flags.value(flag, inline) {
                    Ok(v) => socket = v,
                    Err(e) => return usage_error(&e),
                }
            }
            ExitCode::from(list(&mut sys, &socket))
        }
        Some("--help" | "-h" | "help") => {
            // Never a panic on a closed stdout (`| head`).
            let _ = std::io::stdout().lock().write_all(USAGE.as_bytes());
            ExitCode::SUCCESS
        }
        Some(other) => usage_error(&format!("unknown subcommand {other:?}")),
        None => usage_error("import or list?"),
    }
}

/// The lines `images list` prints for `images`: `<name> <id> <size>` per name, sorted.
pub fn list_lines(images: &[cri::CriImage]) -> Vec<String> {
    let mut lines: Vec<String> = images
        .iter()
        .flat_map(|i| {
            let names: Vec<&str> = if i.repo_tags.is_empty() {
                vec!["<none>"]
            } else {
                i.repo_tags.iter().map(String::as_str).collect()
            };
            names
                .into_iter()
                .map(move |n| format!("{n} {} {}", i.id, i.size))
        })
        .collect();
    lines.sort();
    lines
}

/// `images list`: prints the CRI's images; the exit status.
pub fn list(sys: &mut dyn ImagesSys, socket: &str) -> u8 {
    let answer = sys
        .grpc(
            socket,
            cri::LIST_IMAGES_PATH,
            &[],
            &cri::list_images_request(),
        )
        .and_then(|mut m| match m.len() {
            1 => cri::decode_list_images(&m.remove(0)),
            n => Err(CallError::MessageCount(n)),
        });
    match answer {
        Ok(images) => {
            for line in list_lines(&images) {
                sys.say(&line);
            }
            0
        }
        Err(e) => {
            sys.note(&format!(
                "kiln-agent images list: CRI ListImages on {socket}: {e}"
            ));
            1
        }
    }
}

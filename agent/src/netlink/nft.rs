//! The nftables ruleset kiln keeps for the overlay, and running `nft`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use super::NetError;

/// The table kiln owns; nothing else in the ruleset is touched.
pub const TABLE: &str = "inet kiln-overlay";

/// The nftables ruleset kiln keeps for the overlay: table `inet kiln-overlay`
/// (flushed and recreated atomically each time), clamping TCP MSS to the route MTU
/// (`tcp option maxseg size set rt mtu`) for SYNs leaving and entering `ifname` in the
/// forward path and leaving it in the output path.
///
/// `ifname` must pass [`super::validate_ifname`] (it is put in quotes as is).
pub fn mss_clamp_rules(ifname: &str) -> String {
    // "table X" then "delete table X" makes the delete succeed whether or not the table
    // exists (nft 1.0.6 has no "destroy"); the whole file is one transaction.
    let clamp = "tcp flags syn / syn,rst tcp option maxseg size set rt mtu";
    format!(
        "table {TABLE}\n\
         delete table {TABLE}\n\
         table {TABLE} {{\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority mangle; policy accept;\n\
         \t\toifname \"{ifname}\" {clamp}\n\
         \t\tiifname \"{ifname}\" {clamp}\n\
         \t}}\n\
         \tchain output {{\n\
         \t\ttype filter hook output priority mangle; policy accept;\n\
         \t\toifname \"{ifname}\" {clamp}\n\
         \t}}\n\
         }}\n"
    )
}

/// Runs `nft [-c] -f -` with the ruleset on stdin (`check`: only validate it).
pub fn run_nft(nft: &Path, ruleset: &str, check: bool) -> Result<(), NetError> {
    let mut cmd = Command::new(nft);
    if check {
        cmd.arg("-c");
    }
    cmd.args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let io = |op: &str, error| NetError::Io {
        path: nft.to_path_buf(),
        op: op.into(),
        error,
    };
    let mut child = cmd
        .spawn()
        .map_err(|e| io("run (is nftables installed?)", e))?;
    if let Some(mut stdin) = child.stdin.take() {
        // nft reads all of stdin before it applies anything, so a failed write means it
        // exited early; its status and stderr below say why.
        let _ = stdin.write_all(ruleset.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| io("wait for", e))?;
    if out.status.success() {
        return Ok(());
    }
    Err(NetError::Command {
        command: format!("{} {}-f -", nft.display(), if check { "-c " } else { "" }),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nft_available() -> bool {
        Command::new("nft")
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    #[test]
    fn rules_name_interface_and_clamp() {
        let r = mss_clamp_rules("kiln0");
        assert_eq!(r.matches("oifname \"kiln0\"").count(), 2);
        assert_eq!(r.matches("iifname \"kiln0\"").count(), 1);
        assert_eq!(r.matches("maxseg size set rt mtu").count(), 3);
        assert!(r.contains("hook forward") && r.contains("hook output"));
    }

    /// `nft -c` is the referee for the syntax (it needs root: it asks the kernel too).
    #[test]
    fn nft_accepts_mss_clamp_rules() {
        assert!(
            nft_available(),
            "nft is not installed on this machine: install nftables (apt-get install \
             nftables) to check mss_clamp_rules' syntax"
        );
        run_nft(Path::new("nft"), &mss_clamp_rules("kiln0"), true).unwrap();
        let bad = run_nft(
            Path::new("nft"),
            "table inet x { chain y { nonsense } }",
            true,
        )
        .unwrap_err();
        assert!(bad.to_string().contains("nonsense"), "{bad}");
    }

    #[test]
    fn missing_nft_names_the_program() {
        let e = run_nft(Path::new("/nonexistent/nft"), "", false).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/nft"), "{e}");
    }
}

//! Node files that come from the profile and the build's options rather
//! than from an overlay: the agent's settings and the debug shell.

use super::{FileTree, Node, TreeError};
use crate::profile::Agent;

/// Where the agent's settings go, as the tree names paths (no leading `/`).
pub fn agent_toml_path() -> &'static str {
    kiln_contract::agent_config::PATH.trim_start_matches('/')
}

/// The getty drop-ins of the debug shell. Empty `ExecStart=` clears the
/// packaged command first (systemd appends otherwise); agetty's
/// `--autologin root` runs `login -f root`, which skips authentication.
pub const DEBUG_SHELL_DROPINS: [(&str, &str); 2] = [
    (
        "etc/systemd/system/serial-getty@.service.d/kiln-debug-shell.conf",
        "# kiln build --debug-shell: root on the serial console without a password.\n\
         [Service]\n\
         ExecStart=\n\
         ExecStart=-/sbin/agetty --autologin root --keep-baud 115200,57600,38400,9600 - $TERM\n",
    ),
    (
        "etc/systemd/system/getty@.service.d/kiln-debug-shell.conf",
        "# kiln build --debug-shell: root on the virtual consoles without a password.\n\
         [Service]\n\
         ExecStart=\n\
         ExecStart=-/sbin/agetty --autologin root --noclear - $TERM\n",
    ),
];

/// Writes `/usr/lib/kiln/agent.toml` and, with `debug_shell`, the getty
/// autologin drop-ins.
pub fn apply(tree: &mut FileTree, agent: &Agent, debug_shell: bool) -> Result<(), TreeError> {
    let epoch = tree.epoch();
    tree.insert(
        agent_toml_path(),
        Node::file(agent.to_toml().into_bytes(), 0o644, epoch, "kiln:agent"),
    )?;
    if debug_shell {
        for (path, text) in DEBUG_SHELL_DROPINS {
            tree.insert(
                path,
                Node::file(text.as_bytes().to_vec(), 0o644, epoch, "kiln:debug-shell"),
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Channel;

    #[test]
    fn agent_settings_always_debug_shell_only_when_asked() {
        let agent = Agent {
            channels: vec![Channel::Esp, Channel::Cmdline],
            cluster: None,
        };
        let mut t = FileTree::new(7);
        apply(&mut t, &agent, false).unwrap();
        assert_eq!(agent_toml_path(), "usr/lib/kiln/agent.toml");
        let text = String::from_utf8(t.read(agent_toml_path()).unwrap().to_vec()).unwrap();
        assert!(text.contains("channels = [\"esp\", \"cmdline\"]"), "{text}");
        assert_eq!(t.get(agent_toml_path()).unwrap().mode, 0o644);
        assert!(!t.contains(DEBUG_SHELL_DROPINS[0].0));
        apply(&mut t, &agent, true).unwrap();
        for (path, _) in DEBUG_SHELL_DROPINS {
            let text = String::from_utf8(t.read(path).unwrap().to_vec()).unwrap();
            assert!(text.contains("--autologin root"), "{text}");
            // The reset must come before the new command.
            let reset = text.find("ExecStart=\n").unwrap();
            assert!(reset < text.find("ExecStart=-").unwrap());
        }
    }
}

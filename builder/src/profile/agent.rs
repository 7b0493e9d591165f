//! `[agent]` and what the builder writes for the agent: `/usr/lib/kiln/agent.toml`
//! from the profile's `[agent]`, `[cluster]` and `[update]` sections.

use kiln_contract::agent_config::{self, Channel, SettingsFile, ALL_CHANNELS};

use super::{Cluster, Profile};

/// Settings of the in-image agent (`[agent]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// Config channels the node reads, highest precedence first.
    pub channels: Vec<Channel>,
    /// `[cluster]`: how the node joins Kubernetes (`None`: it does not).
    pub cluster: Option<Cluster>,
}

impl Default for Agent {
    fn default() -> Agent {
        Agent {
            channels: ALL_CHANNELS.to_vec(),
            cluster: None,
        }
    }
}

impl Agent {
    /// Whether the node reads cloud metadata.
    pub fn uses_cloud(&self) -> bool {
        self.channels.contains(&Channel::Cloud)
    }

    /// `/usr/lib/kiln/agent.toml` as the contract's types, every value spelled out,
    /// without the `[update]` table, which comes from the whole profile
    /// ([`Profile::agent_file`]).
    pub fn to_file(&self) -> SettingsFile {
        SettingsFile {
            schema: Some(agent_config::SCHEMA),
            channels: Some(self.channels.clone()),
            cluster: self.cluster.as_ref().map(Cluster::to_table),
            update: None,
        }
    }

    /// The text of `/usr/lib/kiln/agent.toml` without the `[update]` table (the
    /// image's is [`Profile::agent_toml`]).
    pub fn to_toml(&self) -> String {
        settings_toml(&self.to_file())
    }
}

impl Profile {
    /// `/usr/lib/kiln/agent.toml` as the contract's types: the agent's settings and
    /// the image's `[update]` table (its name, version, tries and health checks).
    pub fn agent_file(&self) -> SettingsFile {
        SettingsFile {
            update: Some(self.update.to_table(&self.name, &self.version)),
            ..self.agent.to_file()
        }
    }

    /// The text of `/usr/lib/kiln/agent.toml` as the image carries it.
    pub fn agent_toml(&self) -> String {
        settings_toml(&self.agent_file())
    }
}

/// agent.toml's text: a header naming where it came from, then the settings.
fn settings_toml(file: &SettingsFile) -> String {
    // Strings, integers, lists and string-keyed tables are all the file holds, and
    // TOML has a place for each; a failure here is a bug in the contract's types.
    let body =
        toml::to_string(file).expect("agent.toml holds only strings, integers, lists and tables");
    format!(
        "# Written by kiln from the profile's [agent], [cluster] and [update] sections.\n{body}"
    )
}

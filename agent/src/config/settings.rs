//! The image-side agent settings the builder writes from the profile's `[agent]` section
//! (`/usr/lib/kiln/agent.toml`):
//!
//! ```toml
//! schema = 1
//! channels = ["cmdline", "esp", "cidata", "fw_cfg", "cloud"]   # precedence, highest first
//! ```
//!
//! A missing file means all five channels in that order.

use std::fmt;

use serde::Deserialize;

/// Where the builder puts the settings.
pub const SETTINGS_PATH: &str = "/usr/lib/kiln/agent.toml";

/// A configuration channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Channel {
    /// `kiln.*` on the kernel command line.
    Cmdline,
    /// `kiln.toml` on the boot disk's EFI system partition.
    Esp,
    /// A NoCloud volume labelled `cidata`.
    Cidata,
    /// QEMU's fw_cfg item `opt/kiln/config`.
    FwCfg,
    /// The cloud provider's user-data (detected from DMI).
    Cloud,
}

/// Every channel in the default precedence, highest first.
pub const ALL_CHANNELS: [Channel; 5] = [
    Channel::Cmdline,
    Channel::Esp,
    Channel::Cidata,
    Channel::FwCfg,
    Channel::Cloud,
];

impl Channel {
    /// The name used in agent.toml and on the console.
    pub fn name(self) -> &'static str {
        match self {
            Channel::Cmdline => "cmdline",
            Channel::Esp => "esp",
            Channel::Cidata => "cidata",
            Channel::FwCfg => "fw_cfg",
            Channel::Cloud => "cloud",
        }
    }

    /// The channel called `name`.
    pub fn from_name(name: &str) -> Option<Channel> {
        ALL_CHANNELS.into_iter().find(|c| c.name() == name)
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsDto {
    schema: Option<i64>,
    channels: Option<Vec<String>>,
}

/// The agent settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Channels to read, highest precedence first.
    pub channels: Vec<Channel>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            channels: ALL_CHANNELS.to_vec(),
        }
    }
}

/// Parses the settings file's text; the error says what is wrong (the caller names the
/// file).
pub fn parse_settings(text: &str) -> Result<Settings, String> {
    let dto: SettingsDto = toml::from_str(text).map_err(|e| e.message().trim().to_string())?;
    if let Some(v) = dto.schema.filter(|v| *v != 1) {
        return Err(format!(
            "schema = {v}: this agent understands schema 1 only"
        ));
    }
    let Some(names) = dto.channels else {
        return Ok(Settings::default());
    };
    let mut channels = Vec::new();
    for name in &names {
        let Some(c) = Channel::from_name(name) else {
            let known: Vec<&str> = ALL_CHANNELS.iter().map(|c| c.name()).collect();
            return Err(format!(
                "channels: unknown channel {name:?} (known: {})",
                known.join(", ")
            ));
        };
        if channels.contains(&c) {
            return Err(format!("channels: {name:?} is listed twice"));
        }
        channels.push(c);
    }
    Ok(Settings { channels })
}

//! Azure CustomData: read from `ovf-env.xml` on the provisioning media.
//!
//! Azure's IMDS serves `userData` but never CustomData; CustomData is delivered only in the
//! `ovf-env.xml` file of the provisioning DVD Azure attaches to the VM (a UDF volume; older
//! tooling also made iso9660 ones), as base64 text in a `CustomData` element of the
//! `LinuxProvisioningConfigurationSet`. This module mounts the first CD-ROM device that
//! holds such a file read-only, reads it and unmounts it. It needs the `sr_mod`, `cdrom`,
//! `udf` and `isofs` kernel modules in the image.

use std::path::{Path, PathBuf};

use kiln_contract::base64;

/// Where the media is mounted while it is read.
const MOUNT_POINT: &str = "/run/kiln/azure-media";

/// The media file Azure writes the provisioning settings to.
const OVF_ENV: &str = "ovf-env.xml";

/// The CustomData found on the media: (where, text).
pub type Found = (String, String);

/// Looks for the provisioning media on `/dev/sr0` … `/dev/sr3`. `Ok(None)` when there is
/// no media, no `ovf-env.xml` or no CustomData in it.
pub fn read_custom_data() -> Result<Option<Found>, String> {
    let mount_point = Path::new(MOUNT_POINT);
    for n in 0..4 {
        let dev = PathBuf::from(format!("/dev/sr{n}"));
        if !dev.exists() {
            continue;
        }
        let Some(xml) = read_from_device(&dev, mount_point)? else {
            continue;
        };
        let source = format!("{}:{OVF_ENV}", dev.display());
        return match custom_data(&xml).map_err(|e| format!("{source}: {e}"))? {
            Some(text) => Ok(Some((source, text))),
            None => Ok(None),
        };
    }
    Ok(None)
}

fn read_from_device(dev: &Path, mount_point: &Path) -> Result<Option<String>, String> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    std::fs::create_dir_all(mount_point)
        .map_err(|e| format!("creating {}: {e}", mount_point.display()))?;
    for fstype in ["udf", "iso9660"] {
        let mounted = mount(
            Some(dev),
            mount_point,
            Some(fstype),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        );
        if mounted.is_err() {
            // Not this filesystem type, or an empty drive: try the next type, then device.
            continue;
        }
        let path = mount_point.join(OVF_ENV);
        let read = std::fs::read(&path);
        let _ = umount2(mount_point, MntFlags::MNT_DETACH);
        return match read {
            Ok(bytes) => String::from_utf8(bytes)
                .map(Some)
                .map_err(|_| format!("{}:{OVF_ENV} is not UTF-8", dev.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("reading {}:{OVF_ENV}: {e}", dev.display())),
        };
    }
    Ok(None)
}

/// The decoded text of the first `CustomData` element (any namespace prefix) of an
/// `ovf-env.xml`; `None` when there is none or it is empty.
pub fn custom_data(xml: &str) -> Result<Option<String>, String> {
    let Some(content) = element_text(xml, "CustomData") else {
        return Ok(None);
    };
    let bytes = base64::decode_lenient(content.as_bytes())
        .map_err(|e| format!("CustomData is not base64: {e}"))?;
    let text = String::from_utf8(bytes).map_err(|_| "CustomData is not UTF-8 text".to_string())?;
    Ok((!text.trim().is_empty()).then_some(text))
}

/// The text between `<[prefix:]name ...>` and its closing tag. A self-closing element has
/// no text.
fn element_text<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let mut rest = xml;
    while let Some(lt) = rest.find('<') {
        rest = &rest[lt + 1..];
        let tag_end = rest.find('>')?;
        let tag = &rest[..tag_end];
        let tag_name = tag.split(|c: char| c.is_whitespace() || c == '/').next()?;
        let local = tag_name.rsplit(':').next().unwrap_or(tag_name);
        if local != name || tag_name.starts_with('/') {
            continue;
        }
        if tag.ends_with('/') {
            return None;
        }
        let body = &rest[tag_end + 1..];
        let close = body.find(&format!("</{tag_name}>"))?;
        return Some(body[..close].trim());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    // The shape of Azure's ovf-env.xml (namespaces and nesting as Azure writes them).
    const OVF: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<ns0:Environment xmlns:ns0="http://schemas.dmtf.org/ovf/environment/1" xmlns:ns1="http://schemas.microsoft.com/windowsazure">
 <ns1:ProvisioningSection>
  <ns1:Version>1.0</ns1:Version>
  <ns1:LinuxProvisioningConfigurationSet>
   <ns1:ConfigurationSetType>LinuxProvisioningConfiguration</ns1:ConfigurationSetType>
   <ns1:HostName>vm1</ns1:HostName>
   <ns1:CustomData>aG9zdG5hbWUgPSAiYXp1cmUtbm9kZSIK</ns1:CustomData>
  </ns1:LinuxProvisioningConfigurationSet>
 </ns1:ProvisioningSection>
</ns0:Environment>"#;

    #[test]
    fn finds_custom_data_under_any_prefix() {
        assert_eq!(
            custom_data(OVF).unwrap().as_deref(),
            Some("hostname = \"azure-node\"\n")
        );
        let plain = "<Environment><CustomData>\n aGk=\n</CustomData></Environment>";
        assert_eq!(custom_data(plain).unwrap().as_deref(), Some("hi"));
    }

    #[test]
    fn no_or_empty_custom_data_is_none() {
        assert_eq!(
            custom_data("<Environment><HostName>x</HostName></Environment>"),
            Ok(None)
        );
        assert_eq!(custom_data("<a><ns1:CustomData/></a>"), Ok(None));
        assert_eq!(
            custom_data("<a><ns1:CustomData></ns1:CustomData></a>"),
            Ok(None)
        );
    }

    #[test]
    fn bad_custom_data_is_an_error() {
        let err = custom_data("<a><CustomData>not base64!</CustomData></a>").unwrap_err();
        assert!(err.contains("CustomData is not base64"), "{err}");
    }
}

//! Step 1 of an apply: every read-only check, in the order the module documentation
//! gives. A refusal here has changed nothing; what passes becomes the [`Plan`] the write
//! sequence ([`super::write`]) carries out.

use std::io;

use kiln_contract::agent_config::{SettingsFile, UpdateTable};
use kiln_contract::boot::{Slot, UkiName, DEFAULT_TRIES, UKI_DIR};
use kiln_contract::bundle::{self, BundleError, BundlePart, PartKind, VerifiedHeader};
use kiln_contract::signing::PublicKey;
use kiln_contract::version::ImageVersion;

use super::error::mib;
use super::{read_full, say, ApplyError, ApplySys, Options, Paths, ESP_SLACK, MAX_UKI, PREFIX};
use crate::gpt::{self, RawTable};
use crate::sys::{Console, Files};
use crate::update::esp::{self, Uki};
use crate::update::fetch::{BundleStream, FetchError};
use crate::update::slot::{self, Slots};
use crate::update::state::{self, State};

/// What the checks found, and everything the write sequence needs: the bundle stream
/// positioned after its verified header, the parts, the boot disk and the ESP's UKIs.
pub(super) struct Plan {
    /// The bundle, read up to the end of its header.
    pub(super) stream: Box<dyn BundleStream>,
    /// The verified header (its manifest says what the parts must hash to).
    pub(super) header: VerifiedHeader,
    /// The running version.
    pub(super) running: ImageVersion,
    /// Whether the bundle is older than the running version.
    pub(super) downgrade: bool,
    /// The update state as loaded (saved again with the apply recorded).
    pub(super) state: State,
    /// The manifest's dm-verity root hash.
    pub(super) root_hash: [u8; 32],
    /// The root part.
    pub(super) root_part: BundlePart,
    /// The root-verity part.
    pub(super) verity_part: BundlePart,
    /// The UKI part.
    pub(super) uki_part: BundlePart,
    /// This node's arch.
    pub(super) arch: &'static str,
    /// The boot disk and its slots.
    pub(super) disk: Disk,
    /// The slot to write (the one not running).
    pub(super) target: Slot,
    /// `<ESP>/EFI/Linux`.
    pub(super) uki_dir: String,
    /// The running slot's UKI, if the ESP has one.
    pub(super) running_uki: Option<Uki>,
    /// The other slot's UKIs, deleted before anything is written.
    pub(super) doomed: Vec<Uki>,
    /// Boot attempts of the new version.
    pub(super) tries: u32,
}

/// Runs every check before the first write; see the module documentation for the order.
pub(super) fn check(
    sys: &mut dyn ApplySys,
    paths: &Paths,
    opts: &Options,
) -> Result<Plan, ApplyError> {
    // 1. The keys first: without them nothing can be checked, and nothing is fetched.
    let keys = load_keys(sys, &paths.keys_dir)?;
    let mut stream = sys.open_bundle(&opts.source).map_err(ApplyError::Fetch)?;
    let header = read_header(stream.as_mut(), &keys)?;
    let m = header.manifest.clone();
    say(
        sys,
        &format!(
            "bundle {}: image {} {} version {}, signed by trusted key {}",
            stream.describe(),
            m.image,
            m.arch,
            m.version,
            header.key_id
        ),
    );

    // What the bundle is, against what the node runs.
    let settings = update_settings(sys, &paths.agent_toml)?;
    let arch = slot::running_arch();
    if m.arch != arch {
        return Err(ApplyError::WrongArch {
            bundle: m.arch,
            node: arch.to_string(),
        });
    }
    if m.image != settings.image {
        return Err(ApplyError::WrongImage {
            bundle: m.image,
            node: settings.image,
        });
    }
    let running = ImageVersion::parse(&settings.version).map_err(|e| {
        ApplyError::Settings(format!("{}: [update] version: {e}", paths.agent_toml))
    })?;
    let downgrade = header.version < running;
    if downgrade && !opts.allow_downgrade {
        return Err(ApplyError::Older {
            bundle: header.version.to_string(),
            running: running.to_string(),
        });
    }
    if header.version == running {
        return Err(ApplyError::Running {
            version: running.to_string(),
        });
    }
    let state = State::load(sys, &paths.state_dir)
        .map_err(|e| ApplyError::Settings(format!("the update state: {e}")))?;
    if let Some(r) = state::is_rejected(&state, &header.version) {
        if !opts.force {
            return Err(ApplyError::Rejected {
                version: r.version.clone(),
                reason: r.reason.clone(),
            });
        }
        say(
            sys,
            &format!(
                "--force: applying version {} although this node rolled back from it",
                r.version
            ),
        );
    }
    let want = bundle::total_size(&m);
    if stream.total_len() != want {
        return Err(ApplyError::Length {
            have: stream.total_len(),
            want,
        });
    }
    let root_hash = parse_hash(&m.root_hash)?;
    let part = |kind: PartKind| -> Result<BundlePart, ApplyError> {
        m.part(kind)
            .cloned()
            .ok_or_else(|| ApplyError::Bundle(BundleError::Manifest(format!("no {kind} part"))))
    };
    let (root_part, verity_part, uki_part) = (
        part(PartKind::Root)?,
        part(PartKind::RootVerity)?,
        part(PartKind::Uki)?,
    );

    // Where it goes.
    let cmdline = sys
        .read_file(&paths.cmdline)
        .map_err(|e| ApplyError::Disk(format!("reading {}: {e}", paths.cmdline)))?;
    let running_hash = crate::cmdline::parse(&String::from_utf8_lossy(&cmdline))
        .root_hash
        .ok_or(ApplyError::NoRootHash)?;
    let disk = find_disk(sys, arch, &running_hash)?;
    let target = disk.slots.other();
    for (kind, size, entry) in [
        (PartKind::Root, root_part.size, &disk.slots.other_root),
        (
            PartKind::RootVerity,
            verity_part.size,
            &disk.slots.other_verity,
        ),
    ] {
        let holds = slot::partition_bytes(entry, disk.sector_size);
        if size > holds {
            return Err(ApplyError::TooSmall {
                part: kind,
                size,
                slot: target,
                holds,
            });
        }
    }
    if uki_part.size > MAX_UKI {
        return Err(ApplyError::Bundle(BundleError::Invalid {
            field: "parts[2].size".into(),
            message: format!("a UKI of {} bytes is more than {MAX_UKI}", uki_part.size),
        }));
    }

    // The ESP: the running version must not be on trial, and the UKI must fit.
    let esp_dir = sys.esp_dir().map_err(ApplyError::Esp)?;
    let uki_dir = format!("{}/{UKI_DIR}", esp_dir.trim_end_matches('/'));
    let present = ukis(sys, &esp_dir, &disk, arch)?;
    let running_uki = present
        .iter()
        .find(|u| u.slot == disk.slots.running)
        .cloned();
    if let Some(u) = &running_uki {
        if named_on_trial(&u.name) && !opts.force {
            return Err(ApplyError::OnTrial {
                file: u.file.clone(),
                version: running.to_string(),
            });
        }
    }
    let doomed: Vec<Uki> = present
        .iter()
        .filter(|u| u.slot == target)
        .cloned()
        .collect();
    let mut free = sys
        .free_bytes(&uki_dir)
        .map_err(|e| ApplyError::Esp(format!("statvfs {uki_dir}: {e}")))?;
    for u in &doomed {
        free += sys.file_len(&u.path).unwrap_or(0);
    }
    let need = uki_part.size + ESP_SLACK;
    if free < need {
        return Err(ApplyError::EspFull { free, need });
    }
    let tries = opts.tries.or(settings.tries).unwrap_or(DEFAULT_TRIES);
    say(
        sys,
        &format!(
            "running version {running} from slot {}; writing version {} to slot {target} on {} \
             ({} of root, {} of verity)",
            disk.slots.running,
            header.version,
            disk.dev,
            mib(root_part.size),
            mib(verity_part.size)
        ),
    );
    Ok(Plan {
        stream,
        header,
        running,
        downgrade,
        state,
        root_hash,
        root_part,
        verity_part,
        uki_part,
        arch,
        disk,
        target,
        uki_dir,
        running_uki,
        doomed,
        tries,
    })
}

/// Loads the trusted keys: every `*.pub` in `dir`. A file that is not a key is
/// reported and skipped (the others may still verify an update that fixes it).
pub(crate) fn load_keys<S: Files + Console + ?Sized>(
    sys: &mut S,
    dir: &str,
) -> Result<Vec<PublicKey>, ApplyError> {
    let mut names = match sys.list_dir(dir) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(ApplyError::Settings(format!("listing {dir}: {e}"))),
    };
    names.sort();
    let mut keys = Vec::new();
    for name in names.iter().filter(|n| n.ends_with(".pub")) {
        let path = format!("{dir}/{name}");
        let parsed = sys
            .read_file(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                PublicKey::parse_text(&String::from_utf8_lossy(&b)).map_err(|e| e.to_string())
            });
        match parsed {
            Ok(k) => keys.push(k),
            Err(e) => sys.say(&format!(
                "{PREFIX}: warning: update key {path} skipped: {e}"
            )),
        }
    }
    if keys.is_empty() {
        return Err(ApplyError::NoKeys {
            dir: dir.to_string(),
        });
    }
    Ok(keys)
}

/// agent.toml's `[update]`.
fn update_settings(sys: &mut dyn ApplySys, path: &str) -> Result<UpdateTable, ApplyError> {
    let no_update = || {
        ApplyError::Settings(format!(
            "{path} has no [update] table (the image's name and version): the image was built \
             without A/B updates; reflash it with an image whose profile has [update]"
        ))
    };
    let text = match sys.read_file(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(no_update()),
        Err(e) => return Err(ApplyError::Settings(format!("reading {path}: {e}"))),
    };
    let file: SettingsFile = toml::from_str(&String::from_utf8_lossy(&text))
        .map_err(|e| ApplyError::Settings(format!("{path}: {}", e.message().trim())))?;
    file.update.ok_or_else(no_update)
}

/// Reads and checks the header: the signature first, then the manifest.
fn read_header(
    stream: &mut dyn BundleStream,
    keys: &[PublicKey],
) -> Result<VerifiedHeader, ApplyError> {
    let fetch = |e: io::Error| {
        let text = e.to_string();
        match e.into_inner().map(|inner| inner.downcast::<FetchError>()) {
            Some(Ok(f)) => ApplyError::Fetch(*f),
            _ => ApplyError::Read(text),
        }
    };
    let mut prefix = [0u8; 16];
    let n = read_full(stream, &mut prefix).map_err(fetch)?;
    let size = bundle::header_len_needed(&prefix[..n]).map_err(ApplyError::Bundle)?;
    let mut header = vec![0u8; size];
    header[..16].copy_from_slice(&prefix);
    let n = read_full(stream, &mut header[16..]).map_err(fetch)?;
    header.truncate(16 + n);
    bundle::open_header(&header, keys).map_err(ApplyError::Bundle)
}

/// The boot disk: its device, sector size, table and slots.
pub(super) struct Disk {
    /// The device (`/dev/vda`).
    pub(super) dev: String,
    /// Its logical sector size.
    pub(super) sector_size: u64,
    /// Its size in sectors.
    pub(super) sectors: u64,
    /// Its GPT as read.
    pub(super) table: RawTable,
    /// The running and the other slot's entries.
    pub(super) slots: Slots,
}

fn find_disk(
    sys: &mut dyn ApplySys,
    arch: &str,
    running_hash: &[u8; 32],
) -> Result<Disk, ApplyError> {
    let (root_guid, _) = slot::hash_guids(running_hash);
    let devs = sys.disks().map_err(ApplyError::Disk)?;
    let mut seen = Vec::new();
    for dev in devs {
        let table = match read_table(sys, &dev) {
            Ok(t) => t,
            Err(e) => {
                seen.push(format!("{dev}: {e}"));
                continue;
            }
        };
        if !table.1.entries.iter().any(|e| e.part_guid == root_guid) {
            seen.push(format!("{dev}: no partition {root_guid}"));
            continue;
        }
        let (sector_size, table, bytes) = (table.0, table.1, table.2);
        let slots =
            slot::find_slots(&table.entries, arch, running_hash).map_err(ApplyError::Slots)?;
        return Ok(Disk {
            dev,
            sector_size,
            sectors: bytes / sector_size,
            table,
            slots,
        });
    }
    Err(ApplyError::Disk(format!(
        "no disk holds the running root (PARTUUID {root_guid}, the first half of \
         kiln.roothash=): {}",
        if seen.is_empty() {
            "no disks found".to_string()
        } else {
            seen.join("; ")
        }
    )))
}

/// (sector size, table, disk bytes) of `dev`.
fn read_table(sys: &mut dyn ApplySys, dev: &str) -> Result<(u64, RawTable, u64), String> {
    let ss = sys.sector_size(dev).map_err(|e| e.to_string())?;
    let bytes = sys.disk_bytes(dev).map_err(|e| e.to_string())?;
    let mut read = |off: u64, len: usize| sys.read_at(dev, off, len);
    let table = gpt::read_table(&mut read, ss, Some(bytes)).map_err(|e| e.to_string())?;
    Ok((ss, table, bytes))
}

/// The UKIs on the ESP, with the slot each boots.
fn ukis(
    sys: &mut dyn ApplySys,
    esp_dir: &str,
    disk: &Disk,
    arch: &str,
) -> Result<Vec<Uki>, ApplyError> {
    let entries = disk.table.entries.clone();
    esp::list_ukis(sys, esp_dir, &entries, arch).map_err(|e| ApplyError::Esp(e.to_string()))
}

/// Whether a UKI's name says its version is on trial: a boot counter other than the
/// `+0-0` a downgrade gives the running version.
fn named_on_trial(name: &UkiName) -> bool {
    matches!(name.tries, Some(t) if !(t.left == 0 && t.done == 0))
}

fn parse_hash(text: &str) -> Result<[u8; 32], ApplyError> {
    let mut out = [0u8; 32];
    let ok = text.len() == 64
        && out.iter_mut().enumerate().all(|(i, b)| {
            u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
                .map(|v| *b = v)
                .is_ok()
        });
    if ok {
        Ok(out)
    } else {
        Err(ApplyError::Bundle(BundleError::Invalid {
            field: "root_hash".into(),
            message: format!("{text:?} is not 64 hex digits"),
        }))
    }
}

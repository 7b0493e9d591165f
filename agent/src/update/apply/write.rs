//! Steps 2 to 7 of an apply, in the order that keeps a power loss harmless (see the
//! module documentation): the other slot's UKIs go first, the slot is emptied, the
//! parts are streamed and verified, the slot is named, and its UKI is installed last.

use std::io;
use std::time::Duration;

use kiln_contract::boot::{Tries, UkiName};
use kiln_contract::bundle::BundlePart;
use kiln_contract::verity::hex;
use sha2::{Digest, Sha256};

use super::checks::{Disk, Plan};
use super::error::mib;
use super::{read_full, say, verify, Applied, ApplyError, ApplySys, PartFailure, Paths, CHUNK};
use crate::gpt::{DiskWrite, GptEntry};
use crate::update::esp::Uki;
use crate::update::fetch::{BundleStream, FetchError};
use crate::update::slot;
use crate::update::state::{LastApply, State};

/// Writes what [`super::checks::check`] planned; `start` is when the apply began (for
/// the summary's duration).
pub(super) fn write(
    sys: &mut dyn ApplySys,
    paths: &Paths,
    plan: Plan,
    start: Duration,
) -> Result<Applied, ApplyError> {
    let Plan {
        mut stream,
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
    } = plan;
    let m = header.manifest;

    // 2. Nothing may boot the other slot any more.
    let tmp = format!("{uki_dir}/kiln-{target}.efi.tmp");
    for path in doomed.iter().map(|u| u.path.clone()).chain([tmp.clone()]) {
        sys.remove_file(&path)
            .map_err(|e| ApplyError::Esp(format!("removing {path}: {e}")))?;
    }
    sys.sync_dir(&uki_dir)
        .map_err(|e| ApplyError::Esp(format!("syncing {uki_dir}: {e}")))?;

    // 3. The slot is empty from here until it holds a verified root.
    let emptied = slot::emptied(&disk.slots, &disk.table.header.disk_guid);
    rewrite_gpt(
        sys,
        &disk,
        &emptied,
        &format!("marking slot {target} empty"),
    )?;
    let left_empty = |cause: ApplyError| ApplyError::SlotLeftEmpty {
        slot: target,
        cause: Box::new(cause),
    };

    // 4. The parts.
    stream.committed();
    let mut progress = Progress {
        total: root_part.size + verity_part.size + uki_part.size,
        done: 0,
        next: PROGRESS_STEP,
        terminal: sys.is_terminal(),
        start: sys.elapsed(),
    };
    let mut at = header.header_size;
    let root_start = disk.slots.other_root.first_lba * disk.sector_size;
    let verity_start = disk.slots.other_verity.first_lba * disk.sector_size;
    let mut writer = PartWriter {
        stream: stream.as_mut(),
        at: &mut at,
        progress: &mut progress,
    };
    writer
        .part(sys, &root_part, Sink::Disk(&disk.dev, root_start), None)
        .map_err(left_empty)?;
    let mut verity = Vec::with_capacity(verity_part.size as usize);
    writer
        .part(
            sys,
            &verity_part,
            Sink::Disk(&disk.dev, verity_start),
            Some(&mut verity),
        )
        .map_err(left_empty)?;
    let mut uki = Vec::with_capacity(uki_part.size as usize);
    writer
        .part(sys, &uki_part, Sink::Memory, Some(&mut uki))
        .map_err(left_empty)?;
    sys.sync_disk(&disk.dev)
        .map_err(|e| left_empty(ApplyError::Disk(format!("syncing {}: {e}", disk.dev))))?;

    // 5. The slot holds the signed root, and the UKI boots it.
    let sb =
        verify::superblock(&verity, root_part.size).map_err(|e| left_empty(ApplyError::Tree(e)))?;
    let mut tree = verify::TreeBuilder::new(&sb.salt);
    let mut off = 0;
    while off < root_part.size {
        let len = (root_part.size - off).min(CHUNK as u64) as usize;
        let data = sys.read_at(&disk.dev, root_start + off, len).map_err(|e| {
            left_empty(ApplyError::Disk(format!(
                "reading back slot {target}'s root from {}: {e}",
                disk.dev
            )))
        })?;
        tree.feed(&data);
        off += len as u64;
    }
    verify::check_tree(&tree.finish(), &verity, &root_hash)
        .map_err(|e| left_empty(ApplyError::Tree(e)))?;
    verify::check_uki(&uki, &m.root_hash, &m.version)
        .map_err(|e| left_empty(ApplyError::Uki(e)))?;
    say(
        sys,
        &format!(
            "slot {target} verified: dm-verity root hash {}",
            m.root_hash
        ),
    );

    // 6. The slot is whole: init finds it by the root hash.
    let filled = slot::filled(&disk.slots, arch, &root_hash);
    rewrite_gpt(sys, &disk, &filled, &format!("naming slot {target}")).map_err(left_empty)?;

    // 7. The UKI, under its boot-counted name, last.
    let name = UkiName::on_trial(target, tries).file_name();
    let final_path = format!("{uki_dir}/{name}");
    sys.write_synced(&tmp, &uki)
        .map_err(|e| ApplyError::Install(format!("writing {tmp}: {e}")))?;
    sys.rename(&tmp, &final_path)
        .map_err(|e| ApplyError::Install(format!("renaming {tmp} to {name}: {e}")))?;
    sys.sync_dir(&uki_dir)
        .map_err(|e| ApplyError::Install(format!("syncing {uki_dir}: {e}")))?;
    if let Some(u) = &running_uki {
        adjust_running_uki(sys, &uki_dir, u, downgrade)?;
    }

    let mut state = State::load(sys, &paths.state_dir).unwrap_or(state);
    state.last_apply = Some(LastApply {
        version: m.version.clone(),
        from: running.to_string(),
        when: sys.now(),
    });
    if let Err(e) = state.save(sys, &paths.state_dir) {
        say(
            sys,
            &format!("warning: recording the apply in the update state: {e}"),
        );
    }
    Ok(Applied {
        version: m.version,
        from: running.to_string(),
        slot: target,
        uki: name,
        bytes: progress.total,
        took: sys.elapsed().saturating_sub(start),
        downgrade,
    })
}

/// After a downgrade, the running slot's UKI becomes `+0-0` so the older version sorts
/// first; after an upgrade, a running UKI named so gets its plain name back.
fn adjust_running_uki(
    sys: &mut dyn ApplySys,
    uki_dir: &str,
    running: &Uki,
    downgrade: bool,
) -> Result<(), ApplyError> {
    let demoted = Some(Tries { left: 0, done: 0 });
    // `+0-0` says "never tried", which systemd-boot itself never writes, so the
    // entry is recognisably the updater's.
    let name = |tries| {
        UkiName {
            slot: running.name.slot,
            tries,
        }
        .file_name()
    };
    let new_name = if downgrade {
        name(demoted)
    } else if running.name.tries == demoted {
        name(None)
    } else {
        return Ok(());
    };
    let to = format!("{uki_dir}/{new_name}");
    sys.rename(&running.path, &to).map_err(|e| {
        ApplyError::Install(format!(
            "renaming the running version's {} to {new_name}: {e}",
            running.file
        ))
    })?;
    sys.sync_dir(uki_dir)
        .map_err(|e| ApplyError::Install(format!("syncing {uki_dir}: {e}")))
}

/// Writes a GPT rewrite and syncs, then checks both copies read back as `wanted`.
fn rewrite_gpt(
    sys: &mut dyn ApplySys,
    disk: &Disk,
    wanted: &[GptEntry],
    why: &str,
) -> Result<(), ApplyError> {
    let fail = |m: String| ApplyError::Gpt(format!("{why}: {m}"));
    let writes: Vec<DiskWrite> =
        slot::plan_rewrite(&disk.table, disk.sectors, wanted).map_err(|e| fail(e.0))?;
    for w in &writes {
        sys.write_at(&disk.dev, w.offset, &w.bytes)
            .map_err(|e| fail(format!("writing the {} of {}: {e}", w.what, disk.dev)))?;
    }
    sys.sync_disk(&disk.dev)
        .map_err(|e| fail(format!("syncing {}: {e}", disk.dev)))?;
    let places = slot::copy_places(&disk.table, disk.sectors).map_err(|e| fail(e.0))?;
    let dev = disk.dev.clone();
    let mut read = |off: u64, len: usize| sys.read_at(&dev, off, len);
    slot::check_both_copies(&mut read, disk.sector_size, &places, wanted).map_err(fail)
}

/// Progress lines on a terminal: one every few percent of the bytes to write.
struct Progress {
    total: u64,
    done: u64,
    next: u64,
    terminal: bool,
    start: Duration,
}

/// Percent between progress lines.
const PROGRESS_STEP: u64 = 5;

impl Progress {
    fn add(&mut self, sys: &mut dyn ApplySys, n: u64) {
        self.done += n;
        if !self.terminal || self.total == 0 {
            return;
        }
        let pct = self.done * 100 / self.total;
        if pct >= self.next {
            let secs = sys.elapsed().saturating_sub(self.start).as_secs_f64();
            let rate = if secs > 0.0 {
                format!(
                    ", {:.0} MiB/s",
                    self.done as f64 / f64::from(1u32 << 20) / secs
                )
            } else {
                String::new()
            };
            say(
                sys,
                &format!(
                    "{pct:>3}% ({} of {}{rate})",
                    mib(self.done),
                    mib(self.total)
                ),
            );
            self.next = (pct / PROGRESS_STEP + 1) * PROGRESS_STEP;
        }
    }
}

/// Where a part's bytes go.
enum Sink<'a> {
    /// A disk, from a byte offset.
    Disk(&'a str, u64),
    /// Only the copy the caller keeps.
    Memory,
}

/// Streams the parts in file order.
struct PartWriter<'a> {
    stream: &'a mut dyn BundleStream,
    at: &'a mut u64,
    progress: &'a mut Progress,
}

impl PartWriter<'_> {
    /// Reads `part` (skipping the padding before it) into `sink` and `keep`, hashing it;
    /// the hash must be the manifest's.
    fn part(
        &mut self,
        sys: &mut dyn ApplySys,
        part: &BundlePart,
        sink: Sink<'_>,
        mut keep: Option<&mut Vec<u8>>,
    ) -> Result<(), ApplyError> {
        let fail = |failure| ApplyError::Part {
            part: part.kind,
            failure,
        };
        let mut buf = vec![0u8; CHUNK];
        // The padding before the part (zeros, not signed, not used).
        while *self.at < part.offset {
            let n = ((part.offset - *self.at) as usize).min(CHUNK);
            let got = read_full(self.stream, &mut buf[..n])
                .map_err(|e| fail(PartFailure::Read(read_error(&e))))?;
            if got < n {
                return Err(fail(PartFailure::Truncated {
                    got: 0,
                    want: part.size,
                }));
            }
            *self.at += n as u64;
        }
        let mut hash = Sha256::new();
        let mut done = 0u64;
        while done < part.size {
            let n = ((part.size - done) as usize).min(CHUNK);
            let got = read_full(self.stream, &mut buf[..n])
                .map_err(|e| fail(PartFailure::Read(read_error(&e))))?;
            let chunk = &buf[..got];
            hash.update(chunk);
            if let Sink::Disk(dev, start) = sink {
                sys.write_at(dev, start + done, chunk).map_err(|err| {
                    fail(PartFailure::Write {
                        dev: dev.to_string(),
                        err,
                    })
                })?;
            }
            if let Some(k) = keep.as_deref_mut() {
                k.extend_from_slice(chunk);
            }
            done += got as u64;
            *self.at += got as u64;
            for note in self.stream.take_notes() {
                say(sys, &note);
            }
            self.progress.add(sys, got as u64);
            if got < n {
                return Err(fail(PartFailure::Truncated {
                    got: done,
                    want: part.size,
                }));
            }
        }
        let actual = hex(&hash.finalize());
        if actual != part.sha256 {
            return Err(fail(PartFailure::Digest {
                actual,
                signed: part.sha256.clone(),
            }));
        }
        Ok(())
    }
}

/// The message of a read error: the fetch error it carries, else the I/O error.
fn read_error(e: &io::Error) -> String {
    match FetchError::from_io(e) {
        Some(f) => f.to_string(),
        None => e.to_string(),
    }
}

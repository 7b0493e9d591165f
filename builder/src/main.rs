//! `kiln`: bakes immutable node images from a declarative profile.
//!
//! A thin shell over the `kiln` library: parse arguments, set up logging and
//! progress, call the library, turn errors into one clear message.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use kiln::arch::Arch;

/// Bakes immutable, bootable node images: one declarative profile in,
/// UEFI disk images for x86_64 and arm64 out.
///
/// Typical use:
///   kiln lock  profiles/qemu.toml
///   kiln build profiles/qemu.toml --arch all --out out/
///   kiln run   out/qemu-x86_64.raw
#[derive(Debug, Parser)]
#[command(
    name = "kiln",
    version = kiln::VERSION,
    about,
    long_about,
    verbatim_doc_comment
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Global {
    /// Print only errors (no progress bars, no summaries).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Package cache folder (content-addressed, shared by all profiles).
    /// Default: $XDG_CACHE_HOME/kiln or ~/.cache/kiln.
    #[arg(long, global = true, env = "KILN_CACHE", value_name = "DIR")]
    cache: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Resolve every package of a profile for each of its arches and pin
    /// name, version, file and sha256 in <profile>.lock next to it.
    ///
    /// The package indexes come from the Debian archive through apt (which
    /// checks the archive's signatures) in a private state folder; the host's
    /// apt state is never touched. An existing lock that still matches the
    /// profile is kept unless --update is given.
    Lock {
        /// The profile (e.g. profiles/qemu.toml).
        profile: PathBuf,
        /// Re-resolve even if the lock matches the profile (picks up new
        /// package versions, e.g. security updates).
        #[arg(long)]
        update: bool,
    },
    /// Download the locked packages and the profile's [[artifact]] files into
    /// the cache, verifying size and sha256. Files already in the cache are
    /// verified, not downloaded again.
    Fetch {
        /// The profile.
        profile: PathBuf,
        /// Which arch(es) to fetch for.
        #[arg(long, value_enum, default_value = "all")]
        arch: ArchArg,
    },
    /// Build disk images from a profile and its lock.
    ///
    /// Writes <name>-<arch>.raw and <name>-<arch>.manifest.json per arch into
    /// the output folder, atomically: on any error or Ctrl-C nothing is left
    /// there. Missing packages are fetched first; the lock is never
    /// re-resolved silently.
    Build {
        /// The profile.
        profile: PathBuf,
        /// Which arch(es) to build. Default: the host's.
        #[arg(long, value_enum)]
        arch: Option<ArchArg>,
        /// Output folder.
        #[arg(long, default_value = "out", value_name = "DIR")]
        out: PathBuf,
        /// Timestamp (seconds since 1970) that every file time is clamped
        /// to. Default: SOURCE_DATE_EPOCH, else the newest file time in the
        /// locked packages.
        #[arg(long, env = "SOURCE_DATE_EPOCH", value_name = "SECONDS")]
        source_date_epoch: Option<i64>,
        /// Output format(s) instead of the profile's [output] formats:
        /// raw, raw.zst (with a .bmap for bmaptool), qcow2, vhd (fixed, for
        /// Azure), gce (tar.gz for Google Compute Engine) or update (the
        /// signed A/B update bundle <name>-<arch>.update; needs --update-key).
        /// Repeat the flag or separate names with commas.
        #[arg(long = "format", value_name = "NAME", value_delimiter = ',')]
        formats: Vec<String>,
        /// The secret key (from `kiln keygen`) that signs the update format's
        /// bundles. Its public key must be in the profile's [update] keys.
        /// Read only when the update format is built.
        #[arg(long, env = "KILN_UPDATE_KEY", value_name = "FILE")]
        update_key: Option<PathBuf>,
        /// Debug image: root logs in on the serial console (and the virtual
        /// consoles) without a password. Recorded in the manifest. Refused for
        /// profiles whose [agent] channels include "cloud".
        #[arg(long)]
        debug_shell: bool,
        /// Kernel command line words appended after the profile's, e.g.
        /// `kiln.hostname=node-1` (the agent's cmdline channel). Repeatable;
        /// the full command line is recorded in the manifest.
        #[arg(long = "append-cmdline", value_name = "WORDS")]
        append_cmdline: Vec<String>,
    },
    /// Make a key for signing update bundles: the secret key in FILE (mode
    /// 0600) and its public key in FILE.pub (0644).
    ///
    /// The profile names FILE.pub in its [update] keys, so the images built
    /// from it accept bundles signed with FILE; `kiln build --format update
    /// --update-key FILE` signs them. Keep FILE private and backed up: nodes
    /// that trust only its key take no update without it.
    Keygen {
        /// The secret key file to write (the public key goes to FILE.pub).
        #[arg(value_name = "FILE")]
        path: PathBuf,
        /// Overwrite FILE and FILE.pub if they exist.
        #[arg(long)]
        force: bool,
    },
    /// Print a shell completion script for bash, zsh or fish.
    ///
    /// For example `kiln completions bash > ~/.local/share/bash-completion/completions/kiln`;
    /// `make install` puts all three where the shells look under PREFIX.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the kiln(1) manual page (roff), or write it and one page per
    /// command (kiln-build(1), ...) into a folder.
    Man {
        /// Write kiln.1 and kiln-<command>.1 into this folder instead of
        /// printing kiln.1.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Sign update channel documents: what nodes that follow a channel
    /// (node config `[update] channel`) check for a newer version.
    Channel {
        #[command(subcommand)]
        command: ChannelCommand,
    },
    /// Write an image to a disk (only the blocks that hold data), then read
    /// it back and compare.
    ///
    /// IMAGE is raw, raw.zst (with its block map <stem>.raw.bmap beside it)
    /// or qcow2 (fixed VHD works too). TARGET is a whole disk (/dev/sdX,
    /// /dev/nvme0n1, /dev/mmcblk0, a loop device) or a regular file. Refused:
    /// the disk the host runs from, anything mounted, used as swap or held by
    /// device-mapper, a partition (unless --force), a read-only device, a
    /// target smaller than the image, an image that differs from its block
    /// map. On a larger target the GPT's backup copy moves to the target's
    /// end; the node makes its var partition in the rest on first boot.
    Flash {
        /// The image (raw, raw.zst, qcow2 or fixed VHD).
        image: PathBuf,
        /// The disk (or image file) to write.
        target: PathBuf,
        /// The block map to use. Default: <stem>.raw.bmap beside the image,
        /// if it exists (required for raw.zst).
        #[arg(long, value_name = "FILE", conflicts_with = "no_bmap")]
        bmap: Option<PathBuf>,
        /// Ignore any block map and write every byte of the image (raw,
        /// qcow2 and VHD images without a map are written whole anyway).
        #[arg(long)]
        no_bmap: bool,
        /// A node config file put on the flashed ESP as /kiln.toml (the
        /// agent's esp channel).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Write into a partition rather than a whole disk.
        #[arg(long)]
        force: bool,
    },
    /// Boot an image in QEMU with UEFI firmware (OVMF / AAVMF) under TCG,
    /// with the serial console on this terminal. Quit with Ctrl-A X.
    ///
    /// Takes every format `kiln inspect` reads (raw, raw.zst, qcow2, fixed
    /// VHD, GCE tar.gz). The guest's disk is a throwaway qcow2 overlay over
    /// the image, as large as a real disk (--disk-size), so the first boot
    /// makes var as on hardware; the image is never written (unless
    /// --persist). kiln answers the guest's NTP requests (10.0.2.2:123,
    /// which QEMU delivers to the host's 127.0.0.1:123; needs root or
    /// CAP_NET_BIND_SERVICE) so the node's preflight passes, and says at the
    /// login prompt how to get a shell.
    Run {
        /// The disk image (raw, raw.zst, qcow2, fixed VHD or GCE tar.gz).
        image: PathBuf,
        /// Guest arch. Default: from the image's root partition type.
        #[arg(long, value_enum)]
        arch: Option<SingleArch>,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 1024)]
        memory: u32,
        /// Virtual CPUs.
        #[arg(long, default_value_t = 2)]
        cpus: u32,
        /// Boot the image file itself (raw or qcow2) and keep what the guest
        /// writes (default: a throwaway overlay, so the image stays the bytes
        /// the manifest describes).
        #[arg(long)]
        persist: bool,
        /// Size of the guest's disk (the overlay over the image), e.g. 8G or
        /// 20GiB; never less than the image.
        #[arg(long, default_value = "8GiB", value_name = "SIZE", value_parser = parse_disk_size)]
        disk_size: u64,
        /// A node config file (kiln.toml) handed to the guest through QEMU's
        /// fw_cfg as `opt/kiln/config` (the agent's fw_cfg channel).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// An extra read-only raw disk, e.g. a NoCloud `cidata` volume
        /// (repeatable).
        #[arg(long, value_name = "FILE")]
        drive: Vec<PathBuf>,
        /// Do not answer the guest's NTP requests (another SNTP server on
        /// the host's 127.0.0.1:123 does, or the preflight may wait).
        #[arg(long)]
        no_ntp: bool,
        /// Forward the host's 127.0.0.1:PORT to the guest's SSH port (images
        /// built with `[ssh] enable = true`): log in with `ssh -p PORT
        /// root@127.0.0.1` and a key from `ssh_authorized_keys` in --config.
        #[arg(long, value_name = "PORT")]
        ssh_port: Option<u16>,
        /// Extra QEMU arguments, after `--`.
        #[arg(last = true)]
        qemu_args: Vec<String>,
    },
    /// Show what is in an image: its format, the partition table, the ESP's
    /// files, the UKI's kernel, os-release and command line (with the
    /// verity roothash=), the verity superblock, the root filesystem, and
    /// what the manifest next to it says (kiln version, profile, epoch,
    /// kernel, packages).
    ///
    /// The format is read from the bytes: raw, raw.zst, qcow2 (converted to
    /// a temporary raw disk with qemu-img), fixed VHD or GCE tar.gz.
    /// With --verify, everything that can be recomputed is recomputed and
    /// compared, one line per check: both GPT headers and entry arrays, the
    /// sha256 of each partition, of the raw disk and of the file against the
    /// manifest, the dm-verity hash tree rebuilt from the root partition
    /// against the hash partition, its root hash against roothash= and the
    /// manifest, and the root/verity PARTUUIDs against the root hash. Exits
    /// 1 if anything differs or cannot be read.
    Inspect {
        /// The image file.
        image: PathBuf,
        /// Recompute and compare every checksum; exit 1 on any difference.
        #[arg(long)]
        verify: bool,
        /// The manifest to use. Default: <name>-<arch>.manifest.json next to
        /// the image (its format suffix replaced), if it exists.
        #[arg(long, value_name = "PATH", conflicts_with = "no_manifest")]
        manifest: Option<PathBuf>,
        /// Do not read a manifest (inspect and verify the image alone).
        #[arg(long)]
        no_manifest: bool,
        /// List every package the manifest records.
        #[arg(long)]
        packages: bool,
        /// Print the report as JSON (for scripts) instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ChannelCommand {
    /// Write the signed "latest" document that points a channel's nodes at
    /// BUNDLE: its image, arch, version and size (read from the bundle's
    /// header, which must verify with the key's public half), the URL they
    /// download it from, and an expiry.
    ///
    /// Nodes refuse the document once it expires, so an old one cannot be
    /// replayed and a publisher that stopped signing is noticed: sign it
    /// again on a schedule shorter than --expires (at most 90 days). Publish
    /// the document and the bundle on a web server; point nodes at the
    /// document's URL.
    Sign {
        /// The secret key (from `kiln keygen`) that signed the bundle.
        #[arg(long, env = "KILN_UPDATE_KEY", value_name = "FILE")]
        update_key: PathBuf,
        /// The bundle (`kiln build --format update` writes <name>-<arch>.update).
        #[arg(long, value_name = "PATH")]
        bundle: PathBuf,
        /// Where nodes download the bundle: an http(s) URL, or a path
        /// relative to the document's own URL (e.g. homelab-x86_64.update
        /// when both lie in the same folder).
        #[arg(long, value_name = "URL")]
        url: String,
        /// How long the document is valid: a number and s, min, h or d
        /// (1min to 90d), e.g. 7d.
        #[arg(long, value_name = "DURATION")]
        expires: String,
        /// Where to write the document. Default:
        /// <name>-<arch>.channel.json beside the bundle.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// When the document is issued (seconds since 1970). Default:
        /// SOURCE_DATE_EPOCH, else now.
        #[arg(long, env = "SOURCE_DATE_EPOCH", value_name = "SECONDS")]
        issued: Option<u64>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ArchArg {
    /// x86_64 (amd64)
    #[value(name = "x86_64", alias = "amd64")]
    X86_64,
    /// arm64 (aarch64)
    #[value(name = "arm64", alias = "aarch64")]
    Arm64,
    /// every arch the profile lists
    All,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SingleArch {
    /// x86_64 (amd64)
    #[value(name = "x86_64", alias = "amd64")]
    X86_64,
    /// arm64 (aarch64)
    #[value(name = "arm64", alias = "aarch64")]
    Arm64,
}

impl From<SingleArch> for Arch {
    fn from(a: SingleArch) -> Arch {
        match a {
            SingleArch::X86_64 => Arch::X86_64,
            SingleArch::Arm64 => Arch::Arm64,
        }
    }
}

fn arches_for(arg: Option<ArchArg>, profile: &kiln::profile::Profile) -> anyhow::Result<Vec<Arch>> {
    let wanted = match arg {
        Some(ArchArg::All) => return Ok(profile.arches.clone()),
        Some(ArchArg::X86_64) => Arch::X86_64,
        Some(ArchArg::Arm64) => Arch::Arm64,
        None => Arch::host().context("this host is neither x86_64 nor arm64: pass --arch")?,
    };
    if !profile.arches.contains(&wanted) {
        anyhow::bail!(
            "{}: profile does not build for {wanted} (arches = {:?}); pass --arch with one of them",
            profile.path.display(),
            profile.arches.iter().map(|a| a.name()).collect::<Vec<_>>()
        );
    }
    Ok(vec![wanted])
}

/// `kiln run --disk-size`: a size like 8G or 20GiB.
fn parse_disk_size(s: &str) -> Result<u64, String> {
    kiln::profile::parse_size(s)
}

/// `--format` values, in order, without duplicates; `None` when not given.
fn parse_formats(names: &[String]) -> anyhow::Result<Option<Vec<kiln::profile::Format>>> {
    if names.is_empty() {
        return Ok(None);
    }
    let mut formats = Vec::new();
    for name in names {
        let f = kiln::profile::Format::parse(name.trim()).with_context(|| {
            format!(
                "--format {name:?}: unknown output format; supported: {}",
                kiln::profile::Format::names()
            )
        })?;
        if !formats.contains(&f) {
            formats.push(f);
        }
    }
    Ok(Some(formats))
}

fn init_logging(g: &Global) {
    let level = if g.quiet {
        "error"
    } else {
        match g.verbose {
            0 => "info",
            1 => "debug",
            _ => "trace",
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("kiln={level},warn")));
    // Colour only for a person at a terminal: a log file (`2>build.log`) or a pipe gets
    // plain text, and NO_COLOR (any value) or TERM=dumb turns it off there too.
    let colour = kiln::term::colour(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        // A closed log pipe (`2>&1 | head`) must not stop the build: tracing would
        // report the failed write with eprintln!, which panics on that same pipe.
        .log_internal_errors(false)
        .with_target(false)
        .without_time()
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.global);
    kiln::output::install_interrupt_cleanup();
    match run(cli) {
        Ok(code) => code,
        // The reader of our output went away (`| head`): the work is done, end quietly.
        Err(e) if matches!(e.downcast_ref(), Some(kiln::term::PrintError::Closed)) => {
            ExitCode::from(kiln::term::CLOSED_PIPE_STATUS)
        }
        Err(e) => {
            // stderr may be a closed pipe too: never panic over it.
            let _ = writeln!(std::io::stderr(), "kiln: error: {}", error_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, most specific last, each said once:
/// most messages already carry their cause (`{path}: {source}`, sometimes with
/// a hint after it), so a cause whose text is already in the line is skipped.
fn error_line(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !msg.contains(&cause) {
            msg.push_str(": ");
            msg.push_str(&cause);
        }
    }
    msg
}

/// `println!` that ends quietly on a closed pipe ([`kiln::term::print`]).
macro_rules! outln {
    ($($arg:tt)*) => {
        kiln::term::print(format_args!("{}\n", format_args!($($arg)*)))?
    };
}

/// `print!` that ends quietly on a closed pipe ([`kiln::term::print`]).
macro_rules! out {
    ($($arg:tt)*) => {
        kiln::term::print(format_args!($($arg)*))?
    };
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let g = &cli.global;
    let ui = kiln::build::Ui::new(g.quiet);
    let cache = || -> anyhow::Result<kiln::fetch::Cache> {
        Ok(match &g.cache {
            Some(dir) => kiln::fetch::Cache::new(dir.clone()),
            None => kiln::fetch::Cache::from_env()?,
        })
    };
    match cli.command {
        Command::Lock { profile, update } => {
            let profile = kiln::profile::Profile::load(&profile)?;
            let outcome = kiln::build::lock(&profile, &cache()?, update, &ui)?;
            if !g.quiet {
                outln!("{outcome}");
            }
        }
        Command::Fetch { profile, arch } => {
            let profile = kiln::profile::Profile::load(&profile)?;
            let arches = arches_for(Some(arch), &profile)?;
            let n = kiln::build::fetch(&profile, &arches, &cache()?, &ui)?;
            if !g.quiet {
                if n.artifacts == 0 {
                    outln!("{} packages verified in the cache", n.packages);
                } else {
                    outln!(
                        "{} packages and {} artifacts verified in the cache",
                        n.packages,
                        n.artifacts
                    );
                }
            }
        }
        Command::Build {
            profile,
            arch,
            out,
            source_date_epoch,
            formats,
            debug_shell,
            append_cmdline,
            update_key,
        } => {
            let formats = parse_formats(&formats)?;
            let mut profile = kiln::profile::Profile::load(&profile)?;
            if debug_shell {
                profile.enable_debug_shell()?;
            }
            profile.append_cmdline(&append_cmdline)?;
            let arches = arches_for(arch, &profile)?;
            // KILN_UPDATE_KEY may be set for every build: read the key only when a
            // bundle is made, so a build without one never depends on it.
            let wants_update = formats
                .as_ref()
                .unwrap_or(&profile.formats)
                .contains(&kiln::profile::Format::Update);
            let update_key = match update_key {
                Some(path) if wants_update => Some(kiln::keygen::UpdateKey::load(&path)?),
                _ => None,
            };
            let opts = kiln::build::BuildOptions {
                arches,
                out,
                epoch: source_date_epoch,
                agent: kiln::build::AgentSource::from_env(),
                formats,
                update_key,
            };
            let results = kiln::build::build(&profile, &cache()?, &opts, &ui)?;
            if !g.quiet {
                for r in results {
                    outln!("{r}");
                }
            }
        }
        Command::Keygen { path, force } => {
            let files = kiln::keygen::keygen(&path, force)?;
            if !g.quiet {
                outln!(
                    "{}: secret key {} (keep it private; sign with \
                     `kiln build --format update --update-key {}`)",
                    files.secret.display(),
                    files.id,
                    files.secret.display()
                );
                outln!("{}: public key {}", files.public.display(), files.id);
                outln!(
                    "add the public key to the profile, its path relative to the profile's \
                     folder:\n[update]\nkeys = [\"{}\"]",
                    files.public.display()
                );
            }
        }
        Command::Completions { shell } => {
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "kiln", &mut text);
            out!("{}", String::from_utf8_lossy(&text));
        }
        Command::Man { out: None } => {
            let mut text = Vec::new();
            kiln::term::man_page(&Cli::command(), &mut text).context("writing the man page")?;
            out!("{}", String::from_utf8_lossy(&text));
        }
        Command::Man { out: Some(dir) } => {
            for path in kiln::term::write_man_pages(&Cli::command(), &dir)? {
                if !g.quiet {
                    outln!("{}", path.display());
                }
            }
        }
        Command::Channel {
            command:
                ChannelCommand::Sign {
                    update_key,
                    bundle,
                    url,
                    expires,
                    out,
                    issued,
                },
        } => {
            let expires_in = kiln::channel::parse_expires(&expires)?;
            let key = kiln::keygen::UpdateKey::load(&update_key)?;
            let issued = match issued {
                Some(s) => s,
                None => std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .context("the system clock is before 1970")?
                    .as_secs(),
            };
            let signed = kiln::channel::sign(&kiln::channel::SignJob {
                key: &key,
                bundle: &bundle,
                url: &url,
                expires_in,
                issued,
                out: out.as_deref(),
            })?;
            if !g.quiet {
                outln!("{signed}");
            }
        }
        Command::Flash {
            image,
            target,
            bmap,
            no_bmap,
            config,
            force,
        } => {
            use kiln::flash::source::BmapChoice;
            let opts = kiln::flash::FlashOptions {
                image,
                target,
                bmap: match (bmap, no_bmap) {
                    (Some(p), _) => BmapChoice::Path(p),
                    (None, true) => BmapChoice::Ignore,
                    (None, false) => BmapChoice::Beside,
                },
                config,
                force,
            };
            let report = kiln::flash::flash(&opts, &ui, &kiln::runner::HostRunner)?;
            if !g.quiet {
                outln!("{report}");
            }
        }
        Command::Run {
            image,
            arch,
            memory,
            cpus,
            persist,
            disk_size,
            config,
            drive,
            no_ntp,
            ssh_port,
            qemu_args,
        } => {
            let opts = kiln::qemu::run::RunOptions {
                image,
                arch: arch.map(Into::into),
                memory_mib: memory,
                cpus,
                persist,
                disk_size,
                config,
                drives: drive,
                qemu_args,
                sntp: !no_ntp,
                quiet: g.quiet,
                ssh_port,
            };
            let status = kiln::qemu::run::run(&opts, &kiln::runner::HostRunner)?;
            return Ok(if status.success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(status.code().unwrap_or(1).clamp(1, 255) as u8)
            });
        }
        Command::Inspect {
            image,
            verify,
            manifest,
            no_manifest,
            packages,
            json,
        } => {
            use kiln::inspect::{InspectOptions, ManifestSource};
            let opts = InspectOptions {
                manifest: match (manifest, no_manifest) {
                    (Some(p), _) => ManifestSource::Path(p),
                    (None, true) => ManifestSource::Skip,
                    (None, false) => ManifestSource::Beside,
                },
                verify,
            };
            let report = kiln::inspect::inspect(&image, &opts, &kiln::runner::HostRunner)?;
            if json {
                let text =
                    serde_json::to_string_pretty(&report).context("writing the report as JSON")?;
                outln!("{text}");
            } else if !g.quiet {
                if packages {
                    out!("{}", report.with_packages());
                } else {
                    out!("{report}");
                }
            }
            if let Some(why) = report
                .verification
                .as_ref()
                .and_then(|v| v.manifest_skipped.as_ref())
            {
                tracing::warn!("manifest checks skipped: {why}");
            }
            if !report.problems.is_empty() {
                anyhow::bail!(
                    "{}: {} part(s) could not be read: {}",
                    image.display(),
                    report.problems.len(),
                    report.problems.join("; ")
                );
            }
            if let Some(v) = report.verification.as_ref().filter(|v| !v.passed()) {
                let failed: Vec<String> = v.failures().map(|c| c.describe()).collect();
                anyhow::bail!(
                    "{}: {} of {} checks failed: {}",
                    image.display(),
                    failed.len(),
                    v.checks.len(),
                    failed.join("; ")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::error_line;

    /// An error whose message holds its cause before a hint, like
    /// `{path}: cannot read package index: {source} (run ...)`.
    #[derive(Debug)]
    struct WithHint(std::io::Error);

    impl std::fmt::Display for WithHint {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "x.lock: cannot read: {} (run `kiln lock`)", self.0)
        }
    }

    impl std::error::Error for WithHint {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let cause = io.to_string();
        let e = anyhow::Error::new(WithHint(io));
        let line = error_line(&e);
        assert_eq!(line.matches(&cause).count(), 1, "{line}");
        assert!(line.ends_with("(run `kiln lock`)"), "{line}");
        // A cause not in the message is added after it.
        let e = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::NotFound))
            .context("reading y");
        assert_eq!(error_line(&e), format!("reading y: {cause}"));
    }
}

//! Device-mapper ioctl buffers (`linux/dm-ioctl.h`), built and read in safe code.
//!
//! Every device-mapper command is one ioctl on `/dev/mapper/control` whose argument is a
//! `struct dm_ioctl` (312 bytes) followed by a command-specific payload; for a table load
//! the payload is one `struct dm_target_spec` (40 bytes) per target, each followed by its
//! NUL-terminated parameter string. All integers are in native byte order. The ioctl
//! itself is [`crate::ioctl::dm`].

use std::fmt;

use crate::ioctl::DM_IOCTL_SIZE;

/// `DM_VERSION`: asks for the kernel's interface version.
pub const DM_VERSION: u8 = 0;
/// `DM_DEV_CREATE`: creates a device with a name and uuid and no table.
pub const DM_DEV_CREATE: u8 = 3;
/// `DM_DEV_REMOVE`: removes a device by name.
pub const DM_DEV_REMOVE: u8 = 4;
/// `DM_DEV_SUSPEND`: suspends a device, or resumes it (making the loaded table live)
/// when `DM_SUSPEND_FLAG` (bit 1) is not set, which is the only use here.
pub const DM_DEV_SUSPEND: u8 = 6;
/// `DM_TABLE_LOAD`: loads the inactive table of a device.
pub const DM_TABLE_LOAD: u8 = 9;

/// `DM_READONLY_FLAG`: the table (and so the device) is read-only; dm-verity refuses
/// anything else.
pub const DM_READONLY_FLAG: u32 = 1 << 0;

/// The interface version sent with every request. The kernel accepts any request whose
/// major number equals its own (4) and whose minor is not newer than its own; 4.0.0 is
/// all the commands used here need.
pub const INTERFACE_VERSION: [u32; 3] = [4, 0, 0];

/// `sizeof(struct dm_target_spec)`.
pub const TARGET_SPEC_SIZE: usize = 40;

/// Offsets of the `struct dm_ioctl` fields.
const VERSION_AT: usize = 0;
const DATA_SIZE_AT: usize = 12;
const DATA_START_AT: usize = 16;
const TARGET_COUNT_AT: usize = 20;
const OPEN_COUNT_AT: usize = 24;
const FLAGS_AT: usize = 28;
const DEV_AT: usize = 40;
const NAME_AT: usize = 48;
/// `DM_NAME_LEN`.
const NAME_LEN: usize = 128;
const UUID_AT: usize = 176;
/// `DM_UUID_LEN`.
const UUID_LEN: usize = 129;
/// `DM_MAX_TYPE_NAME`.
const TYPE_LEN: usize = 16;

/// Why a request could not be encoded or a reply decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DmError {
    /// A device name that is empty, too long, or contains `/` or NUL.
    BadName(String),
    /// A uuid that is too long or contains NUL.
    BadUuid(String),
    /// A target type that is empty, too long, or contains NUL.
    BadTargetType(String),
    /// Target parameters containing NUL.
    BadParams(String),
    /// A buffer shorter than `struct dm_ioctl`.
    Short(usize),
}

impl fmt::Display for DmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DmError::BadName(n) => write!(
                f,
                "device-mapper name {n:?} must be 1-{} bytes without '/' or NUL",
                NAME_LEN - 1
            ),
            DmError::BadUuid(u) => write!(
                f,
                "device-mapper uuid {u:?} must be at most {} bytes without NUL",
                UUID_LEN - 1
            ),
            DmError::BadTargetType(t) => write!(
                f,
                "device-mapper target type {t:?} must be 1-{} bytes without NUL",
                TYPE_LEN - 1
            ),
            DmError::BadParams(p) => {
                write!(f, "device-mapper target parameters {p:?} contain NUL")
            }
            DmError::Short(n) => write!(
                f,
                "device-mapper reply is {n} bytes, shorter than struct dm_ioctl ({DM_IOCTL_SIZE})"
            ),
        }
    }
}

/// One line of a device-mapper table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// First sector (512 bytes) of the device this target covers.
    pub start: u64,
    /// Number of sectors it covers.
    pub sectors: u64,
    /// Target type, e.g. `verity`.
    pub kind: String,
    /// The target's parameter string.
    pub params: String,
}

/// One device-mapper request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// Device name (`DM_DEV_CREATE` sets it; the other commands find the device by it).
    pub name: String,
    /// Device uuid (only `DM_DEV_CREATE` sets it; empty elsewhere).
    pub uuid: String,
    /// `DM_*_FLAG` bits.
    pub flags: u32,
    /// The table, for `DM_TABLE_LOAD`.
    pub targets: Vec<Target>,
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn get_u32(buf: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&buf[at..at + 4]);
    u32::from_ne_bytes(a)
}

fn get_u64(buf: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&buf[at..at + 8]);
    u64::from_ne_bytes(a)
}

/// Reads a NUL-terminated string from a fixed-size field.
fn get_str(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

impl Request {
    /// A request that only names the device (remove, resume, ...).
    pub fn named(name: &str) -> Request {
        Request {
            name: name.to_string(),
            ..Request::default()
        }
    }

    /// The ioctl buffer: the header, then each target spec with its NUL-terminated
    /// parameters padded to 8 bytes (the kernel requires aligned specs).
    pub fn encode(&self) -> Result<Vec<u8>, DmError> {
        let name = self.name.as_bytes();
        if name.is_empty() || name.len() >= NAME_LEN || name.contains(&b'/') || name.contains(&0) {
            return Err(DmError::BadName(self.name.clone()));
        }
        let uuid = self.uuid.as_bytes();
        if uuid.len() >= UUID_LEN || uuid.contains(&0) {
            return Err(DmError::BadUuid(self.uuid.clone()));
        }
        let mut buf = vec![0u8; DM_IOCTL_SIZE];
        for (i, v) in INTERFACE_VERSION.iter().enumerate() {
            put_u32(&mut buf, VERSION_AT + 4 * i, *v);
        }
        put_u32(&mut buf, DATA_START_AT, DM_IOCTL_SIZE as u32);
        put_u32(&mut buf, TARGET_COUNT_AT, self.targets.len() as u32);
        put_u32(&mut buf, FLAGS_AT, self.flags);
        buf[NAME_AT..NAME_AT + name.len()].copy_from_slice(name);
        buf[UUID_AT..UUID_AT + uuid.len()].copy_from_slice(uuid);
        for t in &self.targets {
            let kind = t.kind.as_bytes();
            if kind.is_empty() || kind.len() >= TYPE_LEN || kind.contains(&0) {
                return Err(DmError::BadTargetType(t.kind.clone()));
            }
            let params = t.params.as_bytes();
            if params.contains(&0) {
                return Err(DmError::BadParams(t.params.clone()));
            }
            // Spec, parameters and their NUL, rounded up so the next spec is aligned.
            let len = (TARGET_SPEC_SIZE + params.len() + 1).next_multiple_of(8);
            let at = buf.len();
            buf.resize(at + len, 0);
            let spec = &mut buf[at..at + len];
            spec[0..8].copy_from_slice(&t.start.to_ne_bytes());
            spec[8..16].copy_from_slice(&t.sectors.to_ne_bytes());
            // status (i32 at 16) stays 0; `next` is the offset of the following spec.
            spec[20..24].copy_from_slice(&(len as u32).to_ne_bytes());
            spec[24..24 + kind.len()].copy_from_slice(kind);
            spec[TARGET_SPEC_SIZE..TARGET_SPEC_SIZE + params.len()].copy_from_slice(params);
        }
        let size = buf.len() as u32;
        put_u32(&mut buf, DATA_SIZE_AT, size);
        Ok(buf)
    }
}

/// What the kernel wrote back into the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The kernel's interface version.
    pub version: [u32; 3],
    /// `DM_*_FLAG` bits as the kernel left them.
    pub flags: u32,
    /// How many times the device is open.
    pub open_count: u32,
    /// Targets in the (active) table.
    pub target_count: u32,
    /// The device number, in the kernel's `huge_encode_dev` form; see [`dev_numbers`].
    pub dev: u64,
    /// Device name.
    pub name: String,
    /// Device uuid.
    pub uuid: String,
}

/// Reads the header of an ioctl buffer after the call.
pub fn decode(buf: &[u8]) -> Result<Reply, DmError> {
    if buf.len() < DM_IOCTL_SIZE {
        return Err(DmError::Short(buf.len()));
    }
    Ok(Reply {
        version: [
            get_u32(buf, VERSION_AT),
            get_u32(buf, VERSION_AT + 4),
            get_u32(buf, VERSION_AT + 8),
        ],
        flags: get_u32(buf, FLAGS_AT),
        open_count: get_u32(buf, OPEN_COUNT_AT),
        target_count: get_u32(buf, TARGET_COUNT_AT),
        dev: get_u64(buf, DEV_AT),
        name: get_str(&buf[NAME_AT..NAME_AT + NAME_LEN]),
        uuid: get_str(&buf[UUID_AT..UUID_AT + UUID_LEN]),
    })
}

/// Splits a `huge_encode_dev` device number into (major, minor): the low 8 bits of the
/// minor, then 12 bits of major, then the rest of the minor.
pub fn dev_numbers(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) as u32;
    let minor = ((dev & 0xff) | ((dev >> 12) & 0xfff_ff00)) as u32;
    (major, minor)
}

/// Decodes the request side of a buffer the way the kernel reads it: the header and the
/// target specs, following each spec's `next`. For the fake machine in tests.
#[cfg(test)]
pub fn decode_request(buf: &[u8]) -> Result<Request, String> {
    let reply = decode(buf).map_err(|e| e.to_string())?;
    let size = get_u32(buf, DATA_SIZE_AT) as usize;
    if size > buf.len() {
        return Err(format!(
            "data_size {size} exceeds the {}-byte buffer",
            buf.len()
        ));
    }
    let mut at = get_u32(buf, DATA_START_AT) as usize;
    let mut targets = Vec::new();
    for i in 0..reply.target_count {
        let spec = buf
            .get(at..at + TARGET_SPEC_SIZE)
            .ok_or(format!("target {i} starts past data_size"))?;
        if at % 8 != 0 {
            return Err(format!("target {i} at offset {at} is not 8-byte aligned"));
        }
        let params = &buf[at + TARGET_SPEC_SIZE..size];
        let end = params
            .iter()
            .position(|&b| b == 0)
            .ok_or(format!("target {i}: parameters are not NUL-terminated"))?;
        targets.push(Target {
            start: get_u64(spec, 0),
            sectors: get_u64(spec, 8),
            kind: get_str(&spec[24..24 + TYPE_LEN]),
            params: String::from_utf8_lossy(&params[..end]).into_owned(),
        });
        at += get_u32(spec, 20) as usize;
    }
    Ok(Request {
        name: reply.name,
        uuid: reply.uuid,
        flags: reply.flags,
        targets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ne32(v: u32) -> [u8; 4] {
        v.to_ne_bytes()
    }

    #[test]
    fn table_load_bytes_are_exact() {
        let params = "1 254:2 254:3 4096 4096 300 1 sha256 ab cd";
        let req = Request {
            name: "kiln-root".into(),
            uuid: String::new(),
            flags: DM_READONLY_FLAG,
            targets: vec![Target {
                start: 0,
                sectors: 2400,
                kind: "verity".into(),
                params: params.into(),
            }],
        };
        let buf = req.encode().unwrap();
        // 312 + 40 + 42 parameter bytes + NUL = 395, padded to 400.
        assert_eq!(buf.len(), 400);
        let mut want = vec![0u8; 400];
        want[0..4].copy_from_slice(&ne32(4));
        want[12..16].copy_from_slice(&ne32(400));
        want[16..20].copy_from_slice(&ne32(312));
        want[20..24].copy_from_slice(&ne32(1));
        want[28..32].copy_from_slice(&ne32(1));
        want[48..57].copy_from_slice(b"kiln-root");
        want[312..320].copy_from_slice(&0u64.to_ne_bytes());
        want[320..328].copy_from_slice(&2400u64.to_ne_bytes());
        want[332..336].copy_from_slice(&ne32(88));
        want[336..342].copy_from_slice(b"verity");
        want[352..352 + params.len()].copy_from_slice(params.as_bytes());
        assert_eq!(buf, want);
        // And the kernel's way of walking it finds the same table.
        assert_eq!(decode_request(&buf).unwrap(), req);
    }

    #[test]
    fn create_carries_name_and_uuid_and_two_targets_stay_aligned() {
        let uuid = format!("KILN-VERITY-{}", "0123456789abcdef".repeat(2));
        let req = Request {
            name: "kiln-root".into(),
            uuid: uuid.clone(),
            flags: 0,
            targets: vec![],
        };
        let buf = req.encode().unwrap();
        assert_eq!(buf.len(), DM_IOCTL_SIZE);
        assert_eq!(&buf[176..176 + uuid.len()], uuid.as_bytes());
        assert_eq!(buf[176 + uuid.len()], 0);
        assert_eq!(get_u32(&buf, 12), 312);
        let two = Request {
            name: "x".into(),
            targets: vec![
                Target {
                    start: 0,
                    sectors: 8,
                    kind: "linear".into(),
                    params: "8:1 0".into(),
                },
                Target {
                    start: 8,
                    sectors: 8,
                    kind: "zero".into(),
                    params: String::new(),
                },
            ],
            ..Request::default()
        };
        let buf = two.encode().unwrap();
        assert_eq!(buf.len(), 312 + 48 + 48);
        assert_eq!(decode_request(&buf).unwrap(), two);
    }

    #[test]
    fn rejects_what_the_kernel_would() {
        let bad = |r: Request| r.encode().unwrap_err().to_string();
        assert!(bad(Request::named("")).contains("name"));
        assert!(bad(Request::named("a/b")).contains("without '/'"));
        assert!(bad(Request::named(&"n".repeat(128))).contains("1-127 bytes"));
        let mut r = Request::named("ok");
        r.uuid = "u".repeat(129);
        assert!(bad(r).contains("uuid"));
        let mut r = Request::named("ok");
        r.targets.push(Target {
            start: 0,
            sectors: 1,
            kind: "a-very-long-target".into(),
            params: String::new(),
        });
        assert!(bad(r).contains("target type"));
        let mut r = Request::named("ok");
        r.targets.push(Target {
            start: 0,
            sectors: 1,
            kind: "zero".into(),
            params: "a\0b".into(),
        });
        assert!(bad(r).contains("NUL"));
        assert_eq!(decode(&[0; 100]), Err(DmError::Short(100)));
    }

    #[test]
    fn reads_the_reply_and_device_numbers() {
        let mut buf = Request::named("kiln-root").encode().unwrap();
        // As the kernel leaves it after DM_DEV_CREATE of 253:5 and 4.47.0.
        buf[0..12].copy_from_slice(&[ne32(4), ne32(47), ne32(0)].concat());
        buf[40..48].copy_from_slice(&((253u64 << 8) | 5).to_ne_bytes());
        buf[28..32].copy_from_slice(&ne32(DM_READONLY_FLAG));
        let r = decode(&buf).unwrap();
        assert_eq!(r.version, [4, 47, 0]);
        assert_eq!(r.name, "kiln-root");
        assert_eq!(r.flags, DM_READONLY_FLAG);
        assert_eq!(dev_numbers(r.dev), (253, 5));
        // Minor 300 = 0x12c: low byte 0x2c, the rest shifted past the major.
        assert_eq!(dev_numbers(0x2c | (254 << 8) | (0x100 << 12)), (254, 300));
    }
}

//! The node's identity: its WireGuard private key and its credential for kiln-enroll,
//! with the machine-id and DMI product UUID of the machine they were made on.
//!
//! Made from the kernel's randomness and written to `/var/lib/kiln/identity.json` before
//! anything is sent anywhere, so a power loss after the server recorded the node still
//! finds the same key on the next boot (and the server answers the same enrollment).
//! A disk cloned to another machine carries the file along; the ids then differ and the
//! identity is refused, so two machines never share one key.

use kiln_contract::base64;
use kiln_enroll_proto::api::CREDENTIAL_LEN;
use kiln_enroll_proto::key::PublicKey;
use kiln_enroll_proto::token::ALPHABET;
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey as XPublic, StaticSecret};

use super::{Fatal, IDENTITY_PATH, MACHINE_ID_PATH, PRODUCT_UUID_PATH, STATE_DIR};
use crate::sys::{Files, Random};

/// The node's identity.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    /// WireGuard private key (clamped by x25519 when used).
    pub private_key: [u8; 32],
    /// Its public key.
    pub public_key: PublicKey,
    /// The node's secret for kiln-enroll calls.
    pub credential: String,
    /// /etc/machine-id when it was made.
    pub machine_id: String,
    /// DMI product UUID when it was made (None without DMI).
    pub product_uuid: Option<String>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secrets stay out of every log.
        write!(
            f,
            "Identity({}, machine-id {}, product uuid {:?})",
            self.public_key, self.machine_id, self.product_uuid
        )
    }
}

/// The file's form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityFile {
    /// Format version (1).
    pub version: u32,
    /// Base64 private key.
    pub private_key: String,
    /// Base64 public key (checked against the private key on load).
    pub public_key: PublicKey,
    /// The credential.
    pub credential: String,
    /// The machine-id it was made on.
    pub machine_id: String,
    /// The DMI product UUID it was made on.
    pub product_uuid: Option<String>,
}

/// The public key of a private key.
pub fn public_of(private_key: &[u8; 32]) -> PublicKey {
    let secret = StaticSecret::from(*private_key);
    PublicKey(XPublic::from(&secret).to_bytes())
}

/// A credential from random bytes: [`CREDENTIAL_LEN`] characters a-z0-9. Bytes at or
/// above the largest multiple of 36 are skipped so every character is equally likely.
pub fn credential_from(random: &[u8]) -> Option<String> {
    let limit = 256 - 256 % ALPHABET.len();
    let out: String = random
        .iter()
        .filter(|b| usize::from(**b) < limit)
        .take(CREDENTIAL_LEN)
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect();
    (out.len() == CREDENTIAL_LEN).then_some(out)
}

/// The machine's ids now: (machine-id, DMI product UUID).
pub fn current_ids<S: Files + ?Sized>(sys: &mut S) -> Result<(String, Option<String>), Fatal> {
    let mid = sys
        .read_file(MACHINE_ID_PATH)
        .map_err(|e| Fatal::retry(format!("{MACHINE_ID_PATH}: {e}")))?;
    let mid = String::from_utf8_lossy(&mid).trim().to_string();
    if !crate::init::machine_id::valid_machine_id(&mid) {
        return Err(Fatal::retry(format!(
            "{MACHINE_ID_PATH} holds {mid:?}, not a machine-id (32 lowercase hex digits); \
             the identity is tied to it, so the overlay waits for systemd to set one"
        )));
    }
    let uuid = match sys.read_file(PRODUCT_UUID_PATH) {
        Ok(b) => {
            let u = String::from_utf8_lossy(&b).trim().to_ascii_lowercase();
            (!u.is_empty()).then_some(u)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Fatal::retry(format!("{PRODUCT_UUID_PATH}: {e}"))),
    };
    Ok((mid, uuid))
}

/// Parses and checks the file's text.
pub fn parse(text: &[u8]) -> Result<Identity, String> {
    let f: IdentityFile = serde_json::from_slice(text).map_err(|e| e.to_string())?;
    if f.version != 1 {
        return Err(format!("version {} is not 1", f.version));
    }
    let key: [u8; 32] = base64::decode(&f.private_key)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("private_key is not 32 bytes of base64")?;
    if public_of(&key) != f.public_key {
        return Err("public_key does not belong to private_key".to_string());
    }
    if f.credential.len() != CREDENTIAL_LEN || !f.credential.bytes().all(|b| ALPHABET.contains(&b))
    {
        return Err(format!(
            "credential is not {CREDENTIAL_LEN} characters a-z0-9"
        ));
    }
    Ok(Identity {
        private_key: key,
        public_key: f.public_key,
        credential: f.credential,
        machine_id: f.machine_id,
        product_uuid: f.product_uuid,
    })
}

/// The file's text.
pub fn render(id: &Identity) -> Vec<u8> {
    let f = IdentityFile {
        version: 1,
        private_key: base64::encode(&id.private_key),
        public_key: id.public_key,
        credential: id.credential.clone(),
        machine_id: id.machine_id.clone(),
        product_uuid: id.product_uuid.clone(),
    };
    let mut out = serde_json::to_vec_pretty(&f).unwrap_or_default();
    out.push(b'\n');
    out
}

/// What differs between the stored identity's machine and this one.
pub fn differences(id: &Identity, mid: &str, uuid: Option<&str>) -> Vec<String> {
    let show = |u: Option<&str>| u.map_or("(none)".to_string(), str::to_string);
    let mut out = Vec::new();
    if id.machine_id != mid {
        out.push(format!(
            "machine-id: stored {}, this machine {mid}",
            id.machine_id
        ));
    }
    if id.product_uuid.as_deref() != uuid {
        out.push(format!(
            "DMI product UUID: stored {}, this machine {}",
            show(id.product_uuid.as_deref()),
            show(uuid)
        ));
    }
    out
}

/// Loads the identity, or makes and persists a new one. Refuses a stored identity made
/// on another machine (a cloned disk).
pub fn load_or_create<S: Files + Random + ?Sized>(sys: &mut S) -> Result<Identity, Fatal> {
    let (mid, uuid) = current_ids(sys)?;
    match sys.read_file(IDENTITY_PATH) {
        Ok(bytes) => {
            let id = parse(&bytes).map_err(|why| {
                Fatal::stop(format!(
                    "{IDENTITY_PATH} is damaged ({why}); delete {STATE_DIR} to enroll this \
                     machine as a new node"
                ))
            })?;
            let diffs = differences(&id, &mid, uuid.as_deref());
            if !diffs.is_empty() {
                return Err(Fatal::stop(format!(
                    "{IDENTITY_PATH} was made on another machine: this looks like a cloned \
                     disk ({}). Its key is not used and nothing was sent. To enroll this \
                     machine as a new node, delete {STATE_DIR} (rm -rf {STATE_DIR}) and \
                     reboot: the machine then also gets a machine-id of its own",
                    diffs.join("; ")
                )));
            }
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            sys.random(&mut key)
                .map_err(|e| Fatal::retry(format!("random bytes for the key: {e}")))?;
            let credential = loop {
                let mut r = [0u8; 64];
                sys.random(&mut r)
                    .map_err(|e| Fatal::retry(format!("random bytes for the credential: {e}")))?;
                if let Some(c) = credential_from(&r) {
                    break c;
                }
            };
            // Clamped as x25519 uses it, so the file shows what `wg` would.
            key[0] &= 248;
            key[31] &= 127;
            key[31] |= 64;
            let id = Identity {
                private_key: key,
                public_key: public_of(&key),
                credential,
                machine_id: mid,
                product_uuid: uuid,
            };
            sys.write_private(IDENTITY_PATH, &render(&id))
                .map_err(|e| Fatal::retry(format!("writing {IDENTITY_PATH}: {e}")))?;
            Ok(id)
        }
        Err(e) => Err(Fatal::retry(format!("{IDENTITY_PATH}: {e}"))),
    }
}

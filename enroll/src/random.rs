//! Secret randomness for token ids and secrets, straight from the kernel.

use std::io::{self, Read};

const SOURCE: &str = "/dev/urandom";

/// `N` random bytes from /dev/urandom; the error names the device.
pub fn bytes<const N: usize>() -> io::Result<[u8; N]> {
    let mut out = [0u8; N];
    std::fs::File::open(SOURCE)
        .and_then(|mut f| f.read_exact(&mut out))
        .map_err(|e| io::Error::new(e.kind(), format!("reading {SOURCE}: {e}")))?;
    Ok(out)
}

/// `len` characters drawn uniformly from `alphabet` (1 to 256 ASCII characters) with
/// bytes from /dev/urandom.
pub fn string(len: usize, alphabet: &[u8]) -> io::Result<String> {
    if alphabet.is_empty() || alphabet.len() > 256 || !alphabet.is_ascii() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "an alphabet of {} characters (1 to 256 ASCII characters are usable)",
                alphabet.len()
            ),
        ));
    }
    let mut out = String::with_capacity(len);
    while out.len() < len {
        take_uniform(&mut out, len, alphabet, &bytes::<64>()?);
    }
    Ok(out)
}

/// Appends a character for each byte of `random` below the largest multiple of the
/// alphabet's size, until `out` holds `len`. The other bytes are thrown away: folding
/// them in with `%` would make the first `256 % size` characters more likely than the
/// rest.
fn take_uniform(out: &mut String, len: usize, alphabet: &[u8], random: &[u8]) {
    let limit = 256 - 256 % alphabet.len();
    for &b in random {
        if out.len() >= len {
            break;
        }
        if usize::from(b) < limit {
            out.push(char::from(alphabet[usize::from(b) % alphabet.len()]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_character_is_equally_likely() {
        let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
        // Every byte value once is the uniform input: with `% 36` the first four
        // characters would come up 8 times and the others 7; with rejection each comes
        // up exactly 7 times (252 bytes kept, 4 thrown away).
        let all: Vec<u8> = (0..=255).collect();
        let mut out = String::new();
        take_uniform(&mut out, 1000, alphabet, &all);
        assert_eq!(out.len(), 252);
        for c in alphabet {
            let n = out.bytes().filter(|b| b == c).count();
            assert_eq!(n, 7, "{}", char::from(*c));
        }
        let real = string(1000, alphabet).unwrap();
        assert_eq!(real.len(), 1000);
        assert!(real.bytes().all(|b| alphabet.contains(&b)));
        assert!(string(1, b"").is_err());
    }
}

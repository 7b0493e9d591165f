//! Human byte sizes: "2GiB", "512MiB", "64M", "1048576".

/// Parses a size with an optional binary unit (K, M, G, T, with or without `iB`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like \"2GiB\" or \"512MiB\""))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?}; use KiB, MiB, GiB or TiB"
            ))
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Formats bytes with the largest exact-enough binary unit.
pub fn format_size(n: u64) -> String {
    const UNITS: [(&str, u32); 4] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
    for (name, shift) in UNITS {
        if n >= 1 << shift {
            let v = n as f64 / (1u64 << shift) as f64;
            return if n % (1 << shift) == 0 {
                format!("{} {name}", n >> shift)
            } else {
                format!("{v:.1} {name}")
            };
        }
    }
    format!("{n} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_format() {
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("2 parsecs").is_err());
        assert!(parse_size("GiB").is_err());
        assert_eq!(format_size(128 << 20), "128 MiB");
        assert_eq!(format_size(1536 << 20), "1.5 GiB");
    }
}

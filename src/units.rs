//! Sizes and durations as users write them (`256MiB`, `1m30s`) and as
//! messages and imported specs show them.

use std::time::Duration;

/// Parse a size like `500M`, `2G`, `1024`, `10KiB`, `1.5G` (binary units
/// whether written `MB` or `MiB`, as Docker reads them); `None` for
/// anything else, and for sizes past 2^64 bytes (never clamped).
pub fn parse_size(s: &str) -> Option<u64> {
    const SIZES: parse_size::Config = parse_size::Config::new().with_binary();
    SIZES.parse_size(s.trim()).ok()
}

/// A size in the largest binary unit that divides it: `64 MiB`, `1 GiB`.
pub fn format_size(b: u64) -> String {
    if b != 0 && b.is_multiple_of(1 << 30) {
        format!("{} GiB", b >> 30)
    } else if b != 0 && b.is_multiple_of(1 << 20) {
        format!("{} MiB", b >> 20)
    } else if b != 0 && b.is_multiple_of(1 << 10) {
        format!("{} KiB", b >> 10)
    } else {
        format!("{b} bytes")
    }
}

/// A size rounded for people: `1.1 MiB`, `137 MiB`, `512 bytes`.
pub fn approx_size(b: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if b < 1024 {
        return format!("{b} bytes");
    }
    let mut v = b as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if v < 10.0 {
        format!("{v:.1} {}", UNITS[unit])
    } else {
        format!("{v:.0} {}", UNITS[unit])
    }
}

/// Go-style durations: `30s`, `1m30s`, `500ms`, `1h`; `None` for anything
/// else, and past Go's limit (2^63 nanoseconds, about 292 years).
pub fn parse_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * unit;
        rest = &rest[u..];
    }
    if !(total.is_finite() && total <= i64::MAX as f64 / 1e9) {
        return None;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// A duration as Go prints it (`30s`, `1m30s`, `500ms`), which Docker reads back.
pub fn format_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    if !ns.is_multiple_of(1_000_000_000) {
        return if ns.is_multiple_of(1_000_000) {
            format!("{}ms", ns / 1_000_000)
        } else if ns.is_multiple_of(1000) {
            format!("{}us", ns / 1000)
        } else {
            format!("{ns}ns")
        };
    }
    let secs = ns / 1_000_000_000;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("2K"), Some(2048));
        assert_eq!(parse_size("1.5MiB"), Some(3 << 19));
        assert_eq!(parse_size("3 G"), Some(3 << 30));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("5 parsecs"), None);
        // Past 2^64 bytes: an error, never the largest number.
        assert_eq!(parse_size("99999999999T"), None);
        assert_eq!(parse_size("18446744073709551616"), None);
        assert_eq!(parse_size("99999999999.5T"), None);
        // Exact, not through a float: 16777215.9 × 2^40, rounded.
        assert_eq!(parse_size("16777215.9T"), Some(18_446_743_963_758_388_838));
        assert_eq!(parse_size("64MB"), Some(64 << 20));
    }

    #[test]
    fn durations_print_as_go_does() {
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn durations_read_back() {
        for s in ["30s", "1m30s", "500ms", "1h", "0s", "250us"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
        assert_eq!(parse_duration("10x"), None);
        // Past Go's limit: an error, not a panic.
        assert_eq!(parse_duration("99999999999999999999999h"), None);
        assert_eq!(
            parse_duration("2562047h"),
            Some(Duration::from_secs(2_562_047 * 3600))
        );
        assert_eq!(parse_duration("2562048h"), None);
        assert_eq!(parse_duration("1e400s"), None);
        assert_eq!(format_size(64 << 20), "64 MiB");
        assert_eq!(format_size(1000), "1000 bytes");
    }

    #[test]
    fn approximate_sizes_round_for_people() {
        assert_eq!(approx_size(512), "512 bytes");
        assert_eq!(approx_size(1_088_148), "1.0 MiB");
        assert_eq!(approx_size(143_276_794), "137 MiB");
        assert_eq!(approx_size(3 << 30), "3.0 GiB");
    }
}

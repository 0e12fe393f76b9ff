//! Parsers for the textual forms settings take, shared by the file and the environment.

use std::time::Duration;

/// Go's `strconv.ParseBool` forms, in any case (Viper lower-cases nothing, but users write
/// `TRUE` and `True` in manifests, and the Go agent accepts them).
pub(super) fn parse_bool(raw: &str) -> Result<bool, String> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "1" | "t" | "true" => Ok(true),
        "0" | "f" | "false" => Ok(false),
        _ => Err(format!("{raw:?} is not a boolean (use true or false)")),
    }
}

pub(super) fn parse_port(raw: &str) -> Result<u16, String> {
    match raw.trim().parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        Ok(p) => Err(format!("{p} is out of range (1 to 65535)")),
        Err(_) => Err(format!("{raw:?} is not a port number (1 to 65535)")),
    }
}

pub(super) fn parse_optional_port(raw: &str) -> Result<u16, String> {
    match raw.trim() {
        "0" => Ok(0),
        other => parse_port(other).map_err(|e| format!("{e}, or 0 to disable")),
    }
}

pub(super) fn parse_count(raw: &str) -> Result<u64, String> {
    match raw.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{raw:?} is not a positive whole number")),
    }
}

/// Go's largest `time.Duration` (2^63 − 1 ns), whole seconds. Go rejects longer durations;
/// so do we, because the timers these settings feed add them to the monotonic clock, which
/// panics on overflow (`u64::MAX` seconds does).
const MAX_DURATION_SECS: u64 = 9_223_372_036;
const MAX_DURATION: Duration = Duration::new(MAX_DURATION_SECS, 854_775_807);

/// Integer seconds, as the Go agent's settings are documented, or a Go duration string
/// (`1h2m3.5s`, `500ms`), which users also write.
pub(super) fn parse_duration(raw: &str) -> Result<Duration, String> {
    let s = raw.trim();
    let bad = || {
        format!("{raw:?} is not a duration (seconds such as 30, or a form such as 30s, 5m, 1h30m)")
    };
    if s.is_empty() {
        return Err(bad());
    }
    let too_long = || {
        format!(
            "{raw:?} is too long a duration (at most {MAX_DURATION_SECS} seconds, about 292 years)"
        )
    };
    if let Ok(secs) = s.parse::<u64>() {
        return match Duration::from_secs(secs) {
            d if d > MAX_DURATION => Err(too_long()),
            d => Ok(d),
        };
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_end == 0 {
            return Err(bad());
        }
        let number: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_end..];
        let part = Duration::try_from_secs_f64(number * unit).map_err(|_| bad())?;
        total = total.checked_add(part).ok_or_else(bad)?;
    }
    if total > MAX_DURATION {
        return Err(too_long());
    }
    Ok(total)
}

/// The environment form of a list: Viper splits on white space; commas are accepted too
/// because Helm values are often written that way.
pub(super) fn parse_env_list(raw: &str) -> Vec<String> {
    raw.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Letters and digits only, at least 32: the DCA token node agents send in a header.
pub fn validate_auth_token(token: &str) -> Result<(), String> {
    let n = token.chars().count();
    if n < 32 {
        return Err(format!(
            "the token has {n} characters; it must have at least 32 ASCII letters and digits"
        ));
    }
    if let Some(c) = token.chars().find(|c| !c.is_ascii_alphanumeric()) {
        return Err(format!(
            "the token contains {c:?}; it may contain only ASCII letters and digits"
        ));
    }
    Ok(())
}

/// The DCA's scrubbing of a secret: stars for all but the last 5 characters.
pub fn scrub_secret(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() <= 5 {
        return "*".repeat(chars.len());
    }
    let keep = chars.len() - 5;
    let mut s = "*".repeat(keep);
    s.extend(&chars[keep..]);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bools() {
        for (raw, want) in [
            ("true", Some(true)),
            ("TRUE", Some(true)),
            ("True", Some(true)),
            ("1", Some(true)),
            ("t", Some(true)),
            (" false ", Some(false)),
            ("FALSE", Some(false)),
            ("0", Some(false)),
            ("F", Some(false)),
            ("yes", None),
            ("", None),
            ("2", None),
        ] {
            assert_eq!(parse_bool(raw).ok(), want, "{raw:?}");
        }
    }

    #[test]
    fn ports() {
        for (raw, want) in [
            ("5005", Some(5005)),
            ("1", Some(1)),
            ("65535", Some(65535)),
            ("0", None),
            ("65536", None),
            ("-1", None),
            ("abc", None),
            ("", None),
        ] {
            assert_eq!(parse_port(raw).ok(), want, "{raw:?}");
        }
        assert_eq!(parse_optional_port("0"), Ok(0));
        assert!(
            parse_optional_port("70000")
                .unwrap_err()
                .contains("0 to disable")
        );
    }

    #[test]
    fn durations() {
        for (raw, want) in [
            ("30", Some(30_000)),
            ("0", Some(0)),
            ("30s", Some(30_000)),
            ("1m30s", Some(90_000)),
            ("1h", Some(3_600_000)),
            ("500ms", Some(500)),
            ("1.5s", Some(1_500)),
            ("2m", Some(120_000)),
            ("", None),
            ("s", None),
            ("10x", None),
            ("-5", None),
            ("1m-2s", None),
            ("abc", None),
        ] {
            assert_eq!(
                parse_duration(raw).ok().map(|d| d.as_millis() as u64),
                want,
                "{raw:?}"
            );
        }
    }

    #[test]
    fn durations_beyond_gos_limit_are_refused() {
        assert_eq!(
            parse_duration("9223372036").ok(),
            Some(Duration::from_secs(9_223_372_036))
        );
        assert_eq!(
            parse_duration("2562047h47m16s").ok(),
            Some(Duration::from_secs(9_223_372_036))
        );
        for raw in [
            "9223372037",
            "18446744073709551615",
            "2562048h",
            "9999999999999h",
        ] {
            let err = parse_duration(raw).unwrap_err();
            assert!(err.contains("too long"), "{raw}: {err}");
        }
    }

    #[test]
    fn tokens() {
        assert!(validate_auth_token("0123456789abcdefABCDEF0123456789").is_ok());
        let short = validate_auth_token("short").unwrap_err();
        assert!(short.contains("32"), "{short}");
        let bad = validate_auth_token("0123456789abcdef0123456789abcdef-").unwrap_err();
        assert!(bad.contains("'-'"), "{bad}");
        // A trailing newline from a token file is not silently part of the token.
        assert!(validate_auth_token("0123456789abcdef0123456789abcdef\n").is_err());
    }

    #[test]
    fn scrubbing() {
        assert_eq!(
            scrub_secret("0123456789abcdef0123456789abcdef"),
            "***************************bcdef"
        );
        assert_eq!(scrub_secret("abc"), "***");
        assert_eq!(scrub_secret(""), "");
        assert_eq!(scrub_secret("abcdef"), "*bcdef");
    }

    #[test]
    fn env_lists() {
        assert_eq!(parse_env_list("a b,c  d"), vec!["a", "b", "c", "d"]);
        assert!(parse_env_list("  ").is_empty());
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(s in ".*") {
            let _ = parse_bool(&s);
            let _ = parse_port(&s);
            let _ = parse_optional_port(&s);
            let _ = parse_count(&s);
            let _ = parse_duration(&s);
            let _ = parse_env_list(&s);
            let _ = validate_auth_token(&s);
            let _ = scrub_secret(&s);
        }
    }
}

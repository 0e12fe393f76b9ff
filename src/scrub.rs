//! Removes secrets from free text before it leaves the machine (the flare): the Go agent's
//! scrubber rules (`pkg/util/scrubber/default.go`), applied in order.
//!
//! - PEM blocks (certificates and keys) → `********`;
//! - passwords in URLs (`scheme://user:secret@host`) → `scheme://user:********@host`;
//! - `Bearer <token>` → `Bearer ********`;
//! - `api_key=…` / `app_key: …` and their spellings (`DD_API_KEY=…` too) → stars and the
//!   last 5 characters (a value too short for that → `********`);
//! - YAML or `KEY=value` lines whose key ends in token, password or secret → `********`;
//! - bare 40-hex (application keys) → 35 stars + the last 5; bare 32-hex (API keys) → 27
//!   stars + the last 5, as Datadog support expects to recognise them.

use std::sync::LazyLock;

use regex::Regex;

const STARS: &str = "********";

struct Rule {
    pattern: Regex,
    replacement: &'static str,
}

fn rule(pattern: &str, replacement: &'static str) -> Rule {
    Rule {
        // The patterns are constants tested below; a typo fails every test at once.
        pattern: Regex::new(pattern).unwrap_or_else(|e| panic!("scrubber pattern {pattern}: {e}")),
        replacement,
    }
}

static RULES: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    vec![
        rule(
            r"-----BEGIN [A-Z0-9 ]+-----[\s\S]*?-----END [A-Z0-9 ]+-----",
            STARS,
        ),
        rule(
            r"(?i)\b([a-z][a-z0-9+.-]*://[^:@/\s]+):[^@/\s]+@",
            "${1}:********@",
        ),
        rule(r"(?i)\b(bearer\s+)[^\s'\x22]+", "${1}********"),
        // `DD_API_KEY=…` too: no word boundary before the hint.
        rule(
            r"(?i)((?:api|app|application)_?key\x22?\s*[=:]\s*[\x22']?)[A-Za-z0-9]*([A-Za-z0-9]{5})\b",
            "${1}***************************${2}",
        ),
        // Too short to keep a tail of.
        rule(
            r"(?i)((?:api|app|application)_?key\x22?\s*[=:]\s*[\x22']?)[A-Za-z0-9]{1,4}\b",
            "${1}********",
        ),
        rule(
            r"(?im)^(\s*-?\s*[\x22']?[A-Za-z0-9_.-]*(?:token|password|passwd|pass|secret)[\x22']?\s*[=:]\s*)\S.*$",
            "${1}********",
        ),
        rule(
            r"\b[A-Fa-f0-9]{35}([A-Fa-f0-9]{5})\b",
            "***********************************${1}",
        ),
        rule(
            r"\b[A-Fa-f0-9]{27}([A-Fa-f0-9]{5})\b",
            "***************************${1}",
        ),
    ]
});

/// `text` with every secret the rules know replaced.
pub(crate) fn scrub(text: &str) -> String {
    let mut out = text.to_owned();
    for rule in RULES.iter() {
        if rule.pattern.is_match(&out) {
            out = rule
                .pattern
                .replace_all(&out, rule.replacement)
                .into_owned();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const API_KEY: &str = "0123456789abcdef0123456789abcdef";
    const APP_KEY: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn every_form_is_scrubbed() {
        let cases: &[(&str, &str)] = &[
            // Bare keys keep their last 5 characters, as the Go agent does.
            (API_KEY, "***************************bcdef"),
            (APP_KEY, "***********************************34567"),
            (
                &format!("key {API_KEY} in a line"),
                "key ***************************bcdef in a line",
            ),
            // Hinted forms, whatever the key.
            (
                "api_key=Sup3rSecretButNotHex99",
                "api_key=***************************Hex99",
            ),
            (
                "app_key: \"Sup3rSecretButNotHex99\"",
                "app_key: \"***************************Hex99\"",
            ),
            (
                "?application_key=abcdefghijkl&x=1",
                "?application_key=***************************hijkl&x=1",
            ),
            // Bearer tokens, in headers and logs.
            (
                "Authorization: Bearer e2eTokenForTheClusterAgent0123456789abcdef",
                "Authorization: Bearer ********",
            ),
            // URL passwords.
            (
                "proxy https://user:hunter2@proxy.local:3128/x",
                "proxy https://user:********@proxy.local:3128/x",
            ),
            // YAML and environment keys that name a secret.
            (
                "  auth_token: abcdefghijklmnopqrstuvwxyz012345",
                "  auth_token: ********",
            ),
            (
                "DD_CLUSTER_AGENT_AUTH_TOKEN=abcdefghijklmnopqrstuvwxyz012345",
                "DD_CLUSTER_AGENT_AUTH_TOKEN=********",
            ),
            ("password: hunter2", "password: ********"),
            ("  - db_pass: \"x y\"", "  - db_pass: ********"),
            ("client_secret = s3", "client_secret = ********"),
            ("DD_API_KEY=abc", "DD_API_KEY=********"),
            // PEM blocks, whole.
            (
                "a\n-----BEGIN PRIVATE KEY-----\nMIIEv\nQIBAD\n-----END PRIVATE KEY-----\nb",
                "a\n********\nb",
            ),
            (
                "-----BEGIN EC PRIVATE KEY-----\nx\n-----END EC PRIVATE KEY-----",
                "********",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(scrub(input), *want, "{input:?}");
        }
    }

    #[test]
    fn ordinary_text_is_left_alone() {
        for text in [
            "Cluster Agent v7.62.0 - Commit: 0a1adda3c6",
            "uid 94e43011-177b-11ea-a4fe-42010a8401d2",
            "nginx.net.request_per_s{kube_container_name:nginx} = 12",
            // A key that only starts with a secret's name is not one.
            "token_name: datadogtoken",
            "leader_election: true",
            "https://api.datadoghq.com/api/v1/query",
            "a 64-hex local token 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef is not a key",
        ] {
            assert_eq!(scrub(text), text, "{text:?}");
        }
    }

    #[test]
    fn scrubbing_is_idempotent() {
        let text = format!("api_key: {API_KEY}\nBearer abc\nhttps://u:p@h/\n{APP_KEY}");
        let once = scrub(&text);
        assert_eq!(scrub(&once), once);
        assert!(!once.contains(API_KEY) && !once.contains(APP_KEY), "{once}");
    }
}

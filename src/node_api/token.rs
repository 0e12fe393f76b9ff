//! The two tokens of the node-agent API, as the Go DCA keeps them:
//! - the node agents' token, when none is configured: the file `cluster_agent.auth_token`
//!   beside the configuration, 32 random bytes as 64 hex characters, owner-only;
//! - the local token of our own CLI (`metamap`, later `status` and `flare`): the file
//!   `auth_token_file_path` (default `auth_token` beside the configuration), made alike.
//!   Only a process that can read that file, in the agent's container, holds it.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::config::{AUTH_TOKEN_FILE_NAME, Secret};

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot create the node-agent token file {path}; set cluster_agent.auth_token \
     (DD_CLUSTER_AGENT_AUTH_TOKEN) or make the folder writable"
)]
pub(crate) struct TokenError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// The configured token, else a new one written to `config_dir`'s token file (mode 0600).
/// Settings loading already read the file when it exists, so here it does not.
pub(crate) fn resolve(
    configured: Option<&Secret>,
    config_dir: &Path,
) -> Result<Secret, TokenError> {
    if let Some(token) = configured {
        return Ok(token.clone());
    }
    let path = config_dir.join(AUTH_TOKEN_FILE_NAME);
    let token = create(&path).map_err(|source| TokenError {
        path: path.clone(),
        source,
    })?;
    tracing::info!(path = %path.display(), "created the node-agent token file");
    Ok(token)
}

/// A new token written to `path`, which must not exist yet (mode 0600 from the start, so
/// it is never readable by others, not even for a moment).
fn create(path: &Path) -> std::io::Result<Secret> {
    let token: String = rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(token.as_bytes())?;
    file.sync_all()?;
    Ok(Secret::new(token))
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum LocalTokenError {
    #[error(
        "cannot create the local API token file {path}; set auth_token_file_path \
         (DD_AUTH_TOKEN_FILE_PATH) to a writable place"
    )]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the local API token file {path} (auth_token_file_path)")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the local API token file {path} (auth_token_file_path) holds no valid token: {message}"
    )]
    Invalid { path: PathBuf, message: String },
}

/// The local token in `path`, as the CLI reads it: line endings stripped, at least 32
/// letters and digits.
pub(crate) fn read_local(path: &Path) -> Result<Secret, LocalTokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| LocalTokenError::Read {
        path: path.to_owned(),
        source,
    })?;
    let token = text.trim_end_matches(['\n', '\r']);
    crate::config::validate_auth_token(token).map_err(|message| LocalTokenError::Invalid {
        path: path.to_owned(),
        message,
    })?;
    Ok(Secret::new(token))
}

/// The agent's local token: the one in `path`, else a new one written there. A replica
/// restarted in the same container keeps it, so a CLI started before the restart still
/// works.
pub(crate) fn local(path: &Path) -> Result<Secret, LocalTokenError> {
    match create(path) {
        Ok(token) => {
            tracing::info!(path = %path.display(), "created the local API token file");
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_local(path),
        Err(source) => Err(LocalTokenError::Create {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_missing_token_file_is_created_owner_only_with_64_hex_characters() {
        let dir = tempfile::tempdir().unwrap();
        let token = resolve(None, dir.path()).unwrap();
        let path = dir.path().join(AUTH_TOKEN_FILE_NAME);
        let written = std::fs::read_to_string(&path).unwrap();
        assert_eq!(written, token.expose());
        assert_eq!(written.len(), 64);
        assert!(written.bytes().all(|b| b.is_ascii_hexdigit()), "{written}");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // What start-up validates a token against.
        assert!(crate::config::validate_auth_token(&written).is_ok());
        // Settings loading reads it back the next time, as the configured token.
        let settings = crate::config::Settings::load_from(None, dir.path(), &|_| None).unwrap();
        assert_eq!(
            settings
                .cluster_agent
                .auth_token
                .as_ref()
                .map(Secret::expose),
            Some(written.as_str())
        );
    }

    #[test]
    fn a_configured_token_is_used_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let configured = Secret::new("e2eTokenForTheClusterAgent0123456789abcdef");
        let token = resolve(Some(&configured), dir.path()).unwrap();
        assert_eq!(token.expose(), configured.expose());
        assert!(!dir.path().join(AUTH_TOKEN_FILE_NAME).exists());
    }

    #[test]
    fn the_local_token_is_created_once_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth_token");
        let first = local(&path).unwrap();
        assert_eq!(first.expose().len(), 64);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A restart, and the CLI, read the same token.
        assert_eq!(local(&path).unwrap().expose(), first.expose());
        assert_eq!(read_local(&path).unwrap().expose(), first.expose());
    }

    #[test]
    fn a_bad_local_token_file_names_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth_token");
        type Case<'a> = (Option<&'a str>, &'a str);
        let cases: &[Case<'_>] = &[
            (None, "cannot read the local API token file"),
            (Some("short"), "holds no valid token"),
            (
                Some("0123456789abcdef0123456789abcdef-"),
                "holds no valid token",
            ),
        ];
        for (content, want) in cases {
            if let Some(content) = content {
                std::fs::write(&path, content).unwrap();
            }
            let line = crate::error::chain_line(&read_local(&path).unwrap_err());
            assert!(
                line.contains(want) && line.contains("auth_token_file_path"),
                "{line}"
            );
            assert!(
                !content.is_some_and(|c| line.contains(c)),
                "token echoed: {line}"
            );
        }
        // Line endings are not part of it (an `echo`-written file works).
        std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").unwrap();
        assert_eq!(
            read_local(&path).unwrap().expose(),
            "0123456789abcdef0123456789abcdef"
        );
        let err = local(Path::new("/nonexistent/folder/auth_token")).unwrap_err();
        let line = crate::error::chain_line(&err);
        assert!(line.contains("DD_AUTH_TOKEN_FILE_PATH"), "{line}");
    }

    #[test]
    fn an_unwritable_folder_names_the_file_and_the_setting() {
        let err = resolve(None, Path::new("/nonexistent/folder")).unwrap_err();
        let line = crate::error::chain_line(&err);
        assert!(
            line.contains("/nonexistent/folder/cluster_agent.auth_token")
                && line.contains("DD_CLUSTER_AGENT_AUTH_TOKEN"),
            "{line}"
        );
    }
}

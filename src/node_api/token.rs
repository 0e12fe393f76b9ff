//! The node agents' token when none is configured: the Go DCA creates the file
//! `cluster_agent.auth_token` beside its configuration, 32 random bytes as 64 hex
//! characters, readable by its owner only.

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
    let token: String = rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let error = |source| TokenError {
        path: path.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(error)?;
    file.write_all(token.as_bytes()).map_err(error)?;
    tracing::info!(path = %path.display(), "created the node-agent token file");
    Ok(Secret::new(token))
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

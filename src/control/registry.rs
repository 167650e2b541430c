//! The workspace: a JSON file listing the attached computes (name → cluster, context,
//! namespace). Default location `$SCOREGATE_WORKSPACE`, else
//! `$XDG_CONFIG_HOME/scoregate/workspace.json`, else `~/.config/scoregate/workspace.json`;
//! written atomically with mode 0600 (it names kubeconfig files).
//!
//! ```json
//! {"workspace": "default", "computes": {"aks-prod": {"kubeconfig": "/home/me/.kube/config",
//!  "context": "prod", "server": "https://…", "namespace": "scoregate", "attached_at": 1795000000}}}
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ControlError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    pub server: String,
    pub namespace: String,
    pub attached_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workspace {
    pub workspace: String,
    #[serde(default)]
    pub computes: BTreeMap<String, Entry>,
}

/// The default registry file.
pub fn default_path() -> PathBuf {
    if let Some(p) = std::env::var_os("SCOREGATE_WORKSPACE") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("scoregate").join("workspace.json")
}

impl Workspace {
    /// Read `path`; a missing file is an empty workspace named after the file's stem
    /// (`workspace.json` → "default").
    pub fn load(path: &Path) -> Result<Workspace, ControlError> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| ControlError::RegistryFormat {
                path: path.to_path_buf(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Workspace {
                workspace: match path.file_stem().and_then(|s| s.to_str()) {
                    Some("workspace") | None => "default".into(),
                    Some(stem) => stem.to_string(),
                },
                computes: BTreeMap::new(),
            }),
            Err(source) => Err(ControlError::Registry {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), ControlError> {
        let err = |source| ControlError::Registry {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let body =
            serde_json::to_vec_pretty(self).map_err(|source| ControlError::RegistryFormat {
                path: path.to_path_buf(),
                source,
            })?;
        crate::fsutil::write_atomic(path, &body, 0o600).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("team-a.json");
        let mut ws = Workspace::load(&path).expect("missing is empty");
        assert_eq!(ws.workspace, "team-a");
        ws.computes.insert(
            "aks1".into(),
            Entry {
                kubeconfig: Some("/k".into()),
                context: None,
                server: "https://x".into(),
                namespace: "scoregate".into(),
                attached_at: 1,
            },
        );
        ws.save(&path).expect("save");
        assert_eq!(Workspace::load(&path).expect("load"), ws);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, b"{").expect("write");
        assert!(matches!(
            Workspace::load(&path),
            Err(ControlError::RegistryFormat { .. })
        ));
    }
}

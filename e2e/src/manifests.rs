//! The deployment manifests as `kubectl apply -k manifests/` sends them, for tests that
//! check them without a cluster and apply them to a real one.
//!
//! Our kustomizations use `resources` only (files, and folders holding a
//! `kustomization.yaml`), so rendering is reading those in order; [`render`] refuses any
//! other kustomize field, so a kustomization that grows one cannot be rendered differently
//! here than by kustomize without a test failing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

/// The repository root (the folder holding `manifests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_owned()
}

/// One rendered object and the file it came from.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub file: PathBuf,
    pub object: Value,
}

impl Rendered {
    pub fn kind(&self) -> &str {
        self.object["kind"].as_str().unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        self.object["metadata"]["name"].as_str().unwrap_or_default()
    }
}

/// Every object of the kustomization in `dir`, in kustomize's resource order, with the files
/// they came from.
pub fn render(dir: &Path) -> Result<Vec<Rendered>> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    render_into(dir, &mut out, &mut seen)?;
    Ok(out)
}

fn render_into(dir: &Path, out: &mut Vec<Rendered>, seen: &mut BTreeSet<PathBuf>) -> Result<()> {
    let file = dir.join("kustomization.yaml");
    let text = std::fs::read_to_string(&file).with_context(|| format!("{}", file.display()))?;
    let kustomization: Value =
        serde_saphyr::from_str(&text).with_context(|| format!("{}", file.display()))?;
    let fields = kustomization
        .as_object()
        .with_context(|| format!("{} is not a mapping", file.display()))?;
    for key in fields.keys() {
        ensure!(
            matches!(key.as_str(), "apiVersion" | "kind" | "resources"),
            "{}: `{key}` is a kustomize feature this renderer does not implement",
            file.display()
        );
    }
    let resources = kustomization["resources"]
        .as_array()
        .with_context(|| format!("{} lists no resources", file.display()))?;
    for resource in resources {
        let relative = resource
            .as_str()
            .with_context(|| format!("{}: a resource is not a path", file.display()))?;
        let path = dir.join(relative);
        let canonical = path
            .canonicalize()
            .with_context(|| format!("{}: resource {relative}", file.display()))?;
        if !seen.insert(canonical.clone()) {
            bail!("{}: {relative} is included twice", file.display());
        }
        if canonical.is_dir() {
            render_into(&canonical, out, seen)?;
        } else {
            for object in documents(&canonical)? {
                out.push(Rendered {
                    file: canonical.clone(),
                    object,
                });
            }
        }
    }
    Ok(())
}

/// The non-empty YAML documents of one file.
pub fn documents(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&text).with_context(|| format!("{}", path.display()))?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// Every `*.yaml` below `dir`, kustomizations included.
pub fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(yaml_files(&path)?);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            files.push(path.canonicalize()?);
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    const KUSTOMIZATION: &str =
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n";

    #[test]
    fn resources_render_in_order_through_folders() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(
            root,
            "kustomization.yaml",
            &format!("{KUSTOMIZATION}resources:\n  - a.yaml\n  - sub\n"),
        );
        write(
            root,
            "a.yaml",
            "kind: A\nmetadata:\n  name: one\n---\nkind: A\nmetadata:\n  name: two\n",
        );
        write(
            root,
            "sub/kustomization.yaml",
            &format!("{KUSTOMIZATION}resources:\n  - b.yaml\n"),
        );
        write(root, "sub/b.yaml", "kind: B\nmetadata:\n  name: three\n");
        let names: Vec<String> = render(root)
            .unwrap()
            .iter()
            .map(|r| format!("{}/{}", r.kind(), r.name()))
            .collect();
        assert_eq!(names, ["A/one", "A/two", "B/three"]);
    }

    #[test]
    fn other_kustomize_features_and_repeats_are_refused() {
        let cases = [
            (
                format!("{KUSTOMIZATION}namespace: x\nresources:\n  - a.yaml\n"),
                "`namespace` is a kustomize feature",
            ),
            (
                format!("{KUSTOMIZATION}resources:\n  - a.yaml\n  - ./a.yaml\n"),
                "included twice",
            ),
            (
                format!("{KUSTOMIZATION}resources:\n  - missing.yaml\n"),
                "resource missing.yaml",
            ),
        ];
        for (kustomization, want) in cases {
            let dir = tempfile::tempdir().unwrap();
            write(dir.path(), "kustomization.yaml", &kustomization);
            write(dir.path(), "a.yaml", "kind: A\nmetadata:\n  name: one\n");
            let err = format!("{:#}", render(dir.path()).unwrap_err());
            assert!(err.contains(want), "{kustomization}: {err}");
        }
    }
}

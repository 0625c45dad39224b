//! `kodev init`: a skaffold.yaml with one ko artifact per main package of the module.

use std::path::Path;

use super::go_list_packages;
use crate::error::{KodevError, Result};

/// A valid image name from a path segment: lowercase, other characters become '-'.
fn image_name_for(segment: &str) -> String {
    let name: String =
        segment
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
    let trimmed = name.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if trimmed.is_empty() {
        "app".to_string()
    } else {
        trimmed.to_string()
    }
}

/// The skaffold.yaml text for the module in `dir`.
pub fn scaffold(dir: &Path) -> Result<String> {
    let packages = go_list_packages(dir, "./...").map_err(KodevError::Usage)?;
    let mains: Vec<_> = packages.into_iter().filter(|p| p.name == "main").collect();
    if mains.is_empty() {
        return Err(KodevError::Usage(format!(
            "no main packages under {}: kodev init looks for `package main` with `go list ./...`",
            dir.display()
        )));
    }
    let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mut used = Vec::new();
    let mut artifacts = String::new();
    for main in &mains {
        let rel = main.dir.strip_prefix(&canonical).unwrap_or(&main.dir);
        let rel_text = rel.to_string_lossy().to_string();
        let main_arg = if rel_text.is_empty() { ".".to_string() } else { format!("./{rel_text}") };
        let segment = main.import_path.rsplit('/').next().unwrap_or("app");
        let mut image = image_name_for(segment);
        if used.contains(&image) {
            image = image_name_for(&rel_text.replace('/', "-"));
        }
        used.push(image.clone());
        artifacts.push_str(&format!("    - image: {image}\n      ko:\n        main: {main_arg}\n"));
    }
    let name = canonical.file_name().map(|n| image_name_for(&n.to_string_lossy())).unwrap_or_else(|| "app".into());
    Ok(format!(
        "apiVersion: {}\nkind: Config\nmetadata:\n  name: {name}\nbuild:\n  artifacts:\n{artifacts}",
        super::skaffold::LATEST_API_VERSION
    ))
}

/// Write `file` with the scaffold for `dir`; an existing file is never overwritten.
pub fn write(dir: &Path, file: &Path) -> Result<String> {
    if file.exists() {
        return Err(KodevError::Usage(format!("{} already exists; kodev init does not overwrite it", file.display())));
    }
    let text = scaffold(dir)?;
    use std::io::Write;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(file)
        .map_err(|e| KodevError::Usage(format!("cannot create {}: {e}", file.display())))?;
    out.write_all(text.as_bytes()).map_err(|e| KodevError::Usage(format!("cannot write {}: {e}", file.display())))?;
    Ok(text)
}

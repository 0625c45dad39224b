//! Image naming exactly as Skaffold does it (REFERENCE §2).

/// Strip `ko://` and lowercase the repository part; a tag or digest keeps its case.
pub fn sanitize(image: &str) -> String {
    let rest = image.strip_prefix("ko://").unwrap_or(image);
    let (repo, suffix) = split_tag_or_digest(rest);
    format!("{}{}", repo.to_lowercase(), suffix)
}

/// Split `name[:tag][@digest]` into the name and the rest (with its separator).
pub fn split_tag_or_digest(image: &str) -> (&str, &str) {
    let name_end = image.find('@').unwrap_or(image.len());
    let name_part = &image[..name_end];
    // A ':' after the last '/' is a tag; one before it is a registry port.
    let last_slash = name_part.rfind('/').map(|i| i + 1).unwrap_or(0);
    match name_part[last_slash..].find(':') {
        Some(colon) => image.split_at(last_slash + colon),
        None => image.split_at(name_end),
    }
}

/// Whether the first path component names a registry host (has a '.' or ':' or is localhost).
pub fn has_registry_host(name: &str) -> bool {
    match name.split_once('/') {
        Some((first, _)) => first.contains('.') || first.contains(':') || first == "localhost",
        None => false,
    }
}

/// What ko means by an image under `ko.local` or `kind.local`: not a registry but its own
/// targets, the local Docker daemon and the nodes of a kind cluster. None for other names.
pub fn ko_local_target(name: &str) -> Option<&'static str> {
    match name.split_once('/').map_or(name, |(host, _)| host) {
        "ko.local" => Some("ko's name for the local Docker daemon"),
        "kind.local" => Some("ko's name for the nodes of a kind cluster"),
        _ => None,
    }
}

fn is_gcp_project_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    (6..=30).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && (bytes[bytes.len() - 1].is_ascii_lowercase() || bytes[bytes.len() - 1].is_ascii_digit())
}

/// `registry/<gcp-project-id>` prefix of a GCR or Artifact Registry name, if any.
fn gcp_prefix(name: &str) -> Option<&str> {
    let mut parts = name.splitn(3, '/');
    let registry = parts.next()?;
    let project = parts.next()?;
    if (registry.contains("gcr.io") || registry.contains("-docker.pkg.dev")) && is_gcp_project_id(project) {
        Some(&name[..registry.len() + 1 + project.len()])
    } else {
        None
    }
}

const MAX_REPO_LENGTH: usize = 255;

/// Skaffold's default-repo substitution for an image base name (already sanitized).
pub fn substitute_default_repo(image: &str, default_repo: Option<&str>, multi_level: bool) -> String {
    let default_repo = match default_repo.map(|r| r.trim_end_matches('/')) {
        Some(r) if !r.is_empty() => r,
        _ => return image.to_string(),
    };
    let (base, suffix) = split_tag_or_digest(image);
    if base.starts_with(default_repo) {
        return image.to_string();
    }
    let repo_prefix = gcp_prefix(default_repo);
    let multi_level = multi_level || repo_prefix.is_some();
    let mut name = if multi_level {
        match (repo_prefix, gcp_prefix(base)) {
            (Some(repo_prefix), Some(base_prefix)) if repo_prefix == base_prefix => {
                format!("{default_repo}{}", &base[base_prefix.len()..])
            }
            _ => format!("{default_repo}/{base}"),
        }
    } else {
        let escaped: String =
            base.chars().map(|c| if matches!(c, '/' | '.' | '_' | ':' | '@') { '_' } else { c }).collect();
        format!("{default_repo}/{escaped}")
    };
    if name.len() > MAX_REPO_LENGTH {
        let mut cut = MAX_REPO_LENGTH;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
    }
    format!("{name}{suffix}")
}

/// Last path segment of an import path: the binary's name in `/ko-app/`.
pub fn binary_name(import_path: &str) -> &str {
    import_path.rsplit('/').next().unwrap_or(import_path)
}

/// Validate a repository name as the distribution spec allows it (lowercase path components).
pub fn validate_repository(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("image name is empty".to_string());
    }
    let (host, path) = if has_registry_host(name) { name.split_once('/').unwrap_or((name, "")) } else { ("", name) };
    if !host.is_empty() && !host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
    {
        return Err(format!("invalid registry host {host:?} in image name {name:?}"));
    }
    for component in path.split('/') {
        let ok = !component.is_empty()
            && component.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
            && component.starts_with(|c: char| c.is_ascii_alphanumeric())
            && component.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !ok {
            return Err(format!(
                "invalid image name {name:?}: path component {component:?} must be lowercase letters, digits and separators (. _ -)"
            ));
        }
    }
    Ok(())
}

/// Validate a tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn validate_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid tag {tag:?}: use letters, digits, '_', '.' and '-' (at most 128, not starting with '.' or '-')"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skaffold_examples() {
        let s = |img: &str, repo: &str| substitute_default_repo(&sanitize(img), Some(repo), false);
        assert_eq!(s("ko://example.com/a/cmd/x", "gcr.io/k8s-skaffold"), "gcr.io/k8s-skaffold/example.com/a/cmd/x");
        assert_eq!(s("ko://example.com/a/cmd/x", "127.0.0.1:5000/dev"), "127.0.0.1:5000/dev/example_com_a_cmd_x");
        assert_eq!(s("gcr.io/some/registry", "gcr.io/default"), "gcr.io/default/gcr.io/some/registry");
        assert_eq!(
            s("gcr.io/default/example/registry", "gcr.io/default/repository"),
            "gcr.io/default/repository/example/registry"
        );
        assert_eq!(s("gcr.io/default/img", "gcr.io/default"), "gcr.io/default/img");
        assert_eq!(sanitize("ko://github.com/Foo/bar/cmd/x"), "github.com/foo/bar/cmd/x");
        assert_eq!(sanitize("Foo/Bar:MyTag"), "foo/bar:MyTag");
        assert_eq!(s("hello:v1", "localhost:5000"), "localhost:5000/hello:v1");
        assert_eq!(substitute_default_repo("hello", None, false), "hello");
        assert_eq!(substitute_default_repo("a/b", Some("reg.io/x"), true), "reg.io/x/a/b");
        let long = "x".repeat(300);
        assert_eq!(substitute_default_repo(&long, Some("reg.io/x"), false).len(), 255);
    }

    #[test]
    fn splits_tags_and_ports() {
        assert_eq!(split_tag_or_digest("127.0.0.1:5000/a:tag"), ("127.0.0.1:5000/a", ":tag"));
        assert_eq!(split_tag_or_digest("127.0.0.1:5000/a"), ("127.0.0.1:5000/a", ""));
        assert_eq!(split_tag_or_digest("a@sha256:00"), ("a", "@sha256:00"));
        assert!(validate_repository("127.0.0.1:5000/dev/hello").is_ok());
        assert!(validate_repository("Hello").is_err());
        assert!(validate_tag("v1.0-dirty").is_ok());
        assert!(validate_tag("-x").is_err());
    }
}

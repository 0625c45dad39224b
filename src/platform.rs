//! `os/arch[/variant]` platforms and ko's matching rule (REFERENCE §4.5).

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        Platform { os: os.to_string(), architecture: architecture.to_string(), variant: variant.map(str::to_string) }
    }

    /// ko's rule: an empty field of the request is a wildcard; a given variant must match.
    pub fn matches(&self, candidate: &Platform) -> bool {
        (self.os.is_empty() || self.os == candidate.os)
            && (self.architecture.is_empty() || self.architecture == candidate.architecture)
            && match &self.variant {
                None => true,
                Some(v) => candidate.variant.as_deref() == Some(v.as_str()),
            }
    }

    /// An attestation entry of an index (`unknown/unknown`) is not a runnable platform.
    pub fn is_unknown(&self) -> bool {
        self.os == "unknown" || self.architecture == "unknown"
    }

    /// The Go environment for cross-compiling to this platform (REFERENCE §4).
    pub fn go_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("CGO_ENABLED".to_string(), "0".to_string()),
            ("GOOS".to_string(), self.os.clone()),
            ("GOARCH".to_string(), self.architecture.clone()),
        ];
        if let Some(variant) = &self.variant {
            match self.architecture.as_str() {
                "arm" => {
                    // ko passes the variant digit, capped at 7 (Go knows 5, 6, 7).
                    let digit: u32 = variant.trim_start_matches('v').parse().unwrap_or(7);
                    env.push(("GOARM".to_string(), digit.min(7).to_string()));
                }
                "amd64" => env.push(("GOAMD64".to_string(), variant.clone())),
                _ => {}
            }
        }
        env
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid platform {0:?}: expected os/arch[/variant], for example linux/amd64 or linux/arm/v7")]
pub struct PlatformParseError(pub String);

impl FromStr for Platform {
    type Err = PlatformParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.trim().split('/').collect();
        let valid_part =
            |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        let (os, arch, variant) = match parts.as_slice() {
            [os, arch] => (*os, *arch, None),
            [os, arch, variant] => (*os, *arch, Some(*variant)),
            _ => return Err(PlatformParseError(s.to_string())),
        };
        if !valid_part(os) || !valid_part(arch) || variant.is_some_and(|v| !valid_part(v)) {
            return Err(PlatformParseError(s.to_string()));
        }
        Ok(Platform::new(os, arch, variant))
    }
}

/// What the user asked for: every platform of the base (`all`) or a list.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum PlatformRequest {
    All,
    List(Vec<Platform>),
}

impl PlatformRequest {
    pub fn parse_list<S: AsRef<str>>(items: &[S]) -> Result<Self, PlatformParseError> {
        let mut out = Vec::new();
        for item in items {
            for piece in item.as_ref().split(',').filter(|p| !p.trim().is_empty()) {
                if piece.trim() == "all" {
                    return Ok(PlatformRequest::All);
                }
                out.push(piece.parse()?);
            }
        }
        Ok(PlatformRequest::List(out))
    }

    pub fn describe(&self) -> Vec<String> {
        match self {
            PlatformRequest::All => vec!["all".to_string()],
            PlatformRequest::List(list) => list.iter().map(|p| p.to_string()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches() {
        let arm: Platform = "linux/arm/v7".parse().unwrap();
        assert_eq!(arm.variant.as_deref(), Some("v7"));
        assert!("linux/arm64".parse::<Platform>().unwrap().matches(&Platform::new("linux", "arm64", Some("v8"))));
        assert!(!arm.matches(&Platform::new("linux", "arm", Some("v6"))));
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux//".parse::<Platform>().is_err());
        let env = arm.go_env();
        assert!(env.contains(&("GOARM".to_string(), "7".to_string())));
    }
}

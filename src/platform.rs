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
    /// What kodev sets for this platform's go builds on top of the process's environment:
    /// [`Platform::go_env`], but cgo as the process says when it says.
    pub fn go_env_over_process(&self) -> Vec<(String, String)> {
        let cgo_set = std::env::var_os("CGO_ENABLED").is_some();
        self.go_env().into_iter().filter(|(k, _)| k != "CGO_ENABLED" || !cgo_set).collect()
    }

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
pub enum PlatformParseError {
    #[error("invalid platform {0:?}: expected os/arch[/variant], for example linux/amd64 or linux/arm/v7")]
    Form(String),
    /// A system or architecture go has no name for: no base image or go build could serve it.
    #[error("invalid platform {platform:?}: go knows no {what} {name:?} ({known})")]
    Unknown { platform: String, what: &'static str, name: String, known: &'static str },
}

impl FromStr for Platform {
    type Err = PlatformParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.trim().split('/').collect();
        let valid_part =
            |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        let (os, arch, variant) = match parts.as_slice() {
            [os, arch] => (*os, *arch, None),
            [os, arch, variant] => (*os, *arch, Some(*variant)),
            _ => return Err(PlatformParseError::Form(s.to_string())),
        };
        if !valid_part(os) || !valid_part(arch) || variant.is_some_and(|v| !valid_part(v)) {
            return Err(PlatformParseError::Form(s.to_string()));
        }
        let unknown = |what, name: &str, known| PlatformParseError::Unknown {
            platform: s.trim().to_string(),
            what,
            name: name.to_string(),
            known,
        };
        if !KNOWN_OS.contains(&os) {
            return Err(unknown("system", os, "for example linux, windows, darwin"));
        }
        if !KNOWN_ARCH.contains(&arch) {
            return Err(unknown("architecture", arch, "for example amd64, arm64, arm, 386, ppc64le, s390x, riscv64"));
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

/// The systems and architectures go knows in file names (go's `internal/syslist`).
const KNOWN_OS: [&str; 18] = [
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "hurd",
    "illumos",
    "ios",
    "js",
    "linux",
    "nacl",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "wasip1",
    "windows",
    "zos",
];
const KNOWN_ARCH: [&str; 24] = [
    "386",
    "amd64",
    "amd64p32",
    "arm",
    "armbe",
    "arm64",
    "arm64be",
    "loong64",
    "mips",
    "mipsle",
    "mips64",
    "mips64le",
    "mips64p32",
    "mips64p32le",
    "ppc",
    "ppc64",
    "ppc64le",
    "riscv",
    "riscv64",
    "s390",
    "s390x",
    "sparc",
    "sparc64",
    "wasm",
];

/// The system a build targets, as go's file name rules see it.
pub struct GoTarget<'a> {
    pub goos: &'a str,
    pub goarch: &'a str,
    /// The build tags the build sets (`-tags`).
    pub tags: &'a [String],
}

impl GoTarget<'_> {
    /// go/build's `matchTag` for the tags a file name can carry.
    fn matches(&self, tag: &str) -> bool {
        tag == self.goos
            || tag == self.goarch
            || matches!((self.goos, tag), ("android", "linux") | ("illumos", "solaris") | ("ios", "darwin"))
            || self.tags.iter().any(|t| t == tag)
    }

    /// Whether go leaves a file out for its name alone (`x_windows.go`, `x_linux_arm64.s` on
    /// another system; go/build's `goodOSArchFile`): whatever it holds, it never joins the
    /// package, so an edit of it cannot change this build.
    pub fn excludes_by_name(&self, file_name: &str) -> bool {
        let stem = file_name.split('.').next().unwrap_or(file_name);
        // Everything before the first '_' is ignored: `linux.go` is not constrained.
        let Some(first) = stem.find('_') else { return false };
        let mut parts: Vec<&str> = stem[first..].split('_').collect();
        if parts.last() == Some(&"test") {
            parts.pop();
        }
        let known_os = |p: &str| KNOWN_OS.contains(&p);
        let known_arch = |p: &str| KNOWN_ARCH.contains(&p);
        match parts.as_slice() {
            [.., os, arch] if known_os(os) && known_arch(arch) => !(self.matches(arch) && self.matches(os)),
            [.., last] if known_os(last) || known_arch(last) => !self.matches(last),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_go_reads_as_another_system_leave_a_file_out_whatever_it_holds() {
        let tags = ["purego".to_string(), "windows".to_string()];
        let linux_amd64 = GoTarget { goos: "linux", goarch: "amd64", tags: &[] };
        for excluded in ["x_windows.go", "x_arm64.s", "x_linux_arm64.go", "x_darwin_amd64.go", "a_b_plan9.pb.go"] {
            assert!(linux_amd64.excludes_by_name(excluded), "{excluded}");
        }
        for kept in [
            "x_linux.go",
            "x_amd64.s",
            "x_linux_amd64.go",
            "windows.go",       // nothing before a '_': not a constraint
            "x_unix.go",        // `unix` is a build tag, not a file name suffix
            "x_windows_foo.go", // the system is not the last word
            "x_foo_arm64x.go",
            "x_purego.go",
        ] {
            assert!(!linux_amd64.excludes_by_name(kept), "{kept}");
        }
        let android = GoTarget { goos: "android", goarch: "arm64", tags: &[] };
        assert!(!android.excludes_by_name("x_linux_arm64.go"), "android builds linux files");
        assert!(GoTarget { goos: "ios", goarch: "arm64", tags: &[] }.excludes_by_name("x_linux.go"));
        assert!(!GoTarget { goos: "ios", goarch: "arm64", tags: &[] }.excludes_by_name("x_darwin.go"));
        let tagged = GoTarget { goos: "linux", goarch: "amd64", tags: &tags };
        assert!(!tagged.excludes_by_name("x_windows.go"), "-tags windows lets the file's constraints decide");
        assert!(tagged.excludes_by_name("x_windows_arm64.go"), "both parts must match");
    }

    #[test]
    fn parses_and_matches() {
        let arm: Platform = "linux/arm/v7".parse().unwrap();
        assert_eq!(arm.variant.as_deref(), Some("v7"));
        assert!("linux/arm64".parse::<Platform>().unwrap().matches(&Platform::new("linux", "arm64", Some("v8"))));
        assert!(!arm.matches(&Platform::new("linux", "arm", Some("v6"))));
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux//".parse::<Platform>().is_err());
        // Names go has no port for are refused when asked for, not when go build fails.
        let unknown = "linux/amd46".parse::<Platform>().unwrap_err().to_string();
        assert!(unknown.contains("no architecture \"amd46\""), "{unknown}");
        assert!("Linux/amd64".parse::<Platform>().unwrap_err().to_string().contains("no system \"Linux\""));
        assert!("windows/arm64".parse::<Platform>().is_ok());
        let env = arm.go_env();
        assert!(env.contains(&("GOARM".to_string(), "7".to_string())));
    }
}

//! `.ko.yaml`: ko's own configuration, read next to where `go` runs or from `KO_CONFIG_PATH`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::KodevError;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KoYaml {
    #[serde(default)]
    pub default_base_image: Option<String>,
    #[serde(default)]
    pub base_image_overrides: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "lenient::platforms")]
    pub default_platforms: Vec<String>,
    #[serde(default, deserialize_with = "lenient::words")]
    pub default_env: Vec<String>,
    #[serde(default, deserialize_with = "lenient::words")]
    pub default_flags: Vec<String>,
    #[serde(default, deserialize_with = "lenient::words")]
    pub default_ldflags: Vec<String>,
    #[serde(default)]
    pub builds: Vec<KoBuild>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KoBuild {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub dir: Option<String>,
    #[serde(default)]
    pub main: Option<String>,
    #[serde(default, deserialize_with = "lenient::one_or_list")]
    pub env: Option<Vec<String>>,
    #[serde(default, deserialize_with = "lenient::words_or_list")]
    pub flags: Option<Vec<String>>,
    #[serde(default, deserialize_with = "lenient::one_or_list")]
    pub ldflags: Option<Vec<String>>,
    /// File capabilities for the binary (`setcap` terms; see `pipeline::caps`).
    #[serde(default, rename = "linux_capabilities", deserialize_with = "lenient::words_or_list")]
    pub linux_capabilities: Option<Vec<String>>,
}

/// ko takes each list of `.ko.yaml` written as one string too. At the top level (viper's
/// `GetStringSlice`) the string is split at white space, platforms here at commas too (as
/// `KO_DEFAULTPLATFORMS`); in `builds`, `flags` is split at white space and `env` and `ldflags`
/// are the one entry it is (ko's `FlagArray` and `StringArray`).
mod lenient {
    use serde::de::{self, Deserializer, SeqAccess, Visitor};
    use serde::Deserialize;

    /// How a string given for a list is cut into its entries.
    const WHOLE: u8 = 0;
    const AT_WHITE_SPACE: u8 = 1;
    const AT_WHITE_SPACE_AND_COMMAS: u8 = 2;

    struct StringList<const CUT: u8>(Vec<String>);

    impl<'de, const CUT: u8> Deserialize<'de> for StringList<CUT> {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct StringOrList<const CUT: u8>;
            impl<'de, const CUT: u8> Visitor<'de> for StringOrList<CUT> {
                type Value = Vec<String>;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a string or a list of strings")
                }
                fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                    let parts: Vec<&str> = match CUT {
                        WHOLE => vec![text],
                        AT_WHITE_SPACE => text.split_whitespace().collect(),
                        _ => text.split(|c: char| c.is_whitespace() || c == ',').filter(|p| !p.is_empty()).collect(),
                    };
                    Ok(parts.into_iter().map(str::to_string).collect())
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                    let mut items = Vec::new();
                    while let Some(item) = seq.next_element::<String>()? {
                        items.push(item);
                    }
                    Ok(items)
                }
            }
            deserializer.deserialize_any(StringOrList::<CUT>).map(StringList)
        }
    }

    fn list<'de, D: Deserializer<'de>, const CUT: u8>(deserializer: D) -> Result<Option<Vec<String>>, D::Error> {
        Ok(Option::<StringList<CUT>>::deserialize(deserializer)?.map(|list| list.0))
    }

    pub fn words<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
        Ok(list::<D, AT_WHITE_SPACE>(deserializer)?.unwrap_or_default())
    }

    pub fn platforms<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
        Ok(list::<D, AT_WHITE_SPACE_AND_COMMAS>(deserializer)?.unwrap_or_default())
    }

    pub fn words_or_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<String>>, D::Error> {
        list::<D, AT_WHITE_SPACE>(deserializer)
    }

    pub fn one_or_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<String>>, D::Error> {
        list::<D, WHOLE>(deserializer)
    }
}

/// ko's top-level settings given in the environment. ko reads .ko.yaml through viper with the
/// prefix `KO` and every key looked up in the environment first: `KO_DEFAULTBASEIMAGE` beats
/// `defaultBaseImage`, and so on (its docs name `KO_DEFAULTBASEIMAGE`). An empty variable counts
/// as unset; a list is split at white space (viper's reading of a string as a list), platforms
/// at commas too; `KO_BASEIMAGEOVERRIDES` is a JSON object. None: not set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KoEnvironment {
    pub default_base_image: Option<String>,
    pub base_image_overrides: Option<BTreeMap<String, String>>,
    pub default_platforms: Option<Vec<String>>,
    pub default_env: Option<Vec<String>>,
    pub default_flags: Option<Vec<String>>,
    pub default_ldflags: Option<Vec<String>>,
}

pub const BASE_IMAGE_VARIABLE: &str = "KO_DEFAULTBASEIMAGE";
pub const OVERRIDES_VARIABLE: &str = "KO_BASEIMAGEOVERRIDES";
pub const PLATFORMS_VARIABLE: &str = "KO_DEFAULTPLATFORMS";
pub const ENV_VARIABLE: &str = "KO_DEFAULTENV";
pub const FLAGS_VARIABLE: &str = "KO_DEFAULTFLAGS";
pub const LDFLAGS_VARIABLE: &str = "KO_DEFAULTLDFLAGS";

impl KoEnvironment {
    /// Read from the process environment. A value ko would refuse (a base image reference
    /// that cannot be read, overrides that are not a JSON object of strings) is a usage error
    /// naming the variable.
    pub fn read() -> Result<KoEnvironment, KodevError> {
        KoEnvironment::read_with(|name| std::env::var(name).ok())
    }

    pub fn read_with(lookup: impl Fn(&str) -> Option<String>) -> Result<KoEnvironment, KodevError> {
        let set = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let list = |name: &str| set(name).map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>());
        let usage = |name: &str, message: String| KodevError::Usage(format!("{name}: {message}"));
        let default_base_image = set(BASE_IMAGE_VARIABLE);
        if let Some(reference) = &default_base_image {
            crate::pipeline::registry::parse_reference(reference)
                .map_err(|e| usage(BASE_IMAGE_VARIABLE, e.to_string()))?;
        }
        let base_image_overrides = match set(OVERRIDES_VARIABLE) {
            None => None,
            Some(text) => {
                let overrides: BTreeMap<String, String> = serde_json::from_str(&text).map_err(|e| {
                    usage(OVERRIDES_VARIABLE, format!("expected a JSON object of import path to base image: {e}"))
                })?;
                for reference in overrides.values() {
                    crate::pipeline::registry::parse_reference(reference)
                        .map_err(|e| usage(OVERRIDES_VARIABLE, e.to_string()))?;
                }
                Some(overrides)
            }
        };
        let default_platforms = set(PLATFORMS_VARIABLE).map(|v| {
            v.split(|c: char| c.is_whitespace() || c == ',').filter(|p| !p.is_empty()).map(str::to_string).collect()
        });
        Ok(KoEnvironment {
            default_base_image,
            base_image_overrides,
            default_platforms,
            default_env: list(ENV_VARIABLE),
            default_flags: list(FLAGS_VARIABLE),
            default_ldflags: list(LDFLAGS_VARIABLE),
        })
    }
}

/// Where `.ko.yaml` is looked for: `KO_CONFIG_PATH` (file or folder) wins over the work dir.
pub fn locate(work_dir: &Path) -> Option<PathBuf> {
    if let Some(configured) = std::env::var_os("KO_CONFIG_PATH").filter(|v| !v.is_empty()) {
        let configured = PathBuf::from(configured);
        let candidate = if configured.is_dir() { configured.join(".ko.yaml") } else { configured };
        return Some(candidate);
    }
    let candidate = work_dir.join(".ko.yaml");
    candidate.is_file().then_some(candidate)
}

/// ko reads .ko.yaml leniently: a misspelt key is dropped without a word and the build goes on
/// without the setting. kodev stops at it instead, and says why.
const KO_YAML_STRICTNESS: &str = "ko would ignore a key it does not know and build without it; kodev stops";

pub fn load(path: &Path) -> Result<KoYaml, KodevError> {
    let text = std::fs::read_to_string(path).map_err(|e| KodevError::Config {
        file: path.to_path_buf(),
        line: None,
        column: None,
        field: None,
        message: format!("cannot read .ko.yaml: {e}"),
    })?;
    if text.trim().is_empty() {
        return Ok(KoYaml::default());
    }
    let document = serde_yaml_ng::Deserializer::from_str(&text);
    let ko_yaml: KoYaml = serde_path_to_error::deserialize(document)
        .map_err(|e| super::skaffold::yaml_error_with(path, &text, e, KO_YAML_STRICTNESS))?;
    // A base image reference that cannot be read is bad input, said before any build.
    let named = ko_yaml.default_base_image.iter().map(|reference| (reference, None));
    let overrides = ko_yaml.base_image_overrides.iter().map(|(package, reference)| (reference, Some(package)));
    for (reference, package) in named.chain(overrides) {
        if let Err(e) = crate::pipeline::registry::parse_reference(reference) {
            let (line, field) = match package {
                None => (key_line_in(&text, None, "defaultBaseImage"), "defaultBaseImage".to_string()),
                Some(package) => {
                    (entry_line_in(&text, "baseImageOverrides", package), format!("baseImageOverrides.{package}"))
                }
            };
            return Err(KodevError::Config {
                file: path.to_path_buf(),
                line,
                column: None,
                field: Some(field),
                message: e.to_string(),
            });
        }
    }
    Ok(ko_yaml)
}

/// Best-effort line of `key` in a `.ko.yaml`: at the top level, or inside the `build`th entry
/// of `builds` (for errors found after decoding, which serde cannot place).
pub fn key_line(path: &Path, build: Option<usize>, key: &str) -> Option<usize> {
    key_line_in(&std::fs::read_to_string(path).ok()?, build, key)
}

fn key_line_in(text: &str, build: Option<usize>, key: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |line: &str| line.len() - line.trim_start().len();
    let is_key = |line: &str, key: &str| {
        let t = line.trim_start().trim_start_matches("- ");
        t.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with(':'))
    };
    let Some(build) = build else {
        return lines.iter().position(|l| indent(l) == 0 && is_key(l, key)).map(|i| i + 1);
    };
    let builds = lines.iter().position(|l| indent(l) == 0 && is_key(l, "builds"))?;
    // The entries of `builds`: the lines starting with "- " at the first one's indentation.
    let items: Vec<usize> = {
        let first = (builds + 1..lines.len()).find(|&i| lines[i].trim_start().starts_with("- "))?;
        let at = indent(lines[first]);
        (first..lines.len())
            .take_while(|&i| {
                lines[i].trim().is_empty() || indent(lines[i]) >= at || lines[i].trim_start().starts_with('#')
            })
            .filter(|&i| indent(lines[i]) == at && lines[i].trim_start().starts_with("- "))
            .collect()
    };
    let start = *items.get(build)?;
    let end = items.get(build + 1).copied().unwrap_or(lines.len());
    (start..end).find(|&i| is_key(lines[i], key)).map(|i| i + 1)
}

/// Best-effort line of `key` inside the top-level map `parent` (an entry of
/// `baseImageOverrides`), else of `parent` itself.
fn entry_line_in(text: &str, parent: &str, key: &str) -> Option<usize> {
    let start = key_line_in(text, None, parent)?;
    let entry = text
        .lines()
        .enumerate()
        .skip(start)
        .take_while(|(_, l)| l.trim().is_empty() || l.starts_with([' ', '\t', '#']))
        .find(|(_, l)| {
            let t = l.trim_start().trim_start_matches(['"', '\'']);
            t.strip_prefix(key).is_some_and(|rest| rest.trim_start_matches(['"', '\'']).trim_start().starts_with(':'))
        });
    Some(entry.map_or(start, |(i, _)| i + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_at_the_top_and_in_each_build() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".ko.yaml");
        let text = "defaultEnv: [A=1]\nbuilds:\n- id: one\n  main: ./a\n  env: [X]\n\n- id: two\n  main: ./b\n  ldflags: [-s]\n  env: [Y]\ndefaultLdflags: []\n";
        std::fs::write(&path, text).unwrap();
        assert_eq!(key_line(&path, None, "defaultEnv"), Some(1));
        assert_eq!(key_line(&path, None, "defaultLdflags"), Some(11));
        assert_eq!(key_line(&path, Some(0), "env"), Some(5));
        assert_eq!(key_line(&path, Some(1), "env"), Some(10));
        assert_eq!(key_line(&path, Some(1), "ldflags"), Some(9));
        assert_eq!(key_line(&path, Some(0), "ldflags"), None);
        assert_eq!(key_line(&path, Some(2), "env"), None);
        let text = "baseImageOverrides:\n  example.com/a: x\n  \"example.com/b\": y\nbuilds: []\n";
        assert_eq!(entry_line_in(text, "baseImageOverrides", "example.com/b"), Some(3));
        assert_eq!(entry_line_in(text, "baseImageOverrides", "example.com/c"), Some(1), "the map, without the entry");
    }

    #[test]
    fn lists_written_as_one_string_are_read_as_ko_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".ko.yaml");
        // ko's own test config writes these as strings (pkg/commands/options/testdata).
        let text = "defaultPlatforms: all\ndefaultEnv: FOO=bar\ndefaultFlags: -tags netgo\n\
                    defaultLdflags: -s -w\nbuilds:\n- id: a\n  main: ./a\n  flags: -tags  netgo\n\
                    \x20 ldflags: -s -w\n  env: GOPRIVATE=x\n- id: b\n  flags: [-v]\n  ldflags: [-s, -w]\n";
        std::fs::write(&path, text).unwrap();
        let ko = load(&path).unwrap();
        assert_eq!(ko.default_platforms, ["all"]);
        assert_eq!(ko.default_env, ["FOO=bar"]);
        assert_eq!(ko.default_flags, ["-tags", "netgo"]);
        assert_eq!(ko.default_ldflags, ["-s", "-w"], "viper splits a top-level string at white space");
        let a = &ko.builds[0];
        assert_eq!(a.flags.as_deref(), Some(&["-tags".to_string(), "netgo".to_string()][..]));
        assert_eq!(a.ldflags.as_deref(), Some(&["-s -w".to_string()][..]), "a build's ldflags string is one entry");
        assert_eq!(a.env.as_deref(), Some(&["GOPRIVATE=x".to_string()][..]));
        let b = &ko.builds[1];
        assert_eq!(b.flags.as_deref(), Some(&["-v".to_string()][..]));
        assert_eq!(b.ldflags.as_deref(), Some(&["-s".to_string(), "-w".to_string()][..]));
        assert_eq!(b.env, None);

        std::fs::write(&path, "defaultPlatforms: linux/amd64,linux/arm64\n").unwrap();
        assert_eq!(load(&path).unwrap().default_platforms, ["linux/amd64", "linux/arm64"]);
        std::fs::write(&path, "builds:\n- id: a\n  flags: {x: 1}\n").unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(
            e.contains(":3") && e.contains("builds[0].flags") && e.contains("a string or a list of strings"),
            "{e}"
        );
    }

    #[test]
    fn ko_settings_in_the_environment_are_read_as_viper_reads_them() {
        let vars: BTreeMap<&str, &str> = [
            ("KO_DEFAULTBASEIMAGE", "registry.example/base:v1"),
            ("KO_DEFAULTPLATFORMS", "linux/amd64,linux/arm64 linux/s390x"),
            ("KO_DEFAULTLDFLAGS", "-s  -w"),
            ("KO_DEFAULTENV", ""),
            ("KO_BASEIMAGEOVERRIDES", r#"{"example.com/a": "registry.example/other:v2"}"#),
        ]
        .into();
        let read = KoEnvironment::read_with(|name| vars.get(name).map(|v| v.to_string())).unwrap();
        assert_eq!(read.default_base_image.as_deref(), Some("registry.example/base:v1"));
        assert_eq!(read.default_platforms.unwrap(), ["linux/amd64", "linux/arm64", "linux/s390x"]);
        assert_eq!(read.default_ldflags.unwrap(), ["-s", "-w"]);
        assert_eq!(read.default_env, None, "an empty variable is not set");
        assert_eq!(read.default_flags, None);
        assert_eq!(read.base_image_overrides.unwrap()["example.com/a"], "registry.example/other:v2");

        let bad = |name: &'static str, value: &'static str| {
            KoEnvironment::read_with(|n| (n == name).then(|| value.to_string())).unwrap_err()
        };
        let e = bad("KO_DEFAULTBASEIMAGE", "Not A/Reference");
        assert!(matches!(e, KodevError::Usage(_)) && e.to_string().starts_with("KO_DEFAULTBASEIMAGE: "), "{e}");
        let e = bad("KO_BASEIMAGEOVERRIDES", "example.com/a=base");
        assert!(e.to_string().starts_with("KO_BASEIMAGEOVERRIDES: expected a JSON object"), "{e}");
    }

    #[test]
    fn a_misspelt_key_stops_with_the_file_line_and_field_and_says_what_ko_would_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".ko.yaml");
        std::fs::write(
            &path,
            "defaultBaseImage: cgr.dev/chainguard/static
builds:
  - id: x
    dirr: .
",
        )
        .unwrap();
        let message = load(&path).unwrap_err().to_string();
        assert!(
            message.starts_with(&format!("{}:4 (field builds[0].dirr): unknown field `dirr`", path.display())),
            "{message}"
        );
        assert!(message.contains("ko would ignore") && !message.contains("skaffold.yaml"), "{message}");
    }
}

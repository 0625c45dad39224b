//! A brief property test run in CI: random mutations of real configs, random image
//! references, platforms and templates must give errors, never panics.

use std::collections::BTreeMap;
use std::path::Path;

use kodev::config::skaffold::{parse_documents, ProfileSelection};
use kodev::config::{naming, template};
use kodev::platform::PlatformRequest;

/// xorshift64*: deterministic, so a failure can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const SEEDS: &[&str] = &[
    include_str!("../examples/hello/skaffold.yaml"),
    include_str!("fixtures/monorepo/skaffold.yaml"),
    include_str!("fixtures/knative/skaffold.yaml"),
    include_str!("fixtures/monorepo/skaffold-profiles.yaml"),
];

const SPICE: &[&str] = &[
    ":", "-", " ", "\n", "\t", "{", "}", "[", "]", "&a", "*a", "<<: *a", "'", "\"", "#", "---\n", "ko://", "..", "%",
    "!!", "|", ">", "~", "null", "0x", "{{", "}}", "@sha256:", "/", "\u{feff}", "é",
];

fn mutate(rng: &mut Rng, text: &str) -> String {
    let mut bytes: Vec<char> = text.chars().collect();
    for _ in 0..1 + rng.below(4) {
        let pos = rng.below(bytes.len() + 1);
        match rng.below(4) {
            0 if !bytes.is_empty() => {
                let end = (pos + rng.below(8)).min(bytes.len());
                bytes.drain(pos.min(end)..end);
            }
            1 => {
                let spice = SPICE[rng.below(SPICE.len())];
                for (i, c) in spice.chars().enumerate() {
                    bytes.insert((pos + i).min(bytes.len()), c);
                }
            }
            2 if !bytes.is_empty() => {
                let at = pos.min(bytes.len() - 1);
                bytes[at] = SPICE[rng.below(SPICE.len())].chars().next().unwrap_or('x');
            }
            _ => {
                // Duplicate a line: repeated keys and items.
                let lines: Vec<String> = bytes.iter().collect::<String>().lines().map(str::to_string).collect();
                if !lines.is_empty() {
                    let line = rng.below(lines.len());
                    let mut out = lines.clone();
                    out.insert(line, lines[line].clone());
                    bytes = out.join("\n").chars().collect();
                }
            }
        }
    }
    bytes.into_iter().collect()
}

#[test]
fn mutated_configs_never_panic() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let selection = ProfileSelection { names: vec!["arm".to_string()], command: "dev".to_string(), kube_context: None };
    for round in 0..3000 {
        let seed = SEEDS[round % SEEDS.len()];
        let text = mutate(&mut rng, seed);
        let result = std::panic::catch_unwind(|| {
            let _ = parse_documents(Path::new("fuzz.yaml"), &text, &selection);
            let _ = parse_documents(Path::new("fuzz.yaml"), &text, &ProfileSelection::default());
        });
        assert!(result.is_ok(), "round {round} panicked on:\n{text}");
    }
}

#[test]
fn random_references_platforms_and_templates_never_panic() {
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let alphabet: Vec<char> = "abcXYZ019:/@._-ko+%{}. é\u{0}".chars().collect();
    let vars: BTreeMap<String, String> = [("A".to_string(), "1".to_string())].into();
    for _ in 0..20_000 {
        let len = rng.below(40);
        let s: String = (0..len).map(|_| alphabet[rng.below(alphabet.len())]).collect();
        let result = std::panic::catch_unwind(|| {
            let sanitized = naming::sanitize(&s);
            let (name, _) = naming::split_tag_or_digest(&sanitized);
            let _ = naming::validate_repository(name);
            let _ = naming::validate_tag(&s);
            let _ = naming::substitute_default_repo(name, Some("gcr.io/my-project-1/x"), false);
            let _ = naming::substitute_default_repo(name, Some("127.0.0.1:5000/dev"), true);
            let _ = PlatformRequest::parse_list(&[s.as_str()]);
            let _ = template::expand(&s, &vars);
            let _ = s.parse::<oci_client::Reference>();
        });
        assert!(result.is_ok(), "panicked on {s:?}");
    }
}

/// Templates made of the language's own pieces (actions, keywords, functions, literals, trim
/// markers and comments, in any order) give a text or an error, never a panic or a hang.
#[test]
fn random_go_templates_never_panic() {
    const PIECES: &[&str] = &[
        "{{",
        "}}",
        "{{- ",
        " -}}",
        ".A",
        ".Env",
        ".Env.A",
        ".Git.IsDirty",
        ".Git",
        ".",
        "$",
        "$x",
        "$x.A",
        ":=",
        "=",
        "|",
        "(",
        ")",
        ",",
        "if ",
        "else ",
        "else if ",
        "end",
        "range ",
        "with ",
        "printf ",
        "print ",
        "index ",
        "slice ",
        "eq ",
        "lt ",
        "and ",
        "or ",
        "not ",
        "len ",
        "default ",
        "trunc ",
        "substr ",
        "repeat ",
        "quote ",
        "\"%s\"",
        "\"%05d\"",
        "\"%.9999f\"",
        "\"%-9999s\"",
        "\"",
        "`",
        "'",
        "'a'",
        "1",
        "-3",
        "0x1F",
        "1e3",
        "1.5",
        "\"\\x\"",
        "\"\\u00e9\"",
        "/*",
        "*/",
        " ",
        "\\",
        "true",
        "nil",
        "é",
        "\n",
        "break",
        "define ",
    ];
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let vars: BTreeMap<String, String> =
        [("A", "1"), ("Git.IsDirty", "true"), ("Timestamp", "5")].map(|(k, v)| (k.to_string(), v.to_string())).into();
    for _ in 0..20_000 {
        let template: String = (0..rng.below(24)).map(|_| PIECES[rng.below(PIECES.len())]).collect();
        let result = std::panic::catch_unwind(|| template::expand(&template, &vars));
        match result {
            Ok(Ok(text)) => assert!(text.len() < 100_000, "{template:?} gave {} bytes", text.len()),
            Ok(Err(_)) => {}
            Err(_) => panic!("panicked on {template:?}"),
        }
    }
}

//! kodev's templates read as Go's text/template reads them: each template below is evaluated
//! by kodev and by Go itself (tests/fixtures/go_template, `go run`) over the same data —
//! Skaffold's top-level variables and ko's `.Env`, `.Git`, `.GoEnv`, `.Date`, `.Timestamp` —
//! and the two must give the same text, or both refuse it.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use common::{repo_root, require_tools, which};
use kodev::config::template::expand;

#[derive(serde::Deserialize, Debug)]
struct GoResult {
    ok: bool,
    out: String,
    /// Shown when the two differ.
    #[allow(dead_code)]
    err: String,
}

fn go_expand(vars: &BTreeMap<String, String>, templates: &[&str]) -> Vec<GoResult> {
    let mut child = Command::new(which("go").unwrap())
        .args(["run", "."])
        .current_dir(repo_root().join("tests/fixtures/go_template"))
        .env("GOFLAGS", "-mod=mod")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run go");
    let request = serde_json::json!({ "vars": vars, "templates": templates });
    child.stdin.take().unwrap().write_all(request.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "go run: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn templates_give_what_gos_text_template_gives() {
    if !require_tools(&["go"]) {
        return;
    }
    let vars: BTreeMap<String, String> = [
        ("VERSION", "v1.2.3"),
        ("NAME", "App <&> 'x' \"y\" = z"),
        ("EMPTY", ""),
        ("LD_FLAGS", "-s -w"),
        ("MODE", "debug"),
        ("Date", "2026-12-08T01:02:03Z"),
        ("Timestamp", "1796691723"),
        ("Git.ShortCommit", "abc1234"),
        ("Git.FullCommit", "abc1234def"),
        ("Git.Branch", "main"),
        ("Git.Tag", "v0.0.0"),
        ("Git.IsDirty", "true"),
        ("Git.IsClean", "false"),
        ("Git.TreeState", "dirty"),
        ("Git.CommitDate", "2026-12-07T00:00:00Z"),
        ("Git.CommitTimestamp", "1796601600"),
        ("GoEnv.GOVERSION", "go1.26.8"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let templates = [
        // Real .ko.yaml and skaffold.yaml settings.
        r#"{{ if index .Env "LD_FLAGS" }}{{ .Env.LD_FLAGS }}{{ end }}"#,
        r#"{{ if index .Env "NOT_SET" }}{{ .Env.NOT_SET }}{{ end }}"#,
        "-X main.version={{.Env.VERSION}} -X main.commit={{.Git.FullCommit}} -X main.date={{.Date}}",
        "{{.Git.ShortCommit}}{{if .Git.IsDirty}}-dirty{{end}}",
        "{{.Git.ShortCommit}}{{if .Git.IsClean}}-clean{{else}}-{{.Git.TreeState}}{{end}}",
        "{{.IMAGE_LESS_SETTING_OF_SKAFFOLD_STYLE_IS_SET_BELOW}}",
        // Control flow, variables, white space.
        r#"{{ if eq .MODE "prod" }}-s -w{{ else if eq .MODE "debug" }}-X main.debug=1{{ else }}none{{ end }}"#,
        r#"{{ if and (ne .MODE "prod") .Git.IsDirty }}dev{{ end }}"#,
        "{{with .VERSION}}v={{.}}{{else}}unset{{end}} {{with .EMPTY}}x{{else}}empty{{end}}",
        "{{$v := .VERSION}}{{$v}}/{{$v}}{{if true}}{{$v = \"changed\"}}{{end}}/{{$v}}",
        "{{range $k, $v := .Git}}{{$k}}={{$v}};{{end}}",
        "{{range .GoEnv}}[{{.}}]{{end}}{{range .Env}}{{else}}none{{end}} {{range $i := 3}}{{$i}}{{.}}{{end}}",
        "{{range $i, $e := 3}}{{$i}}{{$e}}{{end}}",
        "{{range .EMPTY}}x{{else}}none{{end}}",
        "a  {{- .VERSION -}}  b {{/* a comment */}}c {{- /* trimmed */ -}} d",
        "{{-3}} {{ -3 }} {{0x1F}} {{017}} {{1.5}} {{'a'}} {{1e3}}",
        "{{ .Timestamp }} {{ gt .Timestamp 0 }} {{ .Git.CommitTimestamp }}",
        // Functions.
        r#"{{ printf "%s-%05d|%-6s|%q|%x|%X|%v|%t|%c|%o|%b|%+d|%6.2f|%%" .VERSION 42 "ab" .NAME "hi" 255 .Git.IsDirty true 65 8 5 3 3.14159 }}"#,
        r#"{{ printf "%d %s" "str" 4 }} {{ printf "%s" }} {{ printf "%s" 1 2 }}"#,
        r#"{{ print 1 2 "x" 3 "y" "z" true }} {{ println "a" 1 }}"#,
        r#"{{ len .VERSION }} {{ len .Git }} {{ index .VERSION 1 }} {{ slice .VERSION 1 4 }} {{ slice .VERSION 2 }}"#,
        r#"{{ eq .MODE "a" "b" "debug" }} {{ lt "a" "b" }} {{ ge 3 3 }} {{ ne .MODE "debug" }} {{ le 1.5 2 }}"#,
        r#"{{ and .VERSION .EMPTY }}|{{ and .VERSION .MODE }}|{{ or .EMPTY .MODE }}|{{ or .EMPTY "" }}|{{ not .EMPTY }}"#,
        "{{ html .NAME }} {{ js .NAME }} {{ urlquery .NAME }} {{ .NAME | html }} {{ html 1 2 }}",
        r#"{{ .VERSION | printf "%s!" | printf "[%s]" }} {{ (index .Git "ShortCommit") }} {{ (.Git).Branch }}"#,
        r#"{{ index .Git "Nope" }} {{ index .Env "Nope" }}|"#,
        r#"{{ "a" | printf "%s-%s" "b" }} {{ with $x := .VERSION }}{{ $x }}{{ end }} {{ if $y := .EMPTY }}y{{ else }}n{{ end }}"#,
        "{{ .Git.IsDirty | not }} {{ printf \"%v\" .Git }} {{ .GoEnv }}",
        "x {{- /* c */ -}} y {{ `raw \\n` }} {{ \"tab\\there\" }} {{ \"\\u00e9\" }}",
        "{{ if not .EMPTY }}{{ .MODE }}{{ end }}{{ if and .MODE (eq .MODE \"debug\") (not .EMPTY) }}!{{ end }}",
        // What Go refuses, kodev refuses too.
        "{{ nosuchfunction .VERSION }}",
        "{{ .VERSION",
        "{{ end }}",
        "{{ if .VERSION }}x",
        r#"{{ eq .VERSION 3 }}"#,
        "{{ .VERSION.Field }}",
        "{{ .VERSION 1 }}",
        "{{ .Env.NOT_SET }}",
        "{{ .NOT_SET }}",
        "{{ .Git.NotAField }}",
        "{{ $undefined }}",
        r#"{{ index .VERSION 99 }}"#,
    ];
    let mut vars_with_skaffolds = vars.clone();
    vars_with_skaffolds.insert("IMAGE_LESS_SETTING_OF_SKAFFOLD_STYLE_IS_SET_BELOW".into(), "top-level".into());
    let go = go_expand(&vars_with_skaffolds, &templates);
    assert_eq!(go.len(), templates.len());
    let mut differences = Vec::new();
    for (template, go) in templates.iter().zip(&go) {
        let ours = expand(template, &vars_with_skaffolds);
        match (&ours, go.ok) {
            (Ok(text), true) if *text == go.out => {}
            (Err(_), false) => {}
            _ => differences.push(format!("{template:?}\n  kodev: {ours:?}\n  go:    {go:?}")),
        }
    }
    assert!(differences.is_empty(), "kodev and Go's text/template differ:\n{}", differences.join("\n"));
    // The error names what is wrong, and where.
    let missing = expand("-X main.v={{ .Env.NOT_SET }}", &vars).unwrap_err();
    assert!(missing.contains("template variable \"NOT_SET\" is not set"), "{missing}");
    assert!(missing.contains("-X main.v="), "quotes the template: {missing}");
    let undefined = expand("{{ nosuchfunction .VERSION }}", &vars).unwrap_err();
    assert!(undefined.contains("function \"nosuchfunction\" not defined"), "{undefined}");
}

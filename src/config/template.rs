//! Go `text/template`-style `{{.VAR}}` / `{{.Env.VAR}}` substitution used in env, flags, ldflags and labels.

use std::collections::BTreeMap;

/// Expand every `{{ .NAME }}` or `{{ .Env.NAME }}` from `vars`; an unknown name is an error naming it.
pub fn expand(input: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end =
            after.find("}}").ok_or_else(|| format!("unclosed template action in {input:?}: add the closing }}}}"))?;
        let action = after[..end].trim().trim_start_matches('-').trim_end_matches('-').trim();
        let name = action
            .strip_prefix(".Env.")
            .or_else(|| action.strip_prefix('.'))
            .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .ok_or_else(|| {
                format!(
                    "unsupported template action {{{{{action}}}}} in {input:?}: use {{{{.VAR}}}} or {{{{.Env.VAR}}}}"
                )
            })?;
        let value =
            vars.get(name).ok_or_else(|| format!("template variable {name:?} is not set (used in {input:?})"))?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_both_spellings() {
        let vars: BTreeMap<String, String> =
            [("A".to_string(), "1".to_string()), ("Git.ShortCommit".to_string(), "abc".to_string())].into();
        assert_eq!(expand("x={{.A}} y={{ .Env.A }} {{.Git.ShortCommit}}", &vars).unwrap(), "x=1 y=1 abc");
        assert!(expand("{{.B}}", &vars).unwrap_err().contains("\"B\""));
        assert!(expand("{{.A", &vars).is_err());
        assert!(expand("{{ printf }}", &vars).is_err());
    }
}

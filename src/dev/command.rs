//! Commands that steer the loop: typed on stdin in headless mode, mapped from keys by the dashboard.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Rebuild one artifact (as written in skaffold.yaml), or all with `None`.
    Rebuild(Option<String>),
    ToggleDebug,
    ToggleAuto,
    Quit,
}

/// Parse one stdin line: `r`, `r IMAGE`, `d`, `a`, `q`.
pub fn parse(line: &str) -> Result<Option<Command>, String> {
    let mut words = line.split_whitespace();
    let Some(first) = words.next() else {
        return Ok(None);
    };
    let rest: Vec<&str> = words.collect();
    let command = match (first, rest.as_slice()) {
        ("r", []) => Command::Rebuild(None),
        ("r", [image]) => Command::Rebuild(Some(image.to_string())),
        ("d", []) => Command::ToggleDebug,
        ("a", []) => Command::ToggleAuto,
        ("q", []) => Command::Quit,
        _ => {
            return Err(format!(
                "unknown command {line:?}: use r [IMAGE] (rebuild), d (debug), a (auto rebuild), q (quit)"
            ))
        }
    };
    Ok(Some(command))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert_eq!(parse("r").unwrap(), Some(Command::Rebuild(None)));
        assert_eq!(parse(" r  app ").unwrap(), Some(Command::Rebuild(Some("app".into()))));
        assert_eq!(parse("q").unwrap(), Some(Command::Quit));
        assert_eq!(parse("").unwrap(), None);
        assert!(parse("x").is_err());
        assert!(parse("d now").is_err());
    }
}

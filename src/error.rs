//! Errors split by who must act: the user's input (exit 2) or the build/push (exit 1).

use std::path::PathBuf;

pub type Result<T, E = KodevError> = std::result::Result<T, E>;

/// Clone: a failure shared by several waiters (a base image several platforms wait for).
#[derive(Debug, Clone, thiserror::Error)]
pub enum KodevError {
    /// Bad configuration or flags: the user must edit something. Exit code 2.
    #[error("{file}{}: {message}", location_suffix(*line, *column, field.as_deref()))]
    Config { file: PathBuf, line: Option<usize>, column: Option<usize>, field: Option<String>, message: String },
    /// Wrong command-line usage. Exit code 2.
    #[error("{0}")]
    Usage(String),
    /// A build step failed (go build, layer, base image). Exit code 1.
    #[error("{0}")]
    Build(String),
    /// Talking to a registry or writing the output failed. Exit code 1.
    #[error("{0}")]
    Publish(String),
    /// The build was cancelled because newer input arrived.
    #[error("cancelled")]
    Cancelled,
}

fn location_suffix(line: Option<usize>, column: Option<usize>, field: Option<&str>) -> String {
    let mut out = String::new();
    if let Some(line) = line {
        out.push_str(&format!(":{line}"));
        if let Some(column) = column {
            out.push_str(&format!(":{column}"));
        }
    }
    if let Some(field) = field {
        if !field.is_empty() && field != "." && !field.contains('?') {
            out.push_str(&format!(" (field {field})"));
        }
    }
    out
}

impl KodevError {
    pub fn exit_code(&self) -> i32 {
        match self {
            KodevError::Config { .. } | KodevError::Usage(_) => 2,
            KodevError::Build(_) | KodevError::Publish(_) | KodevError::Cancelled => 1,
        }
    }

    pub fn config(file: impl Into<PathBuf>, field: impl Into<String>, message: impl Into<String>) -> Self {
        KodevError::Config {
            file: file.into(),
            line: None,
            column: None,
            field: Some(field.into()),
            message: message.into(),
        }
    }

    pub fn build(message: impl Into<String>) -> Self {
        KodevError::Build(message.into())
    }

    pub fn publish(message: impl Into<String>) -> Self {
        KodevError::Publish(message.into())
    }
}

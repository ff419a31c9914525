//! What is wrong with a configuration, and where: a file and line for `run --config`, a flag
//! for the subcommands that take flags. The check collects every mistake, so one run lists
//! them all.

use std::path::PathBuf;

use super::lines::KeyLines;

/// Where a raw configuration came from; it decides how options and places are named.
#[derive(Clone, Debug)]
pub enum Origin {
    /// The flags (and `MTLS_SIDECAR_*` variables) of `server`, `client` or `watch`.
    Flags,
    /// A YAML file, with the line of each key.
    File { path: PathBuf, lines: KeyLines },
}

impl Origin {
    /// How a message names option `key` (kebab-case): `--allow-all`, or `allow-all`.
    pub fn name(&self, key: &str) -> String {
        match (self, key) {
            (Origin::Flags, "exec") => "`-- PROGRAM [ARGS..]`".into(),
            (Origin::Flags, "credentials" | "name" | "kind") => format!("{key} (not a flag)"),
            (Origin::Flags, _) => format!("--{key}"),
            (Origin::File { .. }, _) => key.to_string(),
        }
    }

    /// One line for `e`: `FILE:LINE: KEY: MESSAGE`, or `--FLAG: MESSAGE`.
    pub fn render(&self, e: &ConfigError) -> String {
        match self {
            Origin::File { path, lines } => {
                let at = match lines.line(&e.key) {
                    Some(line) => format!("{}:{line}", path.display()),
                    None => path.display().to_string(),
                };
                if e.key.is_empty() {
                    format!("{at}: {}", e.message)
                } else {
                    format!("{at}: {}: {}", e.key, e.message)
                }
            }
            Origin::Flags => {
                let option = e.key.rsplit(['.', ']']).next().unwrap_or_default();
                if option.is_empty() || option.starts_with('[') {
                    e.message.clone()
                } else {
                    format!("{}: {}", self.name(option), e.message)
                }
            }
        }
    }
}

/// One mistake: the key it is about (`listeners[1].credentials`, empty for the whole
/// configuration) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

/// Every mistake of one configuration, rendered for its origin, one per line.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{}", .lines.join("\n"))]
pub struct ConfigErrors {
    pub lines: Vec<String>,
}

impl ConfigErrors {
    pub fn new(origin: &Origin, errors: &[ConfigError]) -> Self {
        ConfigErrors {
            lines: errors.iter().map(|e| origin.render(e)).collect(),
        }
    }
}

//! The configuration layer every long-running subcommand goes through: a [`raw::RawConfig`]
//! (from the flags of `server`, `client` and `watch`, or from the YAML file of `run --config`),
//! then [`check::check`] into the [`model::Config`] that `app` runs. Defaults are defined once
//! ([`defaults`]); mistakes name the flag, or the file, line and key ([`error`]).
//!
//! - [`raw`]: the raw model (serde, `deny_unknown_fields`, the flags' names).
//! - [`lines`]: the line of every key of a YAML file.
//! - [`values`]: parsing durations, addresses, PIDs.
//! - [`check`]: raw -> checked, with every cross-field rule.
//! - [`model`]: the checked configuration.
//! - [`print`]: the configuration with its defaults written out (`run --print`).

pub mod check;
pub mod defaults;
pub mod error;
pub mod lines;
pub mod model;
pub mod print;
pub mod raw;
pub mod values;

use std::path::Path;

pub use error::{ConfigError, ConfigErrors, Origin};
pub use model::Config;
pub use raw::RawConfig;

/// Largest config file read: a config is a few kilobytes.
const MAX_CONFIG_SIZE: u64 = 1024 * 1024;

/// Reads and parses a YAML config file; Err names the file and, where known, the line.
pub fn read_file(path: &Path) -> Result<(RawConfig, Origin), ConfigErrors> {
    parse(&read_text(path)?, path)
}

/// The text of a config file; Err names the file.
pub fn read_text(path: &Path) -> Result<String, ConfigErrors> {
    let fail = |message: String| ConfigErrors {
        lines: vec![format!("{}: {message}", path.display())],
    };
    match std::fs::metadata(path) {
        Ok(m) if m.len() > MAX_CONFIG_SIZE => Err(fail(format!(
            "larger than {MAX_CONFIG_SIZE} bytes: not a config file"
        ))),
        Ok(_) => std::fs::read_to_string(path).map_err(|e| fail(format!("cannot be read: {e}"))),
        Err(e) => Err(fail(format!("cannot be read: {e}"))),
    }
}

/// Parses `text` (the content of `path`).
pub fn parse(text: &str, path: &Path) -> Result<(RawConfig, Origin), ConfigErrors> {
    let origin = Origin::File {
        path: path.to_path_buf(),
        lines: lines::KeyLines::of(text),
    };
    if text.trim().is_empty() {
        return Err(ConfigErrors {
            lines: vec![format!(
                "{}: the file is empty: it needs sets and listeners or watch entries",
                path.display()
            )],
        });
    }
    match serde_saphyr::from_str::<RawConfig>(text) {
        Ok(raw) => Ok((raw, origin)),
        Err(e) => {
            let at = match e.location() {
                Some(l) => format!("{}:{}", path.display(), l.line()),
                None => path.display().to_string(),
            };
            // The first line of the parser's message (the rest is a source excerpt), without
            // its own "error: line L column C:" prefix: the line is said once, first.
            let message = e.to_string();
            let first = message.lines().next().unwrap_or_default().trim();
            let first = first.strip_prefix("error: ").unwrap_or(first);
            let message = match first.split_once(": ") {
                Some((place, rest)) if place.starts_with("line ") => rest,
                _ => first,
            };
            // Advice meant for the parser's API, not for whoever edits the file.
            let message = match message.split_once(", set DuplicateKeyPolicy") {
                Some((dup, _)) => format!("{dup} (each key may appear once in a mapping)"),
                None => message.to_string(),
            };
            Err(ConfigErrors {
                lines: vec![format!("{at}: {message}")],
            })
        }
    }
}

/// Parses and checks the text of a config file.
pub fn load(text: &str, path: &Path) -> Result<(RawConfig, Config), ConfigErrors> {
    let (raw, origin) = parse(text, path)?;
    let config = check::check(&raw, &origin).map_err(|e| ConfigErrors::new(&origin, &e))?;
    Ok((raw, config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        let path = Path::new("c.yaml");
        match parse(text, path) {
            Err(e) => e.lines,
            Ok((raw, origin)) => match check::check(&raw, &origin) {
                Ok(_) => Vec::new(),
                Err(e) => ConfigErrors::new(&origin, &e).lines,
            },
        }
    }

    #[test]
    fn parse_errors_name_the_line() {
        let e = errors("sets:\n  a:\n    cert-dir: /x\n    certdir: /y\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("c.yaml:4: "), "{e:?}");
        assert!(e[0].contains("certdir"), "{e:?}");
        assert!(!e[0].contains("column"), "{e:?}");
        let e = errors("listeners:\n  - name: a\n    max-connections: many\n");
        assert!(e[0].starts_with("c.yaml:3: "), "{e:?}");
        let e = errors("sets:\n  a:\n    cert-dir: /x\n    cert-dir: /y\n");
        assert_eq!(
            e,
            ["c.yaml:4: duplicate mapping key: cert-dir (each key may appear once in a mapping)"]
        );
    }
}

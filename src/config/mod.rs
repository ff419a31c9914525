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
    if text.trim().is_empty() {
        return Err(ConfigErrors {
            lines: vec![format!(
                "{}: the file is empty: it needs sets and listeners or watch entries",
                path.display()
            )],
        });
    }
    let lines = lines::KeyLines::of(text);
    match serde_saphyr::from_str::<RawConfig>(text) {
        Ok(raw) => Ok((
            raw,
            Origin::File {
                path: path.to_path_buf(),
                lines,
            },
        )),
        Err(e) => Err(ConfigErrors {
            lines: vec![error::parse_error(path, &lines, text, &e)],
        }),
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
        assert_eq!(
            e,
            [r#"c.yaml:3: listeners[0].max-connections: expected a whole number (got "many")"#]
        );
        let e = errors("sets:\n  a:\n    cert-dir: /x\n    cert-dir: /y\n");
        assert_eq!(
            e,
            ["c.yaml:4: duplicate mapping key: cert-dir (each key may appear once in a mapping)"]
        );
    }

    #[test]
    fn parse_errors_name_the_key_in_the_files_terms() {
        let e = errors("sets:\n  a:\n    cert-dir: /x\n    certdir: /y\n");
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("c.yaml:4: sets.a.certdir: unknown key; allowed: cert-dir, cert, "),
            "{e:?}"
        );
        let e = errors("watch:\n  - credentials: s\n    act-on-start: maybe\n");
        assert_eq!(
            e,
            [r#"c.yaml:3: watch[0].act-on-start: expected true or false (got "maybe")"#]
        );
        let e = errors("sets:\n  a:\n    expect-uri:\n      spiffe://x\n");
        assert_eq!(
            e,
            ["c.yaml:4: sets.a.expect-uri: expected a list (e.g. `[a, b]` or `- a` lines)"]
        );
        let e = errors("listeners:\n  - name:\n");
        assert_eq!(
            e,
            ["c.yaml:2: listeners[0].name: expected a value, got nothing"]
        );
        let e = errors("just words\n");
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with(
                "c.yaml:1: the file must be a mapping of keys: admin-listen, poll-interval, "
            ),
            "{e:?}"
        );
        // YAML syntax: the parser's words, no key.
        let e = errors("sets:\n  a:\n    cert-dir: \"/x\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("c.yaml:3: unclosed quote"), "{e:?}");
    }

    #[test]
    fn a_key_with_no_value_is_empty() {
        let text = "sets:\nlisteners:\nwatch:\n";
        let (raw, _) = parse(text, Path::new("c.yaml")).expect("parses");
        assert_eq!(raw, RawConfig::default());
    }
}

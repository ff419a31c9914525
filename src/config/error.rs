//! What is wrong with a configuration, and where: a file and line for `run --config`, a flag
//! for the subcommands that take flags. The check collects every mistake, so one run lists
//! them all. A file that does not parse gets one line too ([`parse_error`]): a value of the
//! wrong type or an unknown key is named by its key and said in the file's terms, like the
//! check's mistakes; a YAML syntax error keeps the parser's words.

use std::path::{Path, PathBuf};

use serde_saphyr::{Error as ParseError, Location};

use super::lines::KeyLines;
use super::raw::RawConfig;

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

// === parser errors ===

/// One line for the parser's error `e` on `text` (the content of `path`): `FILE:LINE: KEY:
/// MESSAGE` when it is about one value and its key is found at the error's place, else
/// `FILE:LINE: MESSAGE` in the parser's words.
pub fn parse_error(path: &Path, lines: &KeyLines, text: &str, e: &ParseError) -> String {
    let e = unwrapped(e);
    let place = e
        .location()
        .map(|l| (to_usize(l.line()), to_usize(l.column())));
    let at = match place {
        Some((line, _)) => format!("{}:{line}", path.display()),
        None => path.display().to_string(),
    };
    let key = place.and_then(|(line, column)| lines.path_at(line, column));
    match (key, in_file_terms(e, text)) {
        // The document itself is not a mapping (a list, a single value).
        (Some(""), Some(_)) => format!(
            "{at}: the file must be a mapping of keys: {}",
            top_level_keys()
        ),
        (Some(key), Some(message)) => format!("{at}: {key}: {message}"),
        _ => format!("{at}: {}", parser_words(e, place.map(|(line, _)| line))),
    }
}

/// The error itself, out of the parser's wrappers (a source excerpt, an alias).
fn unwrapped(mut e: &ParseError) -> &ParseError {
    while let ParseError::WithSnippet { error, .. } | ParseError::AliasError { error, .. } = e {
        e = error;
    }
    e
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// What a value of the wrong type or an unknown key means for whoever edits the file; None for
/// the other errors (YAML syntax), which the parser's words say best.
fn in_file_terms(e: &ParseError, text: &str) -> Option<String> {
    let message = match e {
        ParseError::SerdeUnknownField { expected, .. } => {
            format!("unknown key; allowed: {}", expected.join(", "))
        }
        ParseError::InvalidScalar { ty, location } => {
            let expected = match *ty {
                "boolean" => "expected true or false",
                "floating point" => "expected a number",
                t if t.starts_with(['u', 'i']) => "expected a whole number",
                _ => return None,
            };
            format!("{expected}{}", got(text, location))
        }
        ParseError::InvalidBooleanStrict { location } => {
            format!("expected true or false{}", got(text, location))
        }
        ParseError::Unexpected { expected, .. } => match *expected {
            "sequence start" => "expected a list (e.g. `[a, b]` or `- a` lines)".to_string(),
            "mapping start" => "expected a mapping of keys".to_string(),
            "string scalar" => "expected a single value, not a list or a mapping".to_string(),
            _ => return None,
        },
        ParseError::NullIntoString { .. } => "expected a value, got nothing".to_string(),
        ParseError::SerdeInvalidType {
            unexpected,
            expected,
            ..
        } => format!("expected {expected}, got {unexpected}"),
        _ => return None,
    };
    Some(message)
}

/// ` (got "many")`: the value at `location`, when it is a short one-line text.
fn got(text: &str, location: &Location) -> String {
    let span = location.span();
    let value = span
        .byte_offset()
        .zip(span.byte_len())
        .and_then(|(start, len)| text.get(to_usize(start)..to_usize(start + len)));
    match value.map(|v| v.trim().trim_matches(['"', '\''])) {
        Some(v) if !v.is_empty() && v.len() <= 80 && !v.contains('\n') => format!(" (got {v:?})"),
        _ => String::new(),
    }
}

/// The keys a file may have at its top, as the parser knows them: its error for an unknown key
/// lists them (so this list cannot drift from [`RawConfig`]).
fn top_level_keys() -> String {
    let fallback = || "sets, listeners, watch, ...".to_string();
    let Err(e) = serde_saphyr::from_str::<RawConfig>("\"\": 0\n") else {
        return fallback();
    };
    match unwrapped(&e) {
        ParseError::SerdeUnknownField { expected, .. } => expected.join(", "),
        _ => fallback(),
    }
}

/// The first line of the parser's message (the rest is a source excerpt), without its own
/// `error: line L column C:` prefix (the line is said once, first) and without advice meant for
/// the parser's API rather than for whoever edits the file.
fn parser_words(e: &ParseError, line: Option<usize>) -> String {
    let message = e.to_string();
    let first = message.lines().next().unwrap_or_default().trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let message = match first.split_once(": ") {
        Some((place, rest)) if place.starts_with("line ") => rest,
        _ => first,
    };
    let message = without_line(message, line);
    match message.split_once(", set DuplicateKeyPolicy") {
        Some((dup, _)) => format!("{dup} (each key may appear once in a mapping)"),
        None => message,
    }
}

/// `message` without the parser's own ` at line L, column C` when `FILE:L:` says the line
/// already: ` at column C` is left.
fn without_line(message: &str, line: Option<usize>) -> String {
    let number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let (Some(line), Some(at)) = (line, message.rfind(" at line ")) {
        if let Some((l, column)) = message[at + " at line ".len()..].split_once(", column ") {
            if number(l) && number(column) && l.parse() == Ok(line) {
                return format!("{} at column {column}", &message[..at]);
            }
        }
    }
    message.to_string()
}

#[cfg(test)]
mod tests {
    use super::without_line;

    #[test]
    fn the_parsers_line_is_dropped_when_ours_says_it() {
        let tab = "tabs disallowed within this context (block indentation) at line 2, column 2";
        assert_eq!(
            without_line(tab, Some(2)),
            "tabs disallowed within this context (block indentation) at column 2"
        );
        // Another line, or no line of ours: the parser's words stay as they are.
        assert_eq!(without_line(tab, Some(3)), tab);
        assert_eq!(without_line(tab, None), tab);
        assert_eq!(without_line("unclosed quote", Some(4)), "unclosed quote");
    }
}

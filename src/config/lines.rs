//! Where each key of a YAML file is: `listeners[1].credentials` -> line 12. Built from the
//! parser's events, so that a check made after deserializing (an unknown set, two listeners on
//! one address) can name the line, as serde's own errors do.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{Event, Parser};

/// Line numbers (1-based) by key path, and the path of what starts at a place (a parser error's
/// location).
#[derive(Clone, Debug, Default)]
pub struct KeyLines {
    /// The first line of each path.
    lines: HashMap<String, usize>,
    /// Where each node (key, value, item) starts, in document order: (line, column, path).
    starts: Vec<(usize, usize, String)>,
}

enum Frame {
    /// A mapping: its path, and the key whose value comes next (None: a key comes next).
    Map { path: String, key: Option<String> },
    /// A sequence: its path and the index of the next item.
    Seq { path: String, next: usize },
}

impl KeyLines {
    /// Indexes `text`; a text that does not parse gives what was indexed before the error.
    pub fn of(text: &str) -> Self {
        let mut index = KeyLines::default();
        let mut stack: Vec<Frame> = Vec::new();
        for event in Parser::new_from_str(text) {
            let Ok((event, span)) = event else { break };
            let at = (span.start.line(), span.start.col() + 1);
            match event {
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    let path = value_path(&stack);
                    index.record(&path, at);
                    stack.push(match event {
                        Event::MappingStart(..) => Frame::Map { path, key: None },
                        _ => Frame::Seq { path, next: 0 },
                    });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                    value_done(&mut stack);
                }
                Event::Scalar(value, ..) => match stack.last_mut() {
                    Some(Frame::Map { path, key }) if key.is_none() => {
                        index.record(&join(path, &value), at);
                        *key = Some(value.into_owned());
                    }
                    _ => {
                        index.record(&value_path(&stack), at);
                        value_done(&mut stack);
                    }
                },
                Event::Alias(..) => {
                    index.record(&value_path(&stack), at);
                    value_done(&mut stack);
                }
                _ => {}
            }
        }
        index
    }

    /// Notes that a node of `path` starts at `at` (line, column).
    fn record(&mut self, path: &str, at: (usize, usize)) {
        self.lines.entry(path.to_string()).or_insert(at.0);
        self.starts.push((at.0, at.1, path.to_string()));
    }

    /// The line of `path`, or of the nearest enclosing key that has one.
    pub fn line(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }

    /// The line of `path` itself: None if it is not in the file.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        self.lines.get(path).copied()
    }

    /// The path of what is at `line` and `column` (1-based, as a parser error gives them): of
    /// the last node starting on that line at or before the column, else of the last node on
    /// the line. `""` is the whole document; None: nothing starts on that line.
    pub fn path_at(&self, line: usize, column: usize) -> Option<&str> {
        let on_line = || self.starts.iter().filter(move |s| s.0 == line);
        on_line()
            .rfind(|s| s.1 <= column)
            .or_else(|| on_line().next_back())
            .map(|s| s.2.as_str())
    }
}

/// The path of the value about to start.
fn value_path(stack: &[Frame]) -> String {
    match stack.last() {
        Some(Frame::Map { path, key: Some(k) }) => join(path, k),
        Some(Frame::Seq { path, next }) => format!("{path}[{next}]"),
        Some(Frame::Map { path, key: None }) => path.clone(),
        None => String::new(),
    }
}

/// A value of the innermost container is complete.
fn value_done(stack: &mut [Frame]) {
    match stack.last_mut() {
        Some(Frame::Map { key, .. }) => *key = None,
        Some(Frame::Seq { next, .. }) => *next += 1,
        None => {}
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_items_have_their_lines() {
        let text = "\
admin-listen: 0.0.0.0:9901
sets:
  server:
    cert-dir: /etc/tls
listeners:
  - name: in
    credentials: server
  - name: out
    kind: client
    allow-cn: [a, b]
    credentials: srv
";
        let l = KeyLines::of(text);
        assert_eq!(l.line("admin-listen"), Some(1));
        assert_eq!(l.line("sets.server.cert-dir"), Some(4));
        assert_eq!(l.line("listeners[0].credentials"), Some(7));
        assert_eq!(l.line("listeners[1]"), Some(8));
        assert_eq!(l.line("listeners[1].credentials"), Some(11));
        // Not in the file: the nearest enclosing key.
        assert_eq!(l.line("listeners[1].target"), Some(8));
        assert_eq!(l.line("watch[0]"), None);
    }

    #[test]
    fn a_place_has_the_path_of_what_starts_there() {
        let text = "\
sets:
  s:
    cert-dir: /etc/tls
    expect-dns:
      a.example
listeners:
  - name: in
    allow-cn: [a, b]
";
        let l = KeyLines::of(text);
        // A key, and its value on the same line.
        assert_eq!(l.path_at(3, 5), Some("sets.s.cert-dir"));
        assert_eq!(l.path_at(3, 15), Some("sets.s.cert-dir"));
        // A value on the line after its key.
        assert_eq!(l.path_at(5, 7), Some("sets.s.expect-dns"));
        // A block list starts at its first `-`; an item's first key; items of a flow list.
        assert_eq!(l.path_at(7, 3), Some("listeners"));
        assert_eq!(l.path_at(7, 5), Some("listeners[0].name"));
        assert_eq!(l.path_at(8, 15), Some("listeners[0].allow-cn"));
        assert_eq!(l.path_at(8, 19), Some("listeners[0].allow-cn[1]"));
        // Before anything on the line: the last node of the line.
        assert_eq!(l.path_at(3, 1), Some("sets.s.cert-dir"));
        assert_eq!(l.path_at(1, 1), Some("sets"));
        assert_eq!(l.path_at(9, 1), None);
        // A document that is not a mapping.
        assert_eq!(KeyLines::of("- a\n").path_at(1, 1), Some(""));
    }
}

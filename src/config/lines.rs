//! Where each key of a YAML file is: `listeners[1].credentials` -> line 12. Built from the
//! parser's events, so that a check made after deserializing (an unknown set, two listeners on
//! one address) can name the line, as serde's own errors do.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{Event, Parser};

/// Line numbers (1-based) by key path.
#[derive(Clone, Debug, Default)]
pub struct KeyLines(HashMap<String, usize>);

enum Frame {
    /// A mapping: its path, and the key whose value comes next (None: a key comes next).
    Map { path: String, key: Option<String> },
    /// A sequence: its path and the index of the next item.
    Seq { path: String, next: usize },
}

impl KeyLines {
    /// Indexes `text`; a text that does not parse gives what was indexed before the error.
    pub fn of(text: &str) -> Self {
        let mut lines = HashMap::new();
        let mut stack: Vec<Frame> = Vec::new();
        for event in Parser::new_from_str(text) {
            let Ok((event, span)) = event else { break };
            let line = span.start.line();
            match event {
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    let path = value_path(&stack);
                    lines.entry(path.clone()).or_insert(line);
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
                        let full = join(path, &value);
                        lines.entry(full).or_insert(line);
                        *key = Some(value.into_owned());
                    }
                    _ => value_done(&mut stack),
                },
                Event::Alias(..) => value_done(&mut stack),
                _ => {}
            }
        }
        KeyLines(lines)
    }

    /// The line of `path`, or of the nearest enclosing key that has one.
    pub fn line(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.0.get(p) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
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
}

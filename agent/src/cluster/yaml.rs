//! A small YAML emitter for the files kiln-cluster writes (k3s's config.yaml, kubeadm's
//! JoinConfiguration). The agent is a static binary kept small, so it does not carry a
//! YAML library; the documents it writes are simple trees of maps, lists and scalars.
//!
//! Every string is written double-quoted with escapes, so no value (a label with `:` or
//! `#`, quotes, a newline, a leading `-` or `*`, `yes`, `null`, a number) can change the
//! document's structure or be read back as another type.

use std::fmt::Write;

/// One YAML node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A string, always written double-quoted.
    Str(String),
    /// `true` or `false`.
    Bool(bool),
    /// A whole number.
    Int(u64),
    /// A block list (`[]` when empty).
    List(Vec<Node>),
    /// A block map, keys in this order (`{}` when empty).
    Map(Vec<(String, Node)>),
}

/// A string node.
pub fn s(text: impl Into<String>) -> Node {
    Node::Str(text.into())
}

/// A map node from (key, value) pairs.
pub fn map_of(entries: Vec<(&str, Node)>) -> Node {
    Node::Map(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

/// Plain words YAML readers may take for a boolean or null rather than a string.
const RESERVED: &[&str] = &[
    "true", "false", "yes", "no", "on", "off", "y", "n", "null", "~",
];

/// A key as written: bare when it is a plain name (letters, digits, `-`, `_`, starting
/// with a letter, not a word read as a boolean or null), else quoted like a value.
fn key(k: &str) -> String {
    let plain = k.starts_with(|c: char| c.is_ascii_alphabetic())
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !RESERVED.contains(&k.to_ascii_lowercase().as_str());
    if plain {
        k.to_string()
    } else {
        quote(k)
    }
}

/// `text` as a double-quoted YAML scalar: `\` and `"` escaped, and every control
/// character (and the line and paragraph separators and the byte order mark, which YAML
/// readers treat as breaks or markers) as `\uXXXX` or its short escape.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}') => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn scalar(n: &Node) -> Option<String> {
    match n {
        Node::Str(t) => Some(quote(t)),
        Node::Bool(b) => Some(b.to_string()),
        Node::Int(i) => Some(i.to_string()),
        Node::List(l) if l.is_empty() => Some("[]".to_string()),
        Node::Map(m) if m.is_empty() => Some("{}".to_string()),
        Node::List(_) | Node::Map(_) => None,
    }
}

fn map(out: &mut String, indent: usize, entries: &[(String, Node)]) {
    let pad = " ".repeat(indent);
    for (k, v) in entries {
        let k = key(k);
        match scalar(v) {
            Some(text) => {
                let _ = writeln!(out, "{pad}{k}: {text}");
            }
            None => {
                let _ = writeln!(out, "{pad}{k}:");
                block(out, indent + 2, v);
            }
        }
    }
}

fn list(out: &mut String, indent: usize, items: &[Node]) {
    let pad = " ".repeat(indent);
    for item in items {
        match scalar(item) {
            Some(text) => {
                let _ = writeln!(out, "{pad}- {text}");
            }
            None => {
                // The item's block, indented past the dash, with the dash put in front
                // of its first line.
                let mut inner = String::new();
                block(&mut inner, indent + 2, item);
                let _ = write!(out, "{pad}- {}", &inner[indent + 2..]);
            }
        }
    }
}

fn block(out: &mut String, indent: usize, n: &Node) {
    match n {
        Node::Map(m) => map(out, indent, m),
        Node::List(l) => list(out, indent, l),
        other => {
            let _ = writeln!(
                out,
                "{}{}",
                " ".repeat(indent),
                scalar(other).unwrap_or_default()
            );
        }
    }
}

/// The document for a top-level map.
pub fn document(root: &Node) -> String {
    let mut out = String::new();
    block(&mut out, 0, root);
    out
}

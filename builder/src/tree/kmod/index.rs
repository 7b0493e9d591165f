//! libkmod's binary index (`modules.*.bin`): a radix trie, 32-bit
//! big-endian offsets.

use std::collections::BTreeMap;

use super::KmodError;

const INDEX_MAGIC: u32 = 0xB007_F457;
const INDEX_VERSION: u32 = 0x0002_0001;
/// Node offset flag: the node starts with a NUL-terminated prefix.
pub(super) const NODE_PREFIX: u32 = 0x8000_0000;
/// Node offset flag: the node ends with values.
pub(super) const NODE_VALUES: u32 = 0x4000_0000;
/// Node offset flag: the node has a child table.
pub(super) const NODE_CHILDS: u32 = 0x2000_0000;

/// A key → values index as libkmod reads it (`modules.*.bin`).
#[derive(Debug, Default)]
pub(super) struct Index {
    root: TrieNode,
}

#[derive(Debug, Default)]
struct TrieNode {
    prefix: Vec<u8>,
    children: BTreeMap<u8, TrieNode>,
    /// `(priority, value)`, ascending priority; equal priorities newest first.
    values: Vec<(u32, String)>,
}

impl TrieNode {
    fn add_value(&mut self, value: &str, priority: u32) {
        let at = self
            .values
            .iter()
            .position(|(p, _)| *p >= priority)
            .unwrap_or(self.values.len());
        self.values.insert(at, (priority, value.to_string()));
    }
}

impl Index {
    /// Adds `value` under `key` with `priority`; both must be ASCII.
    pub(super) fn insert(
        &mut self,
        key: &str,
        value: &str,
        priority: u32,
    ) -> Result<(), KmodError> {
        for s in [key, value] {
            if !s.is_ascii() {
                return Err(KmodError::NotAscii(s.to_string()));
            }
        }
        let key = key.as_bytes();
        let mut node = &mut self.root;
        let mut i = 0;
        loop {
            // Split the node where its prefix and the key part ways.
            let common = node
                .prefix
                .iter()
                .zip(&key[i..])
                .take_while(|(a, b)| a == b)
                .count();
            if common < node.prefix.len() {
                let ch = node.prefix[common];
                let tail = node.prefix[common + 1..].to_vec();
                node.prefix.truncate(common);
                let moved = TrieNode {
                    prefix: tail,
                    children: std::mem::take(&mut node.children),
                    values: std::mem::take(&mut node.values),
                };
                node.children.insert(ch, moved);
            }
            i += common;
            let Some(&ch) = key.get(i) else {
                node.add_value(value, priority);
                return Ok(());
            };
            node = match node.children.entry(ch) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => {
                    let mut child = TrieNode {
                        prefix: key[i + 1..].to_vec(),
                        ..TrieNode::default()
                    };
                    child.add_value(value, priority);
                    v.insert(child);
                    return Ok(());
                }
            };
            i += 1;
        }
    }

    /// The index file: header, then the nodes post-order.
    pub(super) fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&INDEX_MAGIC.to_be_bytes());
        out.extend_from_slice(&INDEX_VERSION.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        let root = write_node(&self.root, &mut out);
        out[8..12].copy_from_slice(&root.to_be_bytes());
        out
    }
}

/// Writes children first (post-order, as depmod), then the node; returns
/// the node's offset with its flags.
fn write_node(node: &TrieNode, out: &mut Vec<u8>) -> u32 {
    let mut child_offsets: Vec<u32> = Vec::new();
    let range = node
        .children
        .keys()
        .next()
        .copied()
        .zip(node.children.keys().next_back().copied());
    if let Some((first, last)) = range {
        for ch in first..=last {
            child_offsets.push(
                node.children
                    .get(&ch)
                    .map(|c| write_node(c, out))
                    .unwrap_or(0),
            );
        }
    }
    let mut offset = out.len() as u32;
    if !node.prefix.is_empty() {
        out.extend_from_slice(&node.prefix);
        out.push(0);
        offset |= NODE_PREFIX;
    }
    if let Some((first, last)) = range {
        out.push(first);
        out.push(last);
        for c in child_offsets {
            out.extend_from_slice(&c.to_be_bytes());
        }
        offset |= NODE_CHILDS;
    }
    if !node.values.is_empty() {
        out.extend_from_slice(&(node.values.len() as u32).to_be_bytes());
        for (p, v) in &node.values {
            out.extend_from_slice(&p.to_be_bytes());
            out.extend_from_slice(v.as_bytes());
            out.push(0);
        }
        offset |= NODE_VALUES;
    }
    offset
}

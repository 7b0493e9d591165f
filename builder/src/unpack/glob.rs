//! Path globs for `exclude_paths`: `*` and `?` stay within one path
//! component, `**` spans any number of components.

/// A compiled glob over normalised tree paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: Vec<String>,
}

impl Glob {
    /// Compiles a pattern such as `usr/share/doc/**` or `usr/lib/*/*.a`.
    pub fn new(pattern: &str) -> Glob {
        Glob {
            pattern: pattern
                .trim_start_matches('/')
                .split('/')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
        }
    }

    /// Whether a normalised path matches.
    pub fn matches(&self, path: &str) -> bool {
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        match_parts(&self.pattern, &parts)
    }
}

fn match_parts(pat: &[String], path: &[&str]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((p, rest)) if p == "**" => (0..=path.len()).any(|i| match_parts(rest, &path[i..])),
        Some((p, rest)) => match path.split_first() {
            Some((c, crest)) => {
                match_component(p.as_bytes(), c.as_bytes()) && match_parts(rest, crest)
            }
            None => false,
        },
    }
}

fn match_component(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| match_component(rest, &s[i..])),
        Some((b'?', rest)) => !s.is_empty() && match_component(rest, &s[1..]),
        Some((c, rest)) => s.first() == Some(c) && match_component(rest, &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::Glob;

    #[test]
    fn double_star_spans_components_single_star_does_not() {
        let g = Glob::new("/usr/share/doc/**");
        assert!(g.matches("usr/share/doc/bash/README"));
        assert!(g.matches("usr/share/doc"));
        assert!(!g.matches("usr/share/docs/x"));
        let g = Glob::new("usr/lib/*.a");
        assert!(g.matches("usr/lib/libc.a"));
        assert!(!g.matches("usr/lib/x86_64-linux-gnu/libc.a"));
        assert!(Glob::new("usr/**/*.pyc").matches("usr/lib/python3/x/y.pyc"));
        assert!(Glob::new("etc/?ostname").matches("etc/hostname"));
    }
}

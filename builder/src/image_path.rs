//! Paths inside an image, in the one form every stage uses: relative to the
//! root, no `.` and no empty components, `..` resolved. A leaf module, so the
//! profile can check the paths it names without importing the tree.

/// A path that climbs above the image's root.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?}: not a valid path inside the image")]
pub struct BadPath(pub String);

/// Normalises a path to the tree's form: no leading `/`, no `.`, no empty
/// components, `..` resolved. Fails if it climbs above the root.
pub fn normalize(path: &str) -> Result<String, BadPath> {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(BadPath(path.to_string()));
                }
            }
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_take_the_tree_form_and_may_not_climb_out() {
        assert_eq!(normalize("/usr//lib/./x/../y").unwrap(), "usr/lib/y");
        assert_eq!(normalize("/").unwrap(), "");
        assert_eq!(
            normalize("a/../../etc").unwrap_err().to_string(),
            "\"a/../../etc\": not a valid path inside the image"
        );
    }
}

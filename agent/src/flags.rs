//! `--flag value` and `--flag=value` arguments of the agent's subcommands, read one flag
//! at a time so each subcommand keeps its own `match` and its own messages.

/// The arguments still to read.
#[derive(Debug)]
pub struct Flags<'a> {
    rest: std::slice::Iter<'a, String>,
}

impl<'a> Flags<'a> {
    /// Reads `args` (the subcommand's arguments, without its name).
    pub fn new(args: &'a [String]) -> Flags<'a> {
        Flags { rest: args.iter() }
    }

    /// The next flag and the value written inline after its `=`, if any. A word with
    /// `=` that does not start with `--` is returned whole, for the caller to refuse.
    pub fn next_flag(&mut self) -> Option<(&'a str, Option<String>)> {
        let arg = self.rest.next()?;
        Some(match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_string())),
            _ => (arg.as_str(), None),
        })
    }

    /// The value of `flag`: the inline one, else the next argument.
    pub fn value(&mut self, flag: &str, inline: Option<String>) -> Result<String, String> {
        inline
            .or_else(|| self.rest.next().cloned())
            .ok_or_else(|| format!("{flag} needs a value"))
    }
}

#[cfg(test)]
mod tests {
    use super::Flags;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn reads_separate_and_inline_values_and_says_which_flag_lacks_one() {
        let a = args(&["--a", "1", "--b=2=3", "x=y", "--c"]);
        let mut f = Flags::new(&a);
        let (flag, inline) = f.next_flag().unwrap();
        assert_eq!((flag, f.value(flag, inline).unwrap()), ("--a", "1".into()));
        let (flag, inline) = f.next_flag().unwrap();
        assert_eq!(
            (flag, f.value(flag, inline).unwrap()),
            ("--b", "2=3".into())
        );
        assert_eq!(f.next_flag(), Some(("x=y", None)));
        let (flag, inline) = f.next_flag().unwrap();
        assert_eq!(f.value(flag, inline), Err("--c needs a value".to_string()));
        assert_eq!(f.next_flag(), None);
    }
}

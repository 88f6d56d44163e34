//! User input repeated in messages, cut to a bounded length: a rejection that names a
//! 10 000-character package name repeats its first [`ERROR_ECHO_CHARS_MAX`] characters and
//! says how long it was, so an error stays one readable line. Only messages use this; what
//! commands carry and what the log stores is never cut.

use std::fmt;

/// Most characters of one user-supplied name or value repeated in a message.
pub const ERROR_ECHO_CHARS_MAX: usize = 80;

/// `value` quoted and escaped as `{:?}` does, cut after [`ERROR_ECHO_CHARS_MAX`] characters:
/// `"abc"` whole, or `"abcd"... (10000 bytes)` when cut (the marker is outside the quotes, so
/// it cannot be mistaken for input).
pub fn echo(value: &str) -> Echo<'_> {
    Echo {
        value,
        quoted: true,
    }
}

/// `value` as it is (not quoted), cut like [`echo`]: for paths, URLs and `PKG:NAME` ends that
/// messages show bare.
pub fn echo_bare(value: &str) -> Echo<'_> {
    Echo {
        value,
        quoted: false,
    }
}

/// A value for a message, cut when long (see [`echo`]).
#[derive(Clone, Copy, Debug)]
pub struct Echo<'a> {
    value: &'a str,
    quoted: bool,
}

impl fmt::Display for Echo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (shown, cut) = match self.value.char_indices().nth(ERROR_ECHO_CHARS_MAX) {
            None => (self.value, false),
            Some((at, _)) => (&self.value[..at], true),
        };
        if self.quoted {
            write!(f, "{shown:?}")?;
        } else {
            f.write_str(shown)?;
        }
        if cut {
            write!(f, "... ({} bytes)", self.value.len())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_are_whole_and_long_ones_are_cut_with_a_marker() {
        assert_eq!(echo("net\"mon").to_string(), r#""net\"mon""#);
        assert_eq!(echo_bare("a:b").to_string(), "a:b");
        let exact = "é".repeat(ERROR_ECHO_CHARS_MAX);
        assert_eq!(echo(&exact).to_string(), format!("{exact:?}"));
        let long = "x".repeat(10_000);
        let shown = echo(&long).to_string();
        assert_eq!(
            shown,
            format!("{:?}... (10000 bytes)", "x".repeat(ERROR_ECHO_CHARS_MAX))
        );
        assert_eq!(
            echo_bare(&long).to_string(),
            format!("{}... (10000 bytes)", "x".repeat(ERROR_ECHO_CHARS_MAX))
        );
        // Cut on a character boundary.
        let wide = "é".repeat(ERROR_ECHO_CHARS_MAX + 1);
        assert!(echo(&wide)
            .to_string()
            .ends_with(&format!("... ({} bytes)", wide.len())));
    }

    #[test]
    fn rejections_cut_the_names_they_repeat() {
        use crate::command::{Entity, Rejection};
        use crate::model::ResourceKind;
        let long = "p".repeat(10_000);
        let r = Rejection::NotFound(Entity::Resource(ResourceKind::Vars, long.clone(), long));
        let m = r.to_string();
        assert!(m.len() < 3 * ERROR_ECHO_CHARS_MAX, "{m}");
        assert!(
            m.starts_with("var \"ppp") && m.ends_with("... (10000 bytes) does not exist"),
            "{m}"
        );
    }
}

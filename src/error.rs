//! [`Cause`]: an error kept as the source of ours, where our errors must stay `Clone` and
//! comparable (cached outcomes, test vectors), so a library's error cannot be held as is.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// A shared error. It displays as the error it holds (as `error.to_string()` did where a
/// cause used to be flattened), and is the source of the error holding it, so the rest of
/// the chain stays walkable ([`chain_line`], [`Cause::chain`]). Two causes are equal when
/// they read the same.
#[derive(Clone)]
pub struct Cause(Arc<dyn Error + Send + Sync + 'static>);

impl Cause {
    pub fn new(error: impl Error + Send + Sync + 'static) -> Self {
        Cause(Arc::new(error))
    }

    /// A cause that is only words (no library error behind it).
    pub fn msg(message: impl Into<String>) -> Self {
        Cause(Arc::new(Message(message.into())))
    }
}

impl Cause {
    /// The held error and its sources on one line: for errors whose own message says
    /// little ("error sending request"), where the words that matter are below.
    pub fn chain(&self) -> String {
        chain_line(&*self.0)
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

impl Error for Cause {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.0)
    }
}

impl PartialEq for Cause {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for Cause {}

#[derive(Debug)]
struct Message(String);

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Error for Message {}

/// An error and its sources on one line, `outer: inner: root`, leaving out a source whose
/// text the line already holds (many errors write their source into their own message).
pub(crate) fn chain_line(error: &(dyn Error + 'static)) -> String {
    let mut line = String::new();
    let mut next = Some(error);
    while let Some(error) = next {
        let text = error.to_string();
        if !text.is_empty() && !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        next = error.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        /// Writes its source into its message, as many library errors do.
        #[error("outer: {0}")]
        Echoing(#[source] std::io::Error),
        /// Leaves its source to the chain.
        #[error("outer")]
        Quiet(#[source] std::io::Error),
    }

    fn io(text: &str) -> std::io::Error {
        std::io::Error::other(text.to_owned())
    }

    #[test]
    fn the_chain_reads_once_on_one_line() {
        let cases = [
            (Outer::Echoing(io("refused")), "outer: refused"),
            (Outer::Quiet(io("refused")), "outer: refused"),
        ];
        for (error, want) in cases {
            assert_eq!(chain_line(&error), want);
            assert_eq!(Cause::new(error).chain(), want);
        }
        // Displayed alone, a cause reads as the error it holds.
        assert_eq!(Cause::new(Outer::Quiet(io("refused"))).to_string(), "outer");
        assert_eq!(Cause::msg("just words").to_string(), "just words");
    }

    #[test]
    fn a_cause_keeps_the_error_behind_it() {
        let cause = Cause::new(io("refused"));
        let source = cause.source().expect("a source");
        assert_eq!(source.to_string(), "refused");
        assert!(source.downcast_ref::<std::io::Error>().is_some());
        assert_eq!(cause.clone(), Cause::msg("refused"));
        assert_ne!(cause, Cause::msg("other"));
    }
}

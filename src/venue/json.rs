//! Zero-copy iteration over JSON arrays of string arrays, the shape both venues use for book
//! levels (`[["0.0015","100.5"],…]`, OKX `[["3366.1","7","0","2"],…]`).
//!
//! Design: the venue parsers keep `bids`/`asks` as raw JSON slices and walk them here, taking
//! the first two strings of each entry and skipping the rest, so applying a diff never builds
//! an intermediate `Vec`. Only strings are accepted inside entries; escapes are refused (no
//! decimal needs one). Whitespace is tolerated. Names no venue.

/// A malformed level array.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed level array at byte {at}: {what}")]
pub struct JsonError {
    pub at: usize,
    pub what: &'static str,
}

/// Iterates `(first, second)` strings of each entry of a JSON array of string arrays.
pub struct Levels<'a> {
    s: &'a [u8],
    text: &'a str,
    pos: usize,
    done: bool,
}

impl<'a> Levels<'a> {
    /// Starts on a raw JSON array.
    pub fn new(raw: &'a str) -> Self {
        let mut l = Levels {
            s: raw.as_bytes(),
            text: raw,
            pos: 0,
            done: false,
        };
        l.skip_ws();
        if l.peek() == Some(b'[') {
            l.pos += 1;
            l.skip_ws();
            if l.peek() == Some(b']') {
                l.pos += 1;
                l.done = true;
            }
        }
        l
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.pos += 1;
        }
    }

    fn err(&mut self, what: &'static str) -> JsonError {
        self.done = true;
        JsonError { at: self.pos, what }
    }

    fn expect(&mut self, b: u8, what: &'static str) -> Result<(), JsonError> {
        self.skip_ws();
        if self.peek() == Some(b) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.err(what))
        }
    }

    fn string(&mut self) -> Result<&'a str, JsonError> {
        self.expect(b'"', "expected a string")?;
        let start = self.pos;
        loop {
            match self.peek() {
                Some(b'"') => break,
                Some(b'\\') => return Err(self.err("escape inside a level string")),
                Some(_) => self.pos += 1,
                None => return Err(self.err("unterminated string")),
            }
        }
        let out = &self.text[start..self.pos];
        self.pos += 1;
        Ok(out)
    }

    fn entry(&mut self) -> Result<(&'a str, &'a str), JsonError> {
        self.expect(b'[', "expected a level array")?;
        let a = self.string()?;
        self.expect(b',', "a level needs two strings")?;
        let b = self.string()?;
        loop {
            self.skip_ws();
            match self.peek() {
                Some(b']') => {
                    self.pos += 1;
                    break;
                }
                Some(b',') => {
                    self.pos += 1;
                    self.string()?;
                }
                _ => return Err(self.err("expected ',' or ']' in a level")),
            }
        }
        self.skip_ws();
        match self.peek() {
            Some(b',') => self.pos += 1,
            Some(b']') => {
                self.pos += 1;
                self.done = true;
            }
            _ => return Err(self.err("expected ',' or ']' between levels")),
        }
        Ok((a, b))
    }
}

impl<'a> Iterator for Levels<'a> {
    type Item = Result<(&'a str, &'a str), JsonError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.pos == 0 {
            return Some(Err(self.err("expected '['")));
        }
        Some(self.entry())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(s: &str) -> Result<Vec<(&str, &str)>, JsonError> {
        Levels::new(s).collect()
    }

    #[test]
    fn reads_binance_and_okx_levels() {
        // TC0: Binance pairs.
        assert_eq!(
            all(r#"[["0.0015","100.5"],["0.0016","0"]]"#).unwrap(),
            [("0.0015", "100.5"), ("0.0016", "0")]
        );
        // TC1: OKX quadruples with whitespace.
        assert_eq!(
            all(r#"[ ["3366.1", "7", "0", "2"] ]"#).unwrap(),
            [("3366.1", "7")]
        );
        // TC2: empty.
        assert!(all("[]").unwrap().is_empty());
        assert!(all(" [ ] ").unwrap().is_empty());
    }

    #[test]
    fn malformed_arrays_error_and_never_panic() {
        for bad in [
            "",
            "{}",
            "[",
            "[[",
            r#"[["1"]]"#,
            r#"[["1",2]]"#,
            r#"[["1","2"]"#,
            r#"[["1","2"],]"#,
            r#"[["1","2"]x"#,
            r#"[["1\"","2"]]"#,
            r#"[["1","2",3]]"#,
            "[1]",
            r#"[["1","2""#,
        ] {
            assert!(all(bad).is_err(), "{bad:?} accepted");
        }
    }
}

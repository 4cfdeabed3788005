//! Zero-copy, zero-allocation JSON scanning for the hot path of the venue parsers.
//!
//! Design: both venues send book levels as arrays of string arrays (`[["0.0015","100.5"],…]`,
//! or `[["3366.1","7","0","2"],…]` where only the first two strings matter). On the socket the
//! parsers read such arrays in the envelope's pass into a fixed [`LevelBuf`] the caller owns
//! ([`Scanner::levels_into`]); an array that pass cannot read to its end stays a raw slice of
//! the frame, walked by [`Levels`] by the same rules while it is applied, so neither way builds
//! an intermediate `Vec`. [`Object`] walks the members of one JSON
//! object as `(key, raw value)` slices, which lets a parser read a frame's envelope and its
//! event without `serde_json`: skipping a nested value in `serde_json` pushes onto a scratch
//! `Vec` (one heap allocation per deserializer), and the steady state allocates nothing.
//!
//! What is accepted: JSON whitespace anywhere between tokens; inside a level only strings, and
//! the two strings that are returned must hold no escape (no decimal needs one) and no control
//! character. Everything else is an error ([`JsonError`] says where and what), never a panic.
//! Skipped values are checked for balanced brackets and well-formed strings, not fully
//! validated; callers parse the values they use. Nesting is limited to [`MAX_NESTING`].
//! This file names no venue.

use std::ops::Range;

use crate::book::sync::read_level;
use crate::decimal::Decimal;

/// Deepest nesting of arrays and objects [`Object`] skips over.
pub const MAX_NESTING: usize = 32;

/// A malformed JSON input: the byte offset and what was expected there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed JSON at byte {at}: {what}")]
pub struct JsonError {
    pub at: usize,
    pub what: &'static str,
}

/// Bytes that end the plain run of a string: `"`, `\\` and control characters.
static STRING_STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// The first byte at or after `from` that ends a string's plain run ([`STRING_STOP`]: `"`,
/// `\\` or a control character), looked for eight bytes at a time: a price or a size is
/// one word, where a byte loop takes a table lookup and a branch per character.
fn string_stop(b: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // A byte of `x` is zero: its high bit in `zero(x)` (the lowest such bit is exact, which
    // is all `trailing_zeros` reads).
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let mut i = from;
    while let Some(chunk) = b.get(i..i + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let w = u64::from_le_bytes(w);
        // Below 0x20: subtracting 0x20 borrows into the high bit of a byte under 0x80.
        let control = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
        let hit =
            zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\'))) | control;
        if hit != 0 {
            return Some(i + (hit.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    b.get(i..)?
        .iter()
        .position(|&c| STRING_STOP[usize::from(c)])
        .map(|k| i + k)
}

/// Bytes that matter when matching brackets: quotes and brackets.
static BRACKET_STOP: [bool; 256] = {
    let mut t = [false; 256];
    t[b'"' as usize] = true;
    t[b'[' as usize] = true;
    t[b']' as usize] = true;
    t[b'{' as usize] = true;
    t[b'}' as usize] = true;
    t
};

/// A cursor over a JSON text for hand-written parsers: read an object's keys one by one and
/// each value in place, typed (`string`, `u64`) or raw (`value`, `array_raw`). Allocates
/// nothing; every method either advances past a well-formed token or returns an error.
#[derive(Debug, Clone)]
pub struct Scanner<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Scanner<'a> {
    pub fn new(text: &'a str) -> Self {
        Scanner { text, pos: 0 }
    }

    /// Byte offset of the next unread character.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The text between two positions (`None` if out of range).
    pub fn slice(&self, from: usize, to: usize) -> Option<&'a str> {
        self.text.get(from..to)
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    /// The next character after whitespace, not consumed.
    pub fn peek_token(&mut self) -> Option<u8> {
        self.skip_ws();
        self.peek()
    }

    #[inline]
    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.pos += 1;
        }
    }

    #[inline]
    fn err(&self, what: &'static str) -> JsonError {
        JsonError { at: self.pos, what }
    }

    /// Skips whitespace, then consumes `b` if it is next.
    #[inline]
    fn eat(&mut self, b: u8) -> bool {
        self.skip_ws();
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    #[inline]
    fn expect(&mut self, b: u8, what: &'static str) -> Result<(), JsonError> {
        if self.eat(b) {
            Ok(())
        } else {
            Err(self.err(what))
        }
    }

    /// Nothing but whitespace may follow.
    pub fn end(&mut self) -> Result<(), JsonError> {
        self.skip_ws();
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(self.err("trailing characters after the value")),
        }
    }

    /// Consumes the `{` that opens an object.
    pub fn begin_object(&mut self) -> Result<(), JsonError> {
        self.expect(b'{', "expected '{'")
    }

    /// The next key of the object being read, with its `:` consumed; `None` (and the `}`
    /// consumed) at its end. `first` is true before the first key and is updated.
    pub fn next_key(&mut self, first: &mut bool) -> Result<Option<&'a str>, JsonError> {
        if self.eat(b'}') {
            return Ok(None);
        }
        if !*first {
            self.expect(b',', "expected ',' or '}' between members")?;
        }
        *first = false;
        let key = self.string_raw(false)?;
        self.expect(b':', "expected ':' after a key")?;
        Ok(Some(key))
    }

    /// Consumes the `[` that opens an array.
    pub fn begin_array(&mut self) -> Result<(), JsonError> {
        self.expect(b'[', "expected '['")
    }

    /// Whether another element of the array being read follows (its `,` consumed); `false`
    /// (and the `]` consumed) at its end. `first` is true before the first element.
    pub fn next_element(&mut self, first: &mut bool) -> Result<bool, JsonError> {
        if self.eat(b']') {
            return Ok(false);
        }
        if !*first {
            self.expect(b',', "expected ',' or ']' between elements")?;
        }
        *first = false;
        Ok(true)
    }

    /// A string without escapes; returns its contents.
    pub fn string(&mut self) -> Result<&'a str, JsonError> {
        self.string_raw(true)
    }

    /// A string; returns its contents between the quotes, escapes left as written. With
    /// `plain`, an escape is an error.
    fn string_raw(&mut self, plain: bool) -> Result<&'a str, JsonError> {
        self.expect(b'"', "expected a string")?;
        let bytes = self.text.as_bytes();
        let start = self.pos;
        loop {
            let Some(at) = string_stop(bytes, self.pos) else {
                self.pos = bytes.len();
                return Err(self.err("unterminated string"));
            };
            self.pos = at;
            match bytes[at] {
                b'"' => break,
                b'\\' if plain => return Err(self.err("escape inside a plain string")),
                b'\\' => match bytes.get(self.pos + 1) {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' | b'u') => {
                        self.pos += 2
                    }
                    _ => return Err(self.err("invalid escape")),
                },
                _ => return Err(self.err("control character inside a string")),
            }
        }
        // `start` and `pos` sit next to ASCII quotes, so both are char boundaries.
        let s = self
            .text
            .get(start..self.pos)
            .ok_or(self.err("bad string"))?;
        self.pos += 1;
        Ok(s)
    }

    /// A non-negative integer without sign, fraction or exponent (`0`, `499869752`).
    pub fn u64(&mut self) -> Result<u64, JsonError> {
        self.skip_ws();
        let bytes = self.text.as_bytes();
        let start = self.pos;
        let mut n: u64 = 0;
        while let Some(&c) = bytes.get(self.pos)
            && c.is_ascii_digit()
        {
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(c - b'0')))
                .ok_or(self.err("integer too large"))?;
            self.pos += 1;
        }
        let len = self.pos - start;
        let leading_zero = len > 1 && bytes[start] == b'0';
        let not_integer = matches!(self.peek(), Some(b'.' | b'e' | b'E' | b'-' | b'+'));
        if len == 0 || leading_zero || not_integer {
            self.pos = start;
            return Err(self.err("expected a non-negative integer"));
        }
        Ok(n)
    }

    /// An integer (`-1`, `0`, `9223372036854775807`), or an integer in a string (`"42"`), or
    /// `null` (`None`): OKX writes its sequence ids as numbers on the WebSocket and as strings
    /// over REST.
    pub fn i64_or_null(&mut self) -> Result<Option<i64>, JsonError> {
        self.skip_ws();
        match self.peek() {
            Some(b'n') => {
                if self.text.as_bytes().get(self.pos..self.pos + 4) == Some(b"null") {
                    self.pos += 4;
                    return Ok(None);
                }
                Err(self.err("expected an integer"))
            }
            Some(b'"') => {
                let s = self.string()?;
                as_i64(s).map(Some).ok_or(self.err("expected an integer"))
            }
            _ => {
                let start = self.pos;
                self.scalar()?;
                let raw = self.text.get(start..self.pos).unwrap_or("");
                as_i64(raw).map(Some).ok_or_else(|| {
                    self.pos = start;
                    self.err("expected an integer")
                })
            }
        }
    }

    /// Skips one scalar (number, `true`, `false`, `null`).
    fn scalar(&mut self) -> Result<(), JsonError> {
        let start = self.pos;
        while matches!(
            self.peek(),
            Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E' | b'a'..=b'z')
        ) {
            self.pos += 1;
        }
        let word = self
            .text
            .as_bytes()
            .get(start..self.pos)
            .unwrap_or_default();
        let number = |w: &[u8]| {
            w.first().is_some_and(|c| *c == b'-' || c.is_ascii_digit())
                && w.iter().any(u8::is_ascii_digit)
                && w.iter()
                    .all(|c| matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
        };
        if matches!(word, b"true" | b"false" | b"null") || number(word) {
            Ok(())
        } else {
            self.pos = start;
            Err(self.err("expected a value"))
        }
    }

    /// Skips one value of any kind, checking its structure, and returns its raw text.
    pub fn value(&mut self) -> Result<&'a str, JsonError> {
        self.skip_ws();
        let start = self.pos;
        // Open brackets, innermost last; `true` for an object.
        let mut stack = [false; MAX_NESTING];
        let mut depth = 0usize;
        loop {
            // At the start of a value.
            self.skip_ws();
            match self.peek() {
                Some(b'"') => {
                    self.string_raw(false)?;
                }
                Some(open @ (b'[' | b'{')) => {
                    if depth == MAX_NESTING {
                        return Err(self.err("nesting too deep"));
                    }
                    self.pos += 1;
                    let object = open == b'{';
                    stack[depth] = object;
                    depth += 1;
                    let close = if object { b'}' } else { b']' };
                    if self.eat(close) {
                        depth -= 1;
                    } else {
                        if object {
                            self.string_raw(false)?;
                            self.expect(b':', "expected ':' after a key")?;
                        }
                        continue;
                    }
                }
                Some(_) => self.scalar()?,
                None => return Err(self.err("expected a value")),
            }
            // After a complete value: close brackets or move to the next element.
            loop {
                if depth == 0 {
                    return self.text.get(start..self.pos).ok_or(self.err("bad value"));
                }
                let object = stack[depth - 1];
                if self.eat(b',') {
                    if object {
                        self.string_raw(false)?;
                        self.expect(b':', "expected ':' after a key")?;
                    }
                    break;
                }
                let close = if object { b'}' } else { b']' };
                if self.eat(close) {
                    depth -= 1;
                } else {
                    return Err(self.err("expected ',' or a closing bracket"));
                }
            }
        }
    }

    /// Skips one array by matching brackets and strings only (its elements are not checked:
    /// the caller walks it later, e.g. with [`Levels`]) and returns its raw text.
    pub fn array_raw(&mut self) -> Result<&'a str, JsonError> {
        self.skip_ws();
        let start = self.pos;
        if self.peek() != Some(b'[') {
            return Err(self.err("expected an array"));
        }
        let bytes = self.text.as_bytes();
        let mut depth = 0usize;
        loop {
            let rest = bytes.get(self.pos..).unwrap_or_default();
            let Some(k) = rest.iter().position(|&b| BRACKET_STOP[usize::from(b)]) else {
                self.pos = bytes.len();
                return Err(self.err("unterminated array"));
            };
            self.pos += k;
            match rest[k] {
                b'"' => {
                    // Skip the string in place (its characters are checked by whoever walks
                    // the array later): to the closing quote, over escaped characters.
                    self.pos += 1;
                    loop {
                        let Some(at) = string_stop(bytes, self.pos) else {
                            self.pos = bytes.len();
                            return Err(self.err("unterminated string"));
                        };
                        match bytes[at] {
                            b'"' => {
                                self.pos = at + 1;
                                break;
                            }
                            b'\\' => self.pos = at + 2,
                            _ => return Err(self.err("control character inside a string")),
                        }
                    }
                }
                b'[' | b'{' => {
                    depth += 1;
                    if depth > MAX_NESTING {
                        return Err(self.err("nesting too deep"));
                    }
                    self.pos += 1;
                }
                _ => {
                    // A closing bracket; `}` and `]` are not told apart here, `Levels` does.
                    depth -= 1;
                    self.pos += 1;
                    if depth == 0 {
                        return self.text.get(start..self.pos).ok_or(self.err("bad array"));
                    }
                }
            }
        }
    }
}

impl<'a> Scanner<'a> {
    /// Reads the array of levels at the scanner in one pass, by the rules of [`Levels`], as
    /// two decimals each, and returns the array's raw text. An entry of the common shape
    /// whose first two strings are plain unsigned decimals is read straight into them
    /// ([`Decimal::parse_quoted`], one pass over the digits); any other entry's two strings go
    /// to `read`, which gives the decimals or refuses (`None`); `each` takes each level or
    /// refuses it (`false`). `None`, with the scanner left where it was, when the array is not
    /// one [`Levels`] would walk to its end or a level is refused: the caller then skips it
    /// with [`Scanner::array_raw`] and walks it later, meeting the same error at the same
    /// entry.
    pub fn read_decimal_levels(
        &mut self,
        read: impl Fn(&'a str, &'a str) -> Option<(Decimal, Decimal)>,
        mut each: impl FnMut((Decimal, Decimal)) -> bool,
    ) -> Option<&'a str> {
        self.walk_levels(|lv| {
            lv.cur.skip_ws();
            let level = match lv.entry_decimals() {
                Some(level) => level,
                None => {
                    let (first, second) = lv.entry().ok()?;
                    read(first, second)?
                }
            };
            each(level).then_some(())
        })
    }

    /// The steps of `Levels::step` over the array at the scanner, without its check that
    /// nothing follows the array; `entry` reads one entry (`None` stops the walk).
    fn walk_levels(
        &mut self,
        mut entry: impl FnMut(&mut Levels<'a>) -> Option<()>,
    ) -> Option<&'a str> {
        self.skip_ws();
        let start = self.pos;
        let mut lv = Levels {
            cur: self.clone(),
            scan: Scan::Start,
        };
        lv.cur.expect(b'[', "expected '['").ok()?;
        if !lv.cur.eat(b']') {
            loop {
                entry(&mut lv)?;
                if lv.cur.eat(b']') {
                    break;
                }
                lv.cur
                    .expect(b',', "expected ',' or ']' between levels")
                    .ok()?;
            }
        }
        let raw = self.text.get(start..lv.cur.pos)?;
        self.pos = lv.cur.pos;
        Some(raw)
    }
}

/// Most levels one frame's arrays are read into in the envelope pass: both sides of the
/// deepest book a venue pushes over a socket (400 a side), more than a diff carries but
/// rarely. Arrays beyond it stay raw (walked when applied).
pub const READ_LEVELS: usize = 800;

/// A level as read: price and size, neither negative ([`read_level`]).
pub type ReadLevel = (Decimal, Decimal);

/// Where the envelope pass reads levels to: owned by the caller, filled afresh for each frame
/// (no heap; [`READ_LEVELS`] of 32 bytes, untouched until filled).
pub type LevelBuf = heapless::Vec<ReadLevel, READ_LEVELS>;

/// Both sides of a book update as read in the envelope pass (each exactly what walking its
/// raw array with [`Levels`] and [`read_level`] gives).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLevels<'a> {
    pub bids: &'a [ReadLevel],
    pub asks: &'a [ReadLevel],
}

impl<'a> Scanner<'a> {
    /// The level array at the scanner, read into `buf` when there is one and every level is
    /// one a book takes and fits (`Some(range)` of `buf`), else skipped raw (`None`): whoever
    /// applies it walks it then and meets the same error at the same level. Returns the raw
    /// text either way.
    pub fn levels_into(
        &mut self,
        buf: Option<&mut LevelBuf>,
    ) -> Result<(&'a str, Option<Range<usize>>), JsonError> {
        if let Some(buf) = buf {
            let from = buf.len();
            let read =
                self.read_decimal_levels(|p, q| read_level(p, q).ok(), |l| buf.push(l).is_ok());
            if let Some(raw) = read {
                return Ok((raw, Some(from..buf.len())));
            }
            buf.truncate(from);
        }
        Ok((self.array_raw()?, None))
    }
}

/// The index of the quote that closes a string whose contents start at `from`, when nothing
/// in between needs a closer look (an escape or a control character).
#[inline]
fn plain_string_end(b: &[u8], from: usize) -> Option<usize> {
    let at = string_stop(b, from)?;
    (b[at] == b'"').then_some(at)
}

/// Where a [`Levels`] or [`Object`] scan is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// Before the opening bracket.
    Start,
    /// Before the first element.
    First,
    /// After an element: a comma or the closing bracket follows.
    Next,
    /// Finished or failed: nothing more is yielded.
    Done,
}

/// Iterates the `(first, second)` strings of each entry of a JSON array of string arrays.
/// After an error it yields nothing more.
#[derive(Debug, Clone)]
pub struct Levels<'a> {
    cur: Scanner<'a>,
    scan: Scan,
}

impl<'a> Levels<'a> {
    /// Starts on a raw JSON array (checked lazily, while iterating).
    pub fn new(raw: &'a str) -> Self {
        Levels {
            cur: Scanner::new(raw),
            scan: Scan::Start,
        }
    }

    /// The common shapes `["p","q"]` (Binance) and `["p","q","0","4"]` (OKX: more plain
    /// strings after the two), without whitespace or escapes, read with one scan per string;
    /// `None` sends anything else down the general path.
    fn entry_fast(&mut self) -> Option<(&'a str, &'a str)> {
        let (text, start) = (self.cur.text, self.cur.pos);
        let b = text.as_bytes();
        if b.get(start..start + 2)? != b"[\"" {
            return None;
        }
        let e1 = plain_string_end(b, start + 2)?;
        if b.get(e1 + 1..e1 + 3)? != b",\"" {
            return None;
        }
        let e2 = plain_string_end(b, e1 + 3)?;
        let end = Self::rest_of_entry(b, e2 + 1)?;
        // Every index sits next to an ASCII quote: char boundaries.
        let pair = (text.get(start + 2..e1)?, text.get(e1 + 3..e2)?);
        self.cur.pos = end;
        Some(pair)
    }

    /// [`Levels::entry_fast`] for two plain unsigned decimals, read as decimals
    /// ([`Decimal::parse_quoted`]); `None` sends the entry down the general path.
    #[inline]
    fn entry_decimals(&mut self) -> Option<(Decimal, Decimal)> {
        let (b, start) = (self.cur.text.as_bytes(), self.cur.pos);
        if b.get(start..start + 2)? != b"[\"" {
            return None;
        }
        let (first, e1) = Decimal::parse_quoted(b, start + 2)?;
        if b.get(e1 + 1..e1 + 3)? != b",\"" {
            return None;
        }
        let (second, e2) = Decimal::parse_quoted(b, e1 + 3)?;
        self.cur.pos = Self::rest_of_entry(b, e2 + 1)?;
        Some((first, second))
    }

    /// After an entry's second string (at `at`): more plain strings, then `]`; the index
    /// past the `]`.
    #[inline(always)]
    fn rest_of_entry(b: &[u8], mut at: usize) -> Option<usize> {
        while b.get(at) == Some(&b',') {
            if b.get(at + 1) != Some(&b'"') {
                return None;
            }
            // A string of one plain character (OKX's `"0"` in every level) is read here, not
            // by the word-wise search for its end. Here, not in that search or in
            // `plain_string_end` for every caller: both of those placements measured OKX's
            // parse at 730-784 ns per update against 650-688 here.
            at = match b.get(at + 2..at + 4) {
                Some(&[c, b'"']) if !STRING_STOP[usize::from(c)] => at + 4,
                _ => plain_string_end(b, at + 2)? + 1,
            };
        }
        (b.get(at) == Some(&b']')).then_some(at + 1)
    }

    fn entry(&mut self) -> Result<(&'a str, &'a str), JsonError> {
        self.cur.skip_ws();
        if let Some(pair) = self.entry_fast() {
            return Ok(pair);
        }
        let c = &mut self.cur;
        c.expect(b'[', "expected a level array")?;
        let first = c.string()?;
        c.expect(b',', "a level needs two strings")?;
        let second = c.string()?;
        while !c.eat(b']') {
            c.expect(b',', "expected ',' or ']' in a level")?;
            c.string_raw(false)?;
        }
        Ok((first, second))
    }

    fn step(&mut self) -> Result<Option<(&'a str, &'a str)>, JsonError> {
        loop {
            match self.scan {
                Scan::Start => {
                    self.cur.expect(b'[', "expected '['")?;
                    self.scan = Scan::First;
                }
                Scan::First => {
                    if self.cur.eat(b']') {
                        self.cur.end()?;
                        self.scan = Scan::Done;
                        return Ok(None);
                    }
                    let e = self.entry()?;
                    self.scan = Scan::Next;
                    return Ok(Some(e));
                }
                Scan::Next => {
                    if self.cur.eat(b']') {
                        self.cur.end()?;
                        self.scan = Scan::Done;
                        return Ok(None);
                    }
                    self.cur
                        .expect(b',', "expected ',' or ']' between levels")?;
                    return self.entry().map(Some);
                }
                Scan::Done => return Ok(None),
            }
        }
    }
}

impl<'a> Iterator for Levels<'a> {
    type Item = Result<(&'a str, &'a str), JsonError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.step() {
            Ok(e) => e.map(Ok),
            Err(e) => {
                self.scan = Scan::Done;
                Some(Err(e))
            }
        }
    }
}

/// Iterates the members of a JSON object as `(key, raw value)`. Keys are returned as written
/// (escapes left in place, so an escaped key simply matches no expected name). After an error
/// it yields nothing more.
#[derive(Debug, Clone)]
pub struct Object<'a> {
    cur: Scanner<'a>,
    scan: Scan,
}

impl<'a> Object<'a> {
    /// Starts on a raw JSON object (checked lazily, while iterating).
    pub fn new(raw: &'a str) -> Self {
        Object {
            cur: Scanner::new(raw),
            scan: Scan::Start,
        }
    }

    fn member(&mut self) -> Result<(&'a str, &'a str), JsonError> {
        let key = self.cur.string_raw(false)?;
        self.cur.expect(b':', "expected ':' after a key")?;
        let value = self.cur.value()?;
        Ok((key, value))
    }

    fn step(&mut self) -> Result<Option<(&'a str, &'a str)>, JsonError> {
        loop {
            match self.scan {
                Scan::Start => {
                    self.cur.expect(b'{', "expected '{'")?;
                    self.scan = Scan::First;
                }
                Scan::First | Scan::Next => {
                    if self.cur.eat(b'}') {
                        self.cur.end()?;
                        self.scan = Scan::Done;
                        return Ok(None);
                    }
                    if self.scan == Scan::Next {
                        self.cur
                            .expect(b',', "expected ',' or '}' between members")?;
                    }
                    let m = self.member()?;
                    self.scan = Scan::Next;
                    return Ok(Some(m));
                }
                Scan::Done => return Ok(None),
            }
        }
    }
}

impl<'a> Iterator for Object<'a> {
    type Item = Result<(&'a str, &'a str), JsonError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.step() {
            Ok(m) => m.map(Ok),
            Err(e) => {
                self.scan = Scan::Done;
                Some(Err(e))
            }
        }
    }
}

/// Iterates the elements of a JSON array as raw values. After an error it yields nothing more.
#[derive(Debug, Clone)]
pub struct Array<'a> {
    cur: Scanner<'a>,
    scan: Scan,
}

impl<'a> Array<'a> {
    /// Starts on a raw JSON array (checked lazily, while iterating).
    pub fn new(raw: &'a str) -> Self {
        Array {
            cur: Scanner::new(raw),
            scan: Scan::Start,
        }
    }

    fn step(&mut self) -> Result<Option<&'a str>, JsonError> {
        loop {
            match self.scan {
                Scan::Start => {
                    self.cur.expect(b'[', "expected '['")?;
                    self.scan = Scan::First;
                }
                Scan::First | Scan::Next => {
                    if self.cur.eat(b']') {
                        self.cur.end()?;
                        self.scan = Scan::Done;
                        return Ok(None);
                    }
                    if self.scan == Scan::Next {
                        self.cur
                            .expect(b',', "expected ',' or ']' between elements")?;
                    }
                    let v = self.cur.value()?;
                    self.scan = Scan::Next;
                    return Ok(Some(v));
                }
                Scan::Done => return Ok(None),
            }
        }
    }
}

impl<'a> Iterator for Array<'a> {
    type Item = Result<&'a str, JsonError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.step() {
            Ok(v) => v.map(Ok),
            Err(e) => {
                self.scan = Scan::Done;
                Some(Err(e))
            }
        }
    }
}

/// A raw JSON integer that fits an `i64` (`-1`, `0`, `7`); `None` for anything else.
pub fn as_i64(raw: &str) -> Option<i64> {
    match raw.strip_prefix('-') {
        Some(digits) => {
            let m = as_u64(digits)?;
            if m == 1 << 63 {
                Some(i64::MIN)
            } else {
                i64::try_from(m).ok().map(|v| -v)
            }
        }
        None => i64::try_from(as_u64(raw)?).ok(),
    }
}

/// The contents of a raw JSON string value without escapes; `None` for anything else.
pub fn as_plain_str(raw: &str) -> Option<&str> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    inner
        .bytes()
        .all(|b| b != b'"' && b != b'\\' && b >= 0x20)
        .then_some(inner)
}

/// A raw JSON non-negative integer (`0`, `499869752`); `None` for anything else or overflow.
pub fn as_u64(raw: &str) -> Option<u64> {
    let b = raw.as_bytes();
    if b.is_empty() || (b.len() > 1 && b[0] == b'0') {
        return None;
    }
    b.iter().try_fold(0u64, |n, &c| {
        if c.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(c - b'0'))
        } else {
            None
        }
    })
}

/// A raw JSON `true` or `false`.
pub fn as_bool(raw: &str) -> Option<bool> {
    match raw {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn array_yields_raw_elements_and_stops_at_the_first_error() {
        let got: Vec<_> = Array::new(r#" [ {"a":[1,2]} , "x" ,3,[] ] "#).collect();
        assert_eq!(
            got,
            vec![Ok(r#"{"a":[1,2]}"#), Ok(r#""x""#), Ok("3"), Ok("[]")]
        );
        assert_eq!(Array::new("[]").count(), 0);
        for bad in ["", "{}", "[1,", "[1 2]", "[1]x", r#"["a]"#] {
            let items: Vec<_> = Array::new(bad).collect();
            assert!(
                items.last().is_some_and(|r| r.is_err()),
                "{bad:?} gave {items:?}"
            );
            assert!(items.iter().filter(|r| r.is_err()).count() == 1);
        }
    }

    #[test]
    fn as_i64_reads_signed_integers_only() {
        assert_eq!(as_i64("-1"), Some(-1));
        assert_eq!(as_i64("0"), Some(0));
        assert_eq!(as_i64("9223372036854775807"), Some(i64::MAX));
        assert_eq!(as_i64("-9223372036854775808"), Some(i64::MIN));
        for bad in [
            "9223372036854775808",
            "-9223372036854775809",
            "-",
            "1.5",
            "\"1\"",
            "01",
            "--1",
            "",
        ] {
            assert_eq!(as_i64(bad), None, "{bad}");
        }
    }

    use super::*;

    #[test]
    fn the_word_at_a_time_string_scan_finds_what_the_byte_scan_finds() {
        // Random texts of digits, points and letters with the odd quote, backslash, control
        // or non-ASCII byte, from every start: the same stop as the table, byte by byte.
        let mut rng = fastrand::Rng::with_seed(8);
        let pool: &[u8] = b"0123456789.-abcXYZ ,:[]{}\"\\\x00\x1f\x7f\xc3\xa9";
        for _ in 0..20_000 {
            let n = rng.usize(0..40);
            let text: Vec<u8> = (0..n)
                .map(|_| {
                    if rng.u8(..8) == 0 {
                        pool[rng.usize(..pool.len())]
                    } else {
                        b'0' + rng.u8(..10)
                    }
                })
                .collect();
            for from in 0..=n + 1 {
                let want = text
                    .get(from..)
                    .and_then(|r| r.iter().position(|&c| STRING_STOP[usize::from(c)]))
                    .map(|k| from + k);
                assert_eq!(string_stop(&text, from), want, "{text:?} from {from}");
            }
        }
    }

    fn levels(s: &str) -> Result<Vec<(&str, &str)>, JsonError> {
        Levels::new(s).collect()
    }

    fn members(s: &str) -> Result<Vec<(&str, &str)>, JsonError> {
        Object::new(s).collect()
    }

    #[test]
    fn levels_yield_the_first_two_strings_of_each_entry() {
        type Want = &'static [(&'static str, &'static str)];
        let cases: [(&str, Want); 7] = [
            // TC0: pairs.
            (
                r#"[["0.0015","100.5"],["0.0016","0"]]"#,
                &[("0.0015", "100.5"), ("0.0016", "0")],
            ),
            // TC1: quadruples: the rest of each entry is skipped.
            (r#"[["3366.1","7","0","2"]]"#, &[("3366.1", "7")]),
            // TC2: JSON whitespace between every token.
            (
                " [ [ \"1\" ,\n\"2\" ] ,\t[\"3\",\"4\",\"x\"] ]\r\n",
                &[("1", "2"), ("3", "4")],
            ),
            // TC3: empty arrays.
            ("[]", &[]),
            // TC4: empty with whitespace.
            (" [ ] ", &[]),
            // TC5: an escape in a skipped string is fine.
            (r#"[["1","2","a\"b"]]"#, &[("1", "2")]),
            // TC6: skipped strings of one character (OKX's "0"), of none, and an escaped
            // quote alone.
            (
                r#"[["1","2","0","13"],["3","4","","x"],["5","6","\"","0"]]"#,
                &[("1", "2"), ("3", "4"), ("5", "6")],
            ),
        ];
        for (i, (input, want)) in cases.iter().enumerate() {
            assert_eq!(levels(input).as_deref(), Ok(*want), "TC{i}: {input}");
        }
    }

    #[test]
    fn malformed_levels_error_and_never_panic() {
        let cases = [
            "",                         // TC0: empty input
            "{}",                       // TC1: not an array
            "[",                        // TC2: unterminated
            "[[",                       // TC3: unterminated entry
            r#"[["1"]]"#,               // TC4: one string
            r#"[[]]"#,                  // TC5: empty entry
            r#"[["1",2]]"#,             // TC6: a number
            r#"[["1","2",3]]"#,         // TC7: a number among the skipped fields
            r#"[["1","2"]"#,            // TC8: missing ']'
            r#"[["1","2"],]"#,          // TC9: trailing comma
            r#"[["1","2"]x"#,           // TC10: garbage between levels
            r#"[["1\"","2"]]"#,         // TC11: escape inside a returned string
            r#"[["1\u0030","2"]]"#,     // TC12: unicode escape inside a returned string
            "[1]",                      // TC13: entry is not an array
            r#"[["1","2""#,             // TC14: truncated
            r#"[["1","2"]] x"#,         // TC15: trailing characters
            "[[\"1\n\",\"2\"]]",        // TC16: control character inside a string
            r#"[["1","2"] ["3","4"]]"#, // TC17: missing comma
            r#"[null]"#,                // TC18: null entry
            "[[\"1\",\"2\",\"\\",       // TC19: truncated escape
            "[[\"1\",\"2\",\"\n\"]]",   // TC20: a skipped string of one control character
            r#"[["1","2","0"#,          // TC21: a one-character string, truncated
            r#"[["1","2","0"x]]"#,      // TC22: garbage after a one-character string
            r#"[["1","2","0","#,        // TC23: truncated after a one-character string
        ];
        for (i, input) in cases.iter().enumerate() {
            assert!(levels(input).is_err(), "TC{i}: {input:?} accepted");
        }
        // After an error the iterator is finished.
        let mut it = Levels::new(r#"[["1"],["2","3"]]"#);
        assert!(matches!(it.next(), Some(Err(_))));
        assert!(it.next().is_none());
    }

    #[test]
    fn objects_yield_keys_and_raw_values() {
        type Want = &'static [(&'static str, &'static str)];
        let cases: [(&str, Want); 4] = [
            // TC0: scalars and strings, raw.
            (
                r#"{"a":1,"b":"x","c":true,"d":null,"e":-1.5e3}"#,
                &[
                    ("a", "1"),
                    ("b", "\"x\""),
                    ("c", "true"),
                    ("d", "null"),
                    ("e", "-1.5e3"),
                ],
            ),
            // TC1: nested values come back whole.
            (
                r#"{"data":{"b":[["1","2"]],"o":{"x":[]}},"stream":"s"}"#,
                &[
                    ("data", r#"{"b":[["1","2"]],"o":{"x":[]}}"#),
                    ("stream", "\"s\""),
                ],
            ),
            // TC2: whitespace around everything; escaped strings skipped intact.
            (
                " { \"k\" : [ 1 , { } , \"a\\\"]\" ] } ",
                &[("k", "[ 1 , { } , \"a\\\"]\" ]")],
            ),
            // TC3: empty.
            ("{}", &[]),
        ];
        for (i, (input, want)) in cases.iter().enumerate() {
            assert_eq!(members(input).as_deref(), Ok(*want), "TC{i}: {input}");
        }
    }

    #[test]
    fn malformed_objects_error_and_never_panic() {
        let deep = format!(
            "{{\"a\":{}{}}}",
            "[".repeat(MAX_NESTING + 1),
            "]".repeat(MAX_NESTING + 1)
        );
        let cases = [
            "",                 // TC0
            "[]",               // TC1: not an object
            "{",                // TC2
            r#"{"a"}"#,         // TC3: no value
            r#"{"a":}"#,        // TC4: empty value
            r#"{"a":1,}"#,      // TC5: trailing comma
            r#"{"a":[1,]}"#,    // TC6: trailing comma inside
            r#"{"a":[1}"#,      // TC7: mismatched bracket
            r#"{"a":{"b"}}"#,   // TC8: key without value inside
            r#"{"a":tru}"#,     // TC9: bad literal
            r#"{"a":1}x"#,      // TC10: trailing characters
            r#"{a:1}"#,         // TC11: bare key
            r#"{"a":"\x"}"#,    // TC12: invalid escape
            r#"{"a":1 "b":2}"#, // TC13: missing comma
            deep.as_str(),      // TC14: nesting too deep
        ];
        for (i, input) in cases.iter().enumerate() {
            assert!(members(input).is_err(), "TC{i}: {input:?} accepted");
        }
    }

    #[test]
    fn scalar_helpers_read_plain_values_only() {
        // TC0: strings without escapes.
        assert_eq!(as_plain_str("\"BTCUSDT\""), Some("BTCUSDT"));
        assert_eq!(as_plain_str("\"a\\\"b\""), None);
        assert_eq!(as_plain_str("1"), None);
        // TC1: non-negative integers without leading zeros, overflow refused.
        assert_eq!(as_u64("499869752"), Some(499_869_752));
        assert_eq!(as_u64("0"), Some(0));
        for bad in [
            "",
            "01",
            "-1",
            "1.0",
            "1e3",
            "18446744073709551616",
            "\"1\"",
        ] {
            assert_eq!(as_u64(bad), None, "{bad}");
        }
        assert_eq!(as_u64("18446744073709551615"), Some(u64::MAX));
        // TC2: booleans.
        assert_eq!(
            (as_bool("true"), as_bool("false"), as_bool("1")),
            (Some(true), Some(false), None)
        );
    }
}

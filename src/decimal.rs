//! Exact fixed-point decimals that keep the venue's digits.
//!
//! Design: a price or quantity is the integer `mantissa` and the number of digits after the
//! point, exactly as the venue wrote it (`"0.00100"` is mantissa 100, scale 5). Equality and
//! ordering are by value (`"1.0" == "1.00"`), display reproduces the written digits, which OKX's
//! checksum needs. There is no `f64` anywhere: a float cannot hold `0.1` and a book keyed by
//! floats drifts. Parsing is a single pass with no allocation.

use std::cmp::Ordering;
use std::fmt;

/// Most significant digits a [`Decimal`] holds (fits `i64`).
pub const MAX_DIGITS: usize = 18;

/// An exact decimal number as written by a venue.
#[derive(Clone, Copy, Default)]
pub struct Decimal {
    mantissa: i64,
    scale: u8,
}

/// Why a decimal string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    #[error("empty decimal")]
    Empty,
    #[error("invalid character in decimal")]
    InvalidChar,
    #[error("decimal has more than {MAX_DIGITS} significant digits")]
    TooManyDigits,
}

impl Decimal {
    pub const ZERO: Decimal = Decimal {
        mantissa: 0,
        scale: 0,
    };

    /// Builds `mantissa * 10^-scale`.
    pub const fn new(mantissa: i64, scale: u8) -> Self {
        Decimal { mantissa, scale }
    }

    /// Parses a plain decimal string: optional `-`, digits, optional `.` and digits.
    /// Exponents, `+`, blanks and empty parts are refused.
    pub fn parse(s: &str) -> Result<Self, DecimalError> {
        let bytes = s.as_bytes();
        let (neg, digits) = match bytes.first() {
            None => return Err(DecimalError::Empty),
            Some(b'-') => (true, &bytes[1..]),
            Some(_) => (false, bytes),
        };
        if digits.is_empty() {
            return Err(DecimalError::Empty);
        }
        if digits.len() <= 19 {
            return Self::parse_short(neg, digits);
        }
        let mut mantissa: i64 = 0;
        let mut scale: u8 = 0;
        let mut seen_point = false;
        let mut seen_digit = false;
        let mut significant = 0usize;
        for &b in digits {
            match b {
                b'0'..=b'9' => {
                    seen_digit = true;
                    if mantissa != 0 || b != b'0' {
                        significant += 1;
                    }
                    if significant > MAX_DIGITS {
                        return Err(DecimalError::TooManyDigits);
                    }
                    mantissa = mantissa * 10 + i64::from(b - b'0');
                    if seen_point {
                        scale += 1;
                    }
                }
                b'.' if !seen_point => seen_point = true,
                _ => return Err(DecimalError::InvalidChar),
            }
            if usize::from(scale) > MAX_DIGITS + 1 {
                return Err(DecimalError::TooManyDigits);
            }
        }
        if !seen_digit || digits[0] == b'.' || digits.last() == Some(&b'.') {
            return Err(DecimalError::InvalidChar);
        }
        Ok(Decimal {
            mantissa: if neg { -mantissa } else { mantissa },
            scale,
        })
    }

    /// [`Decimal::parse`] for at most 19 bytes (every price and size the venues send): at
    /// most 19 digits, so the mantissa cannot overflow a `u64` while it is read, and its
    /// significant digits are its own digits (`mantissa < 10^18` is the digit limit).
    fn parse_short(neg: bool, digits: &[u8]) -> Result<Self, DecimalError> {
        let n = digits.len();
        let mut m: u64 = 0;
        let mut i = 0;
        while let Some(d) = digits
            .get(i)
            .map(|b| b.wrapping_sub(b'0'))
            .filter(|d| *d <= 9)
        {
            m = m * 10 + u64::from(d);
            i += 1;
        }
        let mut scale = 0;
        if i < n {
            // Only a point may follow the integer digits, with digits on both sides.
            if i == 0 || digits[i] != b'.' || i + 1 == n {
                return Err(DecimalError::InvalidChar);
            }
            let frac = &digits[i + 1..];
            for &b in frac {
                let d = b.wrapping_sub(b'0');
                if d > 9 {
                    return Err(DecimalError::InvalidChar);
                }
                m = m * 10 + u64::from(d);
            }
            // At most 17 bytes of fraction: fits.
            scale = frac.len() as u8;
        }
        if m >= 1_000_000_000_000_000_000 {
            return Err(DecimalError::TooManyDigits);
        }
        // Below 10^18: fits an i64 with either sign.
        let m = m as i64;
        Ok(Decimal {
            mantissa: if neg { -m } else { m },
            scale,
        })
    }

    /// The plain unsigned decimal at `b[from..]` (digits, then optionally `.` and digits)
    /// closed by a `"`, read where it lies, and the index of that quote; `None` for anything
    /// else, longer than 19 bytes included, so that whenever it answers [`Decimal::parse`]
    /// of the same bytes answers the same. For scanners that read decimals out of JSON
    /// strings in the pass that finds their end.
    #[inline]
    pub fn parse_quoted(b: &[u8], from: usize) -> Option<(Decimal, usize)> {
        let digit = |i: usize| b.get(i).map(|c| c.wrapping_sub(b'0')).filter(|d| *d <= 9);
        let mut m: u64 = 0;
        let mut i = from;
        // Wrapping: past 19 digits the value is refused below anyway.
        while let Some(d) = digit(i) {
            m = m.wrapping_mul(10).wrapping_add(u64::from(d));
            i += 1;
        }
        if i == from {
            return None;
        }
        let mut scale = 0;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let frac = i;
            while let Some(d) = digit(i) {
                m = m.wrapping_mul(10).wrapping_add(u64::from(d));
                i += 1;
            }
            if i == frac {
                return None;
            }
            scale = i - frac;
        }
        // At most 19 bytes: no overflow, and the digit limit is `m < 10^18`, as in
        // `parse_short`.
        if b.get(i) != Some(&b'"') || i - from > 19 || m >= 1_000_000_000_000_000_000 {
            return None;
        }
        // Below 10^18 and at most 17 places: both fit.
        Some((
            Decimal {
                mantissa: m as i64,
                scale: scale as u8,
            },
            i,
        ))
    }

    pub const fn mantissa(self) -> i64 {
        self.mantissa
    }

    pub const fn scale(self) -> u8 {
        self.scale
    }

    pub const fn is_zero(self) -> bool {
        self.mantissa == 0
    }

    pub const fn is_negative(self) -> bool {
        self.mantissa < 0
    }

    /// The value scaled to `scale` digits as `i128` (exact: `scale` never exceeds 19).
    fn scaled(self, scale: u8) -> i128 {
        i128::from(self.mantissa) * 10i128.pow(u32::from(scale - self.scale))
    }

    /// Same value and same written digits (`"1.0"` and `"1.00"` are equal but not identical).
    pub fn is_identical(self, other: Decimal) -> bool {
        self.mantissa == other.mantissa && self.scale == other.scale
    }
}

impl PartialEq for Decimal {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Decimal {}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Self) -> Ordering {
        if self.scale == other.scale {
            return self.mantissa.cmp(&other.mantissa);
        }
        let scale = self.scale.max(other.scale);
        self.scaled(scale).cmp(&other.scaled(scale))
    }
}

/// Room for any [`Decimal`] written out (19 digits, a point, a leading `0` and a sign).
pub const DECIMAL_TEXT_MAX: usize = 48;

impl Decimal {
    /// Writes the digits as the venue wrote them into `buf` and returns them (ASCII digits,
    /// `.` and `-` only).
    pub fn write_ascii<'b>(&self, buf: &'b mut [u8; DECIMAL_TEXT_MAX]) -> &'b [u8] {
        let len = self.write_ascii_at(buf);
        &buf[..len]
    }

    /// Writes the digits as the venue wrote them at the start of `out` and returns how many
    /// bytes that took; 0 when `out` is too short (never for [`DECIMAL_TEXT_MAX`] bytes and a
    /// parsed decimal). The digits go straight into place, two at a time, with no copy.
    pub fn write_ascii_at(&self, out: &mut [u8]) -> usize {
        let m = self.mantissa.unsigned_abs();
        let scale = usize::from(self.scale);
        let neg = usize::from(self.mantissa < 0);
        // Digits from the mantissa, then zeros up to one before the point.
        let digits = m.checked_ilog10().map_or(1, |l| l as usize + 1);
        let int_len = digits.saturating_sub(scale).max(1);
        let len = neg + int_len + if scale > 0 { 1 + scale } else { 0 };
        let Some(dst) = out.get_mut(..len) else {
            return 0;
        };
        if neg == 1 {
            dst[0] = b'-';
        }
        // From the right, so the digits are split by the point without a division by `10^scale`.
        let mut rest = m;
        if scale > 0 {
            rest = put_digits(&mut dst[len - scale..], m);
            dst[neg + int_len] = b'.';
        }
        put_digits(&mut dst[neg..neg + int_len], rest);
        len
    }
}

/// `"00"`, `"01"`, … `"99"`.
const DIGIT_PAIRS: [u8; 200] = {
    let mut t = [0u8; 200];
    let mut i = 0;
    while i < 100 {
        t[2 * i] = b'0' + (i / 10) as u8;
        t[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    t
};

/// Fills `dst` with the low digits of `v`, right-aligned and zero-padded, two at a time;
/// returns what is left of `v` (`v / 10^dst.len()`).
fn put_digits(dst: &mut [u8], mut v: u64) -> u64 {
    let mut i = dst.len();
    while i >= 2 {
        let d = (v % 100) as usize * 2;
        v /= 100;
        dst[i - 2] = DIGIT_PAIRS[d];
        dst[i - 1] = DIGIT_PAIRS[d + 1];
        i -= 2;
    }
    if i == 1 {
        dst[0] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    v
}

impl fmt::Display for Decimal {
    /// Writes the digits as the venue wrote them, without allocating.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; DECIMAL_TEXT_MAX];
        let text = self.write_ascii(&mut buf);
        f.write_str(std::str::from_utf8(text).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Decimal {
    type Err = DecimalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Decimal::parse(s)
    }
}

impl serde::Serialize for Decimal {
    /// A JSON string with the venue's digits; `collect_str` writes without allocating.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            use serde::ser::SerializeTuple;
            let mut t = s.serialize_tuple(2)?;
            t.serialize_element(&self.mantissa)?;
            t.serialize_element(&self.scale)?;
            t.end()
        }
    }
}

impl<'de> serde::Deserialize<'de> for Decimal {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            Decimal::parse(&s).map_err(serde::de::Error::custom)
        } else {
            let (mantissa, scale) = <(i64, u8)>::deserialize(d)?;
            if usize::from(scale) > MAX_DIGITS + 1 {
                return Err(serde::de::Error::custom("decimal scale too large"));
            }
            Ok(Decimal { mantissa, scale })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn parse_quoted_answers_as_parse_does_or_not_at_all() {
        // Random short strings of digits, points, signs and the odd letter, each closed by a
        // quote: whenever `parse_quoted` reads one, `parse` reads the same digits; every
        // plain unsigned decimal of up to 19 bytes and 18 digits is read.
        let mut rng = fastrand::Rng::with_seed(19);
        let pool = b"0123456789.-+eE x";
        let mut read = 0;
        for _ in 0..200_000 {
            let n = rng.usize(0..24);
            let mut s: Vec<u8> = (0..n)
                .map(|_| {
                    if rng.u8(..4) == 0 {
                        pool[rng.usize(..pool.len())]
                    } else {
                        b'0' + rng.u8(..10)
                    }
                })
                .collect();
            let text = String::from_utf8(s.clone()).expect("ASCII");
            s.push(b'"');
            s.extend_from_slice(b",\"9\"");
            let want = Decimal::parse(&text);
            match Decimal::parse_quoted(&s, 0) {
                Some((d, end)) => {
                    assert_eq!(end, n, "{text}");
                    let w = want.expect("parse reads what parse_quoted reads");
                    assert!(d.is_identical(w), "{text}: {d} against {w}");
                    read += 1;
                }
                None => {
                    let plain = text.bytes().all(|c| c.is_ascii_digit() || c == b'.')
                        && text.bytes().filter(|c| *c == b'.').count() <= 1
                        && !text.starts_with('.')
                        && !text.ends_with('.')
                        && !text.is_empty()
                        && n <= 19;
                    assert!(!plain || want.is_err(), "{text} not read");
                }
            }
        }
        assert!(read > 10_000, "{read}");
        // TC0: the quote must close it; an offset is honoured.
        assert_eq!(Decimal::parse_quoted(b"12", 0), None);
        assert_eq!(Decimal::parse_quoted(b"12x\"", 0), None);
        let (d, end) = Decimal::parse_quoted(b"[\"0.00100\"]", 2).expect("a decimal");
        assert!(d.is_identical(Decimal::new(100, 5)) && end == 9);
    }

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).expect("a valid decimal")
    }

    #[test]
    fn display_reproduces_the_written_digits() {
        // TC0..: every string prints back exactly as written.
        for s in [
            "0",
            "0.0",
            "0.00100",
            "3366.1",
            "3366",
            "100",
            "-1.5",
            "-0.001",
            "1234567.12345678",
            "0.1",
            "10.000",
            "999999999999999999",
        ] {
            assert_eq!(d(s).to_string(), s, "{s}");
        }
    }

    #[test]
    fn every_digit_count_and_scale_prints_back_and_a_short_buffer_gets_nothing() {
        // Digit counts 1..=18 against every scale 0..=19 and both signs, with the point
        // inside, at the start and before added zeros: printed as parsed.
        let mut buf = [0u8; DECIMAL_TEXT_MAX];
        for digits in 1..=18u32 {
            let m = (1..=digits).fold(0i64, |m, i| m * 10 + i64::from(i % 10));
            for scale in 0..=19u8 {
                for m in [m, -m] {
                    let dec = Decimal::new(m, scale);
                    let text = std::str::from_utf8(dec.write_ascii(&mut buf))
                        .expect("ASCII")
                        .to_owned();
                    assert_eq!(Decimal::parse(&text).map(|p| p.is_identical(dec)), Ok(true));
                    let plain = m.unsigned_abs().to_string();
                    assert!(
                        text.ends_with(&plain[plain.len().saturating_sub(usize::from(scale))..])
                    );
                }
            }
        }
        // The extremes of the mantissa.
        assert_eq!(Decimal::new(0, 3).to_string(), "0.000");
        for m in [i64::MAX, i64::MIN] {
            let text = Decimal::new(m, 3).to_string();
            let want = format!("{}", m);
            let (int, frac) = want.split_at(want.len() - 3);
            let int = if int.is_empty() || int == "-" {
                format!("{int}0")
            } else {
                int.into()
            };
            assert_eq!(text, format!("{int}.{frac}"), "{m}");
        }
        // Too short a buffer: nothing written, nothing claimed.
        let mut short = [0u8; 4];
        assert_eq!(d("12345.5").write_ascii_at(&mut short), 0);
        assert_eq!(d("1.5").write_ascii_at(&mut short), 3);
        assert_eq!(&short[..3], b"1.5");
        // A hand-built scale beyond any venue's: still no panic.
        assert!(Decimal::new(7, 200).write_ascii(&mut buf).is_empty());
        assert_eq!(Decimal::new(7, 40).to_string().len(), 42);
    }

    #[test]
    fn equality_and_order_are_by_value() {
        assert_eq!(d("1.0"), d("1.00"));
        assert!(!d("1.0").is_identical(d("1.00")));
        assert!(d("0.1") < d("0.10001"));
        assert!(d("-1") < d("0"));
        assert!(d("100") > d("99.999999999999999"));
        assert_eq!(d("0.000").cmp(&d("0")), Ordering::Equal);
        assert!(d("0.00000000").is_zero());
    }

    #[test]
    fn malformed_strings_are_refused() {
        for s in [
            "", "-", ".", "1.", ".5", "1e5", "+1", "1.2.3", " 1", "1,0", "0x10", "NaN",
        ] {
            assert!(Decimal::parse(s).is_err(), "{s:?} accepted");
        }
        assert_eq!(
            Decimal::parse("1234567890123456789"),
            Err(DecimalError::TooManyDigits)
        );
        // Leading zeros are not significant digits.
        assert!(Decimal::parse("0.000000000000000001").is_ok());
    }

    #[test]
    fn the_short_path_reads_as_the_general_one() {
        // Random strings of digits, points and other bytes up to 20 bytes, with and without a
        // sign: the short path and the general loop (padded with leading zeros past 19 bytes,
        // which changes nothing) give the same decimal or the same error.
        let mut rng = fastrand::Rng::with_seed(18);
        let alphabet = b"0123456789012345678901234567890123456789..-e ";
        for _ in 0..200_000 {
            let len = rng.usize(1..=20);
            let body: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect();
            // A body starting with a sign is its own sign (padding would move it).
            let Ok(body) = std::str::from_utf8(&body) else {
                continue;
            };
            if body.starts_with('-') {
                continue;
            }
            for sign in ["", "-"] {
                let short = Decimal::parse(&format!("{sign}{body}"));
                let long = Decimal::parse(&format!("{sign}00000000000000000000{body}"));
                match (short, long) {
                    (Ok(a), Ok(b)) => assert!(a.is_identical(b), "{sign}{body}"),
                    (Err(_), Err(_)) => {}
                    (a, b) => {
                        // Leading zeros make ".5" valid ("0….5") and nothing else.
                        assert!(
                            body.starts_with('.') && a.is_err() && b.is_ok(),
                            "{sign}{body}: {a:?} {b:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn serde_roundtrips_json_string_and_postcard_pair() {
        let v = d("0.00100");
        let json = serde_json::to_string(&v).expect("serializes to JSON");
        assert_eq!(json, "\"0.00100\"");
        let back: Decimal = serde_json::from_str(&json).expect("deserializes from JSON");
        assert!(back.is_identical(v));
        let bytes = postcard::to_allocvec(&v).expect("encodes with postcard");
        let back: Decimal = postcard::from_bytes(&bytes).expect("decodes with postcard");
        assert!(back.is_identical(v));
    }
}

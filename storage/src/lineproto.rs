//! InfluxDB line protocol, parsed zero-copy over the request body.
//!
//! ```text
//! measurement[,tag=value...] field=value[,field=value...] [timestamp]
//! ```
//!
//! Every element borrows from the body; only elements that contain escape sequences are
//! copied (to unescape them). A bad line yields a [`LineError`] with its 1-based line number
//! and the column where parsing stopped; the other lines of the body are unaffected.
//!
//! Escaping, as InfluxDB defines it:
//! - measurement: `\,` `\ ` (and `\\`)
//! - tag keys, tag values, field keys: `\,` `\=` `\ ` (and `\\`)
//! - string field values: `\"` `\\`
//!
//! A backslash before any other character is taken literally. Newlines cannot appear inside
//! an element: a body is split into lines first, as InfluxDB does.
//!
//! A body usually names each series many times (one line per point). [`parse_lines`]
//! parses a series' measurement and tags once and shares them, by series text, with the
//! later lines of the body that repeat it byte for byte.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

#[cfg(test)]
mod tests;

/// A typed field value.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue<'a> {
    Float(f64),
    Integer(i64),
    UInteger(u64),
    String(Cow<'a, str>),
    Boolean(bool),
}

impl FieldValue<'_> {
    /// The InfluxDB name of this value's type, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            FieldValue::Float(_) => "float",
            FieldValue::Integer(_) => "integer",
            FieldValue::UInteger(_) => "unsigned",
            FieldValue::String(_) => "string",
            FieldValue::Boolean(_) => "boolean",
        }
    }
}

/// A line's tags, in the order written.
pub type Tags<'a> = Arc<[(Cow<'a, str>, Cow<'a, str>)]>;

/// A line's fields, in the order written.
pub type Fields<'a> = Vec<(Cow<'a, str>, FieldValue<'a>)>;

/// One parsed point, borrowing from the body it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedLine<'a> {
    /// 1-based line number in the body.
    pub line_number: usize,
    pub measurement: Cow<'a, str>,
    /// Shared by the lines of a body with the same series text.
    pub tags: Tags<'a>,
    pub fields: Fields<'a>,
    /// The timestamp as written, in the request's precision; `None` takes the server's time.
    pub timestamp: Option<i64>,
    /// The line as it appeared in the body (without the line terminator).
    pub raw: &'a str,
    /// The series key as written: measurement and tags, escapes and all. Two lines with
    /// the same series text have the same measurement and tag set.
    pub series: &'a str,
}

impl ParsedLine<'_> {
    /// The point written out as line protocol, escaped so that parsing it gives the same
    /// measurement, tags, fields and timestamp back.
    pub fn to_line_protocol(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::with_capacity(self.raw.len().max(64));
        escape_into(&mut s, &self.measurement, Element::Measurement);
        for (k, v) in self.tags.iter() {
            s.push(',');
            escape_into(&mut s, k, Element::Key);
            s.push('=');
            escape_into(&mut s, v, Element::Key);
        }
        for (i, (k, v)) in self.fields.iter().enumerate() {
            s.push(if i == 0 { ' ' } else { ',' });
            escape_into(&mut s, k, Element::Key);
            s.push('=');
            let _ = match v {
                FieldValue::Float(f) => write!(s, "{f:?}"),
                FieldValue::Integer(n) => write!(s, "{n}i"),
                FieldValue::UInteger(n) => write!(s, "{n}u"),
                FieldValue::Boolean(b) => write!(s, "{b}"),
                FieldValue::String(v) => {
                    s.push('"');
                    escape_into(&mut s, v, Element::StringValue);
                    s.push('"');
                    Ok(())
                }
            };
        }
        if let Some(ts) = self.timestamp {
            let _ = write!(s, " {ts}");
        }
        s
    }
}

/// A rejected line: where, what, and the line itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number in the body.
    pub line_number: usize,
    pub original_line: String,
    pub message: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line_number, self.message)
    }
}

impl std::error::Error for LineError {}

/// Parses every line of `body`, skipping blank lines and `#` comments.
pub fn parse_lines(body: &[u8]) -> Lines<'_> {
    Lines {
        body,
        pos: 0,
        line_number: 0,
        hint: (0, 0),
        series: SeriesCache::default(),
        spare: Vec::new(),
    }
}

/// Iterator over the points of a body; see [`parse_lines`].
#[derive(Debug)]
pub struct Lines<'a> {
    body: &'a [u8],
    pos: usize,
    line_number: usize,
    /// Tags and fields of the previous line: the next one likely has as many.
    hint: (usize, usize),
    series: SeriesCache<'a>,
    /// A fields vector handed back by [`Lines::recycle`], for the next line to fill.
    spare: Fields<'a>,
}

impl<'a> Lines<'a> {
    /// Hands a line that is done with back, so that the next line parses its fields into
    /// the same vector instead of allocating one: a reader that consumes each line before
    /// taking the next allocates nothing per line.
    pub fn recycle(&mut self, line: ParsedLine<'a>) {
        let mut fields = line.fields;
        fields.clear();
        self.spare = fields;
    }
}

/// The series parsed so far in a body, by series text: their measurement and tags.
#[derive(Debug, Default)]
struct SeriesCache<'a> {
    parsed: HashMap<&'a str, (Cow<'a, str>, Tags<'a>), ahash::RandomState>,
    lookups: usize,
    /// Hits in the current window of [`Self::WINDOW`] lookups.
    hits: usize,
    /// Off for the rest of a body whose series rarely repeat: the lookups would cost more
    /// than they save.
    off: bool,
}

impl<'a> SeriesCache<'a> {
    /// Series kept at most: the cache grows with the body, not without bound.
    const CAPACITY: usize = 100_000;
    /// Lookups over which the cache judges whether it pays. The first window only fills
    /// it: a body that cycles through its series (TSBS names each of 1,000 hosts in turn)
    /// hits nothing until the series come round again.
    const WINDOW: usize = 1024;

    fn get(&mut self, series: &str) -> Option<(Cow<'a, str>, Tags<'a>)> {
        self.lookups += 1;
        let found = self.parsed.get(series).cloned();
        self.hits += usize::from(found.is_some());
        if self.lookups.is_multiple_of(Self::WINDOW) {
            if self.lookups > Self::WINDOW && self.hits * 8 < Self::WINDOW {
                self.off = true;
                self.parsed = HashMap::default();
            }
            self.hits = 0;
        }
        found
    }

    fn insert(&mut self, series: &'a str, measurement: Cow<'a, str>, tags: Tags<'a>) {
        if !self.off && self.parsed.len() < Self::CAPACITY {
            self.parsed.insert(series, (measurement, tags));
        }
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = Result<ParsedLine<'a>, LineError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.pos >= self.body.len() {
                return None;
            }
            let rest = &self.body[self.pos..];
            let end = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
            let mut line = &rest[..end];
            self.pos += end + 1;
            self.line_number += 1;
            if let [head @ .., b'\r'] = line {
                line = head;
            }
            let first = line.iter().position(|b| !matches!(b, b' ' | b'\t'));
            match first {
                None => continue,
                Some(i) if line[i] == b'#' => continue,
                Some(_) => {}
            }
            let line_number = self.line_number;
            let text = match std::str::from_utf8(line) {
                Ok(text) => text,
                Err(e) => {
                    return Some(Err(LineError {
                        line_number,
                        original_line: String::from_utf8_lossy(line).into_owned(),
                        message: format!("invalid UTF-8 at column {}", e.valid_up_to() + 1),
                    }));
                }
            };
            let fields = std::mem::take(&mut self.spare);
            let parsed =
                parse_with_hint(text, line_number, self.hint, fields, Some(&mut self.series));
            if let Ok(line) = &parsed {
                self.hint = (line.tags.len(), line.fields.len());
            }
            return Some(parsed);
        }
    }
}

/// Parses one line (without its terminator). Blank and comment lines are errors here:
/// [`parse_lines`] skips them before calling this.
pub fn parse_line(line: &str, line_number: usize) -> Result<ParsedLine<'_>, LineError> {
    parse_with_hint(line, line_number, (0, 0), Vec::new(), None)
}

/// [`parse_line`], with room reserved for as many tags and fields as `hint` says, the
/// fields parsed into `fields` (empty), and the measurement and tags taken from `series`
/// when an earlier line had the same series text.
fn parse_with_hint<'a>(
    line: &'a str,
    line_number: usize,
    hint: (usize, usize),
    fields: Fields<'a>,
    series: Option<&mut SeriesCache<'a>>,
) -> Result<ParsedLine<'a>, LineError> {
    Parser {
        line,
        bytes: line.as_bytes(),
        pos: 0,
    }
    .parse(line_number, hint, fields, series)
    .map_err(|(column, message)| LineError {
        line_number,
        original_line: line.to_owned(),
        message: format!("{message} (column {column})"),
    })
}

/// Byte classes for scanning: an element ends at the first unescaped byte of its stop class.
const COMMA: u8 = 1;
const SPACE: u8 = 2;
const EQUALS: u8 = 4;
const BACKSLASH: u8 = 8;

static CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    table[b',' as usize] = COMMA;
    table[b' ' as usize] = SPACE;
    table[b'=' as usize] = EQUALS;
    table[b'\\' as usize] = BACKSLASH;
    table
};

/// Characters a backslash escapes in each element.
const MEASUREMENT_ESCAPES: &[u8] = b", \\";
const KEY_ESCAPES: &[u8] = b",= \\";
const STRING_ESCAPES: &[u8] = b"\"\\";

type ParseResult<T> = Result<T, (usize, String)>;

struct Parser<'a> {
    line: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn parse(
        mut self,
        line_number: usize,
        hint: (usize, usize),
        mut fields: Fields<'a>,
        cache: Option<&mut SeriesCache<'a>>,
    ) -> ParseResult<ParsedLine<'a>> {
        debug_assert!(fields.is_empty());
        // Leading whitespace is tolerated, as InfluxDB does.
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
        let series_start = self.pos;
        let cache = cache.filter(|c| !c.off);
        let (measurement, tags) = match cache {
            Some(cache) => {
                // A series parses the same wherever it appears: it ends at the first
                // space no backslash escapes, as every element of it does.
                let end = series_end(self.bytes, series_start);
                let series = &self.line[series_start..end];
                match cache.get(series) {
                    Some(parsed) => {
                        self.pos = end;
                        parsed
                    }
                    None => {
                        let (measurement, tags) = self.series(hint.0)?;
                        debug_assert_eq!(self.pos, end, "a parsed series ends where scanned");
                        cache.insert(series, measurement.clone(), tags.clone());
                        (measurement, tags)
                    }
                }
            }
            None => self.series(hint.0)?,
        };
        let series = &self.line[series_start..self.pos];
        if self.peek() != Some(b' ') {
            return match self.peek() {
                None => self.fail("missing fields"),
                Some(_) => self.fail("expected a space before the fields"),
            };
        }
        self.skip_spaces();
        let mut field_sigs = KeySigs::default();
        fields.reserve(hint.1.max(1));
        loop {
            let key = self.element(EQUALS | COMMA | SPACE, KEY_ESCAPES);
            if key.is_empty() {
                return self.fail("missing field key");
            }
            if self.peek() != Some(b'=') {
                return self.fail(format!("expected '=' after field key '{key}'"));
            }
            self.pos += 1;
            let value = self.field_value(&key)?;
            if is_duplicate(&mut field_sigs, &fields, &key) {
                return self.fail(format!("duplicate field '{key}'"));
            }
            fields.push((key, value));
            match self.peek() {
                Some(b',') => self.pos += 1,
                _ => break,
            }
        }
        let timestamp = match self.peek() {
            None => None,
            Some(b' ') => {
                self.skip_spaces();
                self.timestamp()?
            }
            Some(_) => return self.fail("expected a space or ',' after a field"),
        };
        Ok(ParsedLine {
            line_number,
            measurement,
            tags,
            fields,
            timestamp,
            raw: self.line,
            series,
        })
    }

    /// Parses the series: the measurement and the tags, up to the space before the fields.
    fn series(&mut self, tags_hint: usize) -> ParseResult<(Cow<'a, str>, Tags<'a>)> {
        let measurement = self.element(COMMA | SPACE, MEASUREMENT_ESCAPES);
        if measurement.is_empty() {
            return self.fail("missing measurement");
        }
        let mut tags: Vec<(Cow<'a, str>, Cow<'a, str>)> = Vec::with_capacity(tags_hint);
        let mut tag_sigs = KeySigs::default();
        while self.peek() == Some(b',') {
            self.pos += 1;
            let key = self.element(EQUALS | COMMA | SPACE, KEY_ESCAPES);
            if key.is_empty() {
                return self.fail("missing tag key");
            }
            if self.peek() != Some(b'=') {
                return self.fail(format!("expected '=' after tag key '{key}'"));
            }
            self.pos += 1;
            let value = self.element(COMMA | SPACE, KEY_ESCAPES);
            if value.is_empty() {
                return self.fail(format!("missing value for tag '{key}'"));
            }
            if is_duplicate(&mut tag_sigs, &tags, &key) {
                return self.fail(format!("duplicate tag '{key}'"));
            }
            tags.push((key, value));
        }
        Ok((measurement, tags.into()))
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_spaces(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn fail<T>(&self, message: impl Into<String>) -> ParseResult<T> {
        Err((self.pos + 1, message.into()))
    }

    /// Scans an element up to the first unescaped byte of class `stop`, unescaping only if
    /// needed. A backslash ending the line is taken literally.
    #[inline(always)]
    fn element(&mut self, stop: u8, escapes: &[u8]) -> Cow<'a, str> {
        let start = self.pos;
        let bytes = self.bytes;
        let mask = stop | BACKSLASH;
        let mut pos = self.pos;
        let mut escaped = false;
        while let Some(&b) = bytes.get(pos) {
            let class = CLASS[b as usize] & mask;
            if class == 0 {
                pos += 1;
            } else if class == BACKSLASH {
                escaped |= pos + 1 < bytes.len();
                pos = (pos + 2).min(bytes.len());
            } else {
                break;
            }
        }
        self.pos = pos;
        // The stop bytes are ASCII, so `pos` is always on a char boundary.
        let raw = &self.line[start..pos];
        if escaped {
            unescape(raw, escapes)
        } else {
            Cow::Borrowed(raw)
        }
    }

    #[inline(always)]
    fn field_value(&mut self, key: &str) -> ParseResult<FieldValue<'a>> {
        if self.peek() == Some(b'"') {
            self.pos += 1;
            let start = self.pos;
            let mut escaped = false;
            loop {
                match self.peek() {
                    None => {
                        return self.fail(format!("unterminated string value for field '{key}'"));
                    }
                    Some(b'\\') if self.pos + 1 < self.bytes.len() => {
                        escaped = true;
                        self.pos += 2;
                    }
                    Some(b'"') => break,
                    Some(_) => self.pos += 1,
                }
            }
            let raw = &self.line[start..self.pos];
            self.pos += 1;
            let value = if escaped {
                unescape(raw, STRING_ESCAPES)
            } else {
                Cow::Borrowed(raw)
            };
            return Ok(FieldValue::String(value));
        }
        if let Some(value) = self.plain_number() {
            return Ok(value);
        }
        let start = self.pos;
        while let Some(b) = self.peek() {
            if b == b',' || b == b' ' {
                break;
            }
            self.pos += 1;
        }
        let text = &self.line[start..self.pos];
        let column = start + 1;
        let invalid = |what: &str| -> ParseResult<FieldValue<'a>> {
            Err((
                column,
                format!("invalid {what} value '{text}' for field '{key}'"),
            ))
        };
        match text.as_bytes() {
            [] => Err((column, format!("missing value for field '{key}'"))),
            [digits @ .., b'i'] if looks_numeric(digits) => match text[..digits.len()].parse() {
                Ok(v) => Ok(FieldValue::Integer(v)),
                Err(_) => invalid("integer"),
            },
            [digits @ .., b'u'] if looks_numeric(digits) => match text[..digits.len()].parse() {
                Ok(v) => Ok(FieldValue::UInteger(v)),
                Err(_) => invalid("unsigned"),
            },
            b"t" | b"T" | b"true" | b"True" | b"TRUE" => Ok(FieldValue::Boolean(true)),
            b"f" | b"F" | b"false" | b"False" | b"FALSE" => Ok(FieldValue::Boolean(false)),
            bytes if looks_numeric(bytes) => match text.parse::<f64>() {
                Ok(v) if v.is_finite() => Ok(FieldValue::Float(v)),
                _ => invalid("float"),
            },
            _ => invalid("field"),
        }
    }

    /// The common numbers in one pass: `[-]digits[.digits]` (a float) and `[-]digits i`
    /// (an integer), followed by `,`, a space or the end of the line, when the value is
    /// exactly computable: a float of at most 19 digits whose mantissa fits in 53 bits and
    /// has at most 22 decimals is `mantissa / 10^decimals`, correctly rounded by one IEEE
    /// division (Clinger's fast path). Anything else (exponents, `+`, long or huge numbers,
    /// errors) returns `None` with the position unchanged, for the general parser.
    #[inline(always)]
    fn plain_number(&mut self) -> Option<FieldValue<'a>> {
        let bytes = self.bytes;
        let mut pos = self.pos;
        let negative = bytes.get(pos) == Some(&b'-');
        pos += usize::from(negative);
        let mut mantissa: u64 = 0;
        let mut digits = 0usize;
        let mut decimals = 0usize;
        let mut seen_point = false;
        loop {
            match bytes.get(pos) {
                Some(&b @ b'0'..=b'9') => {
                    mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
                    digits += 1;
                    decimals += usize::from(seen_point);
                }
                Some(b'.') if !seen_point => seen_point = true,
                _ => break,
            }
            pos += 1;
        }
        if digits == 0 || digits > 19 {
            return None;
        }
        let value = match bytes.get(pos) {
            None | Some(b',' | b' ') => {
                if mantissa >= 1 << 53 || decimals > 22 {
                    return None;
                }
                let magnitude = mantissa as f64 / POWERS_OF_TEN[decimals];
                FieldValue::Float(if negative { -magnitude } else { magnitude })
            }
            Some(b'i') if !seen_point && matches!(bytes.get(pos + 1), None | Some(b',' | b' ')) => {
                let magnitude = i64::try_from(mantissa).ok()?;
                pos += 1;
                FieldValue::Integer(if negative { -magnitude } else { magnitude })
            }
            _ => return None,
        };
        self.pos = pos;
        Some(value)
    }

    fn timestamp(&mut self) -> ParseResult<Option<i64>> {
        let start = self.pos;
        let rest = self.line[start..].trim_end_matches([' ', '\t']);
        if rest.is_empty() {
            return Ok(None);
        }
        self.pos = start + rest.len();
        match rest.parse::<i64>() {
            Ok(ts) => Ok(Some(ts)),
            Err(_) => Err((start + 1, format!("invalid timestamp '{rest}'"))),
        }
    }
}

/// 10^0 ..= 10^22, every one exactly representable as an f64.
const POWERS_OF_TEN: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Signatures of the keys seen so far in a line, so that checking a new key for a duplicate
/// compares strings only when length and last two bytes match; and a 64-bit filter of them,
/// so that most keys (those whose bit is not set yet) compare nothing at all.
#[derive(Default)]
struct KeySigs {
    filter: u64,
    sigs: [u32; 32],
}

fn signature(key: &str) -> u32 {
    let b = key.as_bytes();
    let n = b.len();
    let last = u32::from(b[n - 1]);
    let before = if n > 1 { u32::from(b[n - 2]) } else { 0 };
    (n as u32 & 0xffff) | (last << 16) | (before << 24)
}

/// Whether `key` is among `seen` (whose signatures `sigs` holds, for the first 32); records
/// its signature if not.
fn is_duplicate<V>(sigs: &mut KeySigs, seen: &[(Cow<'_, str>, V)], key: &str) -> bool {
    let n = seen.len();
    let sig = signature(key);
    let bit = 1u64 << (sig.wrapping_mul(0x9e37_79b9) >> 26);
    let duplicate = if sigs.filter & bit == 0 {
        false
    } else if n <= sigs.sigs.len() {
        sigs.sigs[..n]
            .iter()
            .zip(seen)
            .any(|(&s, (k, _))| s == sig && k == key)
    } else {
        seen.iter().any(|(k, _)| k == key)
    };
    if !duplicate {
        sigs.filter |= bit;
        if n < sigs.sigs.len() {
            sigs.sigs[n] = sig;
        }
    }
    duplicate
}

/// Where the series starting at `start` ends: the first space no backslash escapes (a
/// backslash takes the byte after it, whatever it is, as [`Parser::element`] scans).
fn series_end(bytes: &[u8], start: usize) -> usize {
    let rest = &bytes[start..];
    let space = memchr::memchr(b' ', rest).unwrap_or(rest.len());
    if memchr::memchr(b'\\', &rest[..space]).is_none() {
        return start + space;
    }
    let mut pos = start;
    while let Some(&b) = bytes.get(pos) {
        match b {
            b' ' => break,
            b'\\' => pos = (pos + 2).min(bytes.len()),
            _ => pos += 1,
        }
    }
    pos
}

/// Cheap pre-check that keeps `inf`, `NaN` and other words out of the number parsers.
fn looks_numeric(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes.iter().any(u8::is_ascii_digit)
        && bytes
            .iter()
            .all(|b| matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
}

fn unescape<'a>(raw: &str, escapes: &[u8]) -> Cow<'a, str> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\'
            && let Some(&next) = chars.peek()
            && next.is_ascii()
            && escapes.contains(&(next as u8))
        {
            out.push(next);
            chars.next();
            continue;
        }
        out.push(c);
    }
    Cow::Owned(out)
}

/// Writes `s` escaped for the given element, the inverse of parsing. Used by tests and tools
/// that produce line protocol.
pub fn escape_into(out: &mut String, s: &str, element: Element) {
    let escapes = match element {
        Element::Measurement => MEASUREMENT_ESCAPES,
        Element::Key => KEY_ESCAPES,
        Element::StringValue => STRING_ESCAPES,
    };
    for c in s.chars() {
        if c.is_ascii() && escapes.contains(&(c as u8)) {
            out.push('\\');
        }
        out.push(c);
    }
}

/// Which element of a line a string is escaped for; see [`escape_into`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Element {
    Measurement,
    /// Tag keys, tag values and field keys.
    Key,
    StringValue,
}

//! Remap rules: tftpd-hpa's `--map-file` (`-m`) format as pure code. Text
//! in, rules out; a name and its request in, a name or a refusal out. No
//! file, socket or clock is touched here; the caller reads the file, applies
//! the rules before path resolution ([`crate::cache::resolve`]) and turns a
//! [`Refusal`] into a TFTP ERROR. `docs/remap.md` is the operator's guide.
//!
//! # The format (tftpd-hpa 5.2)
//!
//! One rule per line, `FLAGS REGEX [REPLACEMENT]`, fields separated by
//! white space; `#` starts a comment; a backslash makes the next character
//! ordinary (`\ ` is a space inside a field, `\#` a hash mark). Rules run
//! top down on the name, each on the result of the ones before:
//!
//! | flag | meaning |
//! |---|---|
//! | `r` | replace the first match of REGEX by REPLACEMENT |
//! | `g` | with `r`: apply the rule again, to its own result, until it no longer matches (tftpd-hpa 5.2's meaning: `rg // /` turns `a////b` into `a/b`) |
//! | `i` | match case-insensitively (ASCII) |
//! | `e` | if the rule matched, stop: the name is final |
//! | `s` | if the rule matched, start again from the first rule |
//! | `a` | if the rule matched, refuse the request; REPLACEMENT, if given, is the message the client gets |
//! | `G` / `P` | the rule applies to read (RRQ) / write (WRQ) requests only |
//! | `4` / `6` | the rule applies to IPv4 / IPv6 clients only |
//! | `~` | the rule "matches" when REGEX does *not* match (not with `r`) |
//!
//! In REPLACEMENT, `\0` is the whole match, `\1`..`\9` the groups, `\i` the
//! client's address (`192.0.2.1`, `2001:db8::1`), `\x` the address in
//! upper-case hex (`C0000201`, 32 digits for IPv6), `\U` / `\L` turn what
//! follows to upper / lower case (ASCII), `\E` ends that, and `\` before any
//! other non-alphanumeric character is that character (`\\`, `\ `, `\#`).
//!
//! # Regular expressions
//!
//! tftpd-hpa compiles REGEX with glibc's `regcomp(REG_EXTENDED)`: POSIX
//! extended syntax with GNU extensions, in the C locale (bytes), and
//! *leftmost-longest* matching; within the longest match glibc fills the
//! groups the first way it finds, in pattern order. uftpd parses that
//! syntax itself (brackets, classes, `{n,m}`, `\w`, `\s`, glibc's order for
//! empty alternatives, `i` as glibc's lower-casing) and hands the [`regex`]
//! crate an equivalent pattern over bytes. The crate matches in time linear
//! in the name whatever the pattern, so no map file and no name can stall a
//! shard; but it has no back-references, and it takes the *first* match in
//! pattern order where POSIX takes the *longest*. A rule is accepted only
//! when uftpd can show that the two give the same name for every input
//! (see [`Rules::parse`]); anything else is refused when the file is read,
//! with the line and the reason. The checks were tested against glibc on
//! some hundred thousand random expressions and names, with no difference.
//!
//! # Bounds
//!
//! Every input is bounded: the file ([`FILE_BYTES_MAX`]), each line
//! ([`LINE_BYTES_MAX`]), the rules ([`RULES_MAX`]), repetition counts
//! ([`REPEAT_MAX`]), nesting ([`NEST_MAX`]), each compiled expression
//! ([`REGEX_BYTES_MAX`], [`REGEX_CACHE_BYTES_MAX`]), the rule applications
//! per name ([`STEPS_MAX`], which is what stops `s` and `g` loops) and the
//! bytes they scan ([`SCAN_BYTES_MAX`], which bounds the time), every
//! intermediate name ([`NAME_BYTES_MAX`]) and a refusal's message
//! ([`MESSAGE_BYTES_MAX`]). Applying rules never panics and never
//! allocates more than a few copies of a bounded name.

use std::fmt;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use regex::bytes::{Regex, RegexBuilder};

use crate::cache::resolve::FILENAME_BYTES_MAX;

/// Largest map file read, in bytes. Real ones are a few hundred bytes.
pub const FILE_BYTES_MAX: usize = 1 << 20;
/// Longest line, in bytes (tftpd-hpa 5.2 silently split lines at 16 KiB).
pub const LINE_BYTES_MAX: usize = 4096;
/// Most rules in one file.
pub const RULES_MAX: usize = 1024;
/// Most rule applications for one name: every evaluation of a rule's
/// expression counts, each round of a `g` rule and each pass after an `s`
/// included. tftpd-hpa 5.2 stopped after 1024 rules too ("Remap table
/// failure"), but did not count the rounds of a `g` rule, so `rg a aa`
/// hung its worker for good.
pub const STEPS_MAX: usize = 1024;
/// Most bytes of name that the rules' expressions may scan for one name
/// (each evaluation scans the current name once). With linear-time
/// matching this bounds the time one request can take: a search that
/// fills in groups took up to 10 µs per KiB of name (release build, the
/// development machine), so about 1.3 ms in all, even for a map file that
/// loops on 1020-byte names.
pub const SCAN_BYTES_MAX: usize = 128 * 1024;
/// Longest name, before, during and after remapping: the longest name a
/// request may carry ([`FILENAME_BYTES_MAX`]).
pub const NAME_BYTES_MAX: usize = FILENAME_BYTES_MAX;
/// Longest message an `a` rule sends; longer ones are cut.
pub const MESSAGE_BYTES_MAX: usize = 255;
/// Largest count in `{n}`, `{n,}`, `{n,m}` (glibc allows 32767).
pub const REPEAT_MAX: u32 = 255;
/// Deepest nesting of parentheses in one expression.
pub const NEST_MAX: usize = 32;
/// Largest compiled expression, in bytes (the crate's `size_limit`).
pub const REGEX_BYTES_MAX: usize = 64 * 1024;
/// Largest lazy-DFA cache of one expression, per thread, in bytes.
pub const REGEX_CACHE_BYTES_MAX: usize = 64 * 1024;
/// Largest expression, in single-character positions once `{n,m}` is
/// unrolled, that uftpd checks for leftmost-longest agreement.
pub const POSITIONS_MAX: usize = 1024;
/// Most follow-set entries of that check (its work, in effect).
pub const FOLLOW_ENTRIES_MAX: usize = 64 * 1024;
/// Most problems reported for one file; checking stops there.
pub const ERRORS_MAX: usize = 50;

/// The bounds that a caller may want to set, with the defaults above.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub file_bytes: usize,
    pub line_bytes: usize,
    pub rules: usize,
    pub steps: usize,
    pub scan_bytes: usize,
    pub name_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            file_bytes: FILE_BYTES_MAX,
            line_bytes: LINE_BYTES_MAX,
            rules: RULES_MAX,
            steps: STEPS_MAX,
            scan_bytes: SCAN_BYTES_MAX,
            name_bytes: NAME_BYTES_MAX,
        }
    }
}

/// What the client asked for: `G` rules apply to reads, `P` rules to writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// RRQ.
    Get,
    /// WRQ.
    Put,
}

/// The request a name came with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Context {
    pub op: Op,
    /// The client's address. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`,
    /// an IPv4 client on a dual-stack socket) counts as the IPv4 address
    /// for `\i`, `\x`, `4` and `6`, as it would on tftpd-hpa's IPv4 socket.
    pub client: IpAddr,
}

impl Context {
    pub fn new(op: Op, client: IpAddr) -> Context {
        Context { op, client }
    }
}

/// Why rules refused a name. tftpd-hpa answers all of them with ERROR 2
/// (access violation); [`Refusal::client_message`] is its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// An `a` rule matched. `message` is its REPLACEMENT, expanded, if it
    /// had one.
    Denied {
        line: usize,
        message: Option<Vec<u8>>,
    },
    /// More than [`Limits::steps`] rule applications, or more than
    /// [`Limits::scan_bytes`] scanned: a loop through `s` or a `g` rule that
    /// keeps matching its own result.
    TooManySteps,
    /// The name, or a rule's result, is longer than [`Limits::name_bytes`].
    TooLong,
}

impl Refusal {
    /// The ERROR message for the client: the `a` rule's own message, else
    /// tftpd-hpa's texts ("Access denied", "Remap table failure").
    pub fn client_message(&self) -> &[u8] {
        match self {
            Refusal::Denied {
                message: Some(m), ..
            } => m,
            Refusal::Denied { message: None, .. } => b"Access denied",
            Refusal::TooManySteps => b"Remap table failure",
            Refusal::TooLong => b"File name too long",
        }
    }
}

impl fmt::Display for Refusal {
    /// For the operator's log: what happened and where.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Denied { line, .. } => write!(f, "refused by the rule at line {line}"),
            Refusal::TooManySteps => {
                write!(f, "more than the allowed rule applications (a loop?)")
            }
            Refusal::TooLong => write!(f, "the name grew over the length limit"),
        }
    }
}

/// One problem in a map file. `line` is 1-based; 0 is the file as a whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "map file: {}", self.message)
        } else {
            write!(f, "map file line {}: {}", self.line, self.message)
        }
    }
}

/// The problems found in a map file, one per problem. Checking stops after
/// [`ERRORS_MAX`] of them; `unchecked` counts the rule lines left after
/// that. Displayed as one line per problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseErrors {
    pub errors: Vec<ParseError>,
    pub unchecked: usize,
}

impl ParseErrors {
    fn push(&mut self, line: usize, message: String) {
        self.errors.push(ParseError { line, message });
    }
}

impl fmt::Display for ParseErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        if self.unchecked > 0 {
            write!(
                f,
                "\nmap file: {} more rule lines not checked (stopped after {} problems)",
                self.unchecked,
                self.errors.len()
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ParseErrors {}

/// A parsed map file.
#[derive(Debug)]
pub struct Rules {
    rules: Vec<Rule>,
    limits: Limits,
}

#[derive(Debug)]
struct Rule {
    line: usize,
    regex: Regex,
    replace: bool,
    global: bool,
    exit: bool,
    restart: bool,
    abort: bool,
    inverse: bool,
    only_op: Option<Op>,
    only_v6: Option<bool>,
    replacement: Vec<Piece>,
    /// Whether the replacement uses `\1`..`\9` (else a plain `find` does).
    uses_groups: bool,
}

/// A part of a replacement.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(Vec<u8>),
    Group(usize),
    Lower,
    Upper,
    Plain,
    Ip,
    IpHex,
}

impl Rules {
    /// Parses a map file with the default [`Limits`]: one error per problem,
    /// each with its line, and no rules at all if there is any problem (as
    /// tftpd-hpa, which refuses to start).
    ///
    /// Beyond tftpd-hpa's own checks, a rule is refused when:
    /// - its expression uses what the `regex` crate cannot do, or what
    ///   glibc does inconsistently: back-references (`\1` in REGEX); the
    ///   word anchors `\b \B \< \>`; `$` anywhere but at the very end (of
    ///   the expression, or of every top-level alternative); `^` inside a
    ///   repetition; a repetition (`*`, `+`, `{n,m}`) of a part that can
    ///   match the empty string or whose length varies (`(a*)*`, `(ab?)+`;
    ///   `[^/]*` and `(ab)+` are fine); two repetition operators in a row
    ///   (`a*?`, which POSIX reads as a greedy `a*`);
    /// - uftpd cannot show that the first match (the crate's rule) is the
    ///   longest one (POSIX's rule) for every name. It can when the
    ///   expression ends with `$` or with an unbounded `.` repetition such
    ///   as `(.*)`; when every match has the same length; when only one part
    ///   varies in length and that part prefers longer matches (a greedy
    ///   repetition, or alternatives of fixed length, which uftpd puts
    ///   longest first when no group is inside them); or when the
    ///   expression is deterministic: reading the name left to right, each
    ///   character can only be matched by one part of it;
    /// - it is most likely a mistake that tftpd-hpa silently accepts: an
    ///   escape such as `\d` or `\n` (POSIX reads a plain `d`, `n`), a `\5`
    ///   in REPLACEMENT with fewer groups, a lone `)`, text after
    ///   REPLACEMENT, a REPLACEMENT on a rule that ignores it, a rule that
    ///   does nothing, flags that contradict each other (`GP`, `46`, `ra`,
    ///   `ae`, `as`, `es`), or a line that ends in a backslash.
    pub fn parse(text: &[u8]) -> Result<Rules, ParseErrors> {
        Rules::parse_with(text, Limits::default())
    }

    /// [`Rules::parse`] with other bounds.
    pub fn parse_with(text: &[u8], limits: Limits) -> Result<Rules, ParseErrors> {
        let mut errors = ParseErrors {
            errors: Vec::new(),
            unchecked: 0,
        };
        if text.len() > limits.file_bytes {
            errors.push(
                0,
                format!(
                    "{} bytes, over the limit of {} bytes",
                    text.len(),
                    limits.file_bytes
                ),
            );
            return Err(errors);
        }
        let mut rules = Vec::new();
        let mut seen = 0usize;
        for (index, line) in text.split(|&b| b == b'\n').enumerate() {
            let number = index + 1;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if errors.errors.len() >= ERRORS_MAX {
                if !split_fields(line).is_ok_and(|f| f.is_empty()) {
                    errors.unchecked += 1;
                }
                continue;
            }
            if line.len() > limits.line_bytes {
                errors.push(
                    number,
                    format!(
                        "the line is {} bytes long, over the limit of {} bytes",
                        line.len(),
                        limits.line_bytes
                    ),
                );
                continue;
            }
            if line.contains(&0) {
                errors.push(number, "the line holds a NUL byte".into());
                continue;
            }
            let fields = match split_fields(line) {
                Ok(f) if f.is_empty() => continue,
                Ok(f) => f,
                Err(e) => {
                    errors.push(number, e);
                    continue;
                }
            };
            seen += 1;
            if seen > limits.rules {
                errors.push(
                    number,
                    format!(
                        "more than {} rules (uftpd's limit); the rest of the file was not read",
                        limits.rules
                    ),
                );
                break;
            }
            match parse_rule(number, &fields) {
                Ok(rule) => rules.push(rule),
                Err(e) => errors.push(number, e),
            }
        }
        if errors.errors.is_empty() {
            Ok(Rules { rules, limits })
        } else {
            Err(errors)
        }
    }

    /// How many rules the file holds.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Runs the rules on a request's name. The name ends at its first NUL,
    /// as in tftpd-hpa. Never panics.
    pub fn apply(&self, name: &[u8], ctx: &Context) -> Result<Vec<u8>, Refusal> {
        let name = match name.iter().position(|&b| b == 0) {
            Some(end) => &name[..end],
            None => name,
        };
        let limit = self.limits.name_bytes;
        if name.len() > limit {
            return Err(Refusal::TooLong);
        }
        let client = canonical(ctx.client);
        let mut current = name.to_vec();
        let mut next = Vec::with_capacity(limit.min(256));
        let mut steps = 0usize;
        let mut scanned = 0usize;
        let mut index = 0usize;
        while let Some(rule) = self.rules.get(index) {
            if !rule.applies(ctx.op, client) {
                index += 1;
                continue;
            }
            let mut matched = false;
            loop {
                steps += 1;
                scanned += current.len() + 1;
                if steps > self.limits.steps || scanned > self.limits.scan_bytes {
                    return Err(Refusal::TooManySteps);
                }
                if rule.inverse {
                    if !rule.regex.is_match(&current) {
                        matched = true;
                        if rule.abort {
                            return Err(rule.denial(&current, None, client));
                        }
                    }
                    break;
                }
                let groups = if rule.uses_groups {
                    match rule.regex.captures(&current) {
                        Some(c) => Groups::Captures(c),
                        None => break,
                    }
                } else {
                    match rule.regex.find(&current) {
                        Some(m) => Groups::Whole(m.start(), m.end()),
                        None => break,
                    }
                };
                matched = true;
                if rule.abort {
                    return Err(rule.denial(&current, Some(&groups), client));
                }
                if rule.replace {
                    let (start, end) = groups.span(0).unwrap_or((0, 0));
                    next.clear();
                    next.extend_from_slice(&current[..start]);
                    let fits = expand(
                        &rule.replacement,
                        &current,
                        Some(&groups),
                        client,
                        &mut next,
                        limit,
                    );
                    if !fits || next.len() + (current.len() - end) > limit {
                        return Err(Refusal::TooLong);
                    }
                    next.extend_from_slice(&current[end..]);
                    drop(groups);
                    std::mem::swap(&mut current, &mut next);
                }
                if !rule.global {
                    break;
                }
            }
            if matched {
                if rule.exit {
                    return Ok(current);
                }
                if rule.restart {
                    index = 0;
                    continue;
                }
            }
            index += 1;
        }
        Ok(current)
    }

    /// The lines behind `uftpd --map-test FILE`: each line of `input` is a
    /// test, and the result is one output line per test, in order.
    ///
    /// A test line is a name, optionally followed by TAB-separated fields in
    /// any order: `GET` or `PUT` (also `RRQ`, `WRQ`; any case; default
    /// `GET`) and the client's address (IPv4 or IPv6, brackets allowed;
    /// default [`MAP_TEST_CLIENT`], the address tftpd-hpa's own test mode
    /// uses). A trailing CR is dropped; a name cannot hold a TAB.
    ///
    /// Each output line is the resulting name; or `ERROR: ` and the message
    /// the client would get, then ` (` the reason `)`; or `INVALID: ` and
    /// why the test line was not understood. Control bytes (below 0x20, and
    /// 0x7F) in names and messages are written as `\xHH`, so every result
    /// stays on one line; an empty result is an empty line.
    pub fn test_lines(&self, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut lines: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
        if lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        for line in lines {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let mut fields = line.split(|&b| b == b'\t');
            let name = fields.next().unwrap_or_default();
            let mut ctx = Context::new(Op::Get, MAP_TEST_CLIENT);
            let mut bad = None;
            for field in fields {
                match parse_test_field(field) {
                    Some(TestField::Op(op)) => ctx.op = op,
                    Some(TestField::Client(ip)) => ctx.client = ip,
                    None => {
                        bad = Some(field);
                        break;
                    }
                }
            }
            if let Some(field) = bad {
                out.extend_from_slice(b"INVALID: ");
                push_shown(&mut out, field);
                out.extend_from_slice(b" is neither GET, PUT nor an IP address\n");
                continue;
            }
            match self.apply(name, &ctx) {
                Ok(result) => push_shown(&mut out, &result),
                Err(refusal) => {
                    out.extend_from_slice(b"ERROR: ");
                    push_shown(&mut out, refusal.client_message());
                    let _ = write!(Shown(&mut out), " ({refusal})");
                }
            }
            out.push(b'\n');
        }
        out
    }
}

/// The client address `--map-test` assumes: 192.0.2.34, from the block
/// reserved for documentation, as in tftpd-hpa's `--map-test`.
pub const MAP_TEST_CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 34));

/// `uftpd --map-test FILE`: parses the map file's text and runs each line
/// of `input` through it, as [`Rules::test_lines`] documents. A bad map
/// file gives its errors instead (one line each when displayed).
pub fn map_test(map: &[u8], input: &[u8]) -> Result<Vec<u8>, ParseErrors> {
    Ok(Rules::parse(map)?.test_lines(input))
}

enum TestField {
    Op(Op),
    Client(IpAddr),
}

fn parse_test_field(field: &[u8]) -> Option<TestField> {
    let text = std::str::from_utf8(field).ok()?.trim();
    match text.to_ascii_uppercase().as_str() {
        "GET" | "RRQ" => return Some(TestField::Op(Op::Get)),
        "PUT" | "WRQ" => return Some(TestField::Op(Op::Put)),
        _ => {}
    }
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    bare.parse().ok().map(TestField::Client)
}

/// Appends `bytes` with control bytes as `\xHH`.
fn push_shown(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        if b < 0x20 || b == 0x7f {
            let _ = write!(Shown(out), "\\x{b:02X}");
        } else {
            out.push(b);
        }
    }
}

/// `write!` into a byte vector.
struct Shown<'a>(&'a mut Vec<u8>);

impl fmt::Write for Shown<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// A field of the map file for an error message, cut to 60 bytes.
fn show_field(field: &[u8]) -> String {
    const SHOWN: usize = 60;
    if field.len() > SHOWN {
        format!("{}...", show(&field[..SHOWN]))
    } else {
        show(field)
    }
}

/// Bytes for an error message: printable ASCII as is, the rest as `\xHH`.
fn show(bytes: &[u8]) -> String {
    let mut s = String::new();
    for &b in bytes {
        if (0x20..0x7f).contains(&b) {
            s.push(b as char);
        } else {
            let _ = write!(s, "\\x{b:02X}");
        }
    }
    s
}

// ---------------------------------------------------------------------------
// Helpers for the common cases, without a map file.

/// dnsmasq's `--tftp-lowercase`: ASCII letters to lower case, every other
/// byte (UTF-8 included) unchanged. Whether the file system then finds the
/// file is the caller's business.
pub fn lowercase(name: &mut [u8]) {
    name.make_ascii_lowercase();
}

/// Drops trailing bytes that some boot ROMs leave after the name: NULs
/// (0x00, a fixed-size field copied whole) and bytes 0x80-0xFF that do not
/// end a valid UTF-8 character (0xFF of erased flash, stray padding). The
/// test is UTF-8 validity, not "any byte over 0x7F", so that a name ending
/// in `é` (0xC3 0xA9) is left alone; names in a legacy 8-bit encoding
/// (Latin-1 `é` is the lone byte 0xE9) would lose their last characters, so
/// do not turn this on for them. ASCII is never stripped: a trailing space
/// or control character may be meant, and control characters are refused
/// later anyway.
pub fn strip_trailing_garbage(name: &[u8]) -> &[u8] {
    let mut end = name.len();
    while end > 0 {
        let last = name[end - 1];
        if last == 0 {
            end -= 1;
        } else if last < 0x80 || ends_with_utf8_char(&name[..end]) {
            break;
        } else {
            end -= 1;
        }
    }
    &name[..end]
}

/// Whether `bytes` (whose last byte is over 0x7F) ends with a complete,
/// valid UTF-8 character.
fn ends_with_utf8_char(bytes: &[u8]) -> bool {
    let end = bytes.len();
    // A character is at most 4 bytes: a lead byte and continuations.
    (1..=4.min(end)).any(|n| {
        let tail = &bytes[end - n..];
        tail[0] & 0xC0 != 0x80 && std::str::from_utf8(tail).is_ok()
    })
}

// ---------------------------------------------------------------------------
// What the server applies.

/// Everything the server does to a requested name before it resolves it:
/// trailing garbage stripped (`--strip-trailing-garbage`), then ASCII lower
/// case (`--lowercase`), then the map file's rules (`--map-file`). The
/// clean-ups come first so that rules see a name the ROM meant, and may
/// still produce capitals on purpose. Built at start (and again on
/// SIGHUP) and shared by the shards read-only, through [`SharedNames`].
#[derive(Debug, Default)]
pub struct NameMap {
    pub strip_trailing_garbage: bool,
    pub lowercase: bool,
    pub rules: Option<Rules>,
}

impl NameMap {
    /// Whether the map changes nothing (the shards then skip it).
    pub fn is_identity(&self) -> bool {
        !self.strip_trailing_garbage && !self.lowercase && self.rules.is_none()
    }

    /// The name to resolve, or why the request is refused.
    pub fn apply(&self, name: &[u8], ctx: &Context) -> Result<Vec<u8>, Refusal> {
        let mut name = self.clean(name);
        if let Some(rules) = &self.rules {
            return rules.apply(&name, ctx);
        }
        // As the rules do: the name ends at its first NUL.
        if let Some(end) = name.iter().position(|&b| b == 0) {
            name.truncate(end);
        }
        if name.len() > NAME_BYTES_MAX {
            return Err(Refusal::TooLong);
        }
        Ok(name)
    }

    /// The clean-ups alone.
    fn clean(&self, name: &[u8]) -> Vec<u8> {
        let name = if self.strip_trailing_garbage {
            strip_trailing_garbage(name)
        } else {
            name
        };
        let mut name = name.to_vec();
        if self.lowercase {
            lowercase(&mut name);
        }
        name
    }

    /// [`Rules::test_lines`] for one test line, with the clean-ups applied
    /// to its name first (the part before the first TAB), as a request's
    /// name would be. Without rules, the cleaned name is the result.
    pub fn test_line(&self, line: &[u8]) -> Vec<u8> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let (name, rest) = match line.iter().position(|&b| b == b'\t') {
            Some(tab) => line.split_at(tab),
            None => (line, &b""[..]),
        };
        let mut cleaned = self.clean(name);
        match &self.rules {
            Some(rules) => {
                cleaned.extend_from_slice(rest);
                // Keeps an empty test line a line (one result, empty).
                cleaned.push(b'\n');
                rules.test_lines(&cleaned)
            }
            None => {
                let mut out = Vec::new();
                push_shown(&mut out, &cleaned);
                out.push(b'\n');
                out
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Lines and fields.

/// tftpd-hpa's `isspace` in the C locale.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Splits a line into fields as tftpd-hpa does: white space separates,
/// an unescaped `#` ends the line, a backslash keeps the next byte in the
/// field (the backslash stays, for the expression or replacement parser).
fn split_fields(line: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut fields = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && is_space(line[i]) {
            i += 1;
        }
        if i == line.len() || line[i] == b'#' {
            return Ok(fields);
        }
        let start = i;
        while i < line.len() {
            match line[i] {
                b'\\' if i + 1 == line.len() => {
                    return Err("the line ends with a backslash, which escapes nothing \
                                (tftpd-hpa would have escaped the line break)"
                        .into());
                }
                b'\\' => i += 2,
                b if is_space(b) || b == b'#' => break,
                _ => i += 1,
            }
        }
        fields.push(&line[start..i]);
        if fields.len() > 3 {
            return Ok(fields);
        }
    }
}

fn parse_rule(line: usize, fields: &[&[u8]]) -> Result<Rule, String> {
    let flags = fields[0];
    let mut icase = false;
    let mut rule = RuleFlags::default();
    if flags.first() == Some(&b':') {
        return Err("labels (':name') come from tftpd-hpa versions after 5.2 \
                    and are not supported"
            .into());
    }
    for &f in flags {
        match f {
            b'r' => rule.replace = true,
            b'g' if rule.global => {
                return Err(
                    "'gg' (sed-style global replacement in tftpd-hpa after 5.2) \
                            is not supported; 'g' applies the rule again until it no \
                            longer matches"
                        .into(),
                );
            }
            b'g' => rule.global = true,
            b'i' => icase = true,
            b'e' => rule.exit = true,
            b's' => rule.restart = true,
            b'a' => rule.abort = true,
            b'~' => rule.inverse = true,
            b'G' => rule.get = true,
            b'P' => rule.put = true,
            b'4' => rule.v4 = true,
            b'6' => rule.v6 = true,
            b'E' | b'j' => {
                return Err(format!(
                    "flag '{}' comes from tftpd-hpa versions after 5.2 and is not supported",
                    f as char
                ));
            }
            _ => {
                return Err(format!(
                    "unknown flag '{}' in '{}' (the flags are r g i e s a G P 4 6 ~)",
                    show(&[f]),
                    show_field(flags)
                ));
            }
        }
    }
    rule.check()?;
    let Some(&regex) = fields.get(1) else {
        return Err("no regular expression after the flags".into());
    };
    let replacement = fields.get(2).copied();
    if replacement.is_some() && !rule.replace && !rule.abort {
        return Err(format!(
            "'{}' after the regular expression: only r rules (the replacement) and a \
             rules (the message) use a third field",
            show_field(replacement.unwrap_or_default())
        ));
    }
    if let Some(extra) = fields.get(3) {
        return Err(format!(
            "unexpected '{}' after the replacement: write a space inside a field as '\\ ' \
             (tftpd-hpa ignores the rest of the line)",
            show_field(extra)
        ));
    }
    let (mut node, groups) = Ere::parse(regex, icase)
        .map_err(|e| format!("regular expression '{}': {e}", show_field(regex)))?;
    check_faithful(&mut node)
        .map_err(|e| format!("regular expression '{}': {e}", show_field(regex)))?;
    let mut pattern = String::new();
    emit(&node, &mut pattern);
    let compiled = RegexBuilder::new(&pattern)
        .unicode(false)
        .size_limit(REGEX_BYTES_MAX)
        .dfa_size_limit(REGEX_CACHE_BYTES_MAX)
        .nest_limit(4 * NEST_MAX as u32 + 16)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(n) => format!(
                "regular expression '{}' is too big once compiled (over {n} bytes)",
                show_field(regex)
            ),
            other => format!("regular expression '{}': {other}", show_field(regex)),
        })?;
    let pieces =
        parse_replacement(replacement.unwrap_or_default(), groups, rule.inverse).map_err(|e| {
            format!(
                "replacement '{}': {e}",
                show_field(replacement.unwrap_or_default())
            )
        })?;
    let uses_groups = pieces
        .iter()
        .any(|p| matches!(p, Piece::Group(n) if *n > 0));
    Ok(Rule {
        line,
        regex: compiled,
        replace: rule.replace,
        global: rule.global,
        exit: rule.exit,
        restart: rule.restart,
        abort: rule.abort,
        inverse: rule.inverse,
        only_op: match (rule.get, rule.put) {
            (true, _) => Some(Op::Get),
            (_, true) => Some(Op::Put),
            _ => None,
        },
        only_v6: match (rule.v4, rule.v6) {
            (true, _) => Some(false),
            (_, true) => Some(true),
            _ => None,
        },
        replacement: pieces,
        uses_groups,
    })
}

#[derive(Default)]
struct RuleFlags {
    replace: bool,
    global: bool,
    exit: bool,
    restart: bool,
    abort: bool,
    inverse: bool,
    get: bool,
    put: bool,
    v4: bool,
    v6: bool,
}

impl RuleFlags {
    fn check(&self) -> Result<(), String> {
        let bad = |what: &str| Err(what.to_string());
        if self.replace && self.inverse {
            return bad(
                "flags r and ~ cannot be combined: an inverted rule has no match \
                        to replace (tftpd-hpa refuses it too)",
            );
        }
        if self.replace && self.abort {
            return bad(
                "flags r and a cannot be combined: for a refusal with a message \
                        write 'a REGEX MESSAGE'",
            );
        }
        if self.abort && (self.exit || self.restart) {
            return bad("flag a cannot be combined with e or s: a refusal ends everything");
        }
        if self.exit && self.restart {
            return bad("flags e and s cannot be combined: stop, or start over?");
        }
        if self.get && self.put {
            return bad(
                "flags G and P together: tftpd-hpa 5.2 keeps only the last one, \
                        later versions never apply the rule; for both, write neither",
            );
        }
        if self.v4 && self.v6 {
            return bad(
                "flags 4 and 6 together: the rule would never apply; for both, \
                        write neither",
            );
        }
        if self.global && !self.replace {
            return bad("flag g without r does nothing");
        }
        if !self.replace && !self.exit && !self.restart && !self.abort {
            return bad("the rule does nothing: it needs r (replace), e (end), \
                        s (start over) or a (refuse)");
        }
        Ok(())
    }
}

fn parse_replacement(text: &[u8], groups: usize, inverse: bool) -> Result<Vec<Piece>, String> {
    let mut pieces: Vec<Piece> = Vec::new();
    let push_text = |pieces: &mut Vec<Piece>, b: u8| match pieces.last_mut() {
        Some(Piece::Text(t)) => t.push(b),
        _ => pieces.push(Piece::Text(vec![b])),
    };
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        i += 1;
        if b != b'\\' {
            push_text(&mut pieces, b);
            continue;
        }
        // split_fields refuses a line that ends in a backslash, so one is
        // always followed by something; a lone one is kept all the same.
        let Some(&c) = text.get(i) else {
            push_text(&mut pieces, b'\\');
            break;
        };
        i += 1;
        match c {
            b'0'..=b'9' => {
                let n = usize::from(c - b'0');
                if inverse {
                    return Err(format!(
                        "\\{n}: an inverted (~) rule has no match, so \\{n} would always be empty"
                    ));
                }
                if n > groups {
                    return Err(format!(
                        "\\{n} refers to group {n}, but the regular expression has {groups} \
                         group{} (tftpd-hpa would insert nothing)",
                        if groups == 1 { "" } else { "s" }
                    ));
                }
                pieces.push(Piece::Group(n));
            }
            b'L' => pieces.push(Piece::Lower),
            b'U' => pieces.push(Piece::Upper),
            b'E' => pieces.push(Piece::Plain),
            b'i' => pieces.push(Piece::Ip),
            b'x' => pieces.push(Piece::IpHex),
            c if c.is_ascii_alphanumeric() => {
                return Err(format!(
                    "unknown escape \\{0} (tftpd-hpa would insert a plain '{0}'); the escapes \
                     are \\0-\\9 \\i \\x \\U \\L \\E, and a backslash before any other \
                     character that is not a letter or digit",
                    c as char
                ));
            }
            c => push_text(&mut pieces, c),
        }
    }
    Ok(pieces)
}

// ---------------------------------------------------------------------------
// Applying a rule.

enum Groups<'h> {
    Captures(regex::bytes::Captures<'h>),
    Whole(usize, usize),
}

impl Groups<'_> {
    fn span(&self, n: usize) -> Option<(usize, usize)> {
        match self {
            Groups::Captures(c) => c.get(n).map(|m| (m.start(), m.end())),
            Groups::Whole(s, e) if n == 0 => Some((*s, *e)),
            Groups::Whole(..) => None,
        }
    }
}

impl Rule {
    fn applies(&self, op: Op, client: IpAddr) -> bool {
        self.only_op.is_none_or(|o| o == op) && self.only_v6.is_none_or(|v6| v6 == client.is_ipv6())
    }

    fn denial(&self, current: &[u8], groups: Option<&Groups<'_>>, client: IpAddr) -> Refusal {
        let message = if self.replacement.is_empty() {
            None
        } else {
            let mut m = Vec::new();
            expand(
                &self.replacement,
                current,
                groups,
                client,
                &mut m,
                MESSAGE_BYTES_MAX,
            );
            Some(m)
        };
        Refusal::Denied {
            line: self.line,
            message,
        }
    }
}

/// Appends the replacement to `out`; false (and stops, `out` filled up to
/// `limit` bytes) once it would be longer.
fn expand(
    pieces: &[Piece],
    haystack: &[u8],
    groups: Option<&Groups<'_>>,
    client: IpAddr,
    out: &mut Vec<u8>,
    limit: usize,
) -> bool {
    #[derive(Clone, Copy)]
    enum Case {
        Plain,
        Lower,
        Upper,
    }
    let mut case = Case::Plain;
    let mut scratch = [0u8; 64];
    for piece in pieces {
        let bytes: &[u8] = match piece {
            Piece::Text(t) => t,
            Piece::Group(n) => match groups.and_then(|g| g.span(*n)) {
                Some((s, e)) => &haystack[s..e],
                None => &[],
            },
            Piece::Lower => {
                case = Case::Lower;
                continue;
            }
            Piece::Upper => {
                case = Case::Upper;
                continue;
            }
            Piece::Plain => {
                case = Case::Plain;
                continue;
            }
            Piece::Ip => address_text(client, &mut scratch),
            Piece::IpHex => address_hex(client, &mut scratch),
        };
        let room = limit.saturating_sub(out.len());
        let fits = bytes.len() <= room;
        out.extend(bytes[..bytes.len().min(room)].iter().map(|&b| match case {
            Case::Plain => b,
            Case::Lower => b.to_ascii_lowercase(),
            Case::Upper => b.to_ascii_uppercase(),
        }));
        if !fits {
            return false;
        }
    }
    true
}

/// An IPv4-mapped IPv6 address is its IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

/// `\i`: the address as glibc's `inet_ntop` writes it.
fn address_text(ip: IpAddr, buf: &mut [u8; 64]) -> &[u8] {
    let mut w = SliceWriter { buf, len: 0 };
    let _ = match ip {
        IpAddr::V4(v4) => write!(w, "{v4}"),
        IpAddr::V6(v6) => write_inet_ntop6(&mut w, &v6),
    };
    let len = w.len;
    &buf[..len]
}

/// `\x`: the address's bytes in upper-case hex, as tftpd-hpa writes them.
fn address_hex(ip: IpAddr, buf: &mut [u8; 64]) -> &[u8] {
    let octets: &[u8] = match &ip {
        IpAddr::V4(v4) => &v4.octets(),
        IpAddr::V6(v6) => &v6.octets(),
    };
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for (i, &o) in octets.iter().enumerate() {
        buf[2 * i] = HEX[usize::from(o >> 4)];
        buf[2 * i + 1] = HEX[usize::from(o & 15)];
    }
    &buf[..2 * octets.len()]
}

/// glibc's `inet_ntop(AF_INET6)`: lower-case hex groups, the first longest
/// run of two or more zero groups as `::`, and the last 32 bits as a dotted
/// quad for `::a.b.c.d` and `::ffff:a.b.c.d`. (Rust's `Display` no longer
/// writes `::a.b.c.d` that way.)
fn write_inet_ntop6(w: &mut impl fmt::Write, ip: &Ipv6Addr) -> fmt::Result {
    let words = ip.segments();
    let (mut best, mut best_len) = (usize::MAX, 0usize);
    let mut i = 0;
    while i < 8 {
        if words[i] == 0 {
            let start = i;
            while i < 8 && words[i] == 0 {
                i += 1;
            }
            if i - start > best_len {
                (best, best_len) = (start, i - start);
            }
        } else {
            i += 1;
        }
    }
    if best_len < 2 {
        best = usize::MAX;
    }
    for (i, &word) in words.iter().enumerate() {
        if best != usize::MAX && (best..best + best_len).contains(&i) {
            if i == best {
                w.write_char(':')?;
            }
            continue;
        }
        if i != 0 {
            w.write_char(':')?;
        }
        if i == 6 && best == 0 && (best_len == 6 || (best_len == 5 && words[5] == 0xffff)) {
            let o = ip.octets();
            return write!(w, "{}.{}.{}.{}", o[12], o[13], o[14], o[15]);
        }
        write!(w, "{word:x}")?;
    }
    if best != usize::MAX && best + best_len == 8 {
        w.write_char(':')?;
    }
    Ok(())
}

struct SliceWriter<'a> {
    buf: &'a mut [u8; 64],
    len: usize,
}

impl fmt::Write for SliceWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// POSIX extended regular expressions, as glibc's regcomp reads them in the C
// locale, into a tree that is checked and then written in the regex crate's
// syntax.

/// A set of bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ByteSet([u64; 4]);

impl ByteSet {
    const EMPTY: ByteSet = ByteSet([0; 4]);

    fn from_fn(f: impl Fn(u8) -> bool) -> ByteSet {
        let mut s = ByteSet::EMPTY;
        for b in 0..=255u8 {
            if f(b) {
                s.insert(b);
            }
        }
        s
    }

    fn insert(&mut self, b: u8) {
        self.0[usize::from(b >> 6)] |= 1 << (b & 63);
    }

    fn contains(&self, b: u8) -> bool {
        self.0[usize::from(b >> 6)] & (1 << (b & 63)) != 0
    }

    fn union(self, o: ByteSet) -> ByteSet {
        ByteSet(std::array::from_fn(|i| self.0[i] | o.0[i]))
    }

    fn complement(self) -> ByteSet {
        ByteSet(self.0.map(|w| !w))
    }

    fn intersects(self, o: ByteSet) -> bool {
        (0..4).any(|i| self.0[i] & o.0[i] != 0)
    }

    /// `{b | tolower(b) ∈ self}`: how glibc matches with REG_ICASE, which
    /// lowers the pattern's characters and each character of the name.
    fn fold_lower(self) -> ByteSet {
        ByteSet::from_fn(|b| self.contains(b.to_ascii_lowercase()))
    }

    /// The set as inclusive ranges.
    fn ranges(self) -> Vec<(u8, u8)> {
        let mut out: Vec<(u8, u8)> = Vec::new();
        for b in 0..=255u8 {
            if self.contains(b) {
                match out.last_mut() {
                    Some((_, hi)) if u16::from(*hi) + 1 == u16::from(b) => *hi = b,
                    _ => out.push((b, b)),
                }
            }
        }
        out
    }
}

/// Everything `.` matches: glibc's dot takes any byte but NUL, newline
/// included (no REG_NEWLINE).
fn any_byte() -> ByteSet {
    ByteSet::from_fn(|b| b != 0)
}

fn word_bytes() -> ByteSet {
    ByteSet::from_fn(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn space_bytes() -> ByteSet {
    ByteSet::from_fn(is_space)
}

/// A POSIX character class in the C locale.
fn named_class(name: &[u8], icase: bool) -> Option<ByteSet> {
    let f: fn(u8) -> bool = match name {
        b"alpha" => |b| b.is_ascii_alphabetic(),
        // glibc: with REG_ICASE, [:upper:] and [:lower:] are [:alpha:].
        b"upper" | b"lower" if icase => |b| b.is_ascii_alphabetic(),
        b"upper" => |b| b.is_ascii_uppercase(),
        b"lower" => |b| b.is_ascii_lowercase(),
        b"digit" => |b| b.is_ascii_digit(),
        b"xdigit" => |b| b.is_ascii_hexdigit(),
        b"alnum" => |b| b.is_ascii_alphanumeric(),
        b"space" => is_space,
        b"blank" => |b| b == b' ' || b == b'\t',
        b"punct" => |b| b.is_ascii_punctuation(),
        b"print" => |b| (0x20..0x7f).contains(&b),
        b"graph" => |b| b.is_ascii_graphic(),
        b"cntrl" => |b| b < 0x20 || b == 0x7f,
        _ => return None,
    };
    Some(ByteSet::from_fn(f))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Look {
    /// `^` and `` \` ``: the start of the name.
    Start,
    /// `$` and `\'`: the end of the name.
    End,
}

#[derive(Clone, Debug)]
enum Node {
    Empty,
    Class(ByteSet),
    Look(Look),
    /// A capture group (numbered by its place: emitted in order).
    Group(Box<Node>),
    Concat(Vec<Node>),
    Alt(Vec<Node>),
    /// Greedy repetition, `{min,max}` (no max: unbounded).
    Repeat(Box<Node>, u32, Option<u32>),
}

impl Node {
    /// Shortest and longest match, in bytes (no longest: unbounded).
    fn lengths(&self) -> (u64, Option<u64>) {
        match self {
            Node::Empty | Node::Look(_) => (0, Some(0)),
            Node::Class(_) => (1, Some(1)),
            Node::Group(n) => n.lengths(),
            Node::Concat(items) => items.iter().fold((0, Some(0)), |(lo, hi), n| {
                let (a, b) = n.lengths();
                (
                    lo.saturating_add(a),
                    hi.zip(b).map(|(x, y)| x.saturating_add(y)),
                )
            }),
            Node::Alt(alts) => {
                let mut lo = u64::MAX;
                let mut hi = Some(0u64);
                for n in alts {
                    let (a, b) = n.lengths();
                    lo = lo.min(a);
                    hi = hi.zip(b).map(|(x, y)| x.max(y));
                }
                (if alts.is_empty() { 0 } else { lo }, hi)
            }
            Node::Repeat(n, min, max) => {
                let (a, b) = n.lengths();
                let lo = a.saturating_mul(u64::from(*min));
                let hi = match (b, max) {
                    (Some(0), _) => Some(0),
                    (Some(b), Some(m)) => Some(b.saturating_mul(u64::from(*m))),
                    _ => None,
                };
                (lo, hi)
            }
        }
    }

    fn nullable(&self) -> bool {
        self.lengths().0 == 0
    }

    fn fixed(&self) -> Option<u64> {
        match self.lengths() {
            (lo, Some(hi)) if lo == hi => Some(lo),
            _ => None,
        }
    }

    fn has_groups(&self) -> bool {
        match self {
            Node::Empty | Node::Class(_) | Node::Look(_) => false,
            Node::Group(..) => true,
            Node::Concat(v) | Node::Alt(v) => v.iter().any(Node::has_groups),
            Node::Repeat(n, ..) => n.has_groups(),
        }
    }
}

struct Ere<'a> {
    pat: &'a [u8],
    pos: usize,
    icase: bool,
    groups: usize,
}

impl<'a> Ere<'a> {
    /// The tree and the number of groups.
    fn parse(pat: &'a [u8], icase: bool) -> Result<(Node, usize), String> {
        let mut p = Ere {
            pat,
            pos: 0,
            icase,
            groups: 0,
        };
        let node = p.alternation(0)?;
        // At depth 0 alternation() reads everything or fails at a ')'.
        if p.pos != pat.len() {
            return Err(format!("unexpected '{}'", show(&pat[p.pos..])));
        }
        Ok((node, p.groups))
    }

    fn peek(&self) -> Option<u8> {
        self.pat.get(self.pos).copied()
    }

    fn class(&self, set: ByteSet) -> Node {
        Node::Class(if self.icase { set.fold_lower() } else { set })
    }

    fn literal(&self, b: u8) -> Node {
        let mut set = ByteSet::EMPTY;
        set.insert(if self.icase {
            b.to_ascii_lowercase()
        } else {
            b
        });
        self.class(set)
    }

    /// `a|b|c`, in the order glibc tries the alternatives: it builds
    /// `((a|b)|c)` and, where one side of a `|` is empty (nothing, or only
    /// `x{0}` parts), tries the other side first: `(|a)` prefers `a`, as
    /// `(a|)` does, but `(a||b)` tries `a`, then the empty match, then `b`.
    fn alternation(&mut self, depth: usize) -> Result<Node, String> {
        let mut tree = self.branch(depth)?;
        while self.peek() == Some(b'|') {
            self.pos += 1;
            let right = self.branch(depth)?;
            let (first, second) = if glibc_null(&tree) && !glibc_null(&right) {
                (right, tree)
            } else {
                (tree, right)
            };
            tree = match first {
                Node::Alt(mut alts) => {
                    alts.push(second);
                    Node::Alt(alts)
                }
                first => Node::Alt(vec![first, second]),
            };
        }
        Ok(tree)
    }

    fn branch(&mut self, depth: usize) -> Result<Node, String> {
        let mut items: Vec<Node> = Vec::new();
        let mut repeated = false;
        while let Some(b) = self.peek() {
            match b {
                b'|' => break,
                b')' if depth > 0 => break,
                b')' => {
                    return Err("unmatched ')' (tftpd-hpa reads a lone ')' as a plain \
                                character; write '\\)' for that)"
                        .into());
                }
                b'*' | b'+' | b'?' | b'{' => {
                    self.pos += 1;
                    let (min, max) = match b {
                        b'*' => (0, None),
                        b'+' => (1, None),
                        b'?' => (0, Some(1)),
                        _ => self.interval()?,
                    };
                    let Some(last) = items.pop() else {
                        return Err(format!("'{}' has nothing before it to repeat", b as char));
                    };
                    if matches!(last, Node::Look(_)) {
                        return Err(format!(
                            "'{}' after an anchor (^, $, \\b, \\<, ...): anchors cannot \
                             be repeated",
                            b as char
                        ));
                    }
                    if repeated {
                        return Err(format!(
                            "two repetition operators in a row ('{}' after another): POSIX \
                             applies both, so '*?' is a greedy '*', not a lazy one; write \
                             a single one",
                            b as char
                        ));
                    }
                    if max.is_none_or(|m| m > 1) && last.nullable() {
                        return Err("a repetition of something that can match the empty \
                                    string (such as '(a*)*' or '(a|)+'): glibc and the regex \
                                    crate report its groups differently"
                            .into());
                    }
                    if max.is_none_or(|m| m > 1) && last.fixed().is_none() {
                        return Err("a repetition (*, +, {n,m}) of a part whose length \
                                    varies (such as '(a?b)*'): glibc and the regex crate \
                                    split the name between the rounds differently"
                            .into());
                    }
                    items.push(Node::Repeat(Box::new(last), min, max));
                    repeated = true;
                }
                _ => {
                    items.push(self.atom(depth)?);
                    repeated = false;
                }
            }
        }
        Ok(match items.len() {
            0 => Node::Empty,
            1 => items.pop().unwrap_or(Node::Empty),
            _ => Node::Concat(items),
        })
    }

    /// After `{`: `n}`, `n,}`, `,m}`, `n,m}`, `,}`.
    fn interval(&mut self) -> Result<(u32, Option<u32>), String> {
        let bad = "a '{' must start a repetition count: {n}, {n,}, {n,m} (write '\\{' \
                   for a plain '{')";
        let min = self.number()?;
        let comma = self.peek() == Some(b',');
        let max = if comma {
            self.pos += 1;
            self.number()?
        } else {
            min
        };
        match self.peek() {
            Some(b'}') => self.pos += 1,
            None => return Err("unmatched '{'".into()),
            Some(_) => return Err(bad.into()),
        }
        if min.is_none() && !comma {
            return Err(bad.into());
        }
        let min = min.unwrap_or(0);
        if let Some(max) = max
            && min > max
        {
            return Err(format!("repetition count {{{min},{max}}} is backwards"));
        }
        Ok((min, max))
    }

    fn number(&mut self) -> Result<Option<u32>, String> {
        let start = self.pos;
        let mut value = 0u32;
        while let Some(d @ b'0'..=b'9') = self.peek() {
            self.pos += 1;
            value = value.saturating_mul(10).saturating_add(u32::from(d - b'0'));
        }
        if self.pos == start {
            return Ok(None);
        }
        if value > REPEAT_MAX {
            return Err(format!(
                "repetition count {value} is over uftpd's limit of {REPEAT_MAX}"
            ));
        }
        Ok(Some(value))
    }

    fn atom(&mut self, depth: usize) -> Result<Node, String> {
        let Some(b) = self.peek() else {
            return Ok(Node::Empty);
        };
        self.pos += 1;
        match b {
            b'(' => {
                if depth >= NEST_MAX {
                    return Err(format!(
                        "parentheses nested deeper than {NEST_MAX} (uftpd's limit)"
                    ));
                }
                self.groups += 1;
                let inner = self.alternation(depth + 1)?;
                if self.peek() != Some(b')') {
                    return Err("unmatched '('".into());
                }
                self.pos += 1;
                Ok(Node::Group(Box::new(inner)))
            }
            b'.' => Ok(self.class(any_byte())),
            b'^' => Ok(Node::Look(Look::Start)),
            b'$' => Ok(Node::Look(Look::End)),
            b'[' => Ok(Node::Class(self.bracket()?)),
            b'\\' => self.escape(),
            b => Ok(self.literal(b)),
        }
    }

    fn escape(&mut self) -> Result<Node, String> {
        let Some(c) = self.peek() else {
            return Err("the regular expression ends with a backslash".into());
        };
        self.pos += 1;
        Ok(match c {
            b'w' => self.class(word_bytes()),
            b'W' => self.class(word_bytes().complement()),
            b's' => self.class(space_bytes()),
            b'S' => self.class(space_bytes().complement()),
            b'b' | b'B' | b'<' | b'>' => {
                return Err(format!(
                    "word anchors such as \\{} are not supported: glibc reports the groups \
                     around them inconsistently, so uftpd cannot match tftpd-hpa there",
                    c as char
                ));
            }
            b'`' => Node::Look(Look::Start),
            b'\'' => Node::Look(Look::End),
            b'1'..=b'9' => {
                return Err(format!(
                    "back-reference \\{}: the regex crate has none (no linear-time \
                     engine can match them)",
                    c as char
                ));
            }
            c if c.is_ascii_alphanumeric() => {
                let hint = match c {
                    b'd' => "; for a digit write [0-9]",
                    b'D' => "; for a non-digit write [^0-9]",
                    b'n' | b't' | b'r' | b'f' | b'v' | b'a' | b'e' => {
                        "; names cannot hold control characters anyway"
                    }
                    b'A' => "; for the start of the name write ^",
                    b'z' | b'Z' => "; for the end of the name write $",
                    _ => "",
                };
                return Err(format!(
                    "\\{0} is not an escape in POSIX regular expressions: tftpd-hpa would \
                     match a plain '{0}'{hint}",
                    c as char
                ));
            }
            c => self.literal(c),
        })
    }

    /// After `[`: a bracket expression, as glibc reads it in the C locale.
    fn bracket(&mut self) -> Result<ByteSet, String> {
        const UNMATCHED: &str = "unmatched '['";
        let negate = self.peek() == Some(b'^');
        if negate {
            self.pos += 1;
        }
        let mut set = ByteSet::EMPTY;
        let mut first = true;
        loop {
            let Some(c) = self.peek() else {
                return Err(UNMATCHED.into());
            };
            if c == b']' && !first {
                self.pos += 1;
                break;
            }
            first = false;
            match self.bracket_item()? {
                Item::Class(s) => {
                    set = set.union(s);
                    if self.at_range_dash() {
                        return Err("a range cannot start with a character class".into());
                    }
                }
                Item::Byte(lo) => {
                    if !self.at_range_dash() {
                        set.insert(self.fold(lo));
                        continue;
                    }
                    self.pos += 1;
                    let Item::Byte(hi) = self.bracket_item()? else {
                        return Err("a range cannot end with a character class".into());
                    };
                    let (lo, hi) = (self.fold(lo), self.fold(hi));
                    if lo > hi {
                        return Err(format!(
                            "range '{}-{}' is backwards{}",
                            show(&[lo]),
                            show(&[hi]),
                            if self.icase {
                                " (with flag i, tftpd-hpa compares lower-case letters)"
                            } else {
                                ""
                            }
                        ));
                    }
                    for b in lo..=hi {
                        set.insert(b);
                    }
                    if self.at_range_dash() {
                        return Err("'-' right after a range: put a plain '-' first or last \
                                    in the brackets"
                            .into());
                    }
                }
            }
        }
        if negate {
            set = set.complement();
        }
        Ok(if self.icase { set.fold_lower() } else { set })
    }

    fn fold(&self, b: u8) -> u8 {
        if self.icase {
            b.to_ascii_lowercase()
        } else {
            b
        }
    }

    /// At a `-` that makes a range (not one right before the closing `]`).
    fn at_range_dash(&self) -> bool {
        self.peek() == Some(b'-') && self.pat.get(self.pos + 1).is_some_and(|&b| b != b']')
    }

    /// One element of a bracket expression.
    fn bracket_item(&mut self) -> Result<Item, String> {
        let Some(c) = self.peek() else {
            return Err("unmatched '['".into());
        };
        self.pos += 1;
        let Some(kind @ (b':' | b'.' | b'=')) = self.peek().filter(|_| c == b'[') else {
            return Ok(Item::Byte(c));
        };
        let body = self.pos + 1;
        let Some(len) = self.pat[body..]
            .windows(2)
            .position(|w| w[0] == kind && w[1] == b']')
        else {
            return Err("unmatched '['".into());
        };
        let name = &self.pat[body..body + len];
        self.pos = body + len + 2;
        match kind {
            b':' => named_class(name, self.icase)
                .map(Item::Class)
                .ok_or_else(|| {
                    format!(
                        "unknown character class '[:{}:]' (the classes are alpha upper lower \
                     digit xdigit alnum space blank punct print graph cntrl)",
                        show(name)
                    )
                }),
            _ => match name {
                [b] => Ok(Item::Byte(*b)),
                _ => Err(format!(
                    "'[{0}{1}{0}]': in tftpd-hpa's C locale, [.x.] and [=x=] hold a single \
                     character",
                    kind as char,
                    show(name)
                )),
            },
        }
    }
}

enum Item {
    Byte(u8),
    Class(ByteSet),
}

/// What glibc's parser drops to nothing: an empty branch, `x{0}`, and
/// sequences of those (but not `()`, a group that matches empty).
fn glibc_null(node: &Node) -> bool {
    match node {
        Node::Empty | Node::Repeat(_, _, Some(0)) => true,
        Node::Concat(items) => items.iter().all(glibc_null),
        _ => false,
    }
}

// ---------------------------------------------------------------------------
// Leftmost-first (the regex crate) against leftmost-longest (POSIX).
//
// Both find the same leftmost start. glibc then takes the longest match
// from there and, within that span, reports the groups of the first way to
// match it in pattern order (first alternative, longer repetitions first) --
// which is how the regex crate reports the groups of its own match. So the
// two agree whenever the crate's first match is also the longest, and the
// rule is accepted only when one of these shows that it is:
//
// 1. every match ends at the end of the name ($, or a last greedy unbounded
//    repetition of any byte, as in '(.*)');
// 2. every match has the same length;
// 3. one part varies in length and it tries longer matches first (a greedy
//    repetition of a fixed-length part, or alternatives of fixed length
//    without groups inside, which are put longest first);
// 4. the expression is deterministic (one-unambiguous): reading the name
//    left to right, each byte can be matched by at most one position of
//    the expression, only the last alternative of a choice may match the
//    empty string, and no repetition repeats an empty match. Then there is
//    only one way to go on at each byte, every choice prefers to go on, and
//    so the first match found is the longest.

const MISMATCH: &str = "tftpd-hpa takes the longest match and the regex crate the first one, \
     and uftpd cannot show that they agree here; end the expression with '$' or '(.*)', or \
     make the choices in it start with different characters";

fn check_faithful(node: &mut Node) -> Result<(), String> {
    check_anchors(node)?;
    if reaches_end(node) || node.fixed().is_some() {
        return Ok(());
    }
    if monotone(node) {
        sort_alternatives(node);
        return Ok(());
    }
    deterministic(node)
}

/// Where glibc's anchors behave, so that uftpd can match them:
/// - `$` (and `\'`) only at the very end: after the last part of the
///   expression, or of every top-level alternative. Elsewhere glibc avoids
///   paths through it when another path matches the same text (`(a)$|(a)`
///   on `a` fills group 2, where the crate, in pattern order, fills group
///   1), and reports groups inconsistently after it (`(/?)(b$|/b)(.*)`).
/// - `^` (and `` \` ``) anywhere but inside a repetition: `(^a){0,3}$`
///   finds no match at all in `aa` with glibc.
fn check_anchors(node: &Node) -> Result<(), String> {
    match node {
        Node::Alt(alts) => {
            let all_end = alts.iter().all(ends_with_dollar);
            alts.iter().try_for_each(|a| check_branch(a, all_end))
        }
        branch => check_branch(branch, true),
    }
}

const MISPLACED_DOLLAR: &str = "'$' that is not at the very end: uftpd accepts '$' only \
     after everything else, or after each of the top-level alternatives, where glibc and \
     the regex crate agree on what the groups hold";

/// One top-level branch: anchors at its end may be `$` if `dollar_ok`.
fn check_branch(branch: &Node, dollar_ok: bool) -> Result<(), String> {
    let items: &[Node] = match branch {
        Node::Concat(items) => items,
        other => std::slice::from_ref(other),
    };
    let mut tail_from = items.len();
    while tail_from > 0 && matches!(items[tail_from - 1], Node::Look(_)) {
        tail_from -= 1;
    }
    for (i, item) in items.iter().enumerate() {
        match item {
            Node::Look(Look::End) if i >= tail_from && !dollar_ok => {
                return Err(MISPLACED_DOLLAR.into());
            }
            Node::Look(_) if i >= tail_from => {}
            inner => check_inner(inner, false)?,
        }
    }
    Ok(())
}

fn check_inner(node: &Node, repeated: bool) -> Result<(), String> {
    match node {
        Node::Look(Look::End) => Err(MISPLACED_DOLLAR.into()),
        Node::Look(Look::Start) if repeated => Err("'^' inside a repetition: glibc \
             mishandles it ('(^a){0,3}$' finds no match in 'aa')"
            .into()),
        Node::Look(_) | Node::Empty | Node::Class(_) => Ok(()),
        Node::Group(n) => check_inner(n, repeated),
        Node::Alt(v) | Node::Concat(v) => v.iter().try_for_each(|n| check_inner(n, repeated)),
        Node::Repeat(n, _, max) => check_inner(n, repeated || max.is_none_or(|m| m > 1)),
    }
}

/// A top-level branch that ends with `$` (perhaps among other anchors).
fn ends_with_dollar(branch: &Node) -> bool {
    match branch {
        Node::Look(Look::End) => true,
        Node::Concat(items) => items
            .iter()
            .rev()
            .take_while(|n| matches!(n, Node::Look(_)))
            .any(|n| matches!(n, Node::Look(Look::End))),
        _ => false,
    }
}

/// Whether the first match found always ends at the end of the name.
fn reaches_end(node: &Node) -> bool {
    ends_at_end(node) || greedy_tail(node)
}

/// Every match ends at the end of the name: an end anchor anywhere in a
/// sequence holds everything after it at the end.
fn ends_at_end(node: &Node) -> bool {
    match node {
        Node::Look(Look::End) => true,
        Node::Group(n) => ends_at_end(n),
        Node::Concat(items) => items.iter().any(ends_at_end),
        Node::Alt(alts) => alts.iter().all(ends_at_end),
        Node::Repeat(n, min, _) => *min >= 1 && ends_at_end(n),
        _ => false,
    }
}

/// The last thing matched is a greedy, unbounded repetition of any byte,
/// which takes the rest of the name whatever came before.
fn greedy_tail(node: &Node) -> bool {
    match node {
        Node::Repeat(n, _, None) => matches!(**n, Node::Class(s) if s == any_byte()),
        Node::Group(n) => greedy_tail(n),
        Node::Concat(items) => items.last().is_some_and(greedy_tail),
        Node::Alt(alts) => alts.iter().all(reaches_end),
        _ => false,
    }
}

/// Whether the expression's matches from one start are tried longest first
/// (once fixed-length alternatives without groups are sorted).
fn monotone(node: &Node) -> bool {
    if node.fixed().is_some() {
        return true;
    }
    match node {
        Node::Group(n) => monotone(n),
        Node::Concat(items) => {
            let mut varying = items.iter().filter(|n| n.fixed().is_none());
            varying.next().is_some_and(monotone) && varying.next().is_none()
        }
        Node::Repeat(n, ..) => n.fixed().is_some_and(|len| len > 0),
        Node::Alt(alts) => {
            let lengths: Option<Vec<u64>> = alts.iter().map(Node::fixed).collect();
            match lengths {
                None => false,
                Some(l) => !alts.iter().any(Node::has_groups) || l.is_sorted_by(|a, b| a >= b),
            }
        }
        _ => false,
    }
}

/// Puts the alternatives of every choice of fixed-length alternatives
/// without groups longest first, keeping the order of equal lengths.
fn sort_alternatives(node: &mut Node) {
    match node {
        Node::Group(n) | Node::Repeat(n, ..) => sort_alternatives(n),
        Node::Concat(items) => items.iter_mut().for_each(sort_alternatives),
        Node::Alt(alts) => {
            if !alts.iter().any(Node::has_groups) && alts.iter().all(|a| a.fixed().is_some()) {
                alts.sort_by_key(|a| std::cmp::Reverse(a.fixed().unwrap_or(0)));
            }
            alts.iter_mut().for_each(sort_alternatives);
        }
        _ => {}
    }
}

/// The Glushkov automaton's positions: each single-byte part of the
/// expression, with the positions that may follow it.
struct Positions {
    classes: Vec<ByteSet>,
    follow: Vec<Vec<usize>>,
    /// Follow entries recorded, bounded so that the check is cheap.
    entries: usize,
}

struct Ends {
    first: Vec<usize>,
    last: Vec<usize>,
    nullable: bool,
}

impl Positions {
    fn too_big() -> String {
        format!(
            "too large for uftpd to check against POSIX matching (over {POSITIONS_MAX} \
             characters once repetitions are unrolled); {MISMATCH}"
        )
    }

    fn link(&mut self, from: &[usize], to: &[usize]) -> Result<(), String> {
        self.entries += from.len() * to.len();
        if self.entries > FOLLOW_ENTRIES_MAX {
            return Err(Positions::too_big());
        }
        for &f in from {
            self.follow[f].extend_from_slice(to);
        }
        Ok(())
    }

    /// `rest_nullable`: whether what follows `node` in the expression may
    /// match the empty string (over-approximated).
    fn build(&mut self, node: &Node, rest_nullable: bool) -> Result<Ends, String> {
        Ok(match node {
            Node::Empty | Node::Look(_) => Ends {
                first: vec![],
                last: vec![],
                nullable: true,
            },
            Node::Class(set) => {
                if self.classes.len() >= POSITIONS_MAX {
                    return Err(Positions::too_big());
                }
                self.classes.push(*set);
                self.follow.push(Vec::new());
                let p = self.classes.len() - 1;
                Ends {
                    first: vec![p],
                    last: vec![p],
                    nullable: false,
                }
            }
            Node::Group(n) => self.build(n, rest_nullable)?,
            Node::Concat(items) => {
                let mut acc = Ends {
                    first: vec![],
                    last: vec![],
                    nullable: true,
                };
                for (i, item) in items.iter().enumerate() {
                    let rest = rest_nullable && items[i + 1..].iter().all(Node::nullable);
                    let next = self.build(item, rest)?;
                    acc = self.sequence(acc, next)?;
                }
                acc
            }
            Node::Alt(alts) => {
                let mut acc = Ends {
                    first: vec![],
                    last: vec![],
                    nullable: false,
                };
                for (i, alt) in alts.iter().enumerate() {
                    let e = self.build(alt, rest_nullable)?;
                    if e.nullable && i + 1 < alts.len() && rest_nullable {
                        return Err(format!(
                            "alternative {} of a choice can match the empty string, and the \
                             regex crate would take that before trying the ones after it; \
                             {MISMATCH}",
                            i + 1
                        ));
                    }
                    acc.first.extend(e.first);
                    acc.last.extend(e.last);
                    acc.nullable |= e.nullable;
                }
                acc
            }
            Node::Repeat(n, min, max) => {
                // x{min,max} as min copies of x, then either x* or
                // (x(x(...)?)?)? for the optional ones.
                let mut acc = Ends {
                    first: vec![],
                    last: vec![],
                    nullable: true,
                };
                for _ in 0..*min {
                    let copy = self.build(n, rest_nullable)?;
                    acc = self.sequence(acc, copy)?;
                }
                match max {
                    None => {
                        let body = self.build(n, rest_nullable)?;
                        self.link(&body.last, &body.first)?;
                        let star = Ends {
                            nullable: true,
                            ..body
                        };
                        acc = self.sequence(acc, star)?;
                    }
                    Some(max) => {
                        let optional =
                            self.optional_chain(n, max.saturating_sub(*min), rest_nullable)?;
                        acc = self.sequence(acc, optional)?;
                    }
                }
                acc
            }
        })
    }

    /// `(x(x(...)?)?)?` with `count` copies of x.
    fn optional_chain(
        &mut self,
        node: &Node,
        count: u32,
        rest_nullable: bool,
    ) -> Result<Ends, String> {
        let mut copies = Vec::new();
        for _ in 0..count {
            copies.push(self.build(node, rest_nullable)?);
        }
        let mut acc = Ends {
            first: vec![],
            last: vec![],
            nullable: true,
        };
        // Innermost last: fold from the end.
        for copy in copies.into_iter().rev() {
            let inner = acc;
            self.link(&copy.last, &inner.first)?;
            let mut last = inner.last;
            last.extend(copy.last);
            acc = Ends {
                first: copy.first,
                last,
                nullable: true,
            };
        }
        Ok(acc)
    }

    fn sequence(&mut self, a: Ends, b: Ends) -> Result<Ends, String> {
        self.link(&a.last, &b.first)?;
        let mut first = a.first;
        if a.nullable {
            first.extend_from_slice(&b.first);
        }
        let last = if b.nullable {
            let mut l = a.last;
            l.extend(b.last);
            l
        } else {
            b.last
        };
        Ok(Ends {
            first,
            last,
            nullable: a.nullable && b.nullable,
        })
    }

    /// Whether the positions in `set` match pairwise different bytes.
    fn disjoint(&self, set: &mut Vec<usize>) -> bool {
        set.sort_unstable();
        set.dedup();
        let mut seen = ByteSet::EMPTY;
        for &p in set.iter() {
            if self.classes[p].intersects(seen) {
                return false;
            }
            seen = seen.union(self.classes[p]);
        }
        true
    }
}

/// The same expression with the common start of neighbouring alternatives
/// taken out, `x86|x64` as `x(86|64)` and `grub|grub2` as `grub(|2)`, for
/// the check only: both engines treat the two alike (same text matched,
/// same order of trial), and the factored one is deterministic more often.
fn factor(node: &Node) -> Node {
    match node {
        Node::Group(n) => Node::Group(Box::new(factor(n))),
        Node::Repeat(n, min, max) => Node::Repeat(Box::new(factor(n)), *min, *max),
        Node::Concat(items) => Node::Concat(items.iter().map(factor).collect()),
        Node::Alt(alts) => {
            let seqs: Vec<Vec<Node>> = alts
                .iter()
                .map(|a| match a {
                    Node::Concat(items) => items.iter().map(factor).collect(),
                    Node::Empty => Vec::new(),
                    other => vec![factor(other)],
                })
                .collect();
            factor_sequences(seqs)
        }
        other => other.clone(),
    }
}

fn same_atom(a: &Node, b: &Node) -> bool {
    match (a, b) {
        (Node::Class(x), Node::Class(y)) => x == y,
        (Node::Look(x), Node::Look(y)) => x == y,
        _ => false,
    }
}

/// Alternatives (as sequences) with runs of neighbours that start alike
/// factored.
fn factor_sequences(seqs: Vec<Vec<Node>>) -> Node {
    let mut out: Vec<Node> = Vec::new();
    let mut seqs = seqs.into_iter().peekable();
    while let Some(first) = seqs.next() {
        let mut run = vec![first];
        while let Some(next) = seqs.peek() {
            let starts_alike = match (run[0].first(), next.first()) {
                (Some(a), Some(b)) => same_atom(a, b),
                _ => false,
            };
            if !starts_alike {
                break;
            }
            run.extend(seqs.next());
        }
        if run.len() == 1 {
            let seq = run.pop().unwrap_or_default();
            out.push(if seq.is_empty() {
                Node::Empty
            } else {
                Node::Concat(seq)
            });
            continue;
        }
        let mut prefix = 0;
        while run
            .iter()
            .all(|s| s.len() > prefix && same_atom(&s[prefix], &run[0][prefix]))
        {
            prefix += 1;
        }
        let mut items: Vec<Node> = run[0][..prefix].to_vec();
        let tails = run.into_iter().map(|s| s[prefix..].to_vec()).collect();
        items.push(factor_sequences(tails));
        out.push(Node::Concat(items));
    }
    if out.len() == 1 {
        out.pop().unwrap_or(Node::Empty)
    } else {
        Node::Alt(out)
    }
}

fn deterministic(node: &Node) -> Result<(), String> {
    let mut positions = Positions {
        classes: Vec::new(),
        follow: Vec::new(),
        entries: 0,
    };
    let mut top = positions.build(&factor(node), true)?;
    let mut ok = positions.disjoint(&mut top.first);
    for p in 0..positions.follow.len() {
        let mut follow = std::mem::take(&mut positions.follow[p]);
        ok = ok && positions.disjoint(&mut follow);
    }
    if ok { Ok(()) } else { Err(MISMATCH.into()) }
}

// ---------------------------------------------------------------------------
// The regex crate's syntax, bytes mode (Unicode off).

fn emit(node: &Node, out: &mut String) {
    match node {
        Node::Empty => out.push_str("(?:)"),
        Node::Class(set) => emit_class(*set, out),
        Node::Look(look) => out.push_str(match look {
            Look::Start => r"\A",
            Look::End => r"\z",
        }),
        Node::Group(n) => {
            out.push('(');
            emit(n, out);
            out.push(')');
        }
        Node::Concat(items) => {
            for item in items {
                if matches!(item, Node::Alt(_)) {
                    out.push_str("(?:");
                    emit(item, out);
                    out.push(')');
                } else {
                    emit(item, out);
                }
            }
        }
        Node::Alt(alts) => {
            for (i, alt) in alts.iter().enumerate() {
                if i > 0 {
                    out.push('|');
                }
                emit(alt, out);
            }
        }
        Node::Repeat(n, min, max) => {
            out.push_str("(?:");
            emit(n, out);
            out.push(')');
            let _ = match max {
                None => write!(out, "{{{min},}}"),
                Some(max) => write!(out, "{{{min},{max}}}"),
            };
        }
    }
}

fn emit_class(set: ByteSet, out: &mut String) {
    let ranges = set.ranges();
    match ranges.as_slice() {
        [] => out.push_str(r"[^\x00-\xFF]"),
        [(lo, hi)] if lo == hi => {
            let _ = write!(out, r"\x{lo:02X}");
        }
        _ => {
            out.push('[');
            for (lo, hi) in ranges {
                let _ = if lo == hi {
                    write!(out, r"\x{lo:02X}")
                } else {
                    write!(out, r"\x{lo:02X}-\x{hi:02X}")
                };
            }
            out.push(']');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Rules {
        Rules::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn v4() -> IpAddr {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    }

    fn v6() -> IpAddr {
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    }

    fn run(r: &Rules, op: Op, client: IpAddr, name: &[u8]) -> Result<String, Refusal> {
        r.apply(name, &Context::new(op, client))
            .map(|n| String::from_utf8_lossy(&n).into_owned())
    }

    fn get(r: &Rules, name: &str) -> Result<String, Refusal> {
        run(r, Op::Get, v4(), name.as_bytes())
    }

    fn denied(r: &Rules, name: &str) -> (usize, Option<String>) {
        match get(r, name) {
            Err(Refusal::Denied { line, message }) => (
                line,
                message.map(|m| String::from_utf8_lossy(&m).into_owned()),
            ),
            other => panic!("{name:?}: {other:?}"),
        }
    }

    /// The errors for a map file that must not parse.
    fn errors(text: &[u8]) -> Vec<ParseError> {
        match Rules::parse(text) {
            Ok(r) => panic!("{:?} parsed into {} rules", show(text), r.len()),
            Err(e) => e.errors,
        }
    }

    /// The one error of a one-line map file, which must contain `part`.
    fn refused(line: &str, part: &str) {
        let e = errors(line.as_bytes());
        assert_eq!(e.len(), 1, "{line}: {e:?}");
        assert_eq!(e[0].line, 1);
        assert!(e[0].message.contains(part), "{line}: {}", e[0].message);
    }

    // Where a test says "in.tftpd:", the same map file and names went
    // through tftpd-hpa 5.2 (Debian's 5.2+20150808 in.tftpd, -L -s -m,
    // on 127.0.0.1 and [::1]), and the name it opened (seen with strace)
    // or the ERROR it sent is recorded next to ours.

    /// tftpd-hpa's own example file (sample.rules, installed with its
    /// docs; its man page shows no other rules). in.tftpd, same results:
    /// `C:\foo\bar` -> `/foo/bar`, `c:/x` -> `/x`, `foo#bar` ->
    /// `/tftpboot/foo@bar`, `/a/../b` -> `/a/..no../b`, `ok/../x` ->
    /// `ok/..no../x`, `hello` -> `/tftpboot/hello`, `/abs/secret.pvt` and
    /// `x.pvt` -> ERROR 2 "Access denied", `ok/x.pvt` -> `ok/x.pvt`,
    /// `a\b#c` -> `/tftpboot/a/b@c`, `D:\Boot\BCD` -> `/Boot/BCD`,
    /// `/pxelinux.0` -> `/pxelinux.0`.
    #[test]
    fn tftpd_hpa_sample_rules() {
        let r = rules(concat!(
            "#\n# Sample rule file for the -m (remapping option)\n#\n",
            "ri\t^[a-z]:\t\t\t\t# Remove \"drive letters\"\n",
            "rg\t\\\\\t\t/\t\t# Convert backslashes to slashes\n",
            "rg\t\\#\t\t@\t\t# Convert hash marks to @ signs\n",
            "rg\t/../\t\t/..no../\t# Convert /../ to /..no../\n",
            "e\t^ok/\t\t\t\t# These are always ok\n",
            "r\t^[^/]\t\t/tftpboot/\\0\t# Convert non-absolute files\n",
            "a\t\\.pvt$\t\t\t\t# Reject requests for private files\n",
        ));
        assert_eq!(r.len(), 7);
        for (name, want) in [
            ("C:\\foo\\bar", "/foo/bar"),
            ("c:/x", "/x"),
            ("foo#bar", "/tftpboot/foo@bar"),
            ("/a/../b", "/a/..no../b"),
            ("ok/../x", "ok/..no../x"),
            ("hello", "/tftpboot/hello"),
            ("ok/x.pvt", "ok/x.pvt"),
            ("a\\b#c", "/tftpboot/a/b@c"),
            ("D:\\Boot\\BCD", "/Boot/BCD"),
            ("/pxelinux.0", "/pxelinux.0"),
        ] {
            assert_eq!(get(&r, name).as_deref(), Ok(want), "{name}");
        }
        assert_eq!(denied(&r, "/abs/secret.pvt"), (10, None));
        assert_eq!(denied(&r, "x.pvt"), (10, None));
        assert_eq!(
            Refusal::Denied {
                line: 8,
                message: None
            }
            .client_message(),
            b"Access denied"
        );
    }

    /// The man page's examples: `^` as the rule that always matches, and
    /// `\i` / `\x` for 192.0.2.169 and 2001:db8::1.
    #[test]
    fn man_page_examples() {
        let r = rules("r ^ \\i,\\x,");
        let at = |ip: &str| run(&r, Op::Get, ip.parse().unwrap(), b"f").unwrap();
        assert_eq!(at("192.0.2.169"), "192.0.2.169,C00002A9,f");
        assert_eq!(
            at("2001:db8::1"),
            "2001:db8::1,20010DB8000000000000000000000001,f"
        );
    }

    /// WinPE asks for `\Boot\BCD`; the disk holds `boot/bcd`. in.tftpd,
    /// same results: `\Boot\BCD`, `/boot/bcd`, `Boot/BCD`, `BOOT\bcd` ->
    /// `boot/bcd`; `\boot\bcd.log` and `xboot\bcd` unchanged.
    #[test]
    fn winpe_boot_bcd() {
        let r = rules("ri ^[/\\\\]?boot[/\\\\]bcd$ boot/bcd\n");
        for name in [
            "\\Boot\\BCD",
            "/boot/bcd",
            "Boot/BCD",
            "BOOT\\bcd",
            "boot/bcd",
        ] {
            assert_eq!(get(&r, name).as_deref(), Ok("boot/bcd"), "{name}");
        }
        for name in ["\\boot\\bcd.log", "xboot\\bcd", "\\Boot\\BCD\\x"] {
            assert_eq!(get(&r, name).as_deref(), Ok(name), "{name}");
        }
        // The general form: every separator to '/', then lower-case the
        // Boot directory.
        let r = rules("rg \\\\ /\nri ^/?boot/(.*)$ boot/\\L\\1\n");
        assert_eq!(get(&r, "\\Boot\\BCD").as_deref(), Ok("boot/bcd"));
        assert_eq!(
            get(&r, "\\Boot\\Fonts\\wgl4_boot.ttf").as_deref(),
            Ok("boot/fonts/wgl4_boot.ttf")
        );
    }

    /// in.tftpd with `r ^ \i/\x/\L\x/`: from 127.0.0.1,
    /// `127.0.0.1/7F000001/7f000001/f`; from ::1,
    /// `::1/00000000000000000000000000000001/0000...0001/f`. Same here.
    #[test]
    fn client_address_substitutions() {
        let r = rules("r ^ \\i/\\x/\\L\\x/\n");
        assert_eq!(
            run(&r, Op::Get, v4(), b"f").unwrap(),
            "127.0.0.1/7F000001/7f000001/f"
        );
        let hex = "00000000000000000000000000000001";
        assert_eq!(
            run(&r, Op::Get, v6(), b"f").unwrap(),
            format!("::1/{hex}/{hex}/f")
        );
        let r = rules("r ^ \\i_\\x_\\U\\i\n");
        let at = |ip: &str| run(&r, Op::Put, ip.parse().unwrap(), b"").unwrap();
        assert_eq!(at("10.1.2.3"), "10.1.2.3_0A010203_10.1.2.3");
        assert_eq!(
            at("fe80::a:b"),
            "fe80::a:b_FE8000000000000000000000000A000B_FE80::A:B"
        );
        // An IPv4 client on a dual-stack socket is the IPv4 client.
        assert_eq!(at("::ffff:192.0.2.1"), "192.0.2.1_C0000201_192.0.2.1");
    }

    /// glibc's inet_ntop(AF_INET6), as Python's socket.inet_ntop (which
    /// calls it) printed these.
    #[test]
    fn ipv6_text_as_glibc_writes_it() {
        for (addr, want) in [
            ("::", "::"),
            ("::1", "::1"),
            ("1::", "1::"),
            ("2001:db8::1", "2001:db8::1"),
            ("2001:db8::", "2001:db8::"),
            ("fe80::1:0:0:1", "fe80::1:0:0:1"),
            ("1:0:0:1:0:0:0:1", "1:0:0:1::1"),
            ("::1.2.3.4", "::1.2.3.4"),
            ("::ffff:1.2.3.4", "::ffff:1.2.3.4"),
            ("::ffff:0:1", "::ffff:0.0.0.1"),
            ("1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8"),
            ("0:0:1::", "0:0:1::"),
            ("1:0:1:0:1:0:1:0", "1:0:1:0:1:0:1:0"),
            ("::2", "::2"),
            ("2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"),
            ("64:ff9b::192.0.2.33", "64:ff9b::c000:221"),
        ] {
            let mut s = String::new();
            write_inet_ntop6(&mut s, &addr.parse().unwrap()).unwrap();
            assert_eq!(s, want, "{addr}");
            let mut buf = [0u8; 64];
            let text = address_text(IpAddr::V6(addr.parse().unwrap()), &mut buf).to_vec();
            assert_eq!(text, want.as_bytes());
        }
    }

    /// in.tftpd: `f` read -> `get/f`, written -> `put/f`; from 127.0.0.1
    /// `4r ^ v4/ | 6r ^ v6/` gives `v4/f`, from ::1 `v6/f`. Same here.
    #[test]
    fn get_put_and_family_flags() {
        let r = rules("rG ^ get/\nrP ^ put/\n");
        assert_eq!(run(&r, Op::Get, v4(), b"f").unwrap(), "get/f");
        assert_eq!(run(&r, Op::Put, v4(), b"f").unwrap(), "put/f");
        let r = rules("4r ^ v4/\n6r ^ v6/\n");
        assert_eq!(run(&r, Op::Get, v4(), b"f").unwrap(), "v4/f");
        assert_eq!(run(&r, Op::Get, v6(), b"f").unwrap(), "v6/f");
        let mapped = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(run(&r, Op::Get, mapped, b"f").unwrap(), "v4/f");
        // Flags combine: a refusal for writes from IPv6 only.
        let r = rules("6Pa .\n");
        assert!(run(&r, Op::Put, v6(), b"f").is_err());
        assert!(run(&r, Op::Get, v6(), b"f").is_ok());
        assert!(run(&r, Op::Put, v4(), b"f").is_ok());
    }

    /// in.tftpd: `keep/me` -> `keep/me`, `other` -> `x/other`.
    #[test]
    fn end_flag() {
        let r = rules("e ^keep\nr ^ x/\n");
        assert_eq!(get(&r, "keep/me").as_deref(), Ok("keep/me"));
        assert_eq!(get(&r, "other").as_deref(), Ok("x/other"));
        // e after a replacement keeps the replacement.
        let r = rules("re ^a b\nr ^ x/\n");
        assert_eq!(get(&r, "ab").as_deref(), Ok("bb"));
        assert_eq!(get(&r, "cb").as_deref(), Ok("x/cb"));
    }

    /// A difference: tftpd-hpa 5.2 restarts at the *second* rule (its loop
    /// steps past the first one). in.tftpd with `r ^a b | rs ^c a`: `c` ->
    /// `a`, where the man page ("start over from the very first rule") and
    /// uftpd give `b`; `a` -> `b` and `x` -> `x` in both.
    #[test]
    fn restart_goes_back_to_the_first_rule() {
        let r = rules("r ^a b\nrs ^c a\n");
        assert_eq!(get(&r, "c").as_deref(), Ok("b"));
        assert_eq!(get(&r, "a").as_deref(), Ok("b"));
        assert_eq!(get(&r, "x").as_deref(), Ok("x"));
    }

    /// in.tftpd with `rs ^a a | rs ^a a`: `ab` -> ERROR 2 "Remap table
    /// failure" (its 1024-step bound), `b` -> `b`. Same here.
    #[test]
    fn restart_loops_stop_at_the_bound() {
        for map in ["rs ^a a\nrs ^a a\n", "rs ^a a\n", "s ^\n"] {
            let r = rules(map);
            assert_eq!(get(&r, "ab"), Err(Refusal::TooManySteps), "{map}");
            assert_eq!(
                Refusal::TooManySteps.client_message(),
                b"Remap table failure"
            );
        }
        let r = rules("rs ^a a\nrs ^a a\n");
        assert_eq!(get(&r, "b").as_deref(), Ok("b"));
        // Every evaluation of a rule counts: with 10 steps, a chain that
        // needs 10 passes, and one that needs 11.
        let limits = Limits {
            steps: 10,
            ..Limits::default()
        };
        let r = Rules::parse_with(b"rs ^a(.) \\1\n", limits).unwrap();
        // "aaaaaaaaaz": 9 rewrites, then a 10th evaluation that fails.
        assert_eq!(run(&r, Op::Get, v4(), b"aaaaaaaaaz").unwrap(), "z");
        assert_eq!(
            run(&r, Op::Get, v4(), b"aaaaaaaaaaz"),
            Err(Refusal::TooManySteps)
        );
        // And the bytes scanned: each evaluation scans the whole name.
        let limits = Limits {
            scan_bytes: 3 * 11,
            ..Limits::default()
        };
        let r = Rules::parse_with(b"r ^ \nr ^ \nr ^ \n", limits).unwrap();
        assert!(run(&r, Op::Get, v4(), b"0123456789").is_ok());
        assert_eq!(
            run(&r, Op::Get, v4(), b"0123456789a"),
            Err(Refusal::TooManySteps)
        );
        // The default allows 1024 evaluations of short names, fewer of
        // long ones.
        let r = rules("rs ^(.)(.*)$ \\2\\1\n");
        let long = "ab".repeat(510);
        assert_eq!(get(&r, &long), Err(Refusal::TooManySteps));
    }

    /// in.tftpd: `x.pvt` -> ERROR 2 "Access denied", `secret/key` ->
    /// ERROR 2 "Go away: secret/key", `pxelinux.0` and `boot/bcd` served,
    /// `other` -> "Access denied". A difference: tftpd-hpa 5.2 sends the
    /// text around the match with the message (here `/key`, a 5.2 bug);
    /// uftpd sends the expanded message alone, "Go away: secret".
    #[test]
    fn abort_rules() {
        let r = rules("a \\.pvt$\na ^secret Go\\ away:\\ \\0\na~ ^(pxelinux|boot/)\n");
        assert_eq!(denied(&r, "x.pvt"), (1, None));
        assert_eq!(
            denied(&r, "secret/key"),
            (2, Some("Go away: secret".to_string()))
        );
        assert_eq!(get(&r, "pxelinux.0").as_deref(), Ok("pxelinux.0"));
        assert_eq!(get(&r, "boot/bcd").as_deref(), Ok("boot/bcd"));
        assert_eq!(denied(&r, "other"), (3, None));
        // Messages take \i, groups and case, and are cut at the limit.
        let r = rules("a ^(.*)$ \\U\\1\\E\\ from\\ \\i\n");
        assert_eq!(
            denied(&r, "x.pvt").1.as_deref(),
            Some("X.PVT from 127.0.0.1")
        );
        let long = "a".repeat(600);
        assert_eq!(
            denied(&r, &long).1.map(|m| m.len()),
            Some(MESSAGE_BYTES_MAX)
        );
        // An inverted rule's message has no match to use.
        let r = rules("a~ ^ok Only\\ ok/\\ here\n");
        assert_eq!(denied(&r, "x").1.as_deref(), Some("Only ok/ here"));
    }

    /// `g` repeats the rule on its own result (tftpd-hpa 5.2), not sed's
    /// one pass. in.tftpd: `a////b` -> `a/b`, `///x//y` -> `x/y`,
    /// `\Boot\BCD` -> `/Boot/BCD`; `rg a b` makes `aaa` `bbb`. Same here.
    /// With `rg a aa` in.tftpd never answers (its worker loops for good);
    /// uftpd refuses ("Remap table failure") at its bounds.
    #[test]
    fn global_rules_repeat_until_no_match() {
        let r = rules("rg // /\nrg ^/ \nrg \\\\ /\n");
        assert_eq!(get(&r, "a////b").as_deref(), Ok("a/b"));
        assert_eq!(get(&r, "///x//y").as_deref(), Ok("x/y"));
        assert_eq!(get(&r, "\\Boot\\BCD").as_deref(), Ok("/Boot/BCD"));
        assert_eq!(get(&rules("rg a b"), "aaa").as_deref(), Ok("bbb"));
        // Growing names run out of scan budget, or of length if they grow
        // fast.
        assert_eq!(get(&rules("rg a aa"), "ab"), Err(Refusal::TooManySteps));
        assert_eq!(get(&rules("rg x* y"), "abc"), Err(Refusal::TooManySteps));
        assert_eq!(get(&rules("rg ^(.*)$ \\1\\1"), "ab"), Err(Refusal::TooLong));
        assert_eq!(get(&rules("rg a a"), "ab"), Err(Refusal::TooManySteps));
        // Without g, only the first match is replaced.
        assert_eq!(get(&rules("r a b"), "aaa").as_deref(), Ok("baa"));
        assert_eq!(get(&rules("r x* y"), "abc").as_deref(), Ok("yabc"));
    }

    /// in.tftpd: `PXELINUX.CFG/01-AA-BB-CC-DD-EE-FF` ->
    /// `pxelinux.cfg/01-aa-bb-cc-dd-ee-ff`, `pxelinux.cfg/C0A8` ->
    /// `pxelinux.cfg/c0a8`, `efi/boot.efi` -> `EFI/boot.efi`. Same here.
    #[test]
    fn case_conversion_and_groups() {
        let r = rules(
            "ri ^pxelinux\\.cfg/([0-9a-f-]+)$ pxelinux.cfg/\\L\\1\nr ^(efi)/(.*)$ \\U\\1\\E/\\2\n",
        );
        assert_eq!(
            get(&r, "PXELINUX.CFG/01-AA-BB-CC-DD-EE-FF").as_deref(),
            Ok("pxelinux.cfg/01-aa-bb-cc-dd-ee-ff")
        );
        assert_eq!(
            get(&r, "pxelinux.cfg/C0A8").as_deref(),
            Ok("pxelinux.cfg/c0a8")
        );
        assert_eq!(get(&r, "efi/boot.efi").as_deref(), Ok("EFI/boot.efi"));
        // Case changes touch ASCII letters only (tftpd-hpa in the C locale:
        // in.tftpd gave `ABC\xe9xabc\xe9` for `r ^(.*)$ \U\1\Ex\1` on
        // `abc\xe9`).
        let r = rules("r ^(.*)$ \\U\\1\\Ex\\1\n");
        assert_eq!(
            r.apply(b"abc\xe9", &Context::new(Op::Get, v4())).unwrap(),
            b"ABC\xe9xabc\xe9"
        );
    }

    /// in.tftpd with `e~ ^ok/ | r ^ pfx/`: `ok/x` -> `pfx/ok/x`, `bad` ->
    /// `bad`. Same here.
    #[test]
    fn inverted_rules() {
        let r = rules("e~ ^ok/\nr ^ pfx/\n");
        assert_eq!(get(&r, "ok/x").as_deref(), Ok("pfx/ok/x"));
        assert_eq!(get(&r, "bad").as_deref(), Ok("bad"));
    }

    /// Replacement escapes: in.tftpd with `r ^ \n\t\a\#\ \\\\z` on `f`
    /// opened `nta# \\zf` (unknown escapes are plain letters there); uftpd
    /// refuses the unknown ones and keeps the rest.
    #[test]
    fn replacement_escapes() {
        let r = rules("r ^ \\#\\ \\\\\\\\z\\/\\.");
        assert_eq!(get(&r, "f").as_deref(), Ok("# \\\\z/.f"));
        assert_eq!(get(&rules("r ^ "), "f").as_deref(), Ok("f"));
        assert_eq!(
            get(&rules("r ^/tftpboot/"), "/tftpboot/a").as_deref(),
            Ok("a")
        );
        refused("r ^ \\n", "unknown escape \\n");
        refused("r ^ \\d", "unknown escape \\d");
        refused(
            "r (a) \\2",
            "\\2 refers to group 2, but the regular expression has 1 group",
        );
        refused("a~ (a) \\1", "an inverted (~) rule has no match");
        refused("r ^ x\\", "ends with a backslash");
    }

    /// Expressions translated from glibc's syntax. Each expected result is
    /// what glibc's regexec gave for the same expression and name, written
    /// as `r REGEX <\0|\1|...>` does: the match in <>, its groups after |.
    #[test]
    fn expressions_match_as_glibc_matches_them() {
        for (icase, regex, name, want) in [
            (false, "[]a]+", "x]a]y", "x<]a]>y"),
            (false, "[^]a]+", "]]bc]", "]]<bc>]"),
            (false, "[a-]+", "x-a-y", "x<-a->y"),
            (false, "[\\]+", "a\\\\b", "a<\\\\>b"),
            (false, "[[:digit:]]+", "ab123c", "ab<123>c"),
            (false, "[[.-.]a]+", "x-a-y", "x<-a->y"),
            (false, "[[=a=]]", "bab", "b<a>b"),
            (false, "\\.", "a.b", "a<.>b"),
            (false, "a{2,3}", "aaaa", "<aaa>a"),
            (false, "a{,2}b", "aaab", "a<aab>"),
            (false, "a{2,}", "aaaaa", "<aaaaa>"),
            (false, "\\w+", "..ab_1..", "..<ab_1>.."),
            (false, "\\W+", "ab..cd", "ab<..>cd"),
            (false, "\\s", "a\tb", "a<\t>b"),
            (false, "\\S+", "\tab\t", "\t<ab>\t"),
            (false, "(a|ab)(c|bcd)(d*)$", "abcd", "<abcd|a|bcd|>"),
            (false, "(a|ab)(bcd|c)$", "abcd", "<abcd|a|bcd>"),
            (false, "(|a)(a*)$", "aa", "<aa|a|a>"),
            (false, "(a||b)(.*)$", "b", "<b||b>"),
            (
                false,
                "^(/tftpboot)?/",
                "/tftpboot/x",
                "</tftpboot/|/tftpboot>x",
            ),
            (
                false,
                "^/?(tftpboot/)?",
                "/tftpboot/x",
                "</tftpboot/|tftpboot/>x",
            ),
            (
                false,
                "(pxelinux|grub|pxelinux\\.cfg)/",
                "pxelinux.cfg/x",
                "<pxelinux.cfg/|pxelinux.cfg>x",
            ),
            (false, "(grub|grub2)/", "grub2/x", "<grub2/|grub2>x"),
            (false, "x(86|64)|ia32", "ia32x64", "<ia32|>x64"),
            (false, ".*/", "a/b/c", "<a/b/>c"),
            (false, "^(.*)/([^/]+)$", "a/b/c", "<a/b/c|a/b|c>"),
            (false, "[a-z]+\\.cfg", "XX.foo.cfg", "XX.<foo.cfg>"),
            (false, "\\$", "a$b", "a<$>b"),
            (false, "a\\{1\\}", "a{1}", "<a{1}>"),
            (false, "\\(x\\)", "(x)", "<(x)>"),
            (false, "a|b|c", "zzc", "zz<c>"),
            (false, "\\\\", "C:\\a", "C:<\\>a"),
            (false, "A", "ba", "ba"),
            (true, "A", "ba", "b<a>"),
            (true, "[B-D]+", "abcdE", "a<bcd>E"),
            (true, "[^a]", "A1", "A<1>"),
            (true, "[[:upper:]]+", "aBc1", "<aBc>1"),
            (false, "^$", "", "<>"),
            (false, "()", "x", "<|>x"),
            (false, "x*", "abc", "<>abc"),
            (false, "(a)(b)?c", "ac", "<ac|a|>"),
            (false, "(a)(b)?c", "zz", "zz"),
        ] {
            let groups = regex.matches('(').count() - regex.matches("\\(").count();
            let mut rule = String::from(if icase { "ri " } else { "r " });
            rule.push_str(regex);
            rule.push_str(" <\\0");
            for g in 1..=groups {
                rule.push_str(&format!("|\\{g}"));
            }
            rule.push('>');
            let r = rules(&rule);
            assert_eq!(get(&r, name).as_deref(), Ok(want), "{rule} on {name:?}");
        }
        // Bytes, not characters: '.' takes one byte of a UTF-8 'é'.
        let r = rules("r . <\\0>");
        assert_eq!(
            r.apply("é".as_bytes(), &Context::new(Op::Get, v4()))
                .unwrap(),
            b"<\xC3>\xA9"
        );
        // And bytes over 0x7F in expressions and brackets.
        let r = Rules::parse(b"ri [a-\xFF]+$ <\\0>").unwrap();
        assert_eq!(
            r.apply(b"Ab\xE9\xFF", &Context::new(Op::Get, v4()))
                .unwrap(),
            b"<Ab\xE9\xFF>"
        );
    }

    /// What uftpd cannot match as tftpd-hpa does, and what is most likely a
    /// mistake, is refused with the line and the reason.
    #[test]
    fn expressions_refused() {
        refused("r (a)\\1 x", "back-reference \\1");
        refused("r \\d x", "\\d is not an escape");
        refused("r \\bfoo x", "word anchors");
        refused("r a\\> x", "word anchors");
        refused("r a** x", "two repetition operators");
        refused("r a*? x", "two repetition operators");
        refused("r (a*)*b x", "can match the empty string");
        refused("r (ab?)*c$ x", "whose length varies");
        refused("r a$b x", "'$' that is not at the very end");
        refused("r (a$|b)c x", "'$' that is not at the very end");
        refused("r (a)$|(a) x", "'$' that is not at the very end");
        refused("r (^a)*b x", "'^' inside a repetition");
        refused("r a*(ab)? x", "longest match");
        refused("r (a?|b)c? x", "can match the empty string");
        refused("r a) x", "unmatched ')'");
        refused("r (a x", "unmatched '('");
        refused("r [a x", "unmatched '['");
        refused("r a{ x", "unmatched '{'");
        refused("r a{1,2,3} x", "repetition count");
        refused("r a{x} x", "repetition count");
        refused("r a{300} x", "over uftpd's limit of 255");
        refused("r a{3,2} x", "backwards");
        refused("r *a x", "nothing before it");
        refused("r a|*b x", "nothing before it");
        refused("r ^* x", "anchors cannot be repeated");
        refused("r [z-a] x", "backwards");
        refused("ri [Z-a] x", "with flag i");
        refused("r [a-z-9] x", "right after a range");
        refused("r [[:foo:]] x", "unknown character class");
        refused("r [[.ab.]] x", "single character");
        refused("r [[:alpha:]-z] x", "cannot start with a character class");
        refused("r a\\", "ends with a backslash");
        assert_eq!(get(&rules("r a\\  b"), "xa c").as_deref(), Ok("xbc"));
        // What the same engine and glibc both accept stays accepted.
        for ok in [
            "r (a|ab)(c|bcd)(d*)$ x",
            "r (^|/)boot/ x",
            "r [[:alpha:]-] x",
            "rg a{0} x",
            "r (a|b)+c x",
            "r (ab)*c x",
            "r \\.pvt$|\\.key$ x",
        ] {
            assert!(Rules::parse(ok.as_bytes()).is_ok(), "{ok}");
        }
    }

    #[test]
    fn flags_refused() {
        refused("x ^ y", "unknown flag 'x'");
        refused("rgg a b", "'gg'");
        refused("rE a b", "flag 'E' comes from tftpd-hpa versions after 5.2");
        refused("j a b", "flag 'j'");
        refused(":label", "labels");
        refused("r~ a b", "r and ~");
        refused("ra a b", "r and a");
        refused("ae a", "a cannot be combined");
        refused("as a", "a cannot be combined");
        refused("es a", "e and s");
        refused("rGP a b", "G and P together");
        refused("r46 a b", "4 and 6 together");
        refused("g a", "g without r");
        refused("i a", "does nothing");
        refused("G a", "does nothing");
        refused("r", "no regular expression");
        refused("r # a", "no regular expression");
        refused("r a b c", "unexpected 'c' after the replacement");
        refused("e a b", "only r rules");
        // tftpd-hpa reads flags in any order, repeated ones included.
        assert_eq!(rules("ir a b\nrr c d\n").len(), 2);
    }

    #[test]
    fn file_format() {
        // Comments, blank lines, CRLF, escaped spaces and hash marks.
        let r = rules("# comment\r\n\r\n   \t\n r  ^a\\ b  c\\#d # trailing comment\r\nrg \\# @\n");
        assert_eq!(r.len(), 2);
        assert_eq!(get(&r, "a b#").as_deref(), Ok("c@d@"));
        // A '#' inside a field ends it, as in tftpd-hpa.
        assert_eq!(get(&rules("r a#b"), "xa").as_deref(), Ok("x"));
        let empty = rules("");
        assert!(empty.is_empty());
        assert_eq!(get(&empty, "x").as_deref(), Ok("x"));
        // One error per problem, each with its line, displayed one per line.
        let e = Rules::parse(b"r a b\nq a\nr (a\n\nr a b c\n").unwrap_err();
        let lines: Vec<usize> = e.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [2, 3, 5]);
        let shown = e.to_string();
        assert_eq!(shown.lines().count(), 3);
        assert!(
            shown.starts_with("map file line 2: unknown flag 'q'"),
            "{shown}"
        );
    }

    /// Hostile map files fail fast, with bounded work and output.
    #[test]
    fn hostile_map_files() {
        // A huge line.
        let mut text = b"r ".to_vec();
        text.extend(std::iter::repeat_n(b'a', 100_000));
        let e = errors(&text);
        assert_eq!((e.len(), e[0].line), (1, 1));
        assert!(e[0].message.contains("over the limit of 4096 bytes"));
        // A huge file.
        let e = errors(&vec![b'#'; FILE_BYTES_MAX + 1]);
        assert_eq!(e[0].line, 0);
        assert!(e[0].to_string().starts_with("map file: "));
        // Thousands of rules: refused after RULES_MAX, rest unread.
        let text = "r a b\n".repeat(5000);
        let e = errors(text.as_bytes());
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].line, RULES_MAX + 1);
        assert!(Rules::parse("r a b\n".repeat(RULES_MAX).as_bytes()).is_ok());
        // Thousands of bad lines: ERRORS_MAX reported, the rest counted.
        let text = "q a\n".repeat(1000);
        let e = Rules::parse(text.as_bytes()).unwrap_err();
        assert_eq!(
            (e.errors.len(), e.unchecked),
            (ERRORS_MAX, 1000 - ERRORS_MAX)
        );
        assert!(
            e.to_string()
                .ends_with("950 more rule lines not checked (stopped after 50 problems)")
        );
        // Unbalanced and deep parentheses.
        for bad in [
            "r ((((a) x",
            "r (a))) x",
            "r ) x",
            "r ( x",
            "r [[ x",
            "r [] x",
        ] {
            assert_eq!(errors(bad.as_bytes()).len(), 1, "{bad}");
        }
        let deep = format!("r {}a{} x", "(".repeat(200), ")".repeat(200));
        refused(&deep, "nested deeper than 32");
        // An expression that compiles too big for the size limit.
        refused("r (.{255}){255} x", "too big once compiled");
        refused("r ((((a{200}){200}){200}){200}) x", "too big once compiled");
        // Invalid escapes, NUL and control bytes.
        refused("r \\q x", "\\q is not an escape");
        let e = errors(b"r a\0b x");
        assert!(e[0].message.contains("NUL"));
        // Non-UTF-8 bytes in a file are fine: names are bytes.
        assert!(Rules::parse(b"r \xE9 \xE8\n").is_ok());
        // Too large for the longest-match check.
        refused(
            "r (a|b){0,255}(a|b){0,255}(a|b){0,255}(a|b){0,255}(a|b){0,255}c x",
            "too large for uftpd to check",
        );
    }

    /// Names and results are bounded by the filename limit.
    #[test]
    fn bounded_names() {
        let r = rules("r ^ a");
        let at_limit = vec![b'x'; NAME_BYTES_MAX - 1];
        let out = r.apply(&at_limit, &Context::new(Op::Get, v4())).unwrap();
        assert_eq!(out.len(), NAME_BYTES_MAX);
        assert_eq!(
            r.apply(&out, &Context::new(Op::Get, v4())),
            Err(Refusal::TooLong)
        );
        let too_long = vec![b'x'; NAME_BYTES_MAX + 1];
        assert_eq!(
            rules("e ^").apply(&too_long, &Context::new(Op::Get, v4())),
            Err(Refusal::TooLong)
        );
        // A replacement that would blow up is stopped as it grows.
        let r = rules(&format!("rg ^(.*)$ {}", "\\1".repeat(100)));
        assert_eq!(get(&r, "abcdefgh"), Err(Refusal::TooLong));
        // A name ends at its first NUL, as in tftpd-hpa.
        assert_eq!(
            rules("r $ !")
                .apply(b"ab\0cd", &Context::new(Op::Get, v4()))
                .unwrap(),
            b"ab!"
        );
    }

    /// Applying never panics, whatever the rules and the names: a fixed
    /// set of rule files against pseudo-random names.
    #[test]
    fn apply_never_panics() {
        let maps = [
            "rg \\\\ /\nri ^[a-z]: \nrg // /\ne ^ok/\nr ^[^/] /tftpboot/\\0\na \\.pvt$\n",
            "rs ^(.)(.*)$ \\2\\1\n",
            "rg (.) \\1\\1\n",
            "rg ^(.*)$ \\U\\1\\L\\1\\E\\i\\x\n",
            "r ^ \\i\ns (.)\\\\ \ne ^\n",
            "a~ ^[a-z/.]*$ bad\\ name:\\ \\i\nr (a|ab)(c|bcd)(d*)$ <\\3\\2\\1>\n",
        ];
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let clients: [IpAddr; 3] = [v4(), v6(), "2001:db8::42".parse().unwrap()];
        for map in maps {
            let r = rules(map);
            for _ in 0..100 {
                let len = (next() % 40) as usize + if next() % 50 == 0 { 1000 } else { 0 };
                let name: Vec<u8> = (0..len)
                    .map(|_| b"ab/\\.:cdAB\xFF\x00#ok"[(next() % 15) as usize])
                    .collect();
                let op = if next() % 2 == 0 { Op::Get } else { Op::Put };
                let ctx = Context::new(op, clients[(next() % 3) as usize]);
                if let Ok(out) = r.apply(&name, &ctx) {
                    assert!(out.len() <= NAME_BYTES_MAX);
                }
            }
        }
    }

    #[test]
    fn map_test_lines() {
        let map =
            b"a \\.pvt$ private\na ^x\nrs ^loop \\0\nrG ^ get/\nrP ^ put/\nr ^(get|put)/ \\0\\i/\n";
        let input = concat!(
            "a\n",
            "a\tPUT\n",
            "a\t10.0.0.1\twrq\n",
            "a\t[2001:db8::1]\n",
            "k.pvt\n",
            "x\r\n",
            "\n",
            "loop\n",
            "a\tnonsense\n",
            "tab\x07bell",
        );
        let out = map_test(map, input.as_bytes()).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            concat!(
                "get/192.0.2.34/a\n",
                "put/192.0.2.34/a\n",
                "put/10.0.0.1/a\n",
                "get/2001:db8::1/a\n",
                "ERROR: private (refused by the rule at line 1)\n",
                "ERROR: Access denied (refused by the rule at line 2)\n",
                "get/192.0.2.34/\n",
                "ERROR: Remap table failure (more than the allowed rule applications (a loop?))\n",
                "INVALID: nonsense is neither GET, PUT nor an IP address\n",
                "get/192.0.2.34/tab\\x07bell\n",
            )
        );
        let e = map_test(b"r (a\n", b"a\n").unwrap_err();
        assert_eq!(e.errors[0].line, 1);
    }

    #[test]
    fn lowercase_helper() {
        let mut name = b"\\Boot\\BCD-\xC3\x89t\xC3\xA9".to_vec();
        lowercase(&mut name);
        assert_eq!(name, b"\\boot\\bcd-\xC3\x89t\xC3\xA9");
    }

    #[test]
    fn trailing_garbage_helper() {
        for (name, want) in [
            (&b"pxelinux.0"[..], &b"pxelinux.0"[..]),
            (b"pxelinux.0\xFF\xFF\xFF", b"pxelinux.0"),
            (b"pxelinux.0\0\0\0", b"pxelinux.0"),
            (b"pxelinux.0\xFF\0\x80\xFE", b"pxelinux.0"),
            (b"caf\xC3\xA9", b"caf\xC3\xA9"),
            (b"caf\xC3\xA9\xFF", b"caf\xC3\xA9"),
            (b"caf\xC3", b"caf"),
            (b"caf\xE9", b"caf"),
            (b"\xF0\x9F\x98\x80", b"\xF0\x9F\x98\x80"),
            (b"a \t", b"a \t"),
            (b"\xFF\xFF", b""),
            (b"", b""),
        ] {
            assert_eq!(strip_trailing_garbage(name), want, "{}", show(name));
        }
    }

    #[test]
    fn rules_are_shared_across_shards() {
        fn shared<T: Send + Sync>() {}
        shared::<Rules>();
    }

    #[test]
    fn name_map_cleans_then_applies_rules() {
        let ctx = Context::new(Op::Get, v4());
        assert!(NameMap::default().is_identity());
        let plain = NameMap {
            strip_trailing_garbage: true,
            lowercase: true,
            rules: None,
        };
        assert!(!plain.is_identity());
        assert_eq!(
            plain.apply(b"\\Boot\\BCD\xff\xff", &ctx).unwrap(),
            b"\\boot\\bcd"
        );
        assert_eq!(
            plain.apply(&[b'a'; NAME_BYTES_MAX + 1], &ctx),
            Err(Refusal::TooLong)
        );
        // Rules see the lower-cased name and may write capitals.
        let map = NameMap {
            strip_trailing_garbage: false,
            lowercase: true,
            rules: Some(rules(r"r ^boot/bcd$ Boot/BCD")),
        };
        assert_eq!(map.apply(b"BOOT/BCD", &ctx).unwrap(), b"Boot/BCD");
    }

    #[test]
    fn name_map_test_lines_clean_the_name_field_only() {
        let map = NameMap {
            strip_trailing_garbage: false,
            lowercase: true,
            rules: Some(rules(r"a ^secret Go\ away")),
        };
        assert_eq!(
            map.test_line(b"SECRET\tPUT\n"),
            b"ERROR: Go away (refused by the rule at line 1)\n"
        );
        assert_eq!(map.test_line(b"Hello\t2001:DB8::1"), b"hello\n");
        assert_eq!(map.test_line(b""), b"\n");
        assert_eq!(
            map.test_line(b"A\tBOGUS\n"),
            b"INVALID: BOGUS is neither GET, PUT nor an IP address\n"
        );
    }
}

/// The name map in force, replaceable while the server runs (SIGHUP
/// re-reads `--map-file`). A shard checks the generation, one atomic load,
/// per request and takes the lock only when it moved, so a reload never
/// touches the packet path otherwise; a request already being admitted
/// keeps the map it started with.
#[derive(Debug, Default)]
pub struct SharedNames {
    generation: std::sync::atomic::AtomicU64,
    current: std::sync::Mutex<Option<std::sync::Arc<NameMap>>>,
}

impl SharedNames {
    pub fn new(names: Option<std::sync::Arc<NameMap>>) -> SharedNames {
        SharedNames {
            generation: Default::default(),
            current: std::sync::Mutex::new(names.filter(|n| !n.is_identity())),
        }
    }

    /// Puts `names` in force for every request from now on.
    pub fn replace(&self, names: Option<std::sync::Arc<NameMap>>) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        *current = names.filter(|n| !n.is_identity());
        // Bumped under the lock: a reader that sees the new generation and
        // then takes the lock finds the new map.
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The map in force and its generation.
    pub fn current(&self) -> (u64, Option<std::sync::Arc<NameMap>>) {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        (self.generation(), current.clone())
    }
}

#[cfg(test)]
mod shared_names_tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_replacement_moves_the_generation_and_identity_maps_are_dropped() {
        let shared = SharedNames::new(Some(Arc::new(NameMap::default())));
        assert_eq!(
            shared.current().1.map(|_| ()),
            None,
            "identity: nothing to apply"
        );
        let g = shared.generation();
        shared.replace(Some(Arc::new(NameMap {
            lowercase: true,
            ..NameMap::default()
        })));
        let (g2, names) = shared.current();
        assert_eq!(g2, g + 1);
        assert!(names.is_some_and(|n| n.lowercase));
    }
}

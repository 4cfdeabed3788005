//! The console's line editor: bytes from a terminal in, echo and complete lines out.
//!
//! Design: sans-I/O, one byte at a time ([`LineEditor::feed`]), so a serial port, a socket and
//! a test drive it alike. It is what a plain terminal (picocom, screen, minicom) needs and no
//! more: printable text is echoed; backspace (DEL or BS) erases a character, Ctrl-U the whole
//! line, Ctrl-C cancels it (`^C`), Ctrl-D on an empty line ends the session; up and down
//! arrows (`ESC [ A`, `ESC [ B`, and the `ESC O` forms) walk the history. Enter is CR, LF or
//! CR LF (one line either way). Other control bytes and escape sequences are dropped.
//!
//! Bounds: a line keeps at most [`MAX_LINE`] bytes; the rest of a longer one is counted, not
//! kept, and the line is refused when it ends ([`Event::TooLong`]). History keeps the last
//! [`HISTORY`] distinct lines. Escape sequences are dropped whole, never kept. So a
//! megabyte without a newline, or binary noise, costs a fixed amount of memory.
//!
//! ```text
//!            ESC            '['            final byte (A: up, B: down, else dropped)
//!   Text ──────────▶ Escape ─────▶ Csi ──────────────────────────────────────▶ Text
//!                      │  'O'                ▲ parameter bytes (dropped)
//!                      └──────▶ Ss3 ─────────┘ one byte
//! ```
//!
//! Owns: line editing, echo and history. Must not touch: what a line means (`command`) or
//! the device it came from.

use std::collections::VecDeque;

pub use super::command::MAX_LINE;

/// Lines of history kept per session.
pub const HISTORY: usize = 32;

/// What the editor is in the middle of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Esc {
    /// Ordinary text.
    Text,
    /// After ESC.
    Escape,
    /// After `ESC [`, with this many parameter bytes so far (counted, never kept).
    Csi(u8),
    /// After `ESC O`: one more byte.
    Ss3,
}

/// What a byte completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A line (invalid UTF-8 replaced), without its line ending.
    Line(String),
    /// A line longer than [`MAX_LINE`] ended; it was `len` bytes and is dropped.
    TooLong { len: usize },
    /// Ctrl-C: the line was dropped.
    Cancel,
    /// Ctrl-D on an empty line.
    Eof,
}

/// One session's line editor.
#[derive(Debug)]
pub struct LineEditor {
    buf: Vec<u8>,
    /// Bytes of the current line beyond [`MAX_LINE`] (counted, not kept).
    overflow: usize,
    history: VecDeque<String>,
    /// While walking the history: which entry is shown, and the line typed before.
    browse: Option<usize>,
    typed: Vec<u8>,
    esc: Esc,
    /// The last byte was CR: a LF right after it ends nothing.
    after_cr: bool,
    eol: &'static [u8],
}

impl LineEditor {
    /// An editor that echoes line ends as `eol` (`b"\r\n"` on a tty, `b"\n"` elsewhere).
    pub fn new(eol: &'static [u8]) -> Self {
        LineEditor {
            buf: Vec::new(),
            overflow: 0,
            history: VecDeque::new(),
            browse: None,
            typed: Vec::new(),
            esc: Esc::Text,
            after_cr: false,
            eol,
        }
    }

    /// The line typed so far (what a redrawn prompt shows after it).
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }

    /// Feeds one byte; the echo goes to `out`. Returns what the byte completed, if anything.
    pub fn feed(&mut self, b: u8, out: &mut Vec<u8>) -> Option<Event> {
        let after_cr = std::mem::replace(&mut self.after_cr, false);
        match self.esc {
            Esc::Escape => {
                self.esc = match b {
                    b'[' => Esc::Csi(0),
                    b'O' => Esc::Ss3,
                    _ => Esc::Text,
                };
                return None;
            }
            Esc::Csi(n) => {
                self.esc = match b {
                    0x40..=0x7e => {
                        self.arrow(b, out);
                        Esc::Text
                    }
                    0x20..=0x3f => Esc::Csi(n.saturating_add(1)),
                    _ => Esc::Text,
                };
                return None;
            }
            Esc::Ss3 => {
                self.esc = Esc::Text;
                self.arrow(b, out);
                return None;
            }
            Esc::Text => {}
        }
        match b {
            b'\n' if after_cr => None,
            b'\r' | b'\n' => {
                self.after_cr = b == b'\r';
                out.extend_from_slice(self.eol);
                Some(self.end_line())
            }
            0x1b => {
                self.esc = Esc::Escape;
                None
            }
            0x7f | 0x08 => {
                self.backspace(out);
                None
            }
            0x15 => {
                self.erase_shown(out);
                self.clear();
                None
            }
            0x03 => {
                out.extend_from_slice(b"^C");
                out.extend_from_slice(self.eol);
                self.clear();
                self.browse = None;
                Some(Event::Cancel)
            }
            0x04 if self.buf.is_empty() && self.overflow == 0 => Some(Event::Eof),
            b'\t' => {
                self.push(b' ', out);
                None
            }
            0x00..=0x1f => None,
            _ => {
                self.push(b, out);
                None
            }
        }
    }

    fn push(&mut self, b: u8, out: &mut Vec<u8>) {
        if self.buf.len() < MAX_LINE && self.overflow == 0 {
            self.buf.push(b);
            out.push(b);
        } else {
            self.overflow = self.overflow.saturating_add(1);
        }
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.overflow = 0;
    }

    /// Erases the last character (all bytes of a UTF-8 sequence) on screen and in the line.
    fn backspace(&mut self, out: &mut Vec<u8>) {
        if self.overflow > 0 {
            self.overflow -= 1;
            return;
        }
        if self.buf.is_empty() {
            return;
        }
        while let Some(b) = self.buf.pop() {
            if b & 0xc0 != 0x80 {
                break;
            }
        }
        out.extend_from_slice(b"\x08 \x08");
    }

    /// Erases the shown line: one backspace per character.
    fn erase_shown(&self, out: &mut Vec<u8>) {
        let chars = self.buf.iter().filter(|b| **b & 0xc0 != 0x80).count();
        for _ in 0..chars {
            out.extend_from_slice(b"\x08 \x08");
        }
    }

    /// Replaces the shown line with `line`.
    fn show(&mut self, line: Vec<u8>, out: &mut Vec<u8>) {
        self.erase_shown(out);
        self.buf = line;
        self.overflow = 0;
        out.extend_from_slice(&self.buf);
    }

    /// Up (`A`) and down (`B`) walk the history; other keys are dropped.
    fn arrow(&mut self, key: u8, out: &mut Vec<u8>) {
        match (key, self.browse) {
            (b'A', None) if !self.history.is_empty() => {
                self.typed = self.buf.clone();
                let i = self.history.len() - 1;
                self.browse = Some(i);
                self.show(self.history[i].as_bytes().to_vec(), out);
            }
            (b'A', Some(i)) if i > 0 => {
                self.browse = Some(i - 1);
                self.show(self.history[i - 1].as_bytes().to_vec(), out);
            }
            (b'B', Some(i)) if i + 1 < self.history.len() => {
                self.browse = Some(i + 1);
                self.show(self.history[i + 1].as_bytes().to_vec(), out);
            }
            (b'B', Some(_)) => {
                self.browse = None;
                let typed = std::mem::take(&mut self.typed);
                self.show(typed, out);
            }
            _ => {}
        }
    }

    fn end_line(&mut self) -> Event {
        self.browse = None;
        self.typed.clear();
        if self.overflow > 0 {
            let len = self.buf.len().saturating_add(self.overflow);
            self.clear();
            return Event::TooLong { len };
        }
        let line = String::from_utf8_lossy(&self.buf).into_owned();
        self.buf.clear();
        if !line.trim().is_empty() && self.history.back() != Some(&line) {
            if self.history.len() == HISTORY {
                self.history.pop_front();
            }
            self.history.push_back(line.clone());
        }
        Event::Line(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input`; returns the events and the echo.
    fn feed(ed: &mut LineEditor, input: &[u8]) -> (Vec<Event>, Vec<u8>) {
        let mut out = Vec::new();
        let events = input.iter().filter_map(|b| ed.feed(*b, &mut out)).collect();
        (events, out)
    }

    fn line(s: &str) -> Event {
        Event::Line(s.to_owned())
    }

    #[test]
    fn enter_is_cr_lf_or_crlf_and_text_is_echoed() {
        let mut ed = LineEditor::new(b"\r\n");
        // TC0: CR LF is one line end, not two.
        let (ev, out) = feed(&mut ed, b"status\r\nversion\rhelp\n");
        assert_eq!(ev, vec![line("status"), line("version"), line("help")]);
        assert_eq!(out, b"status\r\nversion\r\nhelp\r\n");
        // TC1: a blank line is a line; tabs become blanks.
        let (ev, _) = feed(&mut ed, b"\r\nget\tbook.depth\r");
        assert_eq!(ev, vec![line(""), line("get book.depth")]);
    }

    #[test]
    fn backspace_ctrl_u_and_ctrl_c_edit_the_line() {
        let mut ed = LineEditor::new(b"\n");
        // TC0: DEL and BS erase one character each, multi-byte ones whole.
        let (ev, out) = feed(&mut ed, "statuz\x7fs\n".as_bytes());
        assert_eq!(ev, vec![line("status")]);
        assert_eq!(out, b"statuz\x08 \x08s\n");
        let (ev, _) = feed(&mut ed, "ab€\x08\x08c\n".as_bytes());
        assert_eq!(ev, vec![line("ac")]);
        // TC1: backspace on an empty line does nothing.
        let (ev, out) = feed(&mut ed, b"\x7f\x7fx\n");
        assert_eq!((ev, out), (vec![line("x")], b"x\n".to_vec()));
        // TC2: Ctrl-U erases what is shown.
        let (ev, out) = feed(&mut ed, b"abc\x15diff\n");
        assert_eq!(ev, vec![line("diff")]);
        assert_eq!(out, b"abc\x08 \x08\x08 \x08\x08 \x08diff\n");
        // TC3: Ctrl-C cancels; the next line starts empty.
        let (ev, out) = feed(&mut ed, b"set book.de\x03apply\n");
        assert_eq!(ev, vec![Event::Cancel, line("apply")]);
        assert!(out.starts_with(b"set book.de^C\n"), "{out:?}");
        // TC4: Ctrl-D ends the session only on an empty line.
        let (ev, _) = feed(&mut ed, b"ab\x04\n\x04");
        assert_eq!(ev, vec![line("ab"), Event::Eof]);
    }

    #[test]
    fn arrows_walk_the_history_and_come_back_to_the_typed_line() {
        let mut ed = LineEditor::new(b"\n");
        feed(&mut ed, b"status\nget book.depth\nget book.depth\n");
        // TC0: up shows the newest (a repeated line is kept once), up again the one before.
        let (_, out) = feed(&mut ed, b"ve\x1b[A");
        assert_eq!(ed.pending(), b"get book.depth");
        assert!(
            out.ends_with(b"\x08 \x08\x08 \x08get book.depth"),
            "{out:?}"
        );
        feed(&mut ed, b"\x1bOA");
        assert_eq!(ed.pending(), b"status");
        // TC1: up at the oldest stays; down comes back to what was typed.
        feed(&mut ed, b"\x1b[A\x1b[B\x1b[B");
        assert_eq!(ed.pending(), b"ve");
        // TC2: a history line can be edited and sent.
        let (ev, _) = feed(&mut ed, b"\x1b[A\x1b[A\x7f\x7f\x7f\x7f\x7f\x7fversion\n");
        assert_eq!(ev, vec![line("version")]);
        // TC3: other sequences (right arrow, F5, an endless CSI) are dropped.
        let (ev, out) = feed(&mut ed, b"\x1b[C\x1b[15~\x1b[11111111111111111111111~x\n");
        assert_eq!(ev, vec![line("x")]);
        assert_eq!(out, b"x\n");
    }

    #[test]
    fn history_is_bounded() {
        let mut ed = LineEditor::new(b"\n");
        for i in 0..100 {
            feed(&mut ed, format!("get key{i}\n").as_bytes());
        }
        assert_eq!(ed.history.len(), HISTORY);
        assert_eq!(ed.history.front().map(String::as_str), Some("get key68"));
    }

    #[test]
    fn a_line_too_long_is_counted_not_kept_and_refused_at_its_end() {
        let mut ed = LineEditor::new(b"\n");
        let mut out = Vec::new();
        let mut events = Vec::new();
        for _ in 0..(1 << 20) {
            events.extend(ed.feed(b'a', &mut out));
        }
        assert!(events.is_empty());
        assert_eq!(ed.buf.len(), MAX_LINE);
        assert_eq!(out.len(), MAX_LINE, "only what is kept is echoed");
        let (ev, _) = feed(&mut ed, b"\nstatus\n");
        assert_eq!(ev, vec![Event::TooLong { len: 1 << 20 }, line("status")]);
        assert!(ed.history.iter().all(|h| h.len() <= MAX_LINE));
    }

    #[test]
    fn binary_noise_costs_bounded_memory_and_leaves_the_editor_usable() {
        let mut ed = LineEditor::new(b"\r\n");
        let mut rng = fastrand::Rng::with_seed(17);
        let mut out = Vec::new();
        for _ in 0..200_000 {
            let _ = ed.feed(rng.u8(..), &mut out);
            assert!(ed.buf.len() <= MAX_LINE);
            out.clear();
        }
        // Whatever state the noise left, Ctrl-C and a line get a clean command through.
        let (ev, _) = feed(&mut ed, b"\x18\x03status\r");
        assert_eq!(ev.last(), Some(&line("status")));
    }
}

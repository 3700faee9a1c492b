//! The canonical content written in one pass, straight from the typed event.
//!
//! [`super::content`] is defined as: the event's `serde_json::Value`, `chain` removed, values
//! at [`super::ERASABLE`] paths committed, keys sorted, written compactly. Building that
//! `Value` (a `BTreeMap` per object, a `String` per key) was most of what linking cost the
//! enricher. This writer gets the same bytes without it: serde_json's own serializer does
//! every escape and number, and a [`Formatter`] only reorders each object's entries by key
//! once the object ends and swaps erasable strings for their commitments as they are written.
//! `tests::same_bytes_as_the_value_form` holds the two forms equal on generated events.

use super::{Salt, COMMITMENT_PREFIX, ERASABLE};
use serde::Serialize;
use serde_json::ser::{CharEscape, CompactFormatter, Formatter};
use sha2::{Digest as _, Sha256};
use std::borrow::Cow;
use std::io;

/// Writes the canonical content of `value` (an enriched event) into `out`; on a value that
/// has no `serde_json::Value` (a number out of range), writes `null`, as the `Value` form does.
pub(super) fn write<T: Serialize + ?Sized>(value: &T, salt: &Salt, out: &mut Vec<u8>) {
    let start = out.len();
    let mut state = State {
        out: std::mem::take(out),
        frames: Vec::with_capacity(8),
        spare: Vec::new(),
        scratch: Vec::new(),
        erasing: None,
        salt,
    };
    let mut ser = serde_json::Serializer::with_formatter(io::sink(), Canonical(&mut state));
    let ok = value.serialize(&mut ser).is_ok() && state.frames.is_empty();
    *out = state.out;
    if !ok {
        out.truncate(start);
        out.extend_from_slice(b"null");
    }
}

/// One object entry in the buffer: its quoted key at `key_start..key_end`, then `:` and its
/// value up to `value_end`; a comma before `key_start` unless it is the first.
#[derive(Clone, Copy)]
struct Entry {
    key_start: usize,
    key_end: usize,
    value_end: usize,
}

enum Frame {
    Object {
        start: usize,
        entries: Vec<Entry>,
        /// Where the key being written (or the last one written) starts and ends.
        key: (usize, usize),
        in_key: bool,
        /// The [`ERASABLE`] paths (a bit each) that the keys above this object lead along.
        along: u16,
        /// Those of them that the current key also follows.
        here: u16,
    },
    Array,
}

struct State<'s> {
    out: Vec<u8>,
    frames: Vec<Frame>,
    /// Entry vectors of finished objects, reused.
    spare: Vec<Vec<Entry>>,
    scratch: Vec<u8>,
    /// Where the erasable string being written starts.
    erasing: Option<usize>,
    salt: &'s Salt,
}

impl State<'_> {
    /// Whether a string starting now is a value at an erasable path.
    fn at_erasable(&self) -> bool {
        match self.frames.last() {
            Some(Frame::Object {
                in_key: false,
                here,
                ..
            }) => *here & ends_at(self.frames.len()) != 0,
            _ => false,
        }
    }

    /// The paths an object starting now lies along: all of them at the root, those its parent
    /// key follows below an object, none inside an array.
    fn along(&self) -> u16 {
        match self.frames.last() {
            None => u16::MAX,
            Some(Frame::Object { here, .. }) => *here,
            Some(Frame::Array) => 0,
        }
    }

    /// Puts the object that started at `start` (its `{`) in key order (the last of equal keys
    /// wins, as in a map), dropping the root's `chain`. Objects already in order, as most of
    /// the model's are, stay where they were written.
    fn close_object(&mut self, start: usize, mut entries: Vec<Entry>) -> io::Result<()> {
        let root = self.frames.is_empty();
        let out = &self.out;
        let raw = |e: &Entry| &out[e.key_start + 1..e.key_end - 1];
        let escaped = entries.iter().any(|e| raw(e).contains(&b'\\'));
        let in_order = !escaped
            && entries.windows(2).all(|w| raw(&w[0]) < raw(&w[1]))
            && !(root && entries.iter().any(|e| raw(e) == b"chain"));
        if !in_order {
            let mut keyed = Vec::with_capacity(entries.len());
            for (i, e) in entries.iter().enumerate() {
                let key = if escaped {
                    let s: String = serde_json::from_slice(&out[e.key_start..e.key_end])
                        .map_err(io::Error::other)?;
                    Cow::Owned(s.into_bytes())
                } else {
                    Cow::Borrowed(raw(e))
                };
                keyed.push((key, i));
            }
            // Stable: equal keys stay in the order written, and the last one is kept.
            keyed.sort_by(|a, b| a.0.cmp(&b.0));
            self.scratch.clear();
            for (n, (key, i)) in keyed.iter().enumerate() {
                let replaced = keyed.get(n + 1).is_some_and(|next| next.0 == *key);
                if replaced || (root && key.as_ref() == b"chain") {
                    continue;
                }
                self.scratch
                    .push(if self.scratch.is_empty() { b'{' } else { b',' });
                let e = entries[*i];
                self.scratch
                    .extend_from_slice(&out[e.key_start..e.value_end]);
            }
            if self.scratch.is_empty() {
                self.scratch.push(b'{');
            }
            drop(keyed);
            self.out.truncate(start);
            self.out.extend_from_slice(&self.scratch);
        }
        self.out.push(b'}');
        entries.clear();
        self.spare.push(entries);
        Ok(())
    }
}

struct Canonical<'a, 's>(&'a mut State<'s>);

/// Every hook writes into the state's buffer; serde_json's writer is a sink.
impl Formatter for Canonical<'_, '_> {
    fn write_null<W: ?Sized + io::Write>(&mut self, _: &mut W) -> io::Result<()> {
        CompactFormatter.write_null(&mut self.0.out)
    }
    fn write_bool<W: ?Sized + io::Write>(&mut self, _: &mut W, v: bool) -> io::Result<()> {
        CompactFormatter.write_bool(&mut self.0.out, v)
    }
    fn write_i8<W: ?Sized + io::Write>(&mut self, _: &mut W, v: i8) -> io::Result<()> {
        CompactFormatter.write_i8(&mut self.0.out, v)
    }
    fn write_i16<W: ?Sized + io::Write>(&mut self, _: &mut W, v: i16) -> io::Result<()> {
        CompactFormatter.write_i16(&mut self.0.out, v)
    }
    fn write_i32<W: ?Sized + io::Write>(&mut self, _: &mut W, v: i32) -> io::Result<()> {
        CompactFormatter.write_i32(&mut self.0.out, v)
    }
    fn write_i64<W: ?Sized + io::Write>(&mut self, _: &mut W, v: i64) -> io::Result<()> {
        CompactFormatter.write_i64(&mut self.0.out, v)
    }
    /// A `Value` holds only what fits an `i64` or a `u64`.
    fn write_i128<W: ?Sized + io::Write>(&mut self, _: &mut W, v: i128) -> io::Result<()> {
        if u64::try_from(v).is_err() && i64::try_from(v).is_err() {
            return Err(io::Error::other("number out of range"));
        }
        CompactFormatter.write_i128(&mut self.0.out, v)
    }
    fn write_u8<W: ?Sized + io::Write>(&mut self, _: &mut W, v: u8) -> io::Result<()> {
        CompactFormatter.write_u8(&mut self.0.out, v)
    }
    fn write_u16<W: ?Sized + io::Write>(&mut self, _: &mut W, v: u16) -> io::Result<()> {
        CompactFormatter.write_u16(&mut self.0.out, v)
    }
    fn write_u32<W: ?Sized + io::Write>(&mut self, _: &mut W, v: u32) -> io::Result<()> {
        CompactFormatter.write_u32(&mut self.0.out, v)
    }
    fn write_u64<W: ?Sized + io::Write>(&mut self, _: &mut W, v: u64) -> io::Result<()> {
        CompactFormatter.write_u64(&mut self.0.out, v)
    }
    fn write_u128<W: ?Sized + io::Write>(&mut self, _: &mut W, v: u128) -> io::Result<()> {
        if u64::try_from(v).is_err() {
            return Err(io::Error::other("number out of range"));
        }
        CompactFormatter.write_u128(&mut self.0.out, v)
    }
    /// A `Value` widens an `f32` to `f64`, and so prints its `f64` digits.
    fn write_f32<W: ?Sized + io::Write>(&mut self, _: &mut W, v: f32) -> io::Result<()> {
        CompactFormatter.write_f64(&mut self.0.out, f64::from(v))
    }
    fn write_f64<W: ?Sized + io::Write>(&mut self, _: &mut W, v: f64) -> io::Result<()> {
        CompactFormatter.write_f64(&mut self.0.out, v)
    }
    /// Only `arbitrary_precision` or a `RawValue` writes these, and a `Value` reparses them.
    fn write_number_str<W: ?Sized + io::Write>(&mut self, _: &mut W, _: &str) -> io::Result<()> {
        Err(io::Error::other("number text has no canonical form"))
    }
    fn write_raw_fragment<W: ?Sized + io::Write>(&mut self, _: &mut W, _: &str) -> io::Result<()> {
        Err(io::Error::other("raw JSON has no canonical form"))
    }

    fn begin_string<W: ?Sized + io::Write>(&mut self, _: &mut W) -> io::Result<()> {
        if self.0.at_erasable() {
            self.0.erasing = Some(self.0.out.len());
        }
        self.0.out.push(b'"');
        Ok(())
    }
    fn end_string<W: ?Sized + io::Write>(&mut self, _: &mut W) -> io::Result<()> {
        self.0.out.push(b'"');
        if let Some(start) = self.0.erasing.take() {
            let quoted = &self.0.out[start..];
            let inner = &quoted[1..quoted.len() - 1];
            let value: Cow<'_, str> = if inner.contains(&b'\\') {
                Cow::Owned(serde_json::from_slice(quoted).map_err(io::Error::other)?)
            } else {
                // Unescaped, the bytes are the fragments serde_json was given, all `str`.
                Cow::Borrowed(std::str::from_utf8(inner).map_err(io::Error::other)?)
            };
            let committed = commitment_text(self.0.salt, &value);
            self.0.out.truncate(start);
            self.0.out.push(b'"');
            self.0.out.extend_from_slice(&committed);
            self.0.out.push(b'"');
        }
        Ok(())
    }
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        _: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        self.0.out.extend_from_slice(fragment.as_bytes());
        Ok(())
    }
    fn write_char_escape<W: ?Sized + io::Write>(
        &mut self,
        _: &mut W,
        escape: CharEscape,
    ) -> io::Result<()> {
        CompactFormatter.write_char_escape(&mut self.0.out, escape)
    }

    fn begin_array<W: ?Sized + io::Write>(&mut self, _: &mut W) -> io::Result<()> {
        self.0.frames.push(Frame::Array);
        self.0.out.push(b'[');
        Ok(())
    }
    fn end_array<W: ?Sized + io::Write>(&mut self, _: &mut W) -> io::Result<()> {
        self.0.frames.pop();
        self.0.out.push(b']');
        Ok(())
    }
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        _: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if !first {
            self.0.out.push(b',');
        }
        Ok(())
    }
    fn end_array_value<W: ?Sized + io::Write>(&mut self, _: &mut W) -> io::Result<()> {
        Ok(())
    }

    fn begin_object<W: ?Sized + io::Write>(&mut self, _: &mut W) -> io::Result<()> {
        let entries = self.0.spare.pop().unwrap_or_default();
        let start = self.0.out.len();
        self.0.out.push(b'{');
        let along = self.0.along();
        self.0.frames.push(Frame::Object {
            start,
            entries,
            key: (start, start),
            in_key: false,
            along,
            here: 0,
        });
        Ok(())
    }
    fn end_object<W: ?Sized + io::Write>(&mut self, _: &mut W) -> io::Result<()> {
        match self.0.frames.pop() {
            Some(Frame::Object { start, entries, .. }) => self.0.close_object(start, entries),
            _ => Err(io::Error::other("unbalanced object")),
        }
    }
    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        _: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if !first {
            self.0.out.push(b',');
        }
        let at = self.0.out.len();
        match self.0.frames.last_mut() {
            Some(Frame::Object { key, in_key, .. }) => {
                *key = (at, at);
                *in_key = true;
                Ok(())
            }
            _ => Err(io::Error::other("key outside an object")),
        }
    }
    fn end_object_key<W: ?Sized + io::Write>(&mut self, _: &mut W) -> io::Result<()> {
        let at = self.0.out.len();
        let depth = self.0.frames.len() - 1;
        let out = &self.0.out;
        match self.0.frames.last_mut() {
            Some(Frame::Object {
                key,
                in_key,
                along,
                here,
                ..
            }) => {
                key.1 = at;
                *in_key = false;
                let name = out.get(key.0 + 1..at.saturating_sub(1)).unwrap_or_default();
                *here = following(*along, depth, name);
                Ok(())
            }
            _ => Err(io::Error::other("key outside an object")),
        }
    }
    fn begin_object_value<W: ?Sized + io::Write>(&mut self, _: &mut W) -> io::Result<()> {
        self.0.out.push(b':');
        Ok(())
    }
    fn end_object_value<W: ?Sized + io::Write>(&mut self, _: &mut W) -> io::Result<()> {
        let at = self.0.out.len();
        match self.0.frames.last_mut() {
            Some(Frame::Object { entries, key, .. }) => {
                entries.push(Entry {
                    key_start: key.0,
                    key_end: key.1,
                    value_end: at,
                });
                Ok(())
            }
            _ => Err(io::Error::other("value outside an object")),
        }
    }
}

/// The paths (bits) of [`ERASABLE`] that end at `depth` keys.
fn ends_at(depth: usize) -> u16 {
    ERASABLE
        .iter()
        .enumerate()
        .filter(|(_, path)| path.len() == depth)
        .fold(0, |bits, (i, _)| bits | 1 << i)
}

/// Which of the paths in `along` continue with `key` at `depth`.
fn following(along: u16, depth: usize, key: &[u8]) -> u16 {
    if along == 0 {
        return 0;
    }
    ERASABLE
        .iter()
        .enumerate()
        .filter(|(i, path)| {
            along & 1 << i != 0 && path.get(depth).is_some_and(|k| k.as_bytes() == key)
        })
        .fold(0, |bits, (i, _)| bits | 1 << i)
}

/// The length of a commitment's text: the prefix and 64 hex digits.
const COMMITMENT_LEN: usize = COMMITMENT_PREFIX.len() + 64;

/// [`super::commitment`]'s text, without allocating.
pub(super) fn commitment_text(salt: &Salt, value: &str) -> [u8; COMMITMENT_LEN] {
    let mut h = Sha256::new();
    h.update(b"audit-erasable-v2\n");
    h.update(salt);
    h.update(value.as_bytes());
    let mut text = [0u8; COMMITMENT_LEN];
    let (prefix, digits) = text.split_at_mut(COMMITMENT_PREFIX.len());
    prefix.copy_from_slice(COMMITMENT_PREFIX.as_bytes());
    // 32 bytes always fit 64 hex digits.
    let _ = hex::encode_to_slice(h.finalize(), digits);
    text
}

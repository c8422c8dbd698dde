//! How the structured targets read their bytes, and how seeds are written in the same form.
//!
//! An input is a sequence of fields read with [`arbitrary::Unstructured`]: integers little-endian
//! in their own width, a flag in one byte (its lowest bit), byte strings and texts as a `u16`
//! little-endian length and that many bytes (cut to what is left), an optional value as a flag and
//! then the value if the flag is set. Past the end of the input every field reads as zero or empty,
//! so every input is a valid one. [`Writer`] writes fields in that form, for seed inputs.

use arbitrary::{Arbitrary, Unstructured};
use uuid::Uuid;

/// Reads fields from a fuzz input.
pub struct Fields<'a> {
    data: Unstructured<'a>,
}

impl<'a> Fields<'a> {
    /// The fields of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self {
            data: Unstructured::new(data),
        }
    }

    /// One byte.
    pub fn byte(&mut self) -> u8 {
        self.int()
    }

    /// A flag: the lowest bit of one byte.
    pub fn flag(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    /// An integer, little-endian in its own width.
    pub fn int<T: Arbitrary<'a> + Default>(&mut self) -> T {
        // Integers never fail: missing bytes read as zero.
        T::arbitrary(&mut self.data).unwrap_or_default()
    }

    /// A UUID, its 16 bytes in order.
    pub fn uuid(&mut self) -> Uuid {
        let mut bytes = [0; 16];
        // Missing bytes read as zero; filling never fails.
        let _ = self.data.fill_buffer(&mut bytes);
        Uuid::from_bytes(bytes)
    }

    /// A byte string: a `u16` length, then that many bytes (or what is left).
    pub fn bytes(&mut self) -> &'a [u8] {
        let len = usize::from(self.int::<u16>()).min(self.data.len());
        self.data.bytes(len).unwrap_or_default()
    }

    /// A text: a byte string, invalid UTF-8 replaced.
    pub fn text(&mut self) -> String {
        String::from_utf8_lossy(self.bytes()).into_owned()
    }

    /// A flag, then a byte string if it is set.
    pub fn optional_bytes(&mut self) -> Option<&'a [u8]> {
        if self.flag() {
            Some(self.bytes())
        } else {
            None
        }
    }

    /// A flag, then a text if it is set.
    pub fn optional_text(&mut self) -> Option<String> {
        if self.flag() { Some(self.text()) } else { None }
    }
}

/// Writes fields in the form [`Fields`] reads.
#[derive(Debug, Default)]
#[must_use]
pub struct Writer {
    out: Vec<u8>,
}

impl Writer {
    /// An empty input.
    pub fn new() -> Self {
        Self::default()
    }

    /// One byte.
    pub fn byte(mut self, byte: u8) -> Self {
        self.out.push(byte);
        self
    }

    /// A flag.
    pub fn flag(self, flag: bool) -> Self {
        self.byte(u8::from(flag))
    }

    /// An integer, given as its little-endian bytes (`7i64.to_le_bytes()`).
    pub fn int<const N: usize>(mut self, le_bytes: [u8; N]) -> Self {
        self.out.extend_from_slice(&le_bytes);
        self
    }

    /// A UUID.
    pub fn uuid(mut self, id: Uuid) -> Self {
        self.out.extend_from_slice(id.as_bytes());
        self
    }

    /// A byte string (at most 65 535 bytes; the rest is left out).
    pub fn bytes(mut self, bytes: &[u8]) -> Self {
        let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
        self.out.extend_from_slice(&len.to_le_bytes());
        self.out.extend_from_slice(&bytes[..usize::from(len)]);
        self
    }

    /// A text.
    pub fn text(self, text: &str) -> Self {
        self.bytes(text.as_bytes())
    }

    /// An optional byte string.
    pub fn optional_bytes(self, bytes: Option<&[u8]>) -> Self {
        match bytes {
            Some(bytes) => self.flag(true).bytes(bytes),
            None => self.flag(false),
        }
    }

    /// An optional text.
    pub fn optional_text(self, text: Option<&str>) -> Self {
        self.optional_bytes(text.map(str::as_bytes))
    }

    /// Raw bytes, as they are.
    pub fn raw(mut self, bytes: &[u8]) -> Self {
        self.out.extend_from_slice(bytes);
        self
    }

    /// The input.
    pub fn finish(self) -> Vec<u8> {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_back_what_the_writer_wrote() {
        let id = Uuid::now_v7();
        let data = Writer::new()
            .byte(9)
            .flag(true)
            .int((-5i64).to_le_bytes())
            .uuid(id)
            .text("orders")
            .optional_bytes(None)
            .optional_text(Some("OrderPlaced"))
            .finish();
        let mut fields = Fields::new(&data);
        assert_eq!(fields.byte(), 9);
        assert!(fields.flag());
        assert_eq!(fields.int::<i64>(), -5);
        assert_eq!(fields.uuid(), id);
        assert_eq!(fields.text(), "orders");
        assert_eq!(fields.optional_bytes(), None);
        assert_eq!(fields.optional_text().as_deref(), Some("OrderPlaced"));
        // Past the end: zeros and empty texts.
        assert_eq!(fields.int::<i32>(), 0);
        assert_eq!(fields.text(), "");
    }

    #[test]
    fn a_length_past_the_end_takes_what_is_left() {
        let mut fields = Fields::new(&[0xff, 0xff, b'a', b'b']);
        assert_eq!(fields.bytes(), b"ab");
    }
}

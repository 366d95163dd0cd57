//! Response header fields as an app builds them.

/// Response header fields in the order they go out, names and values as bytes (WSGI hands over
/// latin-1 strings, so neither has to be UTF-8). Names keep the case they were given.
///
/// ```
/// use ferrocorn_worker::Headers;
/// let h = Headers::new().content_type("text/plain").add("Cache-Control", "no-store");
/// assert_eq!(h.get("content-type"), Some(&b"text/plain"[..]));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(Vec<u8>, Vec<u8>)>);

impl Headers {
    /// No fields.
    pub fn new() -> Headers {
        Headers(Vec::new())
    }

    /// Builder form of [`Headers::push`].
    pub fn add(mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Headers {
        self.push(name, value);
        self
    }

    /// Append a field (another field of the same name stays: `Set-Cookie` may repeat).
    pub fn push(&mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.0
            .push((name.as_ref().to_vec(), value.as_ref().to_vec()));
    }

    /// Add `Content-Type: value`.
    pub fn content_type(self, value: impl AsRef<[u8]>) -> Headers {
        self.add("Content-Type", value)
    }

    /// Add `Content-Length: len` (the body must then be exactly `len` bytes).
    pub fn content_length(self, len: u64) -> Headers {
        self.add("Content-Length", len.to_string())
    }

    /// The first field with this name (ASCII case-insensitive).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v.as_slice())
    }

    /// Whether a field with this name is present (ASCII case-insensitive).
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The fields in order, as (name, value).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.0.iter().map(|(n, v)| (n.as_slice(), v.as_slice()))
    }

    /// How many fields (repeated names counted each time).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The fields as (name, value) pairs, the form `ferrocorn-http` serializes.
    pub fn as_slice(&self) -> &[(Vec<u8>, Vec<u8>)] {
        &self.0
    }
}

/// The raw form, as `ferrocorn-http` and WSGI adapters hold header fields.
impl From<Vec<(Vec<u8>, Vec<u8>)>> for Headers {
    fn from(fields: Vec<(Vec<u8>, Vec<u8>)>) -> Headers {
        Headers(fields)
    }
}

impl From<Headers> for Vec<(Vec<u8>, Vec<u8>)> {
    fn from(h: Headers) -> Self {
        h.0
    }
}

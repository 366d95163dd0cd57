//! Byte classes from RFC 9110 §5.6.

const TCHAR: u8 = 1;
const FIELD_VCHAR: u8 = 2;

/// Byte classes as a table: these run once per byte of every name and value written.
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() {
            t[b] |= TCHAR;
        }
        if c == b'\t' || (c >= b' ' && c <= b'~') || c >= 0x80 {
            t[b] |= FIELD_VCHAR;
        }
        b += 1;
    }
    let symbols = b"!#$%&'*+-.^_`|~";
    let mut i = 0;
    while i < symbols.len() {
        t[symbols[i] as usize] |= TCHAR;
        i += 1;
    }
    t
};

/// `tchar`: the characters of a token (methods, field names, transfer codings).
pub(crate) fn is_tchar(b: u8) -> bool {
    CLASS[b as usize] & TCHAR != 0
}

/// A whole token: one or more `tchar`s (a field name, a method).
pub fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// A byte allowed inside a field value: VCHAR, SP, HTAB or obs-text. No other controls, no DEL.
pub(crate) fn is_field_vchar(b: u8) -> bool {
    CLASS[b as usize] & FIELD_VCHAR != 0
}

/// Strip optional whitespace (SP / HTAB) from both ends.
pub(crate) fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// URI `unreserved` / `sub-delims` (RFC 3986 §2), the characters of a reg-name besides `%XX`.
pub(crate) fn is_reg_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b)
}

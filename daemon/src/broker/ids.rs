//! Identifiers and tokens: request ids `r_…`, grant ids `g_…` (64 random bits, hex) and
//! grant tokens (192 random bits, base64url without padding).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore;
use secrecy::SecretString;

fn random_hex(prefix: &str) -> String {
    let mut bytes = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut bytes);
    let mut s = String::with_capacity(prefix.len() + 16);
    s.push_str(prefix);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A new access request id, `r_` + 16 hex digits.
pub fn request_id() -> String {
    random_hex("r_")
}

/// A new grant id, `g_` + 16 hex digits.
pub fn grant_id() -> String {
    random_hex("g_")
}

/// A new grant token: 24 random bytes (192 bits) as 32 base64url characters.
pub fn token() -> SecretString {
    let mut bytes = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut bytes);
    let s = URL_SAFE_NO_PAD.encode(bytes);
    zeroize::Zeroize::zeroize(&mut bytes);
    SecretString::from(s)
}

/// Percent-encodes everything but unreserved URL characters (RFC 3986 §2.3).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

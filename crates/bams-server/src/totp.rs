//! Optional TOTP second factor (RFC 6238: HMAC-SHA1, 30 s steps, 6 digits) for local users.
//! A code is accepted for the step before, at and after now (clock drift), and only once: the
//! catalog remembers the last step used.

use totp_rs::{Algorithm, Secret, TOTP};

const STEP_SECS: u64 = 30;
const DIGITS: usize = 6;

/// A new shared secret (160 random bits, base32 as authenticator apps take it).
pub fn new_secret() -> String {
    let bytes: [u8; 20] = rand::random();
    match Secret::Raw(bytes.to_vec()).to_encoded() {
        Secret::Encoded(s) => s,
        Secret::Raw(_) => String::new(),
    }
}

/// The `otpauth://` URL an authenticator app scans (as a QR code) or imports.
pub fn otpauth_url(username: &str, secret: &str) -> String {
    let account: String = username
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!(
        "otpauth://totp/BAMS:{account}?secret={secret}&issuer=BAMS&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}"
    )
}

/// The generator for a base32 secret; `None` for a malformed one.
fn generator(secret: &str) -> Option<TOTP> {
    let bytes = Secret::Encoded(secret.to_string()).to_bytes().ok()?;
    TOTP::new(Algorithm::SHA1, DIGITS, 0, STEP_SECS, bytes).ok()
}

/// Seconds since the epoch, as the codes count them.
pub fn now_secs() -> u64 {
    u64::try_from(bams_catalog::now_ms() / 1000).unwrap_or_default()
}

/// The time step `code` is valid for around `now` (seconds since the epoch), if any.
pub fn matching_step(secret: &str, code: &str, now: u64) -> Option<i64> {
    let code = code.trim();
    if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let totp = generator(secret)?;
    let step = now / STEP_SECS;
    [step.saturating_sub(1), step, step + 1].into_iter().find_map(|s| {
        let expected = totp.generate(s * STEP_SECS);
        // Compare without an early exit on the first differing digit.
        let same = expected.bytes().zip(code.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        same.then(|| i64::try_from(s).ok()).flatten()
    })
}

/// The code for `now` (tests and clients).
pub fn code_at(secret: &str, now: u64) -> Option<String> {
    Some(generator(secret)?.generate(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_6238_vector_and_window() {
        // RFC 6238 appendix B, SHA1, T = 59 s: 94287082 (8 digits); its last 6 digits.
        let secret = match Secret::Raw(b"12345678901234567890".to_vec()).to_encoded() {
            Secret::Encoded(s) => s,
            Secret::Raw(_) => unreachable!(),
        };
        assert_eq!(code_at(&secret, 59).as_deref(), Some("287082"));
        assert_eq!(matching_step(&secret, "287082", 59), Some(1));
        assert_eq!(matching_step(&secret, "287082", 89), Some(1), "one step late is accepted");
        assert_eq!(matching_step(&secret, "287082", 150), None, "three steps late is not");
        assert_eq!(matching_step(&secret, "28708", 59), None);
        assert_eq!(matching_step(&secret, "abcdef", 59), None);
        assert!(otpauth_url("a@b", &secret).starts_with("otpauth://totp/BAMS:a%40b?secret="));
        assert_eq!(new_secret().len(), 32);
    }
}

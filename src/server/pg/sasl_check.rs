//! A check pgwire lacks: whether a client's SASLInitialResponse is well formed before
//! pgwire decodes it. pgwire reads the data length without checking it against what was
//! sent and panics on a short or lying message (found by the `pg_decode` fuzz target).
//! Standalone, so that the fuzz target includes the very same code.

/// Whether `body` (a `p` message's body) is a mechanism name ending in NUL, then a 4-byte
/// data length that is -1 (no data) or at most the bytes that follow.
pub fn well_formed_sasl_initial_response(body: &[u8]) -> bool {
    let Some(nul) = body.iter().position(|&b| b == 0) else {
        return false;
    };
    let rest = &body[nul + 1..];
    let Some((length, data)) = rest.split_first_chunk::<4>() else {
        return false;
    };
    match i32::from_be_bytes(*length) {
        -1 => true,
        n => usize::try_from(n).is_ok_and(|n| n <= data.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::well_formed_sasl_initial_response as ok;

    #[test]
    fn sasl_initial_responses_are_checked_before_decoding() {
        assert!(ok(b"SCRAM-SHA-256\0\0\0\0\x03abc"));
        assert!(ok(b"SCRAM-SHA-256\0\xff\xff\xff\xff"));
        assert!(!ok(b"SCRAM-SHA-256\0\0\0\0\x04abc"));
        assert!(!ok(b"SCRAM-SHA-256\0\0\0"));
        assert!(!ok(b"SCRAM-SHA-256"));
        assert!(!ok(b"c=biws,r=abc,p=AAAA"));
        assert!(!ok(b"x\0\x80\0\0\0"));
    }
}

//! The name digest horde-batch derives its stable identifiers from: job
//! keys, derived seeds, expansion fingerprints and source image hashes.
//!
//! It is SHA-1 over a 16-byte namespace followed by the name, truncated to
//! 16 bytes, with the RFC 4122 version-5 and variant bits set: bit for bit
//! what `uuid::Uuid::new_v5` gives, which made these identifiers until this
//! module did. Job keys, fingerprints and checksums made from it are stored
//! in users' ledgers, state folders, sidecars and output file names, so not
//! one bit of it may change: the tests below hold it to `Uuid::new_v5`.
//!
//! This is an identifier, not a security measure: SHA-1 is not collision
//! resistant against an adversary, and nothing here relies on it being so.
//! This module only computes and formats digests; it owns no namespace (each
//! caller keeps its own) and does no I/O.

/// The digest of `name` under `namespace`: the first 16 bytes of
/// SHA-1(namespace as 16 big-endian bytes ‖ name), with the version nibble
/// (the high half of byte 6) set to 5 and the variant bits (the top two of
/// byte 8) set to `10`, as RFC 4122 name-based UUIDs of version 5 are made.
///
/// `namespace` is the UUID `uuid::Uuid::from_u128(namespace)` would give.
pub fn name_digest(namespace: u128, name: &[u8]) -> [u8; 16] {
    let mut sha1 = sha1_smol::Sha1::new();
    sha1.update(&namespace.to_be_bytes());
    sha1.update(name);
    let hash = sha1.digest().bytes();
    let mut digest = [0u8; 16];
    digest.copy_from_slice(&hash[..16]);
    digest[6] = (digest[6] & 0x0f) | 0x50;
    digest[8] = (digest[8] & 0x3f) | 0x80;
    digest
}

/// The digest as 32 lowercase hex digits (the UUID's simple form).
pub fn to_hex(digest: [u8; 16]) -> String {
    format!("{:032x}", u128::from_be_bytes(digest))
}

/// The digest as a hyphenated lowercase UUID, `8-4-4-4-12` hex digits (what
/// `Uuid::to_string` gives).
pub fn to_hyphenated(digest: [u8; 16]) -> String {
    let hex = to_hex(digest);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The first 8 bytes of the digest as a big-endian number. Bits 12 to 15
/// (counting from the least significant) are the version nibble, always 5.
pub fn leading_u64(digest: [u8; 16]) -> u64 {
    let [a, b, c, d, e, f, g, h, ..] = digest;
    u64::from_be_bytes([a, b, c, d, e, f, g, h])
}

/// The first 4 bytes of the digest as a big-endian number (hash output only:
/// the version and variant bits come later).
pub fn leading_u32(digest: [u8; 16]) -> u32 {
    let [a, b, c, d, ..] = digest;
    u32::from_be_bytes([a, b, c, d])
}

/// A job's stable identity: the leading 64 bits of the name digest of its
/// content, written as 16 hex digits. Below the manifest (which makes it),
/// the ledger and the output (which are keyed by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobKey(pub u64);

impl std::fmt::Display for JobKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for JobKey {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(JobKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMESPACES: [u128; 4] = [
        // The job-key namespace (`manifest::expand`).
        0x6e1f_3c52_8a0b_4d47_9a55_1d2e_8c7b_0f13,
        // The source-hash namespace (`manifest::source`).
        0x3b9e_51c4_7d20_4f8a_a6e1_52c0_9d4f_1e77,
        0,
        u128::MAX,
    ];

    fn names() -> Vec<Vec<u8>> {
        let mut names: Vec<Vec<u8>> = [
            "",
            "a",
            "example.org",
            "seed/00ff00ff00ff00ff/3",
            "{\"job\":\"portrait\",\"prompt\":\"a cat, ultra detailed\"}",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        // Lengths around SHA-1's 64-byte block and its padding boundary.
        for len in [55, 56, 63, 64, 65, 119, 120, 1000] {
            names.push((0..len).map(|i| (i * 7 + 3) as u8).collect());
        }
        names.push(vec![0xff; 4096]);
        names
    }

    #[test]
    fn the_digest_is_uuid_v5_bit_for_bit() {
        for namespace in NAMESPACES {
            let uuid_namespace = uuid::Uuid::from_u128(namespace);
            for name in names() {
                let uuid = uuid::Uuid::new_v5(&uuid_namespace, &name);
                let digest = name_digest(namespace, &name);
                assert_eq!(&digest, uuid.as_bytes(), "{namespace:x} {name:?}");
                assert_eq!(to_hex(digest), format!("{:032x}", uuid.as_u128()));
                assert_eq!(to_hex(digest), uuid.simple().to_string());
                assert_eq!(to_hyphenated(digest), uuid.to_string());
                assert_eq!(u128::from_be_bytes(digest), uuid.as_u128());
                let bytes = uuid.as_bytes();
                assert_eq!(
                    leading_u64(digest),
                    u64::from_be_bytes([
                        bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6],
                        bytes[7],
                    ])
                );
                assert_eq!(
                    leading_u32(digest),
                    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
                );
            }
        }
    }

    #[test]
    fn a_known_rfc_4122_example_is_reproduced() {
        // The uuid crate's own fixture: v5 of "example.org" in the DNS namespace.
        let dns = uuid::Uuid::NAMESPACE_DNS.as_u128();
        assert_eq!(
            to_hyphenated(name_digest(dns, b"example.org")),
            "aad03681-8b63-5304-89e0-8ca8f49461b5"
        );
    }

    #[test]
    fn version_and_variant_bits_are_set() {
        for name in names() {
            let digest = name_digest(NAMESPACES[0], &name);
            assert_eq!(digest[6] >> 4, 5);
            assert_eq!(digest[8] >> 6, 0b10);
        }
    }
}

//! Property tests of the envelope: round trips, and that any single-bit flip is caught.

use cairn_log::{
    codec, ChainCursor, EncodedEntry, EntryDraft, Hash, Head, Meta, StoredEntry, VerifiedEntry,
};
use proptest::prelude::*;
use uuid::Uuid;

fn arb_draft() -> impl Strategy<Value = EntryDraft> {
    (
        any::<u64>(),
        any::<u64>(),
        "[a-zA-Z0-9 ]{0,20}",
        proptest::option::of(any::<u128>()),
        any::<u128>(),
        proptest::option::of("[a-z0-9-]{0,20}"),
        "[a-z0-9._:-]{1,40}",
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(
            |(epoch, time_ms, actor, change, command, key, kind, payload)| EntryDraft {
                epoch,
                time_ms,
                meta: Meta {
                    actor,
                    change: change.map(Uuid::from_u128),
                    command: Uuid::from_u128(command),
                    idempotency_key: key,
                },
                kind,
                payload,
            },
        )
}

fn arb_entry() -> impl Strategy<Value = StoredEntry> {
    (arb_draft(), 1u64..u64::MAX, any::<[u8; 32]>())
        .prop_map(|(d, offset, prev)| d.seal(offset, Hash(prev)).unwrap())
}

/// What a reader does with bytes found at `offset` after `head`: decode, then chain-check;
/// and what a mirror does with a frame's bytes (decode keeping them, then check them into a
/// `VerifiedEntry`). The two must agree.
fn verify(bytes: &[u8], head: Head) -> bool {
    let read = match codec::decode(bytes) {
        Ok(e) => ChainCursor::new(head).check(&e).is_ok(),
        Err(_) => false,
    };
    let mirrored = match EncodedEntry::decode(bytes.to_vec()) {
        Ok(e) => ChainCursor::new(head).check_encoded(e).is_ok(),
        Err(_) => false,
    };
    assert_eq!(
        read, mirrored,
        "a reader and a mirror disagree on {bytes:?}"
    );
    read
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn encode_decode_round_trip(entry in arb_entry()) {
        let bytes = codec::encode(&entry);
        prop_assert_eq!(codec::decode(&bytes).unwrap(), entry);
    }

    #[test]
    fn any_single_bit_flip_is_caught(entry in arb_entry(), bit in any::<prop::sample::Index>()) {
        let head = Head { offset: entry.offset - 1, hash: entry.prev, epoch: 0 };
        let bytes = codec::encode(&entry);
        prop_assert!(verify(&bytes, head), "the unflipped entry verifies");
        let i = bit.index(bytes.len() * 8);
        let mut flipped = bytes.clone();
        flipped[i / 8] ^= 1 << (i % 8);
        prop_assert!(!verify(&flipped, head), "flip of bit {} of {} went unnoticed", i, bytes.len() * 8);
    }

    #[test]
    fn an_encoded_entry_keeps_exactly_the_canonical_bytes(entry in arb_entry()) {
        let bytes = codec::encode(&entry);
        let decoded = EncodedEntry::decode(bytes.clone()).unwrap();
        prop_assert_eq!(decoded.entry(), &entry);
        prop_assert_eq!(decoded.bytes(), &bytes[..]);
        prop_assert_eq!(&EncodedEntry::new(entry.clone()), &decoded);
        let verified = VerifiedEntry::verify(decoded).unwrap();
        prop_assert_eq!(verified.into_parts(), (entry.clone(), bytes));
        let mut forged = entry;
        forged.time_ms ^= 1;
        prop_assert!(VerifiedEntry::verify(EncodedEntry::new(forged)).is_err());
    }

    #[test]
    fn truncation_is_caught(entry in arb_entry(), cut in any::<prop::sample::Index>()) {
        let bytes = codec::encode(&entry);
        let keep = cut.index(bytes.len());
        prop_assert!(codec::decode(&bytes[..keep]).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        cairn_log::testing::fuzz_decode(&bytes);
        cairn_log::testing::fuzz_chain(&bytes);
    }
}

#[test]
fn every_bit_of_a_chain_of_entries_is_covered() {
    // Exhaustive over every bit of a few real entries, not just sampled.
    let entries = cairn_log::testing::entries_after(Head::EMPTY, 5, 1);
    let mut head = Head::EMPTY;
    for e in &entries {
        let bytes = codec::encode(e);
        for i in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[i / 8] ^= 1 << (i % 8);
            assert!(
                !verify(&flipped, head),
                "entry {} bit {i} flip went unnoticed",
                e.offset
            );
        }
        head = e.head();
    }
}

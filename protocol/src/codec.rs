//! One codec for every wire type: postcard bytes, no trailing bytes, bounded fields.

use serde::{de::DeserializeOwned, Serialize};

use crate::ProtocolError;

/// A type that travels as postcard bytes.
///
/// [`WireMessage::from_wire`] rejects trailing bytes and then runs
/// [`WireMessage::check_bounds`], so a decoded value always respects the documented
/// limits of its fields. Decoding allocates at most about the input's length, and
/// inputs come from frames bounded by [`crate::MAX_FRAME_LEN`].
pub trait WireMessage: Serialize + DeserializeOwned {
    /// A lowercase name for error messages.
    const NAME: &'static str;

    /// Checks the limits of variable-length fields; the default accepts everything.
    fn check_bounds(&self) -> Result<(), ProtocolError> {
        Ok(())
    }

    /// The value's postcard encoding.
    fn to_wire(&self) -> Vec<u8> {
        // Invariant: postcard's allocating serializer fails only for sequences of
        // unknown length or `serialize_any`; wire types are plain derives of fixed
        // arrays, integers, strings and `Vec`s, which always know their length.
        postcard::to_allocvec(self).expect("postcard encoding of a wire type is infallible")
    }

    /// Decodes exactly one value from `bytes`.
    fn from_wire(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let (value, rest) = postcard::take_from_bytes::<Self>(bytes).map_err(|source| {
            ProtocolError::Malformed {
                what: Self::NAME,
                source,
            }
        })?;
        if !rest.is_empty() {
            return Err(ProtocolError::TrailingBytes {
                what: Self::NAME,
                extra: rest.len(),
            });
        }
        value.check_bounds()?;
        Ok(value)
    }
}

/// Fails with [`ProtocolError::FieldTooLong`] if `len > max`.
pub fn check_len(field: &'static str, len: usize, max: usize) -> Result<(), ProtocolError> {
    if len > max {
        Err(ProtocolError::FieldTooLong { field, len, max })
    } else {
        Ok(())
    }
}

/// Serde for `[u8; N]` of any length (serde derives stop at 32): a fixed N-byte tuple
/// on the wire, no length prefix, each byte as itself (postcard writes a `u8` raw).
pub(crate) mod fixed_bytes {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::ser::SerializeTuple;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer, const N: usize>(
        bytes: &[u8; N],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let mut tuple = serializer.serialize_tuple(N)?;
        for byte in bytes {
            tuple.serialize_element(byte)?;
        }
        tuple.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        deserializer: D,
    ) -> Result<[u8; N], D::Error> {
        deserializer.deserialize_tuple(N, FixedVisitor::<N>)
    }

    struct FixedVisitor<const N: usize>;

    impl<'de, const N: usize> Visitor<'de> for FixedVisitor<N> {
        type Value = [u8; N];

        fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            write!(f, "{N} bytes")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; N], A::Error> {
            let mut out = [0u8; N];
            for (i, slot) in out.iter_mut().enumerate() {
                *slot = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(i, &self))?;
            }
            Ok(out)
        }
    }
}

/// Serde for `[u8; 64]` (signatures): [`fixed_bytes`] at 64.
pub(crate) use fixed_bytes as array64;

//! The one canonical encoder for definition digests and cache keys.
//!
//! Every field is written as a length-prefixed tag followed by a length-prefixed
//! value, and lists carry their element count (lengths and counts as LEB128
//! varints: self-delimiting, and one byte for the short fields most keys are
//! made of, which keeps the hashed bytes, the cost of a key, small), so no two different sequences of
//! fields encode to the same bytes: `["ab", "c"]` and `["a", "bc"]` differ, as do
//! an absent option and an empty one. A domain string starts every key, so keys of
//! different kinds (a RUN definition, a COPY content digest) never collide either.

/// A blake3 digest produced by [`KeyEncoder::finish`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub [u8; 32]);

impl Key {
    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({})", self.to_hex())
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Builds a [`Key`] from tagged, length-prefixed fields.
pub struct KeyEncoder {
    /// The parent of a chained key ([`KeyEncoder::chained`]): blake3's keyed
    /// mode hashes the fields under it, so the parent costs no hashed bytes.
    parent: Option<[u8; 32]>,
    /// Made only when a key outgrows `pending`: most keys are a few hundred
    /// bytes, hashed in one call at `finish`, and a hasher is large to make
    /// and to copy.
    hasher: Option<Box<blake3::Hasher>>,
    /// Small fields gathered before they reach the hasher: each
    /// `Hasher::update` call has a fixed cost far above that of copying a
    /// few bytes, and most fields are a few bytes. The hashed byte stream is
    /// the same either way.
    pending: Vec<u8>,
}

/// Fields at least this long go to the hasher directly.
const DIRECT: usize = 1024;

impl KeyEncoder {
    /// Starts a key of one kind; `domain` names the kind (e.g. `"kiln.run.v1"`).
    pub fn new(domain: &str) -> Self {
        Self::start(domain, None)
    }

    /// Starts a key that extends `parent` (the step before, the previous
    /// state): the same fields as [`KeyEncoder::new`], hashed in blake3's
    /// keyed mode with `parent` as the key. Keys chained from different
    /// parents differ as surely as keys of different fields, and never equal
    /// an unchained key (keyed mode is its own blake3 domain).
    pub fn chained(domain: &str, parent: &Key) -> Self {
        Self::start(domain, Some(parent.0))
    }

    fn start(domain: &str, parent: Option<[u8; 32]>) -> Self {
        let mut encoder = KeyEncoder {
            parent,
            hasher: None,
            pending: Vec::with_capacity(512),
        };
        encoder.raw(domain.as_bytes());
        encoder
    }

    fn hasher(&mut self) -> &mut blake3::Hasher {
        let parent = self.parent;
        self.hasher.get_or_insert_with(|| {
            Box::new(match &parent {
                Some(key) => blake3::Hasher::new_keyed(key),
                None => blake3::Hasher::new(),
            })
        })
    }

    /// Appends `n` as an unsigned LEB128 varint.
    fn length(&mut self, n: usize) {
        let mut n = n as u64;
        while n >= 0x80 {
            self.pending.push((n as u8) | 0x80);
            n >>= 7;
        }
        self.pending.push(n as u8);
    }

    fn raw(&mut self, bytes: &[u8]) {
        self.length(bytes.len());
        if bytes.len() >= DIRECT {
            self.flush();
            self.hasher().update(bytes);
        } else {
            self.pending.extend_from_slice(bytes);
            if self.pending.len() >= 4 * DIRECT {
                self.flush();
            }
        }
    }

    /// Moves the gathered fields into the hasher.
    fn flush(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        self.hasher().update(&pending);
        self.pending = pending;
        self.pending.clear();
    }

    /// Adds one field of bytes.
    pub fn bytes(&mut self, tag: &str, value: &[u8]) -> &mut Self {
        self.raw(tag.as_bytes());
        self.raw(value);
        self
    }

    /// Adds one string field.
    pub fn str(&mut self, tag: &str, value: &str) -> &mut Self {
        self.bytes(tag, value.as_bytes())
    }

    /// Adds one integer field.
    pub fn u64(&mut self, tag: &str, value: u64) -> &mut Self {
        self.bytes(tag, &value.to_le_bytes())
    }

    /// Adds a flag.
    pub fn bool(&mut self, tag: &str, value: bool) -> &mut Self {
        self.bytes(tag, &[u8::from(value)])
    }

    /// Adds another key (a parent's, an input's).
    pub fn key(&mut self, tag: &str, value: &Key) -> &mut Self {
        self.bytes(tag, &value.0)
    }

    /// Adds an optional string; `None` and `Some("")` encode differently.
    pub fn opt_str(&mut self, tag: &str, value: Option<&str>) -> &mut Self {
        self.raw(tag.as_bytes());
        match value {
            None => self.raw(b"none"),
            Some(v) => {
                self.raw(b"some");
                self.raw(v.as_bytes());
            }
        }
        self
    }

    /// Adds a list of strings or byte strings, with its length.
    pub fn list<I, T>(&mut self, tag: &str, items: I) -> &mut Self
    where
        I: IntoIterator<Item = T>,
        I::IntoIter: ExactSizeIterator,
        T: AsRef<[u8]>,
    {
        let items = items.into_iter();
        self.raw(tag.as_bytes());
        self.length(items.len());
        for item in items {
            self.raw(item.as_ref());
        }
        self
    }

    /// The finished key.
    pub fn finish(&self) -> Key {
        let pending = &self.pending;
        let hash = match (&self.hasher, &self.parent) {
            (None, None) => blake3::hash(pending),
            (None, Some(parent)) => blake3::keyed_hash(parent, pending),
            (Some(hasher), _) => {
                let mut hasher = hasher.clone();
                hasher.update(pending);
                hasher.finalize()
            }
        };
        Key(*hash.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_boundaries_are_part_of_the_key() {
        let a = KeyEncoder::new("t").list("l", ["ab", "c"]).finish();
        let b = KeyEncoder::new("t").list("l", ["a", "bc"]).finish();
        assert_ne!(a, b);
    }

    #[test]
    fn absent_and_empty_differ() {
        let a = KeyEncoder::new("t").opt_str("o", None).finish();
        let b = KeyEncoder::new("t").opt_str("o", Some("")).finish();
        assert_ne!(a, b);
    }

    #[test]
    fn field_boundaries_and_domains_are_part_of_the_key() {
        let a = KeyEncoder::new("t").str("x", "ab").str("y", "").finish();
        let b = KeyEncoder::new("t").str("x", "a").str("y", "b").finish();
        assert_ne!(a, b);
        let c = KeyEncoder::new("u").str("x", "ab").str("y", "").finish();
        assert_ne!(a, c);
        let d = KeyEncoder::new("t")
            .list("l", ["a"])
            .list("m", Vec::<&str>::new())
            .finish();
        let e = KeyEncoder::new("t")
            .list("l", Vec::<&str>::new())
            .list("m", ["a"])
            .finish();
        assert_ne!(d, e);
    }

    #[test]
    fn lengths_are_leb128_varints() {
        let value = "v".repeat(300);
        let key = KeyEncoder::new("d").str("t", &value).finish();
        // "d", "t", then 300 = 0b10_0101100: 0xAC 0x02.
        let mut expected = vec![1, b'd', 1, b't', 0xAC, 0x02];
        expected.extend_from_slice(value.as_bytes());
        assert_eq!(key.0, *blake3::hash(&expected).as_bytes());
        let list = KeyEncoder::new("d").list("l", ["a"; 128]).finish();
        let mut expected = vec![1, b'd', 1, b'l', 0x80, 0x01];
        for _ in 0..128 {
            expected.extend_from_slice(&[1, b'a']);
        }
        assert_eq!(list.0, *blake3::hash(&expected).as_bytes());
    }

    #[test]
    fn gathering_fields_does_not_change_the_hashed_bytes() {
        let big = "x".repeat(3 * DIRECT);
        let mut encoder = KeyEncoder::new("t");
        let mut expected = Vec::new();
        let mut field = |bytes: &[u8]| {
            let mut n = bytes.len();
            while n >= 0x80 {
                expected.push((n as u8) | 0x80);
                n >>= 7;
            }
            expected.push(n as u8);
            expected.extend_from_slice(bytes);
        };
        field(b"t");
        for i in 0..2000u64 {
            let value = if i % 500 == 7 {
                big.clone()
            } else {
                i.to_string()
            };
            encoder.str("f", &value);
            field(b"f");
            field(value.as_bytes());
        }
        assert_eq!(encoder.finish().0, *blake3::hash(&expected).as_bytes());
    }

    #[test]
    fn chained_keys_hash_the_same_fields_under_the_parent() {
        let parent = KeyEncoder::new("p").str("x", "1").finish();
        let other = KeyEncoder::new("p").str("x", "2").finish();
        let chained = KeyEncoder::chained("d", &parent).str("t", "v").finish();
        let expected = [1, b'd', 1, b't', 1, b'v'];
        assert_eq!(
            chained.0,
            *blake3::keyed_hash(&parent.0, &expected).as_bytes()
        );
        assert_ne!(
            chained,
            KeyEncoder::chained("d", &other).str("t", "v").finish()
        );
        assert_ne!(chained, KeyEncoder::new("d").str("t", "v").finish());
        // Long keys go through the keyed hasher and keep the same bytes.
        let long = "l".repeat(5 * 512);
        let mut bytes = vec![1, b'd', 1, b't', 0x80, 0x14];
        bytes.extend_from_slice(long.as_bytes());
        assert_eq!(
            KeyEncoder::chained("d", &parent).str("t", &long).finish().0,
            *blake3::keyed_hash(&parent.0, &bytes).as_bytes()
        );
    }

    #[test]
    fn same_fields_same_key() {
        let a = KeyEncoder::new("t").str("x", "v").u64("n", 7).finish();
        let b = KeyEncoder::new("t").str("x", "v").u64("n", 7).finish();
        assert_eq!(a, b);
        assert_eq!(a.to_hex().len(), 64);
    }
}

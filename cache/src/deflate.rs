//! Raw deflate (RFC 1951) written by hand, for the fragments of a mixed
//! gzip member that need no general compressor: stored blocks for
//! incompressible runs, and fixed-Huffman blocks with a small greedy LZ77
//! for the short compressible runs between them (a tar header between two
//! small random files).
//!
//! A general compressor starts each independent fragment by clearing its
//! hash table (zlib's is 128 KiB): for a chunk of small incompressible
//! files, that was two clears per 4 KiB file, the largest cost of a COPY.
//! Here nothing is cleared: the match finder tags its entries with a
//! generation, and a stored block is a copy.
//!
//! Every choice depends only on the input bytes, so the output is
//! reproducible.

/// Compressible runs up to this size are encoded here; longer ones go to
/// zlib, whose dynamic Huffman codes pay off and whose table clear is then
/// small beside the run.
pub(crate) const SMALL_FRAGMENT: usize = 16 * 1024;

/// The longest stored block (its length is a 16-bit field).
const MAX_STORED: usize = 65_535;

/// A raw deflate stream being written, least significant bit first.
///
/// Blocks are never final until [`DeflateWriter::finish`], so fragments of
/// any kind may follow one another.
pub(crate) struct DeflateWriter {
    out: Vec<u8>,
    bits: u64,
    count: u32,
}

impl DeflateWriter {
    /// Appends to `out` (which may already hold a gzip header).
    pub(crate) fn new(out: Vec<u8>) -> DeflateWriter {
        DeflateWriter {
            out,
            bits: 0,
            count: 0,
        }
    }

    /// Writes the low `count` bits of `value` (at most 32).
    fn put(&mut self, value: u32, count: u32) {
        self.bits |= u64::from(value) << self.count;
        self.count += count;
        while self.count >= 8 {
            self.out.push(self.bits as u8);
            self.bits >>= 8;
            self.count -= 8;
        }
    }

    /// Pads with zero bits to the next byte boundary.
    fn align(&mut self) {
        if self.count > 0 {
            self.put(0, 8 - self.count);
        }
    }

    /// `data` as non-final stored blocks.
    pub(crate) fn stored(&mut self, data: &[u8]) {
        for block in data.chunks(MAX_STORED) {
            self.stored_block(block);
        }
    }

    fn stored_block(&mut self, block: &[u8]) {
        // BFINAL 0, BTYPE 00, then the byte-aligned length and its complement.
        self.put(0, 3);
        self.align();
        let len = block.len() as u16;
        self.out.extend_from_slice(&len.to_le_bytes());
        self.out.extend_from_slice(&(!len).to_le_bytes());
        self.out.extend_from_slice(block);
    }

    /// The output so far, byte-aligned (through an empty stored block if
    /// needed), for another compressor to append whole bytes to: its
    /// fragment must end byte-aligned and not final (a sync or full flush).
    pub(crate) fn aligned_output(&mut self) -> &mut Vec<u8> {
        if self.count > 0 {
            self.stored_block(&[]);
        }
        &mut self.out
    }

    /// `data` as one non-final fixed-Huffman block: literals and the
    /// greedy matches `matcher` finds inside `data` (at most
    /// [`SMALL_FRAGMENT`] bytes, so every distance fits).
    pub(crate) fn fixed(&mut self, data: &[u8], matcher: &mut Matcher) {
        debug_assert!(data.len() <= SMALL_FRAGMENT);
        // BFINAL 0, BTYPE 01.
        self.put(0b010, 3);
        matcher.next_generation();
        let mut at = 0;
        while at < data.len() {
            match matcher.match_at(data, at) {
                Some((length, distance)) => {
                    self.length(length);
                    self.distance(distance);
                    at += length;
                }
                None => {
                    self.symbol(u32::from(data[at]));
                    at += 1;
                }
            }
        }
        self.symbol(END_OF_BLOCK);
    }

    /// Ends the stream with an empty final block and returns the bytes.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        // BFINAL 1, BTYPE 01, end of block.
        self.put(0b011, 3);
        self.symbol(END_OF_BLOCK);
        self.align();
        self.out
    }

    /// A literal/length symbol in the fixed code (RFC 1951 3.2.6); Huffman
    /// codes go most significant bit first.
    fn symbol(&mut self, symbol: u32) {
        let (code, bits) = match symbol {
            0..=143 => (0x30 + symbol, 8),
            144..=255 => (0x190 + symbol - 144, 9),
            256..=279 => (symbol - 256, 7),
            _ => (0xc0 + symbol - 280, 8),
        };
        self.put(reverse(code, bits), bits);
    }

    fn length(&mut self, length: usize) {
        let (index, extra, base) = length_code(length);
        self.symbol(257 + index);
        self.put((length - base) as u32, extra);
    }

    fn distance(&mut self, distance: usize) {
        let (code, extra, base) = distance_code(distance);
        self.put(reverse(code, 5), 5);
        self.put((distance - base) as u32, extra);
    }
}

const END_OF_BLOCK: u32 = 256;

fn reverse(code: u32, bits: u32) -> u32 {
    code.reverse_bits() >> (32 - bits)
}

/// The length code of `length` (3..=258): its index after 257, its extra
/// bits and the length it starts at.
fn length_code(length: usize) -> (u32, u32, usize) {
    let m = length - 3;
    if m < 8 {
        return (m as u32, 0, length);
    }
    if m == 255 {
        return (28, 0, 258);
    }
    let log = usize::BITS - 1 - m.leading_zeros();
    let index = 4 * (log - 1) + ((m >> (log - 2)) & 3) as u32;
    let extra = (index - 4) / 4;
    let base = ((4 + (index as usize & 3)) << extra) + 3;
    (index, extra, base)
}

/// The distance code of `distance` (1..=32768): the code, its extra bits
/// and the distance it starts at.
fn distance_code(distance: usize) -> (u32, u32, usize) {
    let d = distance - 1;
    if d < 4 {
        return (d as u32, 0, distance);
    }
    let log = usize::BITS - 1 - d.leading_zeros();
    let code = 2 * log + ((d >> (log - 1)) & 1) as u32;
    let extra = code / 2 - 1;
    let base = ((2 + (code as usize & 1)) << extra) + 1;
    (code, extra, base)
}

const HASH_BITS: u32 = 12;
const MIN_MATCH: usize = 3;
const MAX_MATCH: usize = 258;

/// A greedy match finder over one fragment at a time: the last position
/// of each 3-byte hash, tagged with the fragment's generation so that a
/// new fragment needs no clearing.
pub(crate) struct Matcher {
    /// generation << 16 | position.
    head: Vec<u32>,
    generation: u32,
}

impl Matcher {
    pub(crate) fn new() -> Matcher {
        Matcher {
            head: vec![0; 1 << HASH_BITS],
            generation: 0,
        }
    }

    fn next_generation(&mut self) {
        self.generation += 1;
        if self.generation > 0xffff {
            self.head.fill(0);
            self.generation = 1;
        }
    }

    /// The match at `at` with the last earlier position of the same hash
    /// (`at` is then recorded), as (length, distance).
    fn match_at(&mut self, data: &[u8], at: usize) -> Option<(usize, usize)> {
        let key = data.get(at..at + MIN_MATCH)?;
        let hash = (u32::from(key[0]) | u32::from(key[1]) << 8 | u32::from(key[2]) << 16)
            .wrapping_mul(0x9e37_79b1)
            >> (32 - HASH_BITS);
        let slot = &mut self.head[hash as usize];
        let previous = *slot;
        *slot = self.generation << 16 | at as u32;
        if previous >> 16 != self.generation {
            return None;
        }
        let candidate = (previous & 0xffff) as usize;
        let limit = (data.len() - at).min(MAX_MATCH);
        let length = data[candidate..]
            .iter()
            .zip(&data[at..at + limit])
            .take_while(|(a, b)| a == b)
            .count();
        (length >= MIN_MATCH).then_some((length, at - candidate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn inflate(stream: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::DeflateDecoder::new(stream)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut state = 0x2545_f491_4f6c_dd1d_u64 ^ seed;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    fn tar_header(name: &str) -> Vec<u8> {
        let mut header = vec![0u8; 512];
        header[..name.len()].copy_from_slice(name.as_bytes());
        header[100..108].copy_from_slice(b"0000644\0");
        header[108..116].copy_from_slice(b"0000000\0");
        header[116..124].copy_from_slice(b"0000000\0");
        header[124..136].copy_from_slice(b"00000010000\0");
        header[136..148].copy_from_slice(b"00000000000\0");
        header[148..156].copy_from_slice(b"0012345\0");
        header[156] = b'0';
        header[257..265].copy_from_slice(b"ustar\x0000");
        header
    }

    #[test]
    fn length_and_distance_codes_follow_the_rfc_tables() {
        // (length, index after 257, extra bits, base) from RFC 1951 3.2.5.
        for (length, expected) in [
            (3, (0, 0, 3)),
            (10, (7, 0, 10)),
            (11, (8, 1, 11)),
            (12, (8, 1, 11)),
            (19, (12, 2, 19)),
            (35, (16, 3, 35)),
            (67, (20, 4, 67)),
            (130, (23, 4, 115)),
            (131, (24, 5, 131)),
            (257, (27, 5, 227)),
            (258, (28, 0, 258)),
        ] {
            assert_eq!(length_code(length), expected, "length {length}");
        }
        for (distance, expected) in [
            (1, (0, 0, 1)),
            (4, (3, 0, 4)),
            (5, (4, 1, 5)),
            (8, (5, 1, 7)),
            (13, (7, 2, 13)),
            (257, (16, 7, 257)),
            (16384, (27, 12, 12289)),
            (32768, (29, 13, 24577)),
        ] {
            assert_eq!(distance_code(distance), expected, "distance {distance}");
        }
        // Every value lands inside its code's range.
        for length in 3..=258 {
            let (_, extra, base) = length_code(length);
            assert!(
                length >= base && length - base < 1 << extra,
                "length {length}"
            );
        }
        for distance in 1..=32768 {
            let (_, extra, base) = distance_code(distance);
            assert!(
                distance >= base && distance - base < 1 << extra,
                "distance {distance}"
            );
        }
    }

    #[test]
    fn fragments_of_every_kind_make_one_valid_stream() {
        let mut matcher = Matcher::new();
        let header = tar_header("files/d0/f17");
        let text = b"usr/share/doc/kiln/copyright ".repeat(600);
        let parts: Vec<Vec<u8>> = vec![
            header.clone(),
            noise(4096, 1),
            tar_header("files/d0/f18"),
            noise(100_000, 2),
            text[..SMALL_FRAGMENT].to_vec(),
            vec![0; 1000],
            noise(3, 3),
            Vec::new(),
            vec![7; 600],
        ];
        for order in [0usize, 1, 2] {
            let mut writer = DeflateWriter::new(Vec::new());
            let mut expected = Vec::new();
            for (i, part) in parts.iter().enumerate() {
                match (i + order) % 3 {
                    0 => writer.stored(part),
                    1 if part.len() <= SMALL_FRAGMENT => writer.fixed(part, &mut matcher),
                    1 => writer.stored(part),
                    _ => {
                        // Whole bytes from another compressor.
                        let mut zlib = flate2::Compress::new(flate2::Compression::fast(), false);
                        let out = writer.aligned_output();
                        out.reserve(part.len() * 2 + 64);
                        zlib.compress_vec(part, out, flate2::FlushCompress::Sync)
                            .unwrap();
                    }
                }
                expected.extend_from_slice(part);
            }
            assert!(inflate(&writer.finish()) == expected, "order {order}");
        }
        assert_eq!(inflate(&DeflateWriter::new(Vec::new()).finish()), b"");
    }

    #[test]
    fn small_fragments_shrink_about_as_much_as_with_zlib() {
        let mut matcher = Matcher::new();
        let header = tar_header("home/app/files/d1/f42");
        let mut writer = DeflateWriter::new(Vec::new());
        writer.fixed(&header, &mut matcher);
        let ours = writer.finish();
        assert_eq!(inflate(&ours), header);
        let mut zlib = Vec::with_capacity(1024);
        flate2::Compress::new(flate2::Compression::fast(), false)
            .compress_vec(&header, &mut zlib, flate2::FlushCompress::Finish)
            .unwrap();
        assert!(
            ours.len() <= zlib.len() + zlib.len() / 4,
            "{} bytes against zlib's {}",
            ours.len(),
            zlib.len()
        );
        assert!(ours.len() < 160, "a header took {} bytes", ours.len());
    }

    #[test]
    fn matches_never_reach_into_an_earlier_fragment() {
        // The same bytes twice, in two fragments: the second must not point
        // back into the first, whose bytes a stored block separates.
        let mut matcher = Matcher::new();
        let part = b"kiln kiln kiln layer ".repeat(20);
        let mut writer = DeflateWriter::new(Vec::new());
        writer.fixed(&part, &mut matcher);
        writer.stored(&noise(5000, 9));
        writer.fixed(&part, &mut matcher);
        let mut expected = part.clone();
        expected.extend_from_slice(&noise(5000, 9));
        expected.extend_from_slice(&part);
        assert!(inflate(&writer.finish()) == expected);
    }

    #[test]
    fn many_generations_wrap_around_cleanly() {
        let mut matcher = Matcher::new();
        matcher.generation = 0xfffe;
        let mut writer = DeflateWriter::new(Vec::new());
        let mut expected = Vec::new();
        for i in 0..4u8 {
            let part = vec![i; 700];
            writer.fixed(&part, &mut matcher);
            expected.extend_from_slice(&part);
        }
        // 0xffff, then 1, 2 and 3 after the wrap.
        assert_eq!(matcher.generation, 3);
        assert!(inflate(&writer.finish()) == expected);
    }
}

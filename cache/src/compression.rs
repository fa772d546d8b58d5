//! Layer compression: the `Compression` kiln writes layers with (gzip,
//! zstd, none) and detecting and undoing whatever compression an input has.

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::str::FromStr;

use oci_spec::image::MediaType;

use crate::error::{Error, IoContext, Result};

/// How kiln compresses the layers it writes. Gzip is the default because every
/// client reads it; zstd is smaller and faster to read, for clients that know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    /// gzip (`tar+gzip`), the default.
    #[default]
    Gzip,
    /// zstd (`tar+zstd`).
    Zstd,
    /// Uncompressed tar.
    None,
}

impl Compression {
    /// The OCI media type of a layer compressed this way.
    pub fn layer_media_type(self) -> MediaType {
        match self {
            Compression::Gzip => MediaType::ImageLayerGzip,
            Compression::Zstd => MediaType::ImageLayerZstd,
            Compression::None => MediaType::ImageLayer,
        }
    }

    /// The compression of a layer of the given media type (OCI or Docker).
    pub fn of_layer_media_type(media_type: &MediaType) -> Result<Compression> {
        let text = media_type.to_string();
        match text.as_str() {
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Ok(Compression::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Ok(Compression::Zstd),
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Ok(Compression::None),
            _ => Err(Error::UnsupportedMediaType(text)),
        }
    }
}

impl FromStr for Compression {
    type Err = Error;
    fn from_str(text: &str) -> Result<Compression> {
        match text {
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            "none" | "uncompressed" => Ok(Compression::None),
            other => Err(Error::BadCompression(other.to_owned())),
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::None => "none",
        })
    }
}

/// The compression of an input stream, told from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputCompression {
    /// gzip (magic `1f 8b`).
    Gzip,
    /// zstd.
    Zstd,
    /// xz.
    Xz,
    /// bzip2.
    Bzip2,
    /// Not compressed (or in no format kiln knows).
    None,
}

impl InputCompression {
    /// Tells the compression from the magic bytes at the start of a stream.
    pub fn detect(head: &[u8]) -> InputCompression {
        if head.starts_with(&[0x1f, 0x8b]) {
            InputCompression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            InputCompression::Zstd
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            InputCompression::Xz
        } else if head.starts_with(b"BZh") {
            InputCompression::Bzip2
        } else {
            InputCompression::None
        }
    }
}

impl fmt::Display for InputCompression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InputCompression::Gzip => "gzip",
            InputCompression::Zstd => "zstd",
            InputCompression::Xz => "xz",
            InputCompression::Bzip2 => "bzip2",
            InputCompression::None => "uncompressed",
        })
    }
}

/// How much decompressed input is produced at once, ahead of the tar reader.
const DECODED_BUFFER: usize = 1 << 20;

/// Wraps `input` in the decompressor its first bytes call for, without
/// consuming anything: the magic bytes are peeked from a buffer.
pub fn decompress_detected<'a>(
    input: impl Read + Send + 'a,
) -> Result<(InputCompression, Box<dyn Read + Send + 'a>)> {
    let mut buffered = BufReader::with_capacity(256 * 1024, input);
    let head = buffered.fill_buf().during("reading the input")?;
    let kind = InputCompression::detect(head);
    let reader: Box<dyn Read + Send + 'a> = match kind {
        InputCompression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        InputCompression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(buffered).during("starting zstd")?)
        }
        InputCompression::Xz => Box::new(xz2::bufread::XzDecoder::new_multi_decoder(buffered)),
        InputCompression::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(buffered)),
        InputCompression::None => Box::new(buffered),
    };
    // Tar readers ask for 512-byte headers and small data blocks; decoders
    // run much faster filling one large buffer than many small ones.
    let reader: Box<dyn Read + Send + 'a> = match kind {
        InputCompression::None => reader,
        _ => Box::new(BufReader::with_capacity(DECODED_BUFFER, reader)),
    };
    Ok((kind, reader))
}

/// Wraps a stored layer blob in the decompressor its media type names.
pub(crate) fn decompress_layer<'a>(
    compression: Compression,
    input: impl Read + Send + 'a,
) -> Result<Box<dyn Read + Send + 'a>> {
    let buffered = BufReader::with_capacity(256 * 1024, input);
    Ok(match compression {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(buffered).during("starting zstd")?)
        }
        Compression::None => Box::new(buffered),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn round_trip(compressed: Vec<u8>, expected: InputCompression) {
        let (kind, mut reader) = decompress_detected(&compressed[..]).unwrap();
        assert_eq!(kind, expected);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"hello layer");
    }

    #[test]
    fn every_input_compression_is_detected_and_read() {
        let data = b"hello layer";
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(data).unwrap();
        round_trip(gz.finish().unwrap(), InputCompression::Gzip);
        round_trip(
            zstd::encode_all(&data[..], 3).unwrap(),
            InputCompression::Zstd,
        );
        let mut xz = xz2::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(data).unwrap();
        round_trip(xz.finish().unwrap(), InputCompression::Xz);
        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        bz.write_all(data).unwrap();
        round_trip(bz.finish().unwrap(), InputCompression::Bzip2);
        round_trip(data.to_vec(), InputCompression::None);
    }

    #[test]
    fn names_parse() {
        assert_eq!("zstd".parse::<Compression>().unwrap(), Compression::Zstd);
        assert!("lz4".parse::<Compression>().is_err());
        assert_eq!(Compression::default(), Compression::Gzip);
    }
}

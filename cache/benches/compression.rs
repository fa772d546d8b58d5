//! How fast each layer compression runs on a real rootfs, so the choice in
//! `layer.rs` rests on numbers: flate2 (zlib-rs) gzip at levels 1-6,
//! libdeflate gzip (1 MiB members, as the layer writer makes them) at levels
//! 1-6 and zstd, single-threaded, plus the whole `LayerWriter` path (hashing and
//! compressing on two threads). Prints MB/s of uncompressed input and sizes.
//!
//! `cargo bench -p kiln-cache --bench compression [-- ROOTFS_TAR]`; the default
//! input is the Debian 12 minbase rootfs the import benchmark uses.

use std::io::{Read, Write};
use std::time::Instant;

fn main() {
    let path = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "/work/shared/rootfs/debian12-minbase-amd64.tar.zst".to_owned());
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let (_, mut reader) = kiln_cache::decompress_detected(file).expect("readable input");
    let mut tar = Vec::new();
    reader.read_to_end(&mut tar).expect("decompress the input");
    let mb = tar.len() as f64 / 1e6;
    println!("input {path}: {mb:.1} MB uncompressed");
    println!(
        "{:<28} {:>8} {:>10} {:>8}",
        "method", "seconds", "MB/s", "ratio"
    );
    let report = |name: &str, seconds: f64, size: usize| {
        println!(
            "{name:<28} {seconds:>8.3} {:>10.0} {:>7.1}%",
            mb / seconds,
            100.0 * size as f64 / tar.len() as f64
        );
    };

    let start = Instant::now();
    let digest = kiln_cache::sha256_digest(&tar);
    report(
        "sha256 (no compression)",
        start.elapsed().as_secs_f64(),
        tar.len(),
    );
    drop(digest);

    for level in 1..=6 {
        let start = Instant::now();
        let mut encoder =
            flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
        encoder.write_all(&tar).unwrap();
        let out = encoder.finish().unwrap();
        report(
            &format!("gzip level {level} (1 thread)"),
            start.elapsed().as_secs_f64(),
            out.len(),
        );
    }
    for level in 1..=6 {
        let start = Instant::now();
        let mut compressor =
            libdeflater::Compressor::new(libdeflater::CompressionLvl::new(level).unwrap());
        let mut size = 0;
        let mut out = Vec::new();
        for chunk in tar.chunks(1 << 20) {
            out.resize(compressor.gzip_compress_bound(chunk.len()), 0);
            size += compressor.gzip_compress(chunk, &mut out).unwrap();
        }
        report(
            &format!("libdeflate level {level} (1 thread)"),
            start.elapsed().as_secs_f64(),
            size,
        );
    }
    for level in [1, 3] {
        let start = Instant::now();
        let out = zstd::encode_all(&tar[..], level).unwrap();
        report(
            &format!("zstd level {level} (1 thread)"),
            start.elapsed().as_secs_f64(),
            out.len(),
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let store = kiln_cache::Store::open(dir.path()).unwrap();
    for compression in [kiln_cache::Compression::Gzip, kiln_cache::Compression::Zstd] {
        let start = Instant::now();
        let mut writer = store.layer_writer(compression).unwrap();
        for chunk in tar.chunks(64 * 1024) {
            writer.write_all(chunk).unwrap();
        }
        let blob = writer.finish().unwrap();
        report(
            &format!("LayerWriter {compression}"),
            start.elapsed().as_secs_f64(),
            blob.descriptor.size() as usize,
        );
    }
}

//! The content-addressed store: blobs (sha256), cache records (blake3 keys), the
//! OCI image layout, tags, and the directories beside them (snapshots, cache
//! mounts). Writes are atomic and the store is safe for several kiln processes.
//!
//! The store's root is an OCI image layout that skopeo (`oci:ROOT:NAME:TAG`)
//! and umoci (`--image ROOT:NAME:TAG`) read directly: names are index.json
//! entries annotated with `org.opencontainers.image.ref.name`. kiln's own data
//! lives in `ROOT/kiln/`.
//!
//! An image's id is the digest of its manifest (`sha256:...`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod archive;
mod cache_dir;
mod compression;
mod containers;
mod deflate;
mod elf;
mod error;
mod fsutil;
mod image;
mod import;
mod index;
mod layer;
mod platform;
mod referrers;
mod remote;
mod store;

pub use archive::{
    import_oci_layout, load_archive, save_archive, save_archive_refs, ArchiveFormat, LayoutImage,
    LoadedImage,
};
pub use cache_dir::{export_cache_dir, CacheDir, DEFAULT_CACHE_TAG};
pub use compression::{decompress_detected, Compression, InputCompression};
pub use containers::{
    ContainerRecord, ContainerState, Containers, RunningLock, Status as ContainerStatus,
    KILLED_EXIT_CODE,
};
pub use error::{Error, Result};
pub use fsutil::{parse_sha256, sha256_digest};
pub use image::{
    is_valid_path_component, is_valid_tag, normalize_name, rfc3339_utc, NamedImage, NewImage,
    StoredImage,
};
pub use import::{import_directory, import_tar, DetectedPlatform, ImportedLayer};
pub use index::{
    descriptor_platform, is_index_media_type, NewIndex, StoredIndex, StoredRef, INDEX_MEDIA_TYPE,
};
pub use layer::{LayerBlob, LayerWriter};
pub use platform::Platform;
pub use referrers::{NewArtifact, StoredArtifact, EMPTY_JSON, EMPTY_MEDIA_TYPE};
pub use remote::{ensure_blob, CacheConfig, CacheSource, CACHE_CONFIG_MEDIA_TYPE};
pub use store::{
    chain_id, CacheRecord, ContentStore, FsckProblem, FsckReport, PruneReport, Store, REF_NAME,
};

/// The OCI types the API uses, re-exported so users need not depend on oci-spec.
pub use oci_spec::image::{
    Descriptor, Digest, History, HistoryBuilder, ImageConfiguration, ImageIndex, ImageManifest,
    MediaType,
};

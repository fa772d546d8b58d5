//! The content-addressed store: blobs (sha256), cache records (blake3 keys), the
//! OCI image layout, tags, and the directories beside them (snapshots, cache
//! mounts). Writes are atomic and the store is safe for several kiln processes.
#![forbid(unsafe_code)]

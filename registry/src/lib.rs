//! kiln's OCI distribution client: image references, credentials (Docker's
//! `config.json` and the credential helpers it names), authentication (anonymous, basic, bearer tokens), and push
//! and pull between kiln's store and a registry.
//!
//! Transfers are safe to interrupt: the store publishes a blob only once its
//! digest checks out, and a registry only names an image once its manifest
//! is put, after every blob. A retry skips what is already there.
//!
//! Build caches travel the same way (`push_cache`, `RegistryCache`, which
//! implements kiln_cache's `CacheSource`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod auth;
mod cache;
mod client;
mod credhelper;
mod error;
mod manifest;
mod reference;
mod referrers;
mod tls;
mod transfer;

pub use auth::{erase_credentials, load_credentials, store_credentials, Credentials, Stored};
pub use cache::{push_cache, RegistryCache};
pub use client::{Client, ClientOptions};
pub use error::{Error, Result};
pub use manifest::{create_index, fetch_manifest, CreatedIndex};
pub use reference::{is_loopback, names_registry, Reference, DOCKER_HUB};
pub use referrers::{pull_referrers, referrers_tag};
pub use tls::DOCKER_CERTS_DIR;
pub use transfer::{
    pull, pull_index, push, push_index, Progress, Pulled, PulledIndex, PushOptions,
};

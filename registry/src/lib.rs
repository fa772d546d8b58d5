//! kiln's OCI distribution client.
#![forbid(unsafe_code)]

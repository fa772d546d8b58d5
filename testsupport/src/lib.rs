//! Helpers kiln's tests, benchmarks and build scripts share, one home for
//! each (issue 12 replaced the `#[path]` includes that copied them into every
//! test binary).
//!
//! Dev-only: a dev-dependency, or a build-dependency of the build scripts
//! that generate golden tests (those take it with `default-features = false`,
//! i.e. [`golden`] alone), never a normal dependency of a library crate.
//!
//! - [`fixtures`]: the fixture files scripts/make-fixtures.sh makes.
//! - [`golden`]: golden tests, one `#[test]` per case folder, `UPDATE_EXPECT=1`.
//! - [`run`]: running a command and asserting it succeeds.
//! - [`dockerfiles`]: generated Dockerfiles for the frontend's benchmark,
//!   examples and pathological tests.
//! - [`store`] (feature `e2e`): a temporary store, the fixtures, the test
//!   users and the kiln binary of the end-to-end tests.
//! - [`tree`] (feature `e2e`): listings of snapshot trees to compare.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod dockerfiles;
pub mod fixtures;
pub mod golden;
pub mod run;
#[cfg(feature = "e2e")]
pub mod store;
#[cfg(feature = "e2e")]
pub mod tree;

//! The store's error type: every failure names the path or digest it is
//! about, and keeps its cause.

use std::path::PathBuf;

/// What can go wrong in the store. Messages are lowercase and say what to do
/// where the user can do something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error on a path of the store or of an input file.
    #[error("{path}: {source}")]
    Io {
        /// The path the operation was on.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An I/O error on a stream (stdin, an archive being read, a layer being written).
    #[error("{context}: {source}")]
    Stream {
        /// What was being read or written.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Content did not hash to the digest it was stored or announced under.
    #[error("blob {expected} is corrupt: its content hashes to {actual}")]
    DigestMismatch {
        /// The digest the content should have.
        expected: String,
        /// The digest the content has.
        actual: String,
    },
    /// A blob of an imported build cache does not match its digest.
    #[error("{path}: this build cache blob hashes to {actual}, not {expected}; the cache is corrupt: delete it (or build without --cache-from) and export it again")]
    CorruptCacheBlob {
        /// Where the blob is: the cache's path or reference and the digest.
        path: String,
        /// The digest the blob should have.
        expected: String,
        /// The digest the blob has.
        actual: String,
    },
    /// A blob the store needs is missing.
    #[error(
        "blob {0} is missing from the store; run `kiln fsck` and re-import or re-build the image"
    )]
    MissingBlob(String),
    /// A JSON document of the store or of an archive is not what it should be.
    #[error("{what} is not valid: {message}")]
    Invalid {
        /// The document (`the manifest of NAME`, ...).
        what: String,
        /// What is wrong with it.
        message: String,
    },
    /// A digest string that is not `sha256:` followed by 64 lowercase hex digits.
    #[error("invalid digest {0:?}: expected sha256: followed by 64 lowercase hex digits")]
    BadDigest(String),
    /// A platform string kiln does not know.
    #[error("unknown platform {0:?}: use OS/ARCH[/VARIANT] such as linux/amd64 or linux/mips64le, or a Debian architecture name such as mips64el")]
    BadPlatform(String),
    /// An image name that is not a valid reference.
    #[error("invalid image name {name:?}: {reason}")]
    BadName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An unknown compression name.
    #[error("unknown compression {0:?}: use gzip, zstd or none")]
    BadCompression(String),
    /// A layer media type kiln cannot read.
    #[error("unsupported layer media type {0}")]
    UnsupportedMediaType(String),
    /// An input archive entry that cannot be imported safely.
    #[error("entry {entry:?} of the archive: {reason}")]
    HostileEntry {
        /// The entry's name in the archive.
        entry: String,
        /// Why it cannot be imported.
        reason: String,
    },
    /// An input tar that cannot be read.
    #[error("the input is not a readable tar archive: {0}")]
    BadTar(String),
    /// No image of that name or id.
    #[error("no image named {0:?} in the store; `kiln images` lists them")]
    NoSuchImage(String),
    /// A name of a multi-platform index where one image is wanted.
    #[error("{name} is a multi-platform image ({platforms}) with none for this machine; name one platform's image by its id (`kiln inspect {name}` lists them)")]
    MultiPlatform {
        /// The name of the index.
        name: String,
        /// The platforms it has, comma-separated.
        platforms: String,
    },
    /// A multi-platform index without an image for the platform asked for.
    #[error("{name} has no image for {wanted} (it has {platforms}); build, pull or import it for {wanted}")]
    NoImageForPlatform {
        /// The name of the index.
        name: String,
        /// The platform asked for.
        wanted: String,
        /// The platforms it has, comma-separated.
        platforms: String,
    },
    /// A short id that matches several images.
    #[error("image id prefix {0:?} is ambiguous; give more digits")]
    AmbiguousId(String),
    /// No container of that name or id.
    #[error("no container named {0:?}; `kiln ps -a` lists them")]
    NoSuchContainer(String),
    /// A short id that matches several containers.
    #[error("container id prefix {0:?} is ambiguous; give more digits")]
    AmbiguousContainer(String),
    /// A container name that another container has.
    #[error("the container name {name:?} is already in use by container {id}: remove that container (`kiln rm {name}`) or choose another name")]
    ContainerNameInUse {
        /// The name wanted.
        name: String,
        /// The id of the container that has it.
        id: String,
    },
    /// A container that runs, where it must not.
    #[error("container {0} is running: stop it first (`kiln stop`) or force it (`kiln rm -f`)")]
    ContainerRunning(String),
    /// An archive that is neither an OCI archive nor a docker-archive.
    #[error("{0}")]
    BadArchive(String),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn stream(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Stream {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn invalid(what: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Error::Invalid {
            what: what.into(),
            message: message.to_string(),
        }
    }
}

/// Attaches a path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
    fn during(self, context: impl Into<String>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
    fn during(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|e| Error::stream(context, e))
    }
}

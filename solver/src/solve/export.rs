//! The merged filesystem of an image, for `--output type=local` and for
//! reading single paths out of images.

use super::*;

/// Writes the merged filesystem of `layers` into `dest` (for
/// `--output type=local`).
pub fn export_filesystem(store: &Store, layers: &[LayerBlob], dest: &Path) -> Result<()> {
    match filesystem_view(store, layers)? {
        None => fs::create_dir_all(dest).map_err(io_err(dest)),
        // Rootless, the files become the user's (root of kiln's namespace),
        // as an unprivileged `tar -x` or BuildKit's client-side export makes them.
        Some(view) => {
            let owner = match kiln_executor::is_rootless() {
                true => ExportOwner::Root,
                false => ExportOwner::Keep,
            };
            export_tree(&view, ".", dest, owner).map(drop)
        }
    }
}

/// The merged filesystem of `layers` as a source, their snapshots prepared;
/// `None` when there are no layers (an empty filesystem).
pub(crate) fn filesystem_view(store: &Store, layers: &[LayerBlob]) -> Result<Option<ViewSource>> {
    let lowers = image_lowers(store, layers)?;
    Ok((!lowers.is_empty()).then(|| ViewSource(RootfsView::new(&lowers))))
}

/// The snapshot directories of `layers` (bottom first), unpacked where
/// missing: the lower dirs of a sandbox on an image (`kiln run`).
pub fn image_lowers(store: &Store, layers: &[LayerBlob]) -> Result<Vec<PathBuf>> {
    let snapshotter = Snapshotter::new(store.snapshots_dir())?;
    let mut lowers = Vec::new();
    let mut diff_ids = Vec::new();
    for layer in layers {
        diff_ids.push(layer.diff_id.clone());
        let chain = chain_id(&diff_ids).ok_or_else(|| Error::Invalid("empty chain".into()))?;
        let descriptor = layer.descriptor.clone();
        let size = descriptor.size();
        lowers.push(
            snapshotter.prepare_sized(chain.as_ref(), size, || store.open_layer(&descriptor))?,
        );
    }
    Ok(lowers)
}

/// Copies what `path` (absolute, in the image) holds in the filesystem of
/// `lowers` into the directory `dest`, owners and modes kept, as Docker
/// fills a new volume; `false` when the image has nothing there.
pub fn export_image_path(lowers: &[PathBuf], path: &str, dest: &Path) -> Result<bool> {
    let view = ViewSource(RootfsView::new(lowers));
    let rel = path.trim_start_matches('/');
    let rel = if rel.is_empty() { "." } else { rel };
    match crate::source::SourceFs::entry(&view, rel, true)? {
        Some(entry) if entry.meta.is_dir() => {
            export_tree(&view, rel, dest, ExportOwner::Keep)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

//! Base images from registries: the resolver `kiln build` compiles with. It
//! looks in the store first and, as `--pull` says, pulls `FROM` and `--from`
//! images with kiln_registry (the stage's platform picks the entry of a
//! multi-platform index, as `kiln pull --platform` does), names them in the
//! store after their reference, and reports the transfer through the build's
//! progress output.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use kiln_cache::{Platform, Store, StoredImage, StoredRef};
use kiln_frontend::{BaseImage, BaseImageResolver};
use kiln_registry::{Client, Reference};
use kiln_solver::StoreResolver;

use super::render::Renderer;
use crate::cmd::registry::{describe, Connection};

/// When `kiln build` pulls base images, as `docker build --pull` decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PullPolicy {
    /// Pull every base image, so a moved tag is followed; blobs already in
    /// the store are not downloaded again.
    Always,
    /// Pull only images the store does not have for the stage's platform.
    Missing,
    /// Never pull: every base image must be in the store.
    Never,
}

/// Finds base images in the store, pulling them as the policy says.
pub struct RegistryResolver<'a> {
    store: &'a Store,
    policy: PullPolicy,
    connection: &'a Connection,
    renderer: &'a Renderer,
    /// The platform stages build for when the user named none (`None` when
    /// `--platform` was given): a stage asking for it whose image the store
    /// has for exactly one other platform builds for that one, as podman
    /// and Docker's classic builder do.
    default_platform: Option<String>,
    /// One client per registry, so a bearer token serves every image.
    clients: Mutex<HashMap<String, Arc<Client>>>,
    /// Images whose only platform was picked (the note is printed once).
    picked: Mutex<HashSet<String>>,
}

impl<'a> RegistryResolver<'a> {
    pub fn new(
        store: &'a Store,
        policy: PullPolicy,
        connection: &'a Connection,
        renderer: &'a Renderer,
        default_platform: Option<String>,
    ) -> Self {
        RegistryResolver {
            store,
            policy,
            connection,
            renderer,
            default_platform,
            clients: Mutex::new(HashMap::new()),
            picked: Mutex::new(HashSet::new()),
        }
    }

    fn client(&self, reference: &Reference) -> Result<Arc<Client>, String> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = clients.get(&reference.registry) {
            return Ok(client.clone());
        }
        let client = Arc::new(
            self.connection
                .client(reference)
                .map_err(|e| format!("{e:#}"))?,
        );
        clients.insert(reference.registry.clone(), client.clone());
        Ok(client)
    }

    /// Pulls `reference` for `platform` and describes the stored image.
    /// `stored` is what the store has under that name, which leads the
    /// error when the pull fails.
    fn pull(
        &self,
        reference: &Reference,
        shown: &str,
        platform: &Platform,
        stored: Option<&StoredRef>,
    ) -> Result<Option<BaseImage>, String> {
        let client = self.client(reference)?;
        self.renderer
            .message(&format!("pulling {reference} for {platform}"));
        let report = |progress: &kiln_registry::Progress| {
            if let Some(line) = describe(progress) {
                self.renderer.message(&format!("{reference}: {line}"));
            }
        };
        let pulled = kiln_registry::pull(self.store, &client, reference, platform, &report)
            .map_err(|e| {
                let mut message = String::new();
                if let Some(stored) = stored {
                    message.push_str(&store_lacks(shown, platform, stored));
                    message.push_str("; ");
                }
                message.push_str(&format!("pulling {reference} failed: {e}"));
                if matches!(e, kiln_registry::Error::Unreachable { .. }) {
                    message.push_str(
                        "; check the network and the registry's address, or get the image into the store another way (`kiln load`) and build with --pull never",
                    );
                }
                if stored.is_none() && self.policy == PullPolicy::Always {
                    message.push_str(" (with --pull missing a stored image would do)");
                }
                message
            })?;
        if let Some(name) = &pulled.name {
            self.renderer.message(&format!("tagged {name}"));
        }
        StoreResolver::describe(&pulled.image, shown).map(Some)
    }

    /// What the store has under `reference` (or `alternative`, the name a
    /// pull gives it), and its image for `wanted`.
    fn stored(
        &self,
        names: &[&str],
        wanted: &Platform,
    ) -> Result<(Option<StoredRef>, Option<StoredImage>), String> {
        for name in names {
            if let Some(stored) = self.store.resolve_ref(name).map_err(|e| e.to_string())? {
                let image = self
                    .store
                    .image_for(&stored, wanted)
                    .map_err(|e| e.to_string())?;
                return Ok((Some(stored), image));
            }
        }
        Ok((None, None))
    }

    /// With no `--platform`, a stage wanting the default platform whose
    /// image the store has for one other platform only builds for that
    /// one, with a note.
    fn only_platform(
        &self,
        reference: &str,
        platform: &str,
        stored: &StoredRef,
    ) -> Result<Option<StoredImage>, String> {
        if self.default_platform.as_deref() != Some(platform) {
            return Ok(None);
        }
        let platforms = stored.platforms();
        let [only] = platforms.as_slice() else {
            return Ok(None);
        };
        let image = self
            .store
            .image_for(stored, only)
            .map_err(|e| e.to_string())?;
        let mut picked = self.picked.lock().unwrap_or_else(|e| e.into_inner());
        if image.is_some() && picked.insert(reference.to_owned()) {
            self.renderer.message(&format!(
                "note: the store has {reference} only for {only}: building its stages for {only} (--platform chooses another)"
            ));
        }
        Ok(image)
    }
}

/// The message that leads when the store has an image, but not for the
/// platform asked for: what it has and how to build for that.
fn store_lacks(reference: &str, wanted: &Platform, stored: &StoredRef) -> String {
    let platforms: Vec<String> = stored.platforms().iter().map(|p| p.to_string()).collect();
    format!(
        "the store has {reference} for {} but not for {wanted}: build for it with --platform {}, or get {reference} for {wanted} into the store (`kiln pull --platform {wanted}`, `kiln import`, `kiln load`)",
        platforms.join(", "),
        platforms.join(","),
    )
}

impl BaseImageResolver for RegistryResolver<'_> {
    fn resolve(
        &self,
        reference: &str,
        platform: &str,
    ) -> std::result::Result<Option<BaseImage>, String> {
        let wanted: Platform = platform
            .parse()
            .map_err(|e| format!("platform {platform}: {e}"))?;
        // The store names pulled images as `kiln pull` does: docker.io's
        // without their registry (`busybox:latest`), others in full. A
        // name only the store can have (kiln import's, say) is never pulled.
        let remote = reference.parse::<Reference>().ok();
        let local_name = remote
            .as_ref()
            .and_then(|r| r.digest.clone().or_else(|| r.familiar_name()))
            .unwrap_or_else(|| reference.to_owned());
        let (stored, matching) = self.stored(&[&local_name, reference], &wanted)?;
        let describe = |image: &StoredImage| StoreResolver::describe(image, reference).map(Some);
        if self.policy != PullPolicy::Always || remote.is_none() {
            if let Some(image) = &matching {
                return describe(image);
            }
            if let Some(stored) = &stored {
                if let Some(image) = self.only_platform(reference, platform, stored)? {
                    return describe(&image);
                }
            }
        }
        match (remote, self.policy, &stored) {
            (None, _, None) | (_, PullPolicy::Never, None) => Ok(None),
            (None, _, Some(stored)) | (_, PullPolicy::Never, Some(stored)) => {
                Err(store_lacks(reference, &wanted, stored))
            }
            (Some(remote), _, stored) => self.pull(&remote, reference, &wanted, stored.as_ref()),
        }
    }
}

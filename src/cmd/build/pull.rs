//! Base images from registries: the resolver `kiln build` compiles with. It
//! looks in the store first and, as `--pull` says, pulls `FROM` and `--from`
//! images with kiln_registry (the stage's platform picks the entry of a
//! multi-platform index, as `kiln pull --platform` does), names them in the
//! store after their reference, and reports the transfer through the build's
//! progress output.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kiln_cache::{Platform, Store};
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
    local: StoreResolver<'a>,
    policy: PullPolicy,
    connection: &'a Connection,
    renderer: &'a Renderer,
    /// One client per registry, so a bearer token serves every image.
    clients: Mutex<HashMap<String, Arc<Client>>>,
}

impl<'a> RegistryResolver<'a> {
    pub fn new(
        store: &'a Store,
        policy: PullPolicy,
        connection: &'a Connection,
        renderer: &'a Renderer,
    ) -> Self {
        RegistryResolver {
            store,
            local: StoreResolver::new(store),
            policy,
            connection,
            renderer,
            clients: Mutex::new(HashMap::new()),
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
    fn pull(
        &self,
        reference: &Reference,
        platform: &Platform,
        local_platform: Option<String>,
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
                let mut message = format!("pulling {reference} failed: {e}");
                if matches!(e, kiln_registry::Error::Unreachable { .. }) {
                    message.push_str(
                        "; check the network and the registry's address, or get the image into the store another way (`kiln load`) and build with --pull never",
                    );
                }
                if let Some(other) = local_platform {
                    message.push_str(&format!(
                        " (the store has this image for {other} only; build for that with --platform {other})"
                    ));
                } else if self.policy == PullPolicy::Always {
                    message.push_str(" (with --pull missing a stored image would do)");
                }
                message
            })?;
        if let Some(name) = &pulled.name {
            self.renderer.message(&format!("tagged {name}"));
        }
        self.local
            .resolve(pulled.image.id().as_ref(), &platform.to_string())
    }
}

fn platform_of(image: &BaseImage) -> Platform {
    Platform {
        os: image.os.clone(),
        architecture: image.architecture.clone(),
        variant: image.variant.clone(),
    }
}

impl BaseImageResolver for RegistryResolver<'_> {
    fn resolve(
        &self,
        reference: &str,
        platform: &str,
    ) -> std::result::Result<Option<BaseImage>, String> {
        // A name only the store can have (kiln import's, say): no pulling.
        let Ok(remote) = reference.parse::<Reference>() else {
            return self.local.resolve(reference, platform);
        };
        let wanted: Platform = platform
            .parse()
            .map_err(|e| format!("platform {platform}: {e}"))?;
        // The store names pulled images as `kiln pull` does: docker.io's
        // without their registry (`busybox:latest`), others in full.
        let local_name = remote
            .digest
            .clone()
            .or_else(|| remote.familiar_name())
            .unwrap_or_else(|| reference.to_owned());
        let stored = match self.local.resolve(&local_name, platform)? {
            Some(image) => Some(image),
            None if local_name != reference => self.local.resolve(reference, platform)?,
            None => None,
        };
        match (self.policy, stored) {
            (PullPolicy::Never, stored) => Ok(stored),
            (PullPolicy::Missing, Some(image)) if wanted.matches(&platform_of(&image)) => {
                Ok(Some(image))
            }
            (PullPolicy::Missing, Some(image)) => {
                let other = platform_of(&image).to_string();
                self.pull(&remote, &wanted, Some(other))
            }
            (PullPolicy::Missing | PullPolicy::Always, _) => self.pull(&remote, &wanted, None),
        }
    }
}

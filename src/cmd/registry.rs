//! `kiln push`, `kiln pull` and `kiln login`: images between the store and
//! OCI registries. The manifest digest goes to stdout; progress to stderr.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use kiln_cache::{Platform, StoredRef};
use kiln_registry::{Client, ClientOptions, Credentials, Progress, PushOptions, Reference};

use super::{CmdResult, Global};

/// Options shared by the registry commands.
#[derive(Debug, clap::Args)]
pub struct Connection {
    /// Do not verify the registry's TLS certificate, and fall back to plain
    /// HTTP when it does not speak TLS (loopback registries always may).
    #[arg(long)]
    insecure: bool,
    /// Per-registry CA certificates, as Docker keeps them: DIR/HOST[:PORT]/*.crt
    /// [default: /etc/docker/certs.d]
    #[arg(long, value_name = "DIR", env = "KILN_CERTS_DIR")]
    certs_dir: Option<PathBuf>,
    /// The Docker credentials file [default: $DOCKER_CONFIG/config.json, else
    /// ~/.docker/config.json]
    #[arg(long, value_name = "FILE")]
    auth_file: Option<PathBuf>,
}

impl Connection {
    fn auth_file(&self) -> anyhow::Result<PathBuf> {
        if let Some(path) = &self.auth_file {
            return Ok(path.clone());
        }
        let non_empty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(dir) = non_empty("DOCKER_CONFIG") {
            return Ok(PathBuf::from(dir).join("config.json"));
        }
        match non_empty("HOME") {
            Some(home) => Ok(PathBuf::from(home).join(".docker/config.json")),
            None => bail!(
                "cannot tell where the credentials are: set --auth-file, DOCKER_CONFIG or HOME"
            ),
        }
    }

    /// A client for the registry `reference` names, with its credentials.
    pub(crate) fn client(&self, reference: &Reference) -> anyhow::Result<Client> {
        self.client_for(reference, false)
    }

    /// A client for `reference`; `insecure` adds to `--insecure` for this
    /// one registry (a `--cache-*` location's `insecure=true`).
    pub(crate) fn client_for(
        &self,
        reference: &Reference,
        insecure: bool,
    ) -> anyhow::Result<Client> {
        let auth_file = self.auth_file()?;
        let credentials = kiln_registry::load_credentials(&auth_file, &reference.registry)?;
        Ok(Client::new(
            reference.api_host(),
            &reference.registry,
            ClientOptions {
                insecure: self.insecure || insecure,
                credentials,
                certs_dir: self.certs_dir.clone(),
            },
        )?)
    }
}

#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// The image in the store: a name or an id.
    image: String,
    /// Where to push: REGISTRY/REPO[:TAG] [default: the image's name]
    destination: Option<String>,
    /// Blobs bigger than this are uploaded in chunks of this size (bytes, or
    /// with a K, M or G suffix).
    #[arg(long, default_value = "64M", value_name = "SIZE", value_parser = parse_size)]
    chunk_size: u64,
    /// Print the pushed digest as JSON with the reference.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// The image: [REGISTRY/]REPO[:TAG|@DIGEST] (Docker Hub when no registry).
    reference: String,
    /// Which image of a multi-platform index [default: this machine's]
    #[arg(
        long,
        value_name = "OS/ARCH[/VARIANT]",
        conflicts_with = "all_platforms"
    )]
    platform: Option<String>,
    /// Keep the whole multi-platform index: every platform's image, named
    /// as the index.
    #[arg(long)]
    all_platforms: bool,
    /// Also pull the image's referrers (SBOM, provenance and other OCI 1.1
    /// artifacts), through the referrers API or the referrers tag.
    #[arg(long)]
    referrers: bool,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// The registry, host[:port] (docker.io for Docker Hub).
    registry: String,
    /// The user name.
    #[arg(short, long)]
    username: String,
    /// Read the password from standard input (the only way: it keeps it out
    /// of the process list and the shell history).
    #[arg(long, required = true)]
    password_stdin: bool,
    #[command(flatten)]
    connection: Connection,
}

/// `kiln logout` arguments, as `docker logout` takes them.
#[derive(Debug, clap::Args)]
pub struct LogoutArgs {
    /// The registry, host[:port] (docker.io for Docker Hub).
    registry: String,
    #[command(flatten)]
    connection: Connection,
}

/// `4096`, `256K`, `64M`, `1G` (powers of 1024).
fn parse_size(text: &str) -> Result<u64, String> {
    let (digits, shift) = match text.strip_suffix(['K', 'k']) {
        Some(d) => (d, 10),
        None => match text.strip_suffix(['M', 'm']) {
            Some(d) => (d, 20),
            None => match text.strip_suffix(['G', 'g']) {
                Some(d) => (d, 30),
                None => (text, 0),
            },
        },
    };
    digits
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| {
            format!("{text:?} is not a size: use a positive number of bytes, or with K, M or G")
        })
}

/// One line about a transfer's progress, for stderr.
pub(crate) fn describe(progress: &Progress) -> Option<String> {
    let short = |digest: &str| digest.chars().skip(7).take(12).collect::<String>();
    Some(match progress {
        Progress::Exists { digest, .. } => format!("{}: already there", short(digest)),
        Progress::Mounted { digest, from } => format!("{}: mounted from {from}", short(digest)),
        Progress::Uploaded { digest, size } => {
            format!("{}: uploaded {} bytes", short(digest), size)
        }
        Progress::Downloaded { digest, size } => {
            format!("{}: downloaded {} bytes", short(digest), size)
        }
        Progress::Manifest { digest } => format!("manifest {digest}"),
        Progress::ReferrersTag { tag } => {
            format!("no referrers API: referrers listed under tag {tag}")
        }
        _ => return None,
    })
}

pub(crate) fn report(progress: &Progress) {
    if let Some(line) = describe(progress) {
        eprintln!("{line}");
    }
}

pub fn push(global: &Global, args: PushArgs) -> CmdResult {
    let store = global.open_store()?;
    let stored = store.resolve_ref(&args.image)?.with_context(|| {
        format!(
            "no image {:?} in the store; `kiln images` lists them",
            args.image
        )
    })?;
    let destination = args.destination.as_deref().unwrap_or(&args.image);
    let target: Reference = destination
        .parse()
        .with_context(|| format!("where to push {:?}", args.image))?;
    let client = args.connection.client(&target)?;
    eprintln!("pushing {} to {target}", args.image);
    let options = PushOptions {
        chunk_size: args.chunk_size,
        ..PushOptions::default()
    };
    // An index goes after every image it names.
    let digest = match &stored {
        StoredRef::Image(image) => {
            kiln_registry::push(&store, &client, image, &target, &options, &report)?
        }
        StoredRef::Index(index) => {
            kiln_registry::push_index(&store, &client, index, &target, &options, &report)?
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "reference": target.to_string(), "digest": digest.to_string() })
        );
    } else {
        println!("{digest}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn pull(global: &Global, args: PullArgs) -> CmdResult {
    let reference: Reference = args.reference.parse()?;
    let store = global.open_store()?;
    let client = args.connection.client(&reference)?;
    if args.all_platforms {
        eprintln!("pulling {reference} for every platform");
        let pulled = kiln_registry::pull_index(&store, &client, &reference, &report)?;
        if let Some(name) = &pulled.name {
            eprintln!(
                "tagged {name} ({})",
                pulled
                    .index
                    .platforms()
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if args.referrers {
            let mut count = 0;
            for (entry, _) in pulled.index.images() {
                count += kiln_registry::pull_referrers(
                    &store,
                    &client,
                    &reference,
                    entry.digest(),
                    &report,
                )?
                .len();
            }
            eprintln!("pulled {count} referrers");
        }
        println!("{}", pulled.index.id());
        return Ok(ExitCode::SUCCESS);
    }
    let platform: Platform = match &args.platform {
        Some(text) => text.parse().context("--platform")?,
        None => Platform::host(),
    };
    eprintln!("pulling {reference} for {platform}");
    let pulled = kiln_registry::pull(&store, &client, &reference, &platform, &report)?;
    if let Some(name) = &pulled.name {
        eprintln!("tagged {name}");
    }
    if args.referrers {
        let referrers =
            kiln_registry::pull_referrers(&store, &client, &reference, pulled.image.id(), &report)?;
        eprintln!("pulled {} referrers", referrers.len());
    }
    super::unpack::spawn(global, pulled.image.id().as_ref());
    println!("{}", pulled.image.id());
    Ok(ExitCode::SUCCESS)
}

pub fn login(_global: &Global, args: LoginArgs) -> CmdResult {
    let reference: Reference = format!("{}/kiln-login-check", args.registry)
        .parse()
        .with_context(|| format!("registry {:?}", args.registry))?;
    let mut password = String::new();
    std::io::stdin()
        .read_to_string(&mut password)
        .context("reading the password from standard input")?;
    let password = password.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        bail!("the password on standard input is empty");
    }
    let credentials = Credentials {
        username: args.username,
        password,
    };
    let client = Client::new(
        reference.api_host(),
        &reference.registry,
        ClientOptions {
            insecure: args.connection.insecure,
            credentials: Some(credentials.clone()),
            certs_dir: args.connection.certs_dir.clone(),
        },
    )?;
    client.ping()?;
    let auth_file = args.connection.auth_file()?;
    let stored = kiln_registry::store_credentials(&auth_file, &reference.registry, &credentials)?;
    let place = match stored {
        kiln_registry::Stored::File => auth_file.display().to_string(),
        kiln_registry::Stored::Helper(name) => format!("docker-credential-{name}"),
    };
    eprintln!(
        "logged in to {} as {}; credentials saved in {place}",
        reference.registry, credentials.username,
    );
    Ok(ExitCode::SUCCESS)
}

pub fn logout(_global: &Global, args: LogoutArgs) -> CmdResult {
    let reference: Reference = format!("{}/kiln-logout", args.registry)
        .parse()
        .with_context(|| format!("registry {:?}", args.registry))?;
    let auth_file = args.connection.auth_file()?;
    if kiln_registry::erase_credentials(&auth_file, &reference.registry)? {
        eprintln!("removed the credentials for {}", reference.registry);
    } else {
        eprintln!(
            "not logged in to {} ({} has no entry for it)",
            reference.registry,
            auth_file.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

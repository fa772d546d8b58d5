//! The SBOM: an SPDX 2.3 JSON document of the packages the image's package
//! databases list and the files its COPY steps took from the context.
//! Everything in it follows from the image (its digest names the document)
//! and SOURCE_DATE_EPOCH, so the same build gives the same bytes.

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::packages::Package;

/// A file a COPY step put in the image from the build context.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct CopiedFile {
    /// Its absolute path in the image.
    pub path: String,
    pub sha1: String,
    pub sha256: String,
}

/// What the document describes.
#[derive(Debug)]
pub(crate) struct SbomInput<'a> {
    /// `sha256:...` of the image manifest.
    pub image_digest: &'a str,
    /// The image's name (its first tag), or its digest.
    pub image_name: &'a str,
    pub architecture: &'a str,
    pub packages: &'a [Package],
    /// With `scan-stages=true`: each other stage's name and packages.
    pub stages: &'a [(String, Vec<Package>)],
    pub files: &'a [CopiedFile],
    /// RFC 3339: SOURCE_DATE_EPOCH when set, else now.
    pub created: &'a str,
    pub tool_version: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    spdx_version: &'static str,
    data_license: &'static str,
    #[serde(rename = "SPDXID")]
    spdx_id: &'static str,
    name: String,
    document_namespace: String,
    creation_info: CreationInfo,
    packages: Vec<SpdxPackage>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    files: Vec<SpdxFile>,
    relationships: Vec<Relationship>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CreationInfo {
    created: String,
    creators: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SpdxPackage {
    #[serde(rename = "SPDXID")]
    spdx_id: String,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    version_info: Option<String>,
    download_location: &'static str,
    files_analyzed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    primary_package_purpose: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    external_refs: Vec<ExternalRef>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExternalRef {
    reference_category: &'static str,
    reference_type: &'static str,
    reference_locator: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SpdxFile {
    #[serde(rename = "SPDXID")]
    spdx_id: String,
    file_name: String,
    checksums: Vec<Checksum>,
    license_concluded: &'static str,
    copyright_text: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Checksum {
    algorithm: &'static str,
    checksum_value: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Relationship {
    spdx_element_id: String,
    relationship_type: &'static str,
    related_spdx_element: String,
}

const NOASSERTION: &str = "NOASSERTION";
const IMAGE_ID: &str = "SPDXRef-Image";

fn relationship(from: &str, kind: &'static str, to: &str) -> Relationship {
    Relationship {
        spdx_element_id: from.to_owned(),
        relationship_type: kind,
        related_spdx_element: to.to_owned(),
    }
}

/// An SPDX id: `SPDXRef-` with letters, digits, `.` and `-` only, made
/// unique by a short hash of everything that tells two elements apart.
fn spdx_id(kind: &str, label: &str, unique: &str) -> String {
    let readable: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let readable = readable.trim_matches('-');
    let hash = hex::encode(Sha256::digest(unique.as_bytes()));
    format!("SPDXRef-{kind}-{readable}-{}", &hash[..16])
}

fn spdx_package(scope: &str, package: &Package) -> SpdxPackage {
    SpdxPackage {
        spdx_id: spdx_id(
            "Package",
            &format!("{}-{}", package.kind, package.name),
            &format!("{scope}\0{}", package.purl()),
        ),
        name: package.name.clone(),
        version_info: Some(package.version.clone()),
        download_location: NOASSERTION,
        files_analyzed: false,
        primary_package_purpose: None,
        external_refs: vec![ExternalRef {
            reference_category: "PACKAGE-MANAGER",
            reference_type: "purl",
            reference_locator: package.purl(),
        }],
    }
}

/// The SPDX document as JSON bytes.
pub(crate) fn document(input: &SbomInput<'_>) -> serde_json::Result<Vec<u8>> {
    let hex = input
        .image_digest
        .strip_prefix("sha256:")
        .unwrap_or(input.image_digest);
    let image_repo = input
        .image_name
        .rsplit('/')
        .next()
        .unwrap_or(input.image_name)
        .split([':', '@'])
        .next()
        .unwrap_or("image");
    let mut packages = vec![SpdxPackage {
        spdx_id: IMAGE_ID.to_owned(),
        name: input.image_name.to_owned(),
        version_info: Some(input.image_digest.to_owned()),
        download_location: NOASSERTION,
        files_analyzed: false,
        primary_package_purpose: Some("CONTAINER"),
        external_refs: vec![ExternalRef {
            reference_category: "PACKAGE-MANAGER",
            reference_type: "purl",
            reference_locator: format!(
                "pkg:oci/{image_repo}@sha256%3A{hex}?arch={}",
                input.architecture
            ),
        }],
    }];
    let mut relationships = vec![relationship("SPDXRef-DOCUMENT", "DESCRIBES", IMAGE_ID)];
    for package in input.packages {
        let spdx = spdx_package("image", package);
        relationships.push(relationship(IMAGE_ID, "CONTAINS", &spdx.spdx_id));
        packages.push(spdx);
    }
    for (stage, stage_packages) in input.stages {
        let stage_id = spdx_id("Stage", stage, stage);
        packages.push(SpdxPackage {
            spdx_id: stage_id.clone(),
            name: format!("stage {stage}"),
            version_info: None,
            download_location: NOASSERTION,
            files_analyzed: false,
            primary_package_purpose: None,
            external_refs: Vec::new(),
        });
        relationships.push(relationship(&stage_id, "BUILD_DEPENDENCY_OF", IMAGE_ID));
        for package in stage_packages {
            let spdx = spdx_package(&format!("stage {stage}"), package);
            relationships.push(relationship(&stage_id, "CONTAINS", &spdx.spdx_id));
            packages.push(spdx);
        }
    }
    let files: Vec<SpdxFile> = input
        .files
        .iter()
        .map(|file| {
            let spdx = SpdxFile {
                spdx_id: spdx_id("File", &file.path, &file.path),
                file_name: format!(".{}", file.path),
                checksums: vec![
                    Checksum {
                        algorithm: "SHA1",
                        checksum_value: file.sha1.clone(),
                    },
                    Checksum {
                        algorithm: "SHA256",
                        checksum_value: file.sha256.clone(),
                    },
                ],
                license_concluded: NOASSERTION,
                copyright_text: NOASSERTION,
            };
            relationships.push(relationship(IMAGE_ID, "CONTAINS", &spdx.spdx_id));
            spdx
        })
        .collect();
    let scope = if input.stages.is_empty() {
        ""
    } else {
        "/stages"
    };
    serde_json::to_vec_pretty(&Document {
        spdx_version: "SPDX-2.3",
        data_license: "CC0-1.0",
        spdx_id: "SPDXRef-DOCUMENT",
        name: input.image_name.to_owned(),
        document_namespace: format!("urn:kiln:sbom:sha256:{hex}{scope}"),
        creation_info: CreationInfo {
            created: input.created.to_owned(),
            creators: vec![format!("Tool: kiln-{}", input.tool_version)],
        },
        packages,
        files,
        relationships,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(name: &str, arch: &str) -> Package {
        Package {
            name: name.into(),
            version: "1.0+b1".into(),
            arch: arch.into(),
            kind: "deb",
            distro: "debian".into(),
        }
    }

    #[test]
    fn documents_are_spdx_2_3_with_unique_ids_and_a_namespace_from_the_image() {
        let packages = [package("libc6", "amd64"), package("libc6", "i386")];
        let stages = [("builder".to_owned(), vec![package("libc6", "amd64")])];
        let files = [CopiedFile {
            path: "/app/hello.txt".into(),
            sha1: "a".repeat(40),
            sha256: "b".repeat(64),
        }];
        let digest = format!("sha256:{}", "c".repeat(64));
        let input = SbomInput {
            image_digest: &digest,
            image_name: "registry.example/app:1",
            architecture: "amd64",
            packages: &packages,
            stages: &stages,
            files: &files,
            created: "2024-01-01T00:00:00Z",
            tool_version: "0.1.0",
        };
        let bytes = document(&input).unwrap();
        assert_eq!(bytes, document(&input).unwrap());
        let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(doc["spdxVersion"], "SPDX-2.3");
        assert_eq!(doc["dataLicense"], "CC0-1.0");
        assert_eq!(doc["creationInfo"]["creators"][0], "Tool: kiln-0.1.0");
        assert_eq!(
            doc["documentNamespace"],
            format!("urn:kiln:sbom:sha256:{}/stages", "c".repeat(64))
        );
        let ids: Vec<&str> = doc["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["SPDXID"].as_str().unwrap())
            .collect();
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(ids.len(), 5, "image, 2 packages, stage, its package");
        assert_eq!(unique.len(), ids.len(), "{ids:?}");
        for id in &ids {
            assert!(
                id.starts_with("SPDXRef-")
                    && id[8..]
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'),
                "{id}"
            );
        }
        assert_eq!(
            doc["packages"][1]["externalRefs"][0]["referenceLocator"],
            "pkg:deb/debian/libc6@1.0%2Bb1?arch=amd64"
        );
        assert_eq!(doc["files"][0]["fileName"], "./app/hello.txt");
        assert_eq!(doc["relationships"][0]["relationshipType"], "DESCRIBES");
    }
}

//! Images on disk: an OCI image layout directory (`oci-layout://DIR`,
//! `oci:DIR`), the same in a tar (`oci-archive:FILE`), and what `docker
//! save` writes (`docker-archive:FILE`, whose manifest kiln rewrites as an
//! OCI manifest so the image has a digest like any other).

use super::document::{ArchiveImage, Descriptor, Index};
use super::{ImageError, MEDIA_CONFIG, MEDIA_LAYER, MEDIA_MANIFEST, Source, document, read_small};
use crate::model::digest::Sha256;
use crate::store::oci::OciBlobs;
use serde_json::json as j;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Where the files of a layout are: a directory, or entries of a tar.
enum Files {
    Dir(PathBuf),
    Tar {
        file: PathBuf,
        /// Path in the tar → (offset of the data, size).
        entries: HashMap<String, (u64, u64)>,
    },
}

impl Files {
    fn open(&self, rel: &str) -> Result<Box<dyn Read>, ImageError> {
        match self {
            Files::Dir(dir) => {
                // Only a regular file is read: a blob that is a symlink (to
                // `/dev/zero`, say), a FIFO or a device is refused, unopened.
                let p = dir.join(rel);
                let f = rustix::fs::open(
                    &p,
                    rustix::fs::OFlags::RDONLY
                        | rustix::fs::OFlags::NOFOLLOW
                        | rustix::fs::OFlags::NONBLOCK
                        | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
                .map_err(|e| {
                    if e == rustix::io::Errno::NOENT {
                        ImageError::NotFound(format!("`{}` does not exist", p.display()))
                    } else if e == rustix::io::Errno::LOOP {
                        ImageError::Invalid(format!(
                            "`{}` is a symlink: an image layout holds regular files",
                            p.display()
                        ))
                    } else {
                        ImageError::Invalid(format!(
                            "cannot read `{}`: {}",
                            p.display(),
                            io::Error::from(e)
                        ))
                    }
                })?;
                let st = rustix::fs::fstat(&f).map_err(|e| {
                    ImageError::Invalid(format!(
                        "cannot read `{}`: {}",
                        p.display(),
                        io::Error::from(e)
                    ))
                })?;
                if rustix::fs::FileType::from_raw_mode(st.st_mode)
                    != rustix::fs::FileType::RegularFile
                {
                    return Err(ImageError::Invalid(format!(
                        "`{}` is not a regular file: an image layout holds regular files",
                        p.display()
                    )));
                }
                Ok(Box::new(File::from(f)))
            }
            Files::Tar { file, entries } => {
                let rel = rel.trim_start_matches("./");
                let Some((offset, size)) = entries.get(rel) else {
                    return Err(ImageError::NotFound(format!(
                        "the archive `{}` has no `{rel}`",
                        file.display()
                    )));
                };
                let mut f = File::open(file).map_err(|e| {
                    ImageError::Invalid(format!("cannot read `{}`: {e}", file.display()))
                })?;
                f.seek(SeekFrom::Start(*offset)).map_err(|e| {
                    ImageError::Invalid(format!("cannot read `{}`: {e}", file.display()))
                })?;
                Ok(Box::new(f.take(*size)))
            }
        }
    }

    fn has(&self, rel: &str) -> bool {
        match self {
            Files::Dir(dir) => dir.join(rel).exists(),
            Files::Tar { entries, .. } => entries.contains_key(rel.trim_start_matches("./")),
        }
    }

    fn blob_path(d: &Sha256) -> String {
        format!("blobs/sha256/{}", d.hex())
    }

    /// A blob of the layout, copied into the store (verified there,
    /// reading no further than its declared `size`).
    fn fetch(&self, d: &Sha256, size: u64, blobs: &OciBlobs) -> Result<(), ImageError> {
        let r = self.open(&Files::blob_path(d))?;
        blobs.put(&mut r.take(size.saturating_add(1)), Some(d), Some(size))?;
        Ok(())
    }

    fn read(&self, rel: &str, what: &str) -> Result<Vec<u8>, ImageError> {
        read_small(&mut self.open(rel)?, what)
    }
}

/// Index a tar: every regular file's data offset and size.
fn index_tar(file: &Path) -> Result<HashMap<String, (u64, u64)>, ImageError> {
    let bad = |e: &dyn std::fmt::Display| {
        ImageError::Invalid(format!("`{}` is not a readable tar: {e}", file.display()))
    };
    let f = File::open(file).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            ImageError::NotFound(format!("`{}` does not exist", file.display()))
        } else {
            bad(&e)
        }
    })?;
    let mut archive = tar::Archive::new(f);
    let mut out = HashMap::new();
    for entry in archive.entries().map_err(|e| bad(&e))? {
        let entry = entry.map_err(|e| bad(&e))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = String::from_utf8_lossy(&entry.path_bytes())
            .trim_start_matches("./")
            .to_string();
        out.insert(path, (entry.raw_file_position(), entry.size()));
    }
    Ok(out)
}

/// An OCI image layout, as a directory or in a tar.
pub struct Layout {
    files: Files,
    name: String,
    tag: Option<String>,
    digest: Option<Sha256>,
}

impl Layout {
    pub fn open(
        dir: &Path,
        tag: Option<String>,
        digest: Option<String>,
    ) -> Result<Layout, ImageError> {
        let files = Files::Dir(dir.to_path_buf());
        if !files.has("oci-layout") {
            return Err(ImageError::NotFound(format!(
                "`{}` is not an OCI image layout (it has no `oci-layout` file)",
                dir.display()
            )));
        }
        Ok(Layout {
            files,
            name: dir.display().to_string(),
            tag,
            digest: digest.as_deref().and_then(Sha256::parse),
        })
    }
}

/// The manifest (or index) an index names for a tag, or its only one.
fn select(
    files: &Files,
    name: &str,
    tag: Option<&str>,
    digest: Option<&Sha256>,
) -> Result<(Vec<u8>, Sha256), ImageError> {
    if let Some(d) = digest {
        let bytes = files.read(&Files::blob_path(d), "the manifest")?;
        if Sha256::of(&bytes) != *d {
            return Err(ImageError::Invalid(format!(
                "the blob {d} in `{name}` does not match its digest"
            )));
        }
        return Ok((bytes, d.clone()));
    }
    let index: Index = document(&files.read("index.json", "index.json")?, "index.json")?;
    let entries = &index.manifests;
    let ref_name = |e: &Descriptor| e.annotation(REF_NAME).map(str::to_string);
    let chosen = match tag {
        Some(t) => entries.iter().find(|e| {
            ref_name(e).is_some_and(|r| r == t || r.rsplit_once(':').is_some_and(|(_, x)| x == t))
        }),
        None if entries.len() == 1 => entries.first(),
        None => entries
            .iter()
            .find(|e| ref_name(e).as_deref() == Some("latest")),
    };
    let Some(e) = chosen else {
        let tags: Vec<String> = entries.iter().filter_map(ref_name).collect();
        return Err(ImageError::NotFound(format!(
            "`{name}` has no image {} (its tags: {})",
            match tag {
                Some(t) => format!("tagged `{t}`"),
                None => "to pick without a tag".to_string(),
            },
            if tags.is_empty() {
                "none".to_string()
            } else {
                tags.join(", ")
            }
        )));
    };
    let d = super::sha256(e, &format!("an entry of `{name}`'s index"))?;
    let bytes = files.read(&Files::blob_path(&d), "the manifest")?;
    if Sha256::of(&bytes) != d {
        return Err(ImageError::Invalid(format!(
            "the blob {d} in `{name}` does not match its digest"
        )));
    }
    Ok((bytes, d))
}

impl Source for Layout {
    fn top(&mut self) -> Result<(Vec<u8>, Sha256), ImageError> {
        select(
            &self.files,
            &self.name,
            self.tag.as_deref(),
            self.digest.as_ref(),
        )
    }

    fn manifest(&mut self, d: &Sha256) -> Result<Vec<u8>, ImageError> {
        self.files.read(&Files::blob_path(d), "the manifest")
    }

    fn fetch_blob(&mut self, d: &Sha256, size: u64, blobs: &OciBlobs) -> Result<(), ImageError> {
        self.files.fetch(d, size, blobs)
    }
}

/// An image archive: an OCI layout in a tar, or `docker save`'s format.
pub struct Archive {
    files: Files,
    name: String,
    tag: Option<String>,
    /// For a docker archive: the manifest kiln wrote for it, and where
    /// its config and layers are in the tar.
    docker: Option<DockerImage>,
}

struct DockerImage {
    manifest: Vec<u8>,
    digest: Sha256,
    paths: HashMap<Sha256, String>,
}

impl Archive {
    pub fn open_oci(file: &Path, tag: Option<String>) -> Result<Archive, ImageError> {
        let entries = index_tar(file)?;
        let files = Files::Tar {
            file: file.to_path_buf(),
            entries,
        };
        if !files.has("oci-layout") {
            return Err(ImageError::NotFound(format!(
                "`{}` is not an OCI archive (it has no `oci-layout` file)",
                file.display()
            )));
        }
        Ok(Archive {
            files,
            name: file.display().to_string(),
            tag,
            docker: None,
        })
    }

    pub fn open_docker(file: &Path, name: Option<String>) -> Result<Archive, ImageError> {
        let entries = index_tar(file)?;
        let files = Files::Tar {
            file: file.to_path_buf(),
            entries,
        };
        let shown = file.display().to_string();
        if !files.has("manifest.json") {
            // Newer `docker save` writes an OCI layout too.
            if files.has("oci-layout") {
                return Ok(Archive {
                    files,
                    name: shown,
                    tag: name,
                    docker: None,
                });
            }
            return Err(ImageError::NotFound(format!(
                "`{shown}` is not a docker archive (it has no `manifest.json`)"
            )));
        }
        let images: Vec<ArchiveImage> = document(
            &files.read("manifest.json", "manifest.json")?,
            "manifest.json",
        )?;
        let tags = |e: &ArchiveImage| -> Vec<String> { e.repo_tags.clone().unwrap_or_default() };
        let wanted = name.as_deref().map(normalize_tag);
        let chosen = match &wanted {
            Some(w) => images
                .iter()
                .find(|e| tags(e).iter().any(|t| normalize_tag(t) == *w)),
            None if images.len() == 1 => images.first(),
            None => None,
        };
        let Some(image) = chosen else {
            let all: Vec<String> = images.iter().flat_map(tags).collect();
            return Err(ImageError::NotFound(format!(
                "`{shown}` has no image {} (its images: {})",
                match &name {
                    Some(n) => format!("named `{n}`"),
                    None => "to pick without a name".into(),
                },
                if all.is_empty() {
                    "none".into()
                } else {
                    all.join(", ")
                }
            )));
        };
        let config_path = image.config.clone();
        let config = files.read(&config_path, "the image config")?;
        let config_digest = Sha256::of(&config);
        let mut paths = HashMap::new();
        paths.insert(config_digest.clone(), config_path);
        let mut layers = Vec::new();
        for p in image.layers.clone().unwrap_or_default() {
            // The layer's digest: its bytes as they are in the archive.
            let mut r = files.open(&p)?;
            let mut h = <sha2::Sha256 as sha2::Digest>::new();
            let mut buf = vec![0u8; 256 * 1024];
            let mut size = 0u64;
            loop {
                let n = r.read(&mut buf).map_err(|e| {
                    ImageError::Invalid(format!("cannot read `{p}` in `{shown}`: {e}"))
                })?;
                if n == 0 {
                    break;
                }
                sha2::Digest::update(&mut h, &buf[..n]);
                size += n as u64;
            }
            let d = Sha256::from_bytes(&sha2::Digest::finalize(h));
            layers.push(j!({"mediaType": MEDIA_LAYER, "digest": d.to_string(), "size": size}));
            paths.insert(d, p);
        }
        let manifest = j!({
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
            "layers": layers,
        });
        let manifest = serde_json::to_vec(&manifest)
            .map_err(|e| ImageError::Invalid(format!("cannot write a manifest: {e}")))?;
        let digest = Sha256::of(&manifest);
        Ok(Archive {
            files,
            name: shown,
            tag: None,
            docker: Some(DockerImage {
                manifest,
                digest,
                paths,
            }),
        })
    }
}

/// `busybox` → `busybox:latest`, and Docker's `docker.io/library/` prefix dropped.
fn normalize_tag(t: &str) -> String {
    let t = t
        .trim_start_matches("docker.io/")
        .trim_start_matches("library/");
    let last = t.rsplit('/').next().unwrap_or(t);
    if last.contains(':') {
        t.to_string()
    } else {
        format!("{t}:latest")
    }
}

impl Source for Archive {
    fn top(&mut self) -> Result<(Vec<u8>, Sha256), ImageError> {
        match &self.docker {
            Some(d) => Ok((d.manifest.clone(), d.digest.clone())),
            None => select(&self.files, &self.name, self.tag.as_deref(), None),
        }
    }

    fn manifest(&mut self, d: &Sha256) -> Result<Vec<u8>, ImageError> {
        match &self.docker {
            Some(img) if img.digest == *d => Ok(img.manifest.clone()),
            Some(_) => Err(ImageError::NotFound(format!(
                "`{}` has no manifest {d}",
                self.name
            ))),
            None => self.files.read(&Files::blob_path(d), "the manifest"),
        }
    }

    fn fetch_blob(&mut self, d: &Sha256, size: u64, blobs: &OciBlobs) -> Result<(), ImageError> {
        match &self.docker {
            Some(img) => {
                let p = img.paths.get(d).ok_or_else(|| {
                    ImageError::NotFound(format!("`{}` has no blob {d}", self.name))
                })?;
                let r = self.files.open(p)?;
                blobs.put(&mut r.take(size.saturating_add(1)), Some(d), Some(size))?;
                Ok(())
            }
            None => self.files.fetch(d, size, blobs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_normalize_as_docker_writes_them() {
        assert_eq!(normalize_tag("busybox"), "busybox:latest");
        assert_eq!(
            normalize_tag("docker.io/library/busybox:1.36"),
            "busybox:1.36"
        );
        assert_eq!(
            normalize_tag("localhost:5000/app"),
            "localhost:5000/app:latest"
        );
    }
}

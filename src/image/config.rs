//! An image's config (the OCI image config, or Docker's, which adds
//! `Shell`, `OnBuild` and `Healthcheck`) as a stage's [`ImageConfig`]: what
//! a stage built on the image inherits.

use super::document::Config;
use super::{ImageError, document};
use crate::model::digest::Sha256;
use crate::model::state::{Healthcheck, ImageConfig};

/// The platform an image config says it is for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigPlatform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

/// What kiln reads from an image config.
#[derive(Debug)]
pub struct Parsed {
    pub config: ImageConfig,
    pub platform: ConfigPlatform,
    /// The sha256 of each layer's uncompressed bytes, in order.
    pub diff_ids: Vec<Sha256>,
}

/// Read an image config (OCI's, or Docker's, which adds `Shell`,
/// `OnBuild` and `Healthcheck`). Unknown fields are ignored; a field of
/// the wrong type is an error naming it.
pub fn parse(bytes: &[u8]) -> Result<Parsed, ImageError> {
    const WHAT: &str = "the image config";
    let doc: Config = document(bytes, WHAT)?;
    let platform = ConfigPlatform {
        os: doc.os.unwrap_or_default(),
        architecture: doc.architecture.unwrap_or_default(),
        variant: doc.variant,
    };
    let diff_ids = doc
        .rootfs
        .and_then(|r| r.diff_ids)
        .unwrap_or_default()
        .iter()
        .map(|d| {
            Sha256::parse(d).ok_or_else(|| {
                ImageError::Invalid(format!(
                    "{WHAT} lists the diff_id `{d}`, which is not a sha256 digest"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = ImageConfig::default();
    if let Some(c) = doc.config {
        for kv in c.env.iter().flatten() {
            match kv.split_once('=') {
                Some((k, v)) => out.set_env(k, v),
                None => out.set_env(kv, ""),
            }
        }
        // Normalized: an image cannot lead paths out of the tree with `..`.
        out.workdir = c
            .working_dir
            .filter(|w| !w.is_empty())
            .map(|w| format!("/{}", crate::model::tree::normalize(&w, "/")));
        out.user = c.user.filter(|u| !u.is_empty());
        out.entrypoint = c.entrypoint;
        out.cmd = c.cmd;
        out.stop_signal = c.stop_signal.filter(|s| !s.is_empty());
        out.labels.extend(c.labels.unwrap_or_default());
        out.exposed_ports = c.exposed_ports.unwrap_or_default().into_keys().collect();
        out.volumes = c.volumes.unwrap_or_default().into_keys().collect();
        out.shell = c.shell.filter(|s| !s.is_empty());
        out.onbuild = c.on_build.unwrap_or_default();
        out.healthcheck = c.healthcheck.map(|h| {
            let n = |v: Option<serde_json::Number>| v.and_then(|n| n.as_u64());
            Healthcheck {
                test: h.test.unwrap_or_default(),
                interval: n(h.interval),
                timeout: n(h.timeout),
                start_period: n(h.start_period),
                start_interval: n(h.start_interval),
                retries: n(h.retries).and_then(|r| u32::try_from(r).ok()),
            }
        });
    }
    Ok(Parsed {
        config: out,
        platform,
        diff_ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_docker_config_is_inherited_whole() {
        let json = br#"{
            "architecture": "amd64", "os": "linux",
            "config": {
                "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"],
                "WorkingDir": "/app", "User": "app",
                "Entrypoint": ["/entry"], "Cmd": ["serve"],
                "Labels": {"a": "1"}, "ExposedPorts": {"80/tcp": {}},
                "Volumes": {"/data": {}}, "StopSignal": "SIGINT",
                "Shell": ["/bin/bash", "-c"], "OnBuild": ["RUN true"],
                "Healthcheck": {"Test": ["CMD", "true"], "Interval": 30000000000, "Retries": 3}
            },
            "rootfs": {"type": "layers", "diff_ids": []}
        }"#;
        let Parsed {
            config: c,
            platform: p,
            ..
        } = parse(json).unwrap();
        assert_eq!((p.os.as_str(), p.architecture.as_str()), ("linux", "amd64"));
        assert_eq!(c.env[1], ("LANG".to_string(), "C.UTF-8".to_string()));
        assert_eq!(c.workdir(), "/app");
        assert_eq!(c.user.as_deref(), Some("app"));
        assert_eq!(c.entrypoint, Some(vec!["/entry".to_string()]));
        assert!(c.exposed_ports.contains("80/tcp") && c.volumes.contains("/data"));
        assert_eq!(c.shell.as_ref().unwrap()[0], "/bin/bash");
        assert_eq!(c.onbuild, ["RUN true"]);
        let h = c.healthcheck.unwrap();
        assert_eq!((h.interval, h.retries), (Some(30_000_000_000), Some(3)));
        let bare = r#""os": "linux", "architecture": "amd64", "rootfs": {"type": "layers", "diff_ids": []}"#;
        let wrong = parse(format!(r#"{{{bare}, "config": {{"Env": "PATH=/"}}}}"#).as_bytes());
        let wrong = wrong.unwrap_err().to_string();
        assert!(wrong.contains("`config.Env`"), "{wrong}");
        let wrong = parse(
            format!(r#"{{{bare}, "config": {{"Healthcheck": {{"Retries": "3"}}}}}}"#).as_bytes(),
        );
        let wrong = wrong.unwrap_err().to_string();
        assert!(wrong.contains("`config.Healthcheck.Retries`"), "{wrong}");
        assert!(parse(b"nope").unwrap_err().to_string().contains("not JSON"));
        assert_eq!(
            parse(format!("{{{bare}}}").as_bytes()).unwrap().config,
            ImageConfig::default()
        );
        // What real images leave out or null: an image without layers
        // (Docker omits `diff_ids`), a config without a platform,
        // Go's maps with null values.
        for lenient in [
            r#"{"os": "linux", "architecture": "amd64", "rootfs": {"type": "layers"}}"#,
            r#"{"os": "linux", "rootfs": {"type": "layers", "diff_ids": null}}"#,
            r#"{"config": {"ExposedPorts": {"80/tcp": null}, "Env": null, "Labels": null}}"#,
        ] {
            let p = parse(lenient.as_bytes()).unwrap();
            assert!(p.diff_ids.is_empty(), "{lenient}");
        }
        let odd = parse(br#"{"os": "linux", "architecture": "amd64", "rootfs": {"type": "layers", "diff_ids": ["md5:00"]}}"#);
        assert!(odd.unwrap_err().to_string().contains("md5:00"));
    }
}

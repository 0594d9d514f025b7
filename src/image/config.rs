//! An image's config (the OCI image config, or Docker's, which adds
//! `Shell`, `OnBuild` and `Healthcheck`) as a stage's [`ImageConfig`]: what
//! a stage built on the image inherits.

use crate::model::state::{Healthcheck, ImageConfig};
use serde_json::Value;

/// The platform an image config says it is for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigPlatform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

/// Read an image config. Unknown fields are ignored; a field of the wrong
/// type is an error naming it.
pub fn parse(bytes: &[u8]) -> Result<(ImageConfig, ConfigPlatform), String> {
    let v: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("the image config is not JSON: {e}"))?;
    let platform = ConfigPlatform {
        os: str_field(&v, "os")?.unwrap_or_default(),
        architecture: str_field(&v, "architecture")?.unwrap_or_default(),
        variant: str_field(&v, "variant")?,
    };
    let c = match v.get("config") {
        None | Some(Value::Null) => return Ok((ImageConfig::default(), platform)),
        Some(c @ Value::Object(_)) => c,
        Some(_) => return Err("the image config's `config` is not an object".into()),
    };
    let mut out = ImageConfig::default();
    for kv in strings(c, "Env")?.unwrap_or_default() {
        match kv.split_once('=') {
            Some((k, v)) => out.set_env(k, v),
            None => out.set_env(&kv, ""),
        }
    }
    // Normalized: an image cannot lead paths out of the tree with `..`.
    out.workdir = str_field(c, "WorkingDir")?
        .filter(|w| !w.is_empty())
        .map(|w| format!("/{}", crate::model::tree::normalize(&w, "/")));
    out.user = str_field(c, "User")?.filter(|u| !u.is_empty());
    out.entrypoint = strings(c, "Entrypoint")?;
    out.cmd = strings(c, "Cmd")?;
    out.stop_signal = str_field(c, "StopSignal")?.filter(|s| !s.is_empty());
    out.shell = strings(c, "Shell")?.filter(|s| !s.is_empty());
    out.onbuild = strings(c, "OnBuild")?.unwrap_or_default();
    if let Some(labels) = object(c, "Labels")? {
        for (k, v) in labels {
            let Value::String(v) = v else {
                return Err(format!("the label `{k}` is not a string"));
            };
            out.labels.insert(k.clone(), v.clone());
        }
    }
    if let Some(ports) = object(c, "ExposedPorts")? {
        out.exposed_ports = ports.keys().cloned().collect();
    }
    if let Some(volumes) = object(c, "Volumes")? {
        out.volumes = volumes.keys().cloned().collect();
    }
    if let Some(h) = c.get("Healthcheck").filter(|h| !h.is_null()) {
        let n = |k: &str| -> Result<Option<u64>, String> {
            match h.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(n)) => Ok(n.as_u64()),
                Some(_) => Err(format!("the health check's `{k}` is not a number")),
            }
        };
        out.healthcheck = Some(Healthcheck {
            test: strings(h, "Test")?.unwrap_or_default(),
            interval: n("Interval")?,
            timeout: n("Timeout")?,
            start_period: n("StartPeriod")?,
            start_interval: n("StartInterval")?,
            retries: n("Retries")?.map(|r| r as u32),
        });
    }
    Ok((out, platform))
}

fn str_field(v: &Value, k: &str) -> Result<Option<String>, String> {
    match v.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("the image config's `{k}` is not a string")),
    }
}

fn strings(v: &Value, k: &str) -> Result<Option<Vec<String>>, String> {
    match v.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| match x {
                Value::String(s) => Ok(s.clone()),
                _ => Err(format!("the image config's `{k}` is not a list of strings")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(format!("the image config's `{k}` is not a list")),
    }
}

fn object<'a>(v: &'a Value, k: &str) -> Result<Option<&'a serde_json::Map<String, Value>>, String> {
    match v.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(format!("the image config's `{k}` is not an object")),
    }
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
        let (c, p) = parse(json).unwrap();
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
        assert!(parse(br#"{"config": {"Env": "PATH=/"}}"#).is_err());
        assert!(parse(b"nope").is_err());
        assert_eq!(
            parse(br#"{"os":"linux"}"#).unwrap().0,
            ImageConfig::default()
        );
    }
}

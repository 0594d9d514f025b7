//! Image metadata steps (`env`, `workdir`, `user`, `label`, `entrypoint`,
//! `cmd`, `expose`, `volume`, `stopsignal`, `shell`, `healthcheck`,
//! `onbuild`, `maintainer`): they change the stage's config, not its tree,
//! except `workdir`, which creates its directory as Docker does.

use super::{Prepared, StepCx, StepKind, Work, quote, tree_err};
use crate::diag::Code;
use crate::diag::Diagnostic;
use crate::ir::{Meta, Names};
use crate::model::tree::{self, Entry, Links};
use serde_json::json;

impl StepKind for Meta {
    fn canonical(&self, _names: Names<'_>) -> serde_json::Value {
        json!({ "meta": self })
    }

    fn describe(&self, _names: Names<'_>) -> String {
        let keys = |kv: &[(String, String)]| {
            kv.iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        };
        match self {
            Meta::Env(kv) => format!("env {}", keys(kv)),
            Meta::Workdir(p) => format!("workdir {p:?}"),
            Meta::User(u) => format!("user {u:?}"),
            Meta::Label(kv) => format!("label {}", keys(kv)),
            Meta::Entrypoint(a) => format!("entrypoint {}", quote(a)),
            Meta::Cmd(a) => format!("cmd {}", quote(a)),
            Meta::Expose(a) => format!("expose {}", a.join(" ")),
            Meta::Volume(a) => format!("volume {}", quote(a)),
            Meta::Stopsignal(s) => format!("stopsignal {s}"),
            Meta::Shell(a) => format!("shell {}", quote(a)),
            Meta::Healthcheck(h) => format!("healthcheck {}", quote(&h.test)),
            Meta::Onbuild(i) => format!("onbuild {i:?}"),
            Meta::Maintainer(m) => format!("maintainer {m:?}"),
        }
    }

    fn changes_tree(&self) -> bool {
        matches!(self, Meta::Workdir(_))
    }

    fn run(&self, cx: &StepCx<'_>, work: Work<'_>, _prepared: Prepared) -> Result<(), Diagnostic> {
        let span = cx.span();
        let (tree, config) = (work.tree, work.config);
        match self {
            Meta::Env(kv) => {
                for (k, v) in kv {
                    config.set_env(k, v);
                }
            }
            Meta::Workdir(p) => {
                let dir = format!("/{}", tree::normalize(p, config.workdir()));
                // As Docker does, the working directory exists in the stage.
                let resolved = tree
                    .resolve(&dir, true, Links::Rootfs)
                    .map_err(|e| tree_err("cannot set workdir", span, e))?;
                // Made by the stage's user, as BuildKit makes it, so that
                // `user "app"` then `workdir "/home/app/src"` can write there.
                let owner = match super::users::resolve(cx.content(), tree, config.user.as_deref())
                {
                    Ok(u) => (u.uid, u.gid),
                    Err(super::users::Error::Store(d)) => return Err(d),
                    Err(super::users::Error::Unknown { what, name }) => {
                        return Err(Diagnostic::new(
                            Code::WORKDIR_USER,
                            format!("unknown {what} `{name}`: the working directory cannot be made for it"),
                        )
                        .with_label(span, "this workdir"));
                    }
                };
                tree.mkdir_all(&resolved, &Entry::dir(0o755, owner.0, owner.1))
                    .map_err(|e| tree_err("cannot set workdir", span, e))?;
                config.workdir = Some(dir);
            }
            Meta::User(u) => config.user = Some(u.clone()),
            Meta::Label(kv) => {
                for (k, v) in kv {
                    config.labels.insert(k.clone(), v.clone());
                }
            }
            Meta::Entrypoint(a) => {
                // Docker: a new entrypoint drops a cmd inherited with the base.
                config.entrypoint = Some(a.clone());
                config.cmd = None;
            }
            Meta::Cmd(a) => config.cmd = Some(a.clone()),
            Meta::Expose(ports) => {
                for p in ports {
                    let norm = if p.contains('/') {
                        p.to_ascii_lowercase()
                    } else {
                        format!("{p}/tcp")
                    };
                    config.exposed_ports.insert(norm);
                }
            }
            Meta::Volume(v) => {
                for p in v {
                    config.volumes.insert(p.clone());
                }
            }
            Meta::Stopsignal(s) => config.stop_signal = Some(s.clone()),
            Meta::Shell(a) => config.shell = Some(a.clone()),
            Meta::Healthcheck(h) => config.healthcheck = Some(h.clone()),
            Meta::Onbuild(i) => config.onbuild.push(i.clone()),
            Meta::Maintainer(m) => config.author = Some(m.clone()),
        }
        Ok(())
    }
}

//! The stage's `user` (a name or number, with a group or not), looked up
//! in the tree's `/etc/passwd` and `/etc/group` as Docker does: for `run`
//! steps, and for the directories `workdir` makes (owned by the user, as
//! BuildKit makes them).

use crate::diag::Diagnostic;
use crate::model::tree::{Entry, Kind, Tree};
use crate::store::ContentStore;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    /// The primary group first, then the supplementary ones.
    pub groups: Vec<u32>,
    pub home: String,
}

pub enum Error {
    Unknown { what: &'static str, name: String },
    Store(Diagnostic),
}

/// Look `spec` up (`None`: root, whatever the files hold).
pub fn resolve(content: &dyn ContentStore, tree: &Tree, spec: Option<&str>) -> Result<User, Error> {
    let read = |file: &str| -> Result<String, Error> {
        match tree.get(file) {
            Some(Entry {
                kind: Kind::File { blob, .. },
                ..
            }) => Ok(String::from_utf8_lossy(
                &content
                    .read_blob(*blob)
                    .map_err(|e| Error::Store(e.into()))?,
            )
            .into_owned()),
            _ => Ok(String::new()),
        }
    };
    let Some(spec) = spec else {
        return Ok(User {
            uid: 0,
            gid: 0,
            groups: vec![0],
            home: "/root".into(),
        });
    };
    lookup(&read("etc/passwd")?, &read("etc/group")?, spec)
}

/// Look `spec` up in the text of a passwd and a group file.
pub fn lookup(passwd: &str, group_file: &str, spec: &str) -> Result<User, Error> {
    let (name, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entry = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        let matches = f.first() == Some(&name) || f.get(2) == Some(&name);
        (matches && f.len() >= 4).then(|| {
            (
                f[0].to_string(),
                f[2].parse::<u32>().ok(),
                f[3].parse::<u32>().ok(),
                f.get(5).map(|h| h.to_string()),
            )
        })
    });
    let unknown = |what: &'static str, n: &str| Error::Unknown {
        what,
        name: n.to_string(),
    };
    let (uid, primary, home, login) = match (&entry, name.parse::<u32>()) {
        (Some((login, Some(uid), gid, home)), _) => {
            (*uid, gid.unwrap_or(0), home.clone(), Some(login.clone()))
        }
        (_, Ok(uid)) => (uid, 0, None, None),
        // A tree without /etc/passwd still has root.
        (None, _) if name == "root" => (0, 0, None, None),
        _ => return Err(unknown("user", name)),
    };
    let gid = match group {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(id) => id,
            Err(_) => group_file
                .lines()
                .find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.first() == Some(&g))
                        .then(|| f.get(2).and_then(|x| x.parse().ok()))
                        .flatten()
                })
                .ok_or_else(|| unknown("group", g))?,
        },
    };
    let mut groups = vec![gid];
    if let (Some(login), None) = (&login, group) {
        for l in group_file.lines() {
            let f: Vec<&str> = l.split(':').collect();
            if f.get(3).is_some_and(|m| m.split(',').any(|x| x == login))
                && let Some(g) = f.get(2).and_then(|x| x.parse::<u32>().ok())
                && !groups.contains(&g)
            {
                groups.push(g);
            }
        }
    }
    let home = home
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| if uid == 0 { "/root".into() } else { "/".into() });
    Ok(User {
        uid,
        gid,
        groups,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nstaff:x:50:app,other\napp:x:1000:\n";

    #[test]
    fn names_numbers_and_groups_resolve_as_docker_does() {
        let u = |s| lookup(PASSWD, GROUP, s).ok();
        let app = u("app").unwrap();
        assert_eq!(
            (app.uid, app.gid, app.groups.clone()),
            (1000, 1000, vec![1000, 50])
        );
        assert_eq!(app.home, "/home/app");
        // A group named: only that group, as Docker.
        assert_eq!(u("app:staff").unwrap().groups, vec![50]);
        // Numbers need no entry; an unknown one has gid 0 and home /.
        let n = u("4242:7").unwrap();
        assert_eq!((n.uid, n.gid, n.home.as_str()), (4242, 7, "/"));
        assert!(matches!(
            lookup(PASSWD, GROUP, "ghost"),
            Err(Error::Unknown { what: "user", .. })
        ));
        assert!(matches!(
            lookup(PASSWD, GROUP, "app:ghosts"),
            Err(Error::Unknown { what: "group", .. })
        ));
    }
}

//! Whose ids a command's files have on the host.
//!
//! As root, a command never runs as the host's root: it runs in a user
//! namespace whose ids `0..count` are the host's `base..base+count`, an
//! unprivileged range no account uses (Docker's `userns-remap`). Trees on
//! disk for commands are written with their owners moved into that range,
//! and what a command leaves is read back moved out of it, so the trees
//! themselves keep Docker's owners. A file a command makes setuid is setuid
//! to an unprivileged host id, in a directory only root can enter.
//!
//! The range is `kiln`'s entry in `/etc/subuid` and `/etc/subgid` when
//! both have one (at least 65536 ids), else [`DEFAULT_BASE`]: systemd's
//! unused range above the container ranges (`0x70000000`), up to its
//! foreign-image range (`0x7FFE0000`). When kiln is the root of a
//! container (its own ids are a part of the host's, `/proc/self/uid_map`
//! says), the range is one it has beyond its first 65536 ids, or, when it
//! has no more, its own ids one to one: that root is already not the
//! host's.
//!
//! Without root, kiln can only map its own user: a command runs as root of
//! a user namespace of its own and every file is the user's.

use std::fmt;

/// The first host id of the default range.
pub const DEFAULT_BASE: u32 = 0x7000_0000;
/// How many ids the default range holds.
pub const DEFAULT_COUNT: u32 = 0x0FFE_0000;
/// The fewest ids a configured range may hold (Docker's own minimum).
const MIN_COUNT: u32 = 65536;

/// How a command's ids relate to the host's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ids {
    /// Ids `0..count` are the host's `uid_base..` and `gid_base..` (as root).
    Mapped {
        uid_base: u32,
        gid_base: u32,
        count: u32,
    },
    /// The command is root of a namespace mapped to the user running kiln,
    /// and every file is that user's (without root).
    Own,
}

/// An id a range cannot hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmapped {
    pub id: u32,
    pub count: u32,
}

impl fmt::Display for Unmapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "id {} is beyond the ids a sandbox maps (0 to {})",
            self.id,
            self.count.saturating_sub(1)
        )
    }
}

impl Ids {
    /// The mapping of this process: a range of the host's when root
    /// (read once).
    pub fn of_this_process() -> Ids {
        static IDS: std::sync::OnceLock<Ids> = std::sync::OnceLock::new();
        *IDS.get_or_init(Ids::read)
    }

    fn read() -> Ids {
        if !rustix::process::geteuid().is_root() {
            return Ids::Own;
        }
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let (uid_map, gid_map) = (read("/proc/self/uid_map"), read("/proc/self/gid_map"));
        choose(
            &parse_map(&uid_map),
            &parse_map(&gid_map),
            configured(&read("/etc/subuid")),
            configured(&read("/etc/subgid")),
        )
    }

    /// The host's uid for the tree's `uid`.
    pub fn host_uid(&self, uid: u32) -> Result<u32, Unmapped> {
        match *self {
            Ids::Mapped {
                uid_base, count, ..
            } => shift(uid_base, count, uid),
            Ids::Own => Ok(uid),
        }
    }

    /// The host's gid for the tree's `gid`.
    pub fn host_gid(&self, gid: u32) -> Result<u32, Unmapped> {
        match *self {
            Ids::Mapped {
                gid_base, count, ..
            } => shift(gid_base, count, gid),
            Ids::Own => Ok(gid),
        }
    }

    /// The host's `(uid, gid)` for the tree's.
    pub fn host_owner(&self, uid: u32, gid: u32) -> Result<(u32, u32), Unmapped> {
        Ok((self.host_uid(uid)?, self.host_gid(gid)?))
    }

    /// The tree's `(uid, gid)` for a host file's owner; `None` when the
    /// owner is outside the range (not made by the command).
    pub fn guest(&self, uid: u32, gid: u32) -> Option<(u32, u32)> {
        match *self {
            Ids::Mapped {
                uid_base,
                gid_base,
                count,
            } => {
                let u = uid.checked_sub(uid_base).filter(|u| *u < count)?;
                let g = gid.checked_sub(gid_base).filter(|g| *g < count)?;
                Some((u, g))
            }
            Ids::Own => Some((uid, gid)),
        }
    }

    /// Whether files on disk get the tree's owners (moved into the range).
    pub fn owns_files(&self) -> bool {
        matches!(self, Ids::Mapped { .. })
    }

    /// A name for what was written under this mapping (trees on disk and
    /// cache mounts are kept per mapping: their owners depend on it).
    pub fn tag(&self) -> String {
        match *self {
            Ids::Mapped {
                uid_base,
                gid_base,
                count,
            } => format!("ids-{uid_base}-{gid_base}-{count}"),
            Ids::Own => "ids-own".to_string(),
        }
    }

    /// The `uid_map` / `gid_map` lines (as root).
    pub fn maps(&self) -> Option<(String, String)> {
        match *self {
            Ids::Mapped {
                uid_base,
                gid_base,
                count,
            } => Some((
                format!("0 {uid_base} {count}\n"),
                format!("0 {gid_base} {count}\n"),
            )),
            Ids::Own => None,
        }
    }
}

/// The lines of a `uid_map`/`gid_map`: (first id inside, first outside, count).
fn parse_map(text: &str) -> Vec<(u32, u32, u32)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace().map(|v| v.parse::<u32>().ok());
            Some((f.next()??, f.next()??, f.next()??))
        })
        .collect()
}

/// The range of this namespace's ids the sandbox's `0..count` become.
///
/// On a machine (this process maps every id), kiln's configured range or
/// the default one. Inside a container whose root kiln is (its ids are a
/// part of the host's), the largest run of ids it has beyond its first
/// 65536, when that holds another 65536; else the container's own ids one
/// to one: its root is already not the host's.
fn choose(
    uids: &[(u32, u32, u32)],
    gids: &[(u32, u32, u32)],
    sub_uid: Option<(u32, u32)>,
    sub_gid: Option<(u32, u32)>,
) -> Ids {
    let whole =
        |m: &[(u32, u32, u32)]| m.iter().any(|&(i, o, c)| i == 0 && o == 0 && c == u32::MAX);
    if whole(uids) && whole(gids) {
        return match (sub_uid, sub_gid) {
            (Some((ub, uc)), Some((gb, gc))) => Ids::Mapped {
                uid_base: ub,
                gid_base: gb,
                count: uc.min(gc),
            },
            _ => Ids::Mapped {
                uid_base: DEFAULT_BASE,
                gid_base: DEFAULT_BASE,
                count: DEFAULT_COUNT,
            },
        };
    }
    // The longest run of ids at or above 65536, capped at the default count.
    let beyond = |m: &[(u32, u32, u32)]| -> Option<(u32, u32)> {
        m.iter()
            .filter_map(|&(inside, _, count)| {
                let end = inside.checked_add(count)?;
                let start = inside.max(MIN_COUNT);
                (end > start).then(|| (start, (end - start).min(DEFAULT_COUNT)))
            })
            .max_by_key(|&(_, c)| c)
    };
    let run_of_zero = |m: &[(u32, u32, u32)]| {
        m.iter()
            .find(|&&(inside, _, _)| inside == 0)
            .map_or(1, |&(_, _, count)| count)
    };
    match (beyond(uids), beyond(gids)) {
        (Some((ub, uc)), Some((gb, gc))) if uc.min(gc) >= MIN_COUNT => Ids::Mapped {
            uid_base: ub,
            gid_base: gb,
            count: uc.min(gc),
        },
        _ => Ids::Mapped {
            uid_base: 0,
            gid_base: 0,
            count: run_of_zero(uids).min(run_of_zero(gids)),
        },
    }
}

fn shift(base: u32, count: u32, id: u32) -> Result<u32, Unmapped> {
    if id < count {
        Ok(base + id)
    } else {
        Err(Unmapped { id, count })
    }
}

/// `kiln`'s range in a subordinate id file (`NAME:BASE:COUNT` lines).
fn configured(text: &str) -> Option<(u32, u32)> {
    text.lines().find_map(|line| {
        let mut parts = line.trim().split(':');
        if parts.next()? != "kiln" {
            return None;
        }
        let base: u32 = parts.next()?.parse().ok()?;
        let count: u32 = parts.next()?.parse().ok()?;
        (base > 0 && count >= MIN_COUNT && base.checked_add(count).is_some())
            .then_some((base, count))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configured_range_is_kilns_line_when_it_is_usable() {
        for (text, want) in [
            ("kiln:100000:65536\n", Some((100000, 65536))),
            (
                "alice:100000:65536\nkiln:300000:70000\n",
                Some((300000, 70000)),
            ),
            ("kiln:100000:100\n", None),
            ("kiln:0:65536\n", None),
            ("kiln:4294967000:65536\n", None),
            ("kiln:x:65536\n", None),
            ("", None),
        ] {
            assert_eq!(configured(text), want, "{text:?}");
        }
    }

    #[test]
    fn the_range_fits_the_namespace_kiln_runs_in() {
        let all = [(0, 0, u32::MAX)];
        assert_eq!(
            choose(&all, &all, None, None),
            Ids::Mapped {
                uid_base: DEFAULT_BASE,
                gid_base: DEFAULT_BASE,
                count: DEFAULT_COUNT
            }
        );
        assert_eq!(
            choose(&all, &all, Some((100000, 65536)), Some((200000, 70000))),
            Ids::Mapped {
                uid_base: 100000,
                gid_base: 200000,
                count: 65536
            }
        );
        // Root of a rootless container: 65536 ids, none to spare.
        let small = [(0, 200000, 65536)];
        assert_eq!(
            choose(&small, &small, None, None),
            Ids::Mapped {
                uid_base: 0,
                gid_base: 0,
                count: 65536
            }
        );
        // A container with more ids: a range beyond its first 65536.
        let big = [(0, 100000, 1), (1, 300000, 1_000_000)];
        assert_eq!(
            choose(&big, &big, None, None),
            Ids::Mapped {
                uid_base: 65536,
                gid_base: 65536,
                count: 1_000_001 - 65536
            }
        );
        assert_eq!(parse_map("         0          0 4294967295\n"), all);
    }

    #[test]
    fn ids_move_into_the_range_and_back() {
        let ids = Ids::Mapped {
            uid_base: 1000,
            gid_base: 5000,
            count: 100,
        };
        assert_eq!(ids.host_uid(0), Ok(1000));
        assert_eq!(ids.host_gid(7), Ok(5007));
        assert_eq!(
            ids.host_uid(100),
            Err(Unmapped {
                id: 100,
                count: 100
            })
        );
        assert_eq!(ids.guest(1099, 5000), Some((99, 0)));
        assert_eq!(ids.guest(0, 5000), None);
        assert_eq!(ids.guest(1000, 5100), None);
        assert_eq!(Ids::Own.host_uid(42), Ok(42));
        assert_eq!(Ids::Own.guest(42, 7), Some((42, 7)));
    }
}

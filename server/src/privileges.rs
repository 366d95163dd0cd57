//! `--user` / `--group`: workers drop to an unprivileged account after fork, as gunicorn's do.

use crate::error::{Context, Error, Result};
use nix::unistd::{initgroups, setgid, setgroups, setuid, Gid, Group, Uid, User};

#[derive(Debug, Clone, Default)]
pub struct Owner {
    uid: Option<Uid>,
    gid: Option<Gid>,
    /// `--initgroups`: the user's name, for its supplementary groups from the group database.
    initgroups: Option<std::ffi::CString>,
}

impl Owner {
    /// Look the names up once in the master, so a typo fails at start-up, not in every worker.
    pub fn resolve(user: Option<&str>, group: Option<&str>, initgroups: bool) -> Result<Self> {
        let user = user
            .map(|name| {
                let found = match name.parse::<u32>() {
                    Ok(uid) => User::from_uid(Uid::from_raw(uid)),
                    Err(_) => User::from_name(name),
                };
                found
                    .with_context(|| format!("looking up user {name:?}"))?
                    .ok_or_else(|| Error::Invalid(format!("no such user: {name:?}")))
            })
            .transpose()?;
        let gid = match group {
            Some(name) => Some(match name.parse::<u32>() {
                Ok(gid) => Gid::from_raw(gid),
                Err(_) => {
                    Group::from_name(name)
                        .with_context(|| format!("looking up group {name:?}"))?
                        .ok_or_else(|| Error::Invalid(format!("no such group: {name:?}")))?
                        .gid
                }
            }),
            // Like gunicorn: the user's primary group when only --user is given.
            None => user.as_ref().map(|u| u.gid),
        };
        let initgroups = match (&user, initgroups) {
            (Some(user), true) => Some(
                std::ffi::CString::new(user.name.as_str())
                    .context("a user name with a NUL byte")?,
            ),
            (None, true) => return Err(Error::Invalid("--initgroups needs --user".into())),
            _ => None,
        };
        Ok(Owner {
            uid: user.map(|u| u.uid),
            gid,
            initgroups,
        })
    }

    /// Whether [`apply`](Self::apply) switches user or group.
    pub fn changes_credentials(&self) -> bool {
        self.uid.is_some() || self.gid.is_some()
    }

    /// Give a file (a unix socket we bound) to the configured user and group, if any.
    pub fn chown(&self, path: &std::path::Path) -> Result<()> {
        if self.uid.is_none() && self.gid.is_none() {
            return Ok(());
        }
        nix::unistd::chown(path, self.uid, self.gid)
            .with_context(|| format!("cannot change the owner of {}", path.display()))
    }

    /// Switch this (worker) process to the configured user and group.
    pub fn apply(&self) -> Result<()> {
        if let Some(gid) = self.gid {
            if Uid::effective().is_root() {
                match &self.initgroups {
                    // The user's groups as listed in the group database, plus `gid`.
                    Some(name) => {
                        initgroups(name, gid).with_context(|| format!("initgroups for {name:?}"))?
                    }
                    // Only `gid`: nothing of root's groups stays behind.
                    None => setgroups(&[gid]).context("setgroups")?,
                }
            }
            setgid(gid).with_context(|| format!("cannot switch to group {gid}"))?;
        }
        if let Some(uid) = self.uid {
            setuid(uid).with_context(|| format!("cannot switch to user {uid}"))?;
        }
        Ok(())
    }
}

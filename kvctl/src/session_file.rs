//! A [`Session`] kept in a file, so that one command after another (and several commands at
//! once) run in one session.
//!
//! FILE
//!
//! The file holds [`Session::to_bytes`]: a magic and a format version, then the session. A file
//! that is anything else is refused with [`Error::InvalidData`] naming it, never overwritten:
//! it may be a newer kvctl's session, or not a session at all, and only the user can say it
//! can go (`kvctl session reset`).
//!
//! SHARING
//!
//! Every change is made under an exclusive lock on a sidecar file, `FILE.lock`, which is
//! created on first use and never removed (removing a lock file that another process has open
//! lets two processes hold "the" lock at once). A process loads the session under the lock
//! ([`SessionFile::open`], which creates the file, so that processes starting together share
//! one session id), runs its requests without the lock, then saves ([`SessionFile::save`]):
//! under the lock it reads the file again, joins its copy into what it finds
//! ([`Session::merge`], a join, so processes that ran concurrently never lose each other's
//! requirements), writes the result to `FILE.tmp`, syncs it and renames it over the file. A
//! reader therefore sees the old file or the new one, never a part of one, and needs no lock.
//!
//! RESET
//!
//! [`SessionFile::reset`] removes the file under the lock. A process that loaded the session
//! before a reset finds at its save no file, or another session, and leaves it alone
//! ([`Saved::Reset`]): a reset is not undone by a command that happened to be running.

use crate::{Error, Result, Session};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

/// A session file and its lock file beside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionFile {
    path: PathBuf,
}

/// What [`SessionFile::save`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Saved {
    /// The session was joined into the file.
    Merged,
    /// The file was removed or holds another session (it was reset since this session was
    /// loaded): it was left as it is.
    Reset,
}

impl SessionFile {
    /// The session file at `path` (nothing is touched until it is used).
    pub fn new(path: impl Into<PathBuf>) -> SessionFile {
        SessionFile { path: path.into() }
    }

    /// The default file, from the environment: see [`SessionFile::default_path_from`].
    pub fn default_path() -> Option<PathBuf> {
        SessionFile::default_path_from(std::env::var_os("XDG_STATE_HOME"), std::env::var_os("HOME"))
    }

    /// The default file given `$XDG_STATE_HOME` and `$HOME`:
    /// `$XDG_STATE_HOME/chordkv/session`, else `$HOME/.local/state/chordkv/session`, else none.
    /// Empty or relative values are ignored, as the XDG base directory specification asks.
    pub fn default_path_from(
        xdg_state_home: Option<OsString>,
        home: Option<OsString>,
    ) -> Option<PathBuf> {
        let absolute = |v: Option<OsString>| v.map(PathBuf::from).filter(|p| p.is_absolute());
        absolute(xdg_state_home)
            .or_else(|| absolute(home).map(|h| h.join(".local").join("state")))
            .map(|base| base.join("chordkv").join("session"))
    }

    /// The session file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The lock file's path: the session file's with `.lock` appended.
    pub fn lock_path(&self) -> PathBuf {
        with_suffix(&self.path, ".lock")
    }

    /// The session in the file and its size in bytes; `None` if there is no file. Takes no
    /// lock: the file is only ever replaced whole.
    ///
    /// # Errors
    /// [`Error::InvalidData`] if the file is not a session this build reads; [`Error::Io`] if
    /// it cannot be read. Both name the file.
    pub fn read(&self) -> Result<Option<(Session, usize)>> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io_error("cannot read", &e)),
        };
        let session = Session::from_bytes(&bytes).map_err(|e| {
            let why = match e {
                Error::InvalidData(m) => m,
                e => e.to_string(),
            };
            Error::InvalidData(format!(
                "session file {} is unreadable: {why}",
                self.path.display()
            ))
        })?;
        Ok(Some((session, bytes.len())))
    }

    /// The session in the file, which is created with a new session if there is none (its
    /// directory too, private to the user).
    ///
    /// # Errors
    /// As [`SessionFile::read`]; [`Error::Io`] if the file or its directory cannot be made.
    pub fn open(&self) -> Result<Session> {
        let _lock = self.lock(true)?;
        if let Some((session, _)) = self.read()? {
            return Ok(session);
        }
        let session = Session::new();
        self.write(&session)?;
        Ok(session)
    }

    /// Joins `session` into the file, atomically, unless the file was reset since `session`
    /// was loaded from it.
    ///
    /// # Errors
    /// As [`SessionFile::read`]; [`Error::Io`] if the file cannot be written.
    pub fn save(&self, session: &Session) -> Result<Saved> {
        let _lock = self.lock(true)?;
        match self.read()? {
            Some((mut on_disk, _)) if on_disk.id() == session.id() => {
                on_disk.merge(session)?;
                self.write(&on_disk)?;
                Ok(Saved::Merged)
            }
            _ => Ok(Saved::Reset),
        }
    }

    /// Drops `key` from the session in the file, under the lock: nothing is required of it any
    /// more. Returns whether the session held it. (A command that loaded the session before and
    /// saves after joins its copy back in, key included: forget when no other command runs.)
    ///
    /// # Errors
    /// As [`SessionFile::read`] and [`SessionFile::save`].
    pub fn forget(&self, key: &[u8]) -> Result<bool> {
        let _lock = self.lock(false)?;
        let Some((mut session, _)) = self.read()? else {
            return Ok(false);
        };
        if !session.forget(key) {
            return Ok(false);
        }
        self.write(&session)?;
        Ok(true)
    }

    /// Removes the file; returns whether there was one. The lock file stays.
    ///
    /// # Errors
    /// [`Error::Io`] if it cannot be removed.
    pub fn reset(&self) -> Result<bool> {
        let _lock = self.lock(false)?;
        match fs::remove_file(&self.path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.io_error("cannot remove", &e)),
        }
    }

    /// Takes the exclusive lock, held until the returned file is dropped. With `create_dir`
    /// the directory is made first if it is missing.
    fn lock(&self, create_dir: bool) -> Result<File> {
        if create_dir {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                private_dir_builder()
                    .create(dir)
                    .map_err(|e| self.io_error("cannot create the directory of", &e))?;
            }
        }
        let path = self.lock_path();
        let file = private_file_options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::Io(format!("cannot open lock file {}: {e}", path.display())))?;
        file.lock()
            .map_err(|e| Error::Io(format!("cannot lock {}: {e}", path.display())))?;
        Ok(file)
    }

    /// Replaces the file with `session`: a temporary file beside it, synced, renamed over it,
    /// and the directory synced so the rename survives a crash. Call with the lock held.
    fn write(&self, session: &Session) -> Result<()> {
        let tmp = with_suffix(&self.path, ".tmp");
        let written = private_file_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(&session.to_bytes())?;
                f.sync_all()
            })
            .and_then(|()| fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(self.io_error("cannot write", &e));
        }
        sync_dir(self.path.parent());
        Ok(())
    }

    fn io_error(&self, what: &str, e: &std::io::Error) -> Error {
        Error::Io(format!("{what} session file {}: {e}", self.path.display()))
    }
}

/// `path` with `suffix` appended to its last component.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Creates directories readable by the user only.
fn private_dir_builder() -> fs::DirBuilder {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b
}

/// Opens files that, when created, are readable by the user only.
fn private_file_options() -> OpenOptions {
    let mut o = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o
}

/// Syncs a directory after a rename in it. Best effort: the rename is already atomic for every
/// reader; this only makes it durable across a crash, and not every platform can open a
/// directory to sync it.
fn sync_dir(dir: Option<&Path>) {
    let dir = match dir {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chordkv_node::id::Id;
    use chordkv_node::version::Dot;

    fn temp_dir() -> tempfile::TempDir {
        tempfile::tempdir().expect("a temporary directory")
    }

    fn dot(n: u64) -> Dot {
        Dot::new(Id::hash(b"node"), n)
    }

    #[test]
    fn the_default_path_follows_xdg_then_home() {
        let os = |s: &str| Some(OsString::from(s));
        assert_eq!(
            SessionFile::default_path_from(os("/state"), os("/home/u")),
            Some(PathBuf::from("/state/chordkv/session"))
        );
        assert_eq!(
            SessionFile::default_path_from(None, os("/home/u")),
            Some(PathBuf::from("/home/u/.local/state/chordkv/session"))
        );
        // Relative or empty values are ignored.
        assert_eq!(
            SessionFile::default_path_from(os("rel"), os("/home/u")),
            Some(PathBuf::from("/home/u/.local/state/chordkv/session"))
        );
        assert_eq!(SessionFile::default_path_from(os(""), os("")), None);
        assert_eq!(SessionFile::default_path_from(None, None), None);
    }

    #[test]
    fn open_creates_a_private_file_and_returns_the_same_session_after() {
        let tmp = temp_dir();
        let dir = tmp.path();
        let file = SessionFile::new(dir.join("a").join("b").join("session"));
        let first = file.open().expect("open");
        assert!(file.path().is_file());
        assert_eq!(file.open().expect("open again").id(), first.id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
            assert_eq!(mode(file.path()), 0o600);
            assert_eq!(mode(&dir.join("a")), 0o700);
            assert_eq!(mode(&dir.join("a").join("b")), 0o700);
        }
    }

    #[test]
    fn concurrent_saves_keep_every_requirement() {
        let tmp = temp_dir();
        let dir = tmp.path();
        let file = SessionFile::new(dir.join("session"));
        let base = file.open().expect("open");
        let threads: Vec<_> = (0..8u64)
            .map(|i| {
                let (file, mut mine) = (file.clone(), base.clone());
                std::thread::spawn(move || {
                    mine.observe_write(format!("k{i}").as_bytes(), dot(i + 1), false);
                    file.save(&mine).expect("save")
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().expect("thread"), Saved::Merged);
        }
        let (saved, _) = file.read().expect("read").expect("a file");
        assert_eq!(saved.len(), 8);
        for i in 0..8u64 {
            assert_eq!(
                saved.floor(format!("k{i}").as_bytes()).wrote,
                vec![dot(i + 1)]
            );
        }
    }

    #[test]
    fn a_corrupt_file_is_refused_and_left_alone() {
        let tmp = temp_dir();
        let dir = tmp.path();
        let file = SessionFile::new(dir.join("session"));
        fs::write(file.path(), b"not a session").expect("write");
        for got in [file.open().map(|_| ()), file.read().map(|_| ())] {
            match got {
                Err(Error::InvalidData(m)) => {
                    assert!(m.contains(&file.path().display().to_string()), "{m}");
                    assert!(m.contains("bad magic"), "{m}");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(matches!(
            file.save(&Session::new()),
            Err(Error::InvalidData(_))
        ));
        assert_eq!(fs::read(file.path()).expect("read"), b"not a session");
    }

    #[test]
    fn a_save_after_a_reset_does_not_bring_the_old_session_back() {
        let tmp = temp_dir();
        let dir = tmp.path();
        let file = SessionFile::new(dir.join("session"));
        let mut old = file.open().expect("open");
        assert!(file.reset().expect("reset"));
        assert!(
            !file.reset().expect("second reset"),
            "nothing left to remove"
        );
        old.observe_write(b"k", dot(1), false);
        assert_eq!(file.save(&old).expect("save"), Saved::Reset);
        assert!(!file.path().exists());

        // Nor into a new session started since.
        let new = file.open().expect("open");
        assert_eq!(file.save(&old).expect("save"), Saved::Reset);
        let (saved, _) = file.read().expect("read").expect("a file");
        assert_eq!((saved.id(), saved.len()), (new.id(), 0));
    }
}

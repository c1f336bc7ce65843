//! The on-disk engine, on sled 0.34.
//!
//! LAYOUT
//!
//! One sled database per node directory, with two trees:
//! - `data`: key `id || key` (the 20-byte big-endian [`Id::hash`] of the key, then the key's
//!   bytes) to the value. sled orders keys bytewise, and a fixed-width big-endian prefix makes that
//!   ring order, so [`Storage::scan_range`] is one or two sled range scans.
//! - `meta`: name to value, off the ring.
//!
//! DURABILITY
//!
//! sled writes to its log in memory and a background thread flushes and fsyncs it every 500 ms.
//! [`Storage::flush`] calls sled's synchronous `flush()`, which on Linux ends in
//! `sync_file_range(2)`: the data reaches the kernel and the device queue, so it survives a kill of
//! this process, but file metadata is not synced and the drive cache is not flushed, so a power cut
//! may still lose it until the next background fsync. On other systems sled uses `fsync`.
//!
//! CAVEATS
//!
//! sled's on-disk format is not stable across sled versions: a directory written by 0.34 must be
//! read by 0.34. sled holds an exclusive `flock` on its files, so a second open of the same
//! directory (from this process or another) fails instead of corrupting it. Dropping a database
//! does not always release that lock at once: sled's background I/O jobs can still hold the files
//! for a moment, so a reopen from the same process right after a drop can find the directory
//! locked (CI saw it once).
//! [`SledStorage::open`] therefore waits up to `LOCK_WAIT` for a lock to go before it fails.

use std::fmt;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{FlushHandle, Storage, id_spans};
use crate::id::Id;
use crate::{Error, Result};

/// How long [`SledStorage::open`] waits for another handle's lock on the directory to be released.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Width of the id prefix of every key in the `data` tree.
const ID_LEN: usize = 20;

/// A [`Storage`] engine on one sled database in a directory.
///
/// Opening reads no entries: it costs the same with a million keys as with none. (Key counts
/// are the data layer's: its hash tree counts keys as it hashes them.)
pub struct SledStorage {
    path: PathBuf,
    db: sled::Db,
    data: sled::Tree,
    meta: sled::Tree,
}

/// The page cache [`SledStorage::open`] gives sled: enough that a node's reads stay in memory
/// to a few million small keys, less than sled's own default of 1 GiB so that several nodes
/// (and test rings) share a host. It is a bound, not an allocation.
pub const DEFAULT_CACHE_BYTES: u64 = 512 << 20;

impl SledStorage {
    /// Open the database in `dir` with the default page cache ([`DEFAULT_CACHE_BYTES`]),
    /// creating the directory and an empty database if needed.
    ///
    /// # Errors
    /// [`Error::Io`] naming `dir` if sled cannot open it, e.g. because another process (or another
    /// `SledStorage` in this one) holds its lock for longer than two seconds;
    pub fn open(dir: &Path) -> Result<SledStorage> {
        SledStorage::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// [`SledStorage::open`] with a page cache of at most `cache_bytes`. Reads of keys whose
    /// pages are not cached decode them from the file again: a node whose data outgrows its
    /// cache serves gets several times slower.
    ///
    /// # Errors
    /// As [`SledStorage::open`].
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<SledStorage> {
        let deadline = Instant::now() + LOCK_WAIT;
        let db = loop {
            match sled::Config::new()
                .path(dir)
                .cache_capacity(cache_bytes)
                .open()
            {
                Ok(db) => break db,
                Err(sled::Error::Io(e)) if is_lock_contention(&e) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(Error::Io(format!(
                        "opening sled database in {}: {e}",
                        dir.display()
                    )));
                }
            }
        };
        let data = db.open_tree("data")?;
        let meta = db.open_tree("meta")?;
        Ok(SledStorage {
            path: dir.to_path_buf(),
            db,
            data,
            meta,
        })
    }

    /// The directory this database lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl fmt::Debug for SledStorage {
    // By hand: sled's own `Debug` for a tree prints every entry.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledStorage")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Whether sled failed to open because another handle holds the directory's lock. sled 0.34
/// reports it as an `Other` error whose message says so (the `flock` error inside is only text).
fn is_lock_contention(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("could not acquire lock")
}

/// The `data` tree key for `key`: its ring id, then its bytes.
fn data_key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ID_LEN + key.len());
    out.extend_from_slice(&Id::hash(key).0);
    out.extend_from_slice(key);
    out
}

/// The user key inside a `data` tree key.
fn split_key(stored: &[u8]) -> Result<&[u8]> {
    stored.get(ID_LEN..).ok_or_else(|| {
        Error::InvalidData(format!(
            "sled data key of {} bytes is shorter than its {ID_LEN}-byte id",
            stored.len()
        ))
    })
}

impl Storage for SledStorage {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.data.get(data_key(key))?.map(|v| v.to_vec()))
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>> {
        let old = self.data.insert(data_key(key), value)?;
        Ok(old.map(|v| v.to_vec()))
    }

    fn delete(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let old = self.data.remove(data_key(key))?;
        Ok(old.map(|v| v.to_vec()))
    }

    fn visit_range(
        &self,
        from: Id,
        to: Id,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        for span in id_spans(from, to).into_iter().flatten() {
            // A bare id is the smallest key with that id prefix, so `[start, end)` over stored
            // keys is exactly "every entry whose id is in [start, end)", whatever its key bytes.
            let lo = Bound::Included(span.start.0);
            let hi = match span.end {
                Some(end) => Bound::Excluded(end.0),
                None => Bound::Unbounded,
            };
            for entry in self.data.range::<[u8; ID_LEN], _>((lo, hi)) {
                let (k, v) = entry?;
                if !visit(split_key(&k)?, &v) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        // One page cache serves every tree of the database, so this covers `data` and `meta`.
        self.db.flush()?;
        Ok(())
    }

    fn flush_handle(&self) -> FlushHandle {
        // A `Db` is a shared handle to the one database: a flush through a clone covers every
        // tree, as `flush` does.
        let db = self.db.clone();
        Box::new(move || {
            db.flush()?;
            Ok(())
        })
    }

    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.meta.get(name)?.map(|v| v.to_vec()))
    }

    fn set_meta(&mut self, name: &str, value: &[u8]) -> Result<()> {
        self.meta.insert(name, value)?;
        self.flush()
    }
}

//! Listings of open view directories (`/.genfs/...`). Building one reads the index for every
//! entry, so it is built once per directory handle, at its first READDIR, and later READDIRs
//! page through it by offset; RELEASEDIR frees it. A view never changes, so one listing is
//! right for the handle's whole life (a rewind or seek included). Live directories need none:
//! their pages are range reads from a cookie (`Index::readdir`).

use crate::store::StoreResult;
use fuser::FileType;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// One entry: (node id for d_ino, type, name). Its position in the listing is its offset.
pub type Entry = (u64, FileType, Vec<u8>);

/// A handle's listing, once its first READDIR has built it.
type Slot = Arc<Mutex<Option<Arc<Vec<Entry>>>>>;

pub struct Listings {
    next: AtomicU64,
    map: Mutex<HashMap<u64, Slot>>,
}

impl Default for Listings {
    fn default() -> Self {
        // 0 is the handle of live directories: no listing.
        Listings { next: AtomicU64::new(1), map: Mutex::new(HashMap::new()) }
    }
}

impl Listings {
    /// A new directory handle, its listing not built yet (OPENDIR of a view).
    pub fn open(&self) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.map.lock().insert(fh, Arc::default());
        fh
    }

    /// The listing of handle `fh`, built with `build` the first time. Concurrent READDIRs of
    /// one handle wait for one build rather than each building. A handle this table does not
    /// know gets a listing of its own, kept by nobody.
    pub fn get(
        &self,
        fh: u64,
        build: impl FnOnce() -> StoreResult<Vec<Entry>>,
    ) -> StoreResult<Arc<Vec<Entry>>> {
        let Some(slot) = self.map.lock().get(&fh).cloned() else {
            return build().map(Arc::new);
        };
        let mut slot = slot.lock();
        if let Some(listing) = slot.as_ref() {
            return Ok(listing.clone());
        }
        let listing = Arc::new(build()?);
        *slot = Some(listing.clone());
        Ok(listing)
    }

    /// RELEASEDIR: the handle's listing goes.
    pub fn release(&self, fh: u64) {
        self.map.lock().remove(&fh);
    }

    /// Handles open (tests: every RELEASEDIR freed its listing).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_is_built_once_per_handle_and_freed_at_release() {
        let listings = Listings::default();
        let fh = listings.open();
        let mut builds = 0;
        for _ in 0..3 {
            let l = listings
                .get(fh, || {
                    builds += 1;
                    Ok(vec![(1, FileType::Directory, b".".to_vec())])
                })
                .unwrap();
            assert_eq!(l.len(), 1);
        }
        assert_eq!(builds, 1);
        // A failed build leaves nothing behind: the next READDIR tries again.
        let other = listings.open();
        assert!(listings.get(other, || Err(crate::store::StoreError::NotFound)).is_err());
        assert_eq!(listings.get(other, || Ok(Vec::new())).unwrap().len(), 0);
        listings.release(fh);
        listings.release(other);
        assert_eq!(listings.len(), 0);
        // Unknown handles (0: a live directory) get a listing kept by nobody.
        assert_eq!(listings.get(0, || Ok(Vec::new())).unwrap().len(), 0);
        assert_eq!(listings.len(), 0);
    }
}

//! History yields to live data: writes that would find the store full first thin its history
//! (`Store::thin_for_space`), and the sync thread keeps the free-space floor in the background.
//! What was dropped for space is logged and kept for `user.genfs.gc`.

use super::Core;
use crate::store::records::{Ino, Timestamp};
use crate::store::{GcReport, Pinned, StoreResult};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Space drops remembered for the gc report (older ones are only in the daemon's log).
const SPACE_LOG_ENTRIES_MAX: usize = 10_000;
/// After a thinning that found nothing, a write's next one waits this long; the background's.
/// A delete, a commit or any other record may have unprotected history (files deleted on a
/// full disk must free space at once), but not on every write while commits go on: a scan
/// reads the whole index. Nothing recorded since: wait 60 times longer (a reader's close or
/// time passing can still unprotect some).
const FRUITLESS_PAUSE_WRITE: Duration = Duration::from_millis(100);
const FRUITLESS_PAUSE_BACKGROUND: Duration = Duration::from_secs(10);
const FRUITLESS_PAUSE_UNCHANGED: u32 = 60;

/// One generation dropped for space.
#[derive(Debug, Clone)]
pub struct SpaceDrop {
    pub at: Timestamp,
    pub ino: Ino,
    pub gen: u64,
    pub size: u64,
}

#[derive(Default)]
pub struct Thinning {
    /// Held by the one thinning at a time; others wait for its outcome.
    running: parking_lot::Mutex<()>,
    /// (journal's last sequence number, time) when a thinning last found nothing to drop:
    /// scans of the whole index are spaced out after that, more while the number stays.
    fruitless: parking_lot::Mutex<Option<(u64, Instant)>>,
    log: parking_lot::Mutex<VecDeque<SpaceDrop>>,
}

impl Core {
    /// Room for `bytes` of new data: if the store is down to its reserve, history is thinned
    /// first; ENOSPC only when nothing droppable is left.
    pub(super) fn ensure_space(&self, bytes: u64) -> StoreResult<()> {
        match self.store.ensure_space(bytes) {
            Err(e) if e.errno() == libc::ENOSPC => {
                self.thin_for_space(bytes, FRUITLESS_PAUSE_WRITE)?;
                self.store.ensure_space(bytes)
            }
            other => other,
        }
    }

    /// Drops the oldest unprotected history until the floor (plus `extra`) is free again;
    /// `pause`: how long after a fruitless thinning not to try again.
    fn thin_for_space(&self, extra: u64, pause: Duration) -> StoreResult<()> {
        let _one = self.thinning.running.lock();
        let space = self.store.space_status()?;
        let need = space.shortfall(extra);
        let seq = self.store.last_seq();
        let futile = self.thinning.fruitless.lock().is_some_and(|(at, when)| {
            when.elapsed() < pause || (at == seq && when.elapsed() < pause * FRUITLESS_PAUSE_UNCHANGED)
        });
        if need == 0 || futile {
            return Ok(());
        }
        let report = {
            let _fence = self.gc_fence.write();
            let pinned = self.pinned_generations();
            self.store.thin_for_space(&pinned, need)
        };
        super::return_free_memory();
        let report = report?;
        if report.dropped.is_empty() {
            *self.thinning.fruitless.lock() = Some((self.store.last_seq(), Instant::now()));
            tracing::warn!(
                "{}: {} free, below the floor of {}, and no history left to drop",
                self.store.path().display(),
                space.free_bytes,
                space.floor_bytes
            );
            return Ok(());
        }
        *self.thinning.fruitless.lock() = None;
        self.record_space_drops(&report);
        Ok(())
    }

    /// The background half: thins when the store's filesystem is below its floor.
    pub(super) fn keep_free_floor(&self) {
        let below = self.store.space_status().map(|s| s.shortfall(0) > 0);
        match below {
            Ok(true) => {
                if let Err(e) = self.thin_for_space(0, FRUITLESS_PAUSE_BACKGROUND) {
                    tracing::error!("thinning history for space failed: {e}");
                }
            }
            Ok(false) => {}
            Err(e) => tracing::debug!("free space not known: {e}"),
        }
    }

    /// Every generation a node, view or draft still uses.
    pub(super) fn pinned_generations(&self) -> Pinned {
        let mut pinned = self.views.pinned();
        pinned.extend(self.files.pinned());
        self.nodes.add_pinned(&mut pinned);
        Pinned::from(pinned)
    }

    fn record_space_drops(&self, report: &GcReport) {
        let total: u64 = report.dropped.iter().map(|d| d.2).sum();
        tracing::warn!(
            "{}: store below its free-space floor: dropped the {} oldest unprotected generations \
             ({total} bytes of file data), freed {} bytes",
            self.store.path().display(),
            report.dropped.len(),
            report.freed_bytes
        );
        let at = Timestamp::now();
        let mut log = self.thinning.log.lock();
        for &(ino, gen, size) in &report.dropped {
            tracing::info!("dropped for space: {} generation {gen} ({size} bytes)", self.store.path_of(ino));
            log.push_back(SpaceDrop { at, ino, gen, size });
        }
        while log.len() > SPACE_LOG_ENTRIES_MAX {
            log.pop_front();
        }
    }

    /// The generations dropped for space since the mount, oldest first.
    pub(super) fn space_drops(&self) -> Vec<SpaceDrop> {
        self.thinning.log.lock().iter().cloned().collect()
    }
}

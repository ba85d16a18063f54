//! `genfs.toml`: the store's identity and fixed parameters, as simple `key = value` lines.

use super::error::{StoreError, StoreResult};
use std::path::Path;

/// Format 2 keeps the index in redb; format 1 (sled) is still opened, and moved on open.
/// Format 3 adds manifests whose slots are pieces of chunks (`records::Piece`): format-1 and -2
/// records and index values still decode as they are, so opening an older store only bumps
/// the number (after which older genfs versions refuse it, as they could not read pieces).
pub const FORMAT_VERSION: u32 = 3;
const FORMAT_OLDEST: u32 = 1;
pub const CONFIG_FILE: &str = "genfs.toml";
pub const CHUNK_BYTES_DEFAULT: u64 = 1 << 20;
pub const CHUNK_BYTES_MIN: u64 = 4 << 10;
pub const CHUNK_BYTES_MAX: u64 = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    pub format: u32,
    pub uuid: String,
    pub chunk_size: u64,
}

impl StoreConfig {
    pub fn new(chunk_size: u64) -> StoreResult<StoreConfig> {
        if !(CHUNK_BYTES_MIN..=CHUNK_BYTES_MAX).contains(&chunk_size) || !chunk_size.is_power_of_two() {
            return Err(StoreError::InvalidArgument);
        }
        Ok(StoreConfig { format: FORMAT_VERSION, uuid: random_uuid(), chunk_size })
    }

    pub fn render(&self) -> String {
        format!(
            "# genfs store: do not edit\nformat = {}\nuuid = \"{}\"\nchunk_size = {}\n",
            self.format, self.uuid, self.chunk_size
        )
    }

    pub fn load(store: &Path) -> StoreResult<StoreConfig> {
        let path = store.join(CONFIG_FILE);
        let text = match super::chunks::open_no_follow(&path).and_then(std::io::read_to_string) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotAStore(format!(
                    "{} is not a genfs store (no {CONFIG_FILE}; create one with `genfs mkfs`)",
                    store.display()
                )))
            }
            Err(e) => return Err(StoreError::io(format!("read {}", path.display()), e)),
        };
        let bad = |what: &str| StoreError::Corrupted(format!("{}: {what}", path.display()));
        let (mut format, mut uuid, mut chunk_size) = (None, None, None);
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (k, v) = line.split_once('=').ok_or_else(|| bad("malformed line"))?;
            let v = v.trim().trim_matches('"');
            match k.trim() {
                "format" => format = v.parse::<u32>().ok(),
                "uuid" => uuid = Some(v.to_string()),
                "chunk_size" => chunk_size = v.parse::<u64>().ok(),
                _ => {}
            }
        }
        let format = format.ok_or_else(|| bad("missing or bad `format`"))?;
        if format > FORMAT_VERSION {
            return Err(StoreError::NotAStore(format!(
                "{}: made by a newer genfs (store format {format}; this genfs reads format \
                 {FORMAT_VERSION}): use that genfs or a newer one",
                path.display()
            )));
        }
        if format < FORMAT_OLDEST {
            return Err(StoreError::NotAStore(format!(
                "{}: store format {format}, this genfs reads formats {FORMAT_OLDEST} to {FORMAT_VERSION}",
                path.display()
            )));
        }
        let chunk_size = chunk_size
            .filter(|c| (CHUNK_BYTES_MIN..=CHUNK_BYTES_MAX).contains(c) && c.is_power_of_two())
            .ok_or_else(|| bad("missing or bad `chunk_size`"))?;
        let uuid = uuid.ok_or_else(|| bad("missing `uuid`"))?;
        Ok(StoreConfig { format, uuid, chunk_size })
    }
}

fn random_uuid() -> String {
    let mut bytes = [0u8; 16];
    // getrandom(2) never fails for 16 bytes once the pool is initialised; fall back to time.
    // SAFETY: the buffer is valid for 16 bytes.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != 16 {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes = t.to_le_bytes();
    }
    let h: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

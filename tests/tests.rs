//! Integration tests: each mounts a real genfs through /dev/fuse (root needed).
// A test that cannot go on fails: unwrap and expect are how it says so here.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod conformance;
mod consistency;
mod daemon;
mod durability;
mod format;
mod full_disk;
mod identity;
mod load;
mod local_fs;
mod packaging;
mod posix;
mod programs;
mod security;
mod tampering;
mod util;
mod versions;
mod versions_cli;

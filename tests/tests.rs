//! Integration tests: each mounts a real genfs through /dev/fuse (root needed).
mod conformance;
mod consistency;
mod daemon;
mod durability;
mod full_disk;
mod identity;
mod load;
mod packaging;
mod posix;
mod programs;
mod tampering;
mod util;
mod versions;
mod versions_cli;

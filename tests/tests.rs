//! Integration tests: each mounts a real genfs through /dev/fuse (root needed).
mod consistency;
mod durability;
mod posix;
mod util;

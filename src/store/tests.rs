//! Store unit tests: no FUSE; faults injected through `io::FaultyIo`.

//! genfs: a versioned FUSE filesystem. Every close of a written file commits a durable,
//! immutable generation; old generations stay readable.

pub mod cli;
pub mod fs;
pub mod store;
pub mod versions;

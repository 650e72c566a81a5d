//! Files: where names resolve (only under the root), the shared map cache
//! that RRQs send from, and upload staging. Knows nothing of TFTP.

pub mod filemap;
pub mod resolve;
pub mod upload;

pub use filemap::{FileCache, Lookup, NetasciiError, Source};
pub use resolve::{PathRefusal, Root, Roots};
pub use upload::{Overwrite, Upload, UploadError, UploadLocks, UploadPolicy};

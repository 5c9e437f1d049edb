//! Shared, immutable host bytes: a view into a memory map (zero copy) or an owned buffer.

use std::ops::Range;
use std::sync::Arc;

/// An immutable byte range backed by anything that derefs to bytes and can be shared
/// (a `memmap2::Mmap`, a `Vec<u8>`), so a CPU backend can use file bytes without copying.
#[derive(Clone)]
pub struct HostBytes {
    backing: Arc<dyn AsRef<[u8]> + Send + Sync>,
    range: Range<usize>,
}

impl HostBytes {
    /// A view of `range` within `backing`; `None` if the range is out of bounds.
    pub fn new(backing: Arc<dyn AsRef<[u8]> + Send + Sync>, range: Range<usize>) -> Option<Self> {
        let len = (*backing).as_ref().len();
        (range.start <= range.end && range.end <= len).then_some(HostBytes { backing, range })
    }

    /// Own a buffer.
    pub fn from_vec(v: Vec<u8>) -> Self {
        let len = v.len();
        HostBytes {
            backing: Arc::new(v),
            range: 0..len,
        }
    }

    /// A sub-range `r` of these bytes (relative to their start), sharing the backing: zero
    /// copy, so a view into a memory map stays one. `None` if `r` is out of bounds.
    pub fn slice(&self, r: Range<usize>) -> Option<Self> {
        if r.start > r.end || r.end > self.range.len() {
            return None;
        }
        Some(HostBytes {
            backing: self.backing.clone(),
            range: self.range.start + r.start..self.range.start + r.end,
        })
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &(*self.backing).as_ref()[self.range.clone()]
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.range.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }
}

impl std::ops::Deref for HostBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

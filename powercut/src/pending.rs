//! One file's writes and truncations that no fsync has reached yet: what the
//! page cache of a real machine holds, and what a power cut destroys.
//!
//! Pure: the durable bytes are read through a closure and written through
//! [`Disk`], so the overlay is tested against a plain `Vec<u8>` model.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// The unsynced state of one regular file, on top of its backing file.
///
/// A reader sees, for each byte below [`len`](Self::len): the newest pending
/// write that covers it, else the backing file's byte if it lies in the
/// prefix that no truncation has cut since the last sync, else zero.
#[derive(Debug)]
pub(crate) struct Pending {
    /// Length of the backing file when this file's first unsynced change
    /// came. The backing file does not change until [`apply`](Self::apply).
    durable_len: u64,
    /// Backing bytes below this offset are still visible; a truncation lowers
    /// it, so that growing the file again shows zeros, not the old bytes.
    visible_durable: u64,
    /// Length of the file as readers (and `stat`) see it.
    len: u64,
    /// Unsynced writes by offset. Extents never overlap nor touch: a write
    /// next to an extent grows it, so appending stays one extent.
    extents: BTreeMap<u64, Vec<u8>>,
}

/// A write that would end beyond the largest file offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OffsetOverflow;

/// Where [`Pending::apply`] writes: the backing file (or a model of it).
pub(crate) trait Disk {
    /// Sets the length, cutting or zero-filling like `ftruncate`.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// Writes all of `data` at `offset`.
    fn write_all_at(&mut self, data: &[u8], offset: u64) -> io::Result<()>;
}

impl Disk for &File {
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn write_all_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(*self, data, offset)
    }
}

impl Pending {
    /// Nothing pending yet over a backing file of `durable_len` bytes.
    pub(crate) fn new(durable_len: u64) -> Self {
        Pending {
            durable_len,
            visible_durable: durable_len,
            len: durable_len,
            extents: BTreeMap::new(),
        }
    }

    /// The file's length as readers see it.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Bytes of unsynced writes held in memory.
    pub(crate) fn held_bytes(&self) -> u64 {
        self.extents.values().map(|e| e.len() as u64).sum()
    }

    /// Records a write of `data` at `offset`; the file grows to cover it,
    /// with zeros in any gap.
    pub(crate) fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), OffsetOverflow> {
        let end = offset.checked_add(data.len() as u64).ok_or(OffsetOverflow)?;
        if data.is_empty() {
            return Ok(());
        }
        // Start from the extent that overlaps or touches the write from
        // below, taken out and grown in place: appends are amortised O(1).
        let touching = self
            .extents
            .range(..=offset)
            .next_back()
            .filter(|(start, bytes)| **start + bytes.len() as u64 >= offset)
            .map(|(start, _)| *start);
        let (start, mut merged) = match touching {
            Some(start) => (start, self.extents.remove(&start).unwrap_or_default()),
            None => (offset, Vec::new()),
        };
        let at = to_index(offset - start);
        if merged.len() < at + data.len() {
            merged.resize(at + data.len(), 0);
        }
        merged[at..at + data.len()].copy_from_slice(data);
        // Absorb the extents the write reaches or touches from above; only
        // their bytes past the write's end are kept (the write is newer).
        loop {
            let merged_end = start + merged.len() as u64;
            let next = self.extents.range(start..=merged_end).next().map(|(s, _)| *s);
            let Some(next) = next else { break };
            let bytes = self.extents.remove(&next).unwrap_or_default();
            let skip = to_index(merged_end - next);
            if skip < bytes.len() {
                merged.extend_from_slice(&bytes[skip..]);
            }
        }
        self.extents.insert(start, merged);
        self.len = self.len.max(end);
        Ok(())
    }

    /// Records a truncation (or extension) to `len` bytes.
    pub(crate) fn truncate(&mut self, len: u64) {
        if len < self.len {
            // Drop the extents past the new end and cut the one across it.
            let beyond: Vec<u64> = self.extents.range(len..).map(|(s, _)| *s).collect();
            for start in beyond {
                self.extents.remove(&start);
            }
            if let Some((start, bytes)) = self.extents.range_mut(..len).next_back() {
                let keep = to_index(len - *start);
                bytes.truncate(keep);
            }
            self.visible_durable = self.visible_durable.min(len);
        }
        self.len = len;
    }

    /// Reads up to `size` bytes at `offset` as a reader of the file sees
    /// them; `durable` reads exactly `buf.len()` bytes of the backing file
    /// at an offset.
    pub(crate) fn read(
        &self,
        offset: u64,
        size: usize,
        mut durable: impl FnMut(u64, &mut [u8]) -> io::Result<()>,
    ) -> io::Result<Vec<u8>> {
        let end = self.len.min(offset.saturating_add(size as u64));
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = vec![0; to_index(end - offset)];
        let durable_end = end.min(self.visible_durable);
        if offset < durable_end {
            durable(offset, &mut out[..to_index(durable_end - offset)])?;
        }
        // Overlay every extent that intersects [offset, end): the last one
        // starting at or before `offset`, then those starting inside.
        let first = self.extents.range(..=offset).next_back().map(|(s, _)| *s);
        let from = first.unwrap_or(offset);
        for (start, bytes) in self.extents.range(from..end) {
            let lo = offset.max(*start);
            let hi = end.min(start + bytes.len() as u64);
            if lo < hi {
                out[to_index(lo - offset)..to_index(hi - offset)]
                    .copy_from_slice(&bytes[to_index(lo - start)..to_index(hi - start)]);
            }
        }
        Ok(out)
    }

    /// Writes the pending state to `disk`, the backing file it was created
    /// over, which then holds exactly what readers saw. The caller syncs it.
    pub(crate) fn apply(&self, mut disk: impl Disk) -> io::Result<()> {
        if self.visible_durable < self.durable_len {
            disk.set_len(self.visible_durable)?;
        }
        for (start, bytes) in &self.extents {
            disk.write_all_at(bytes, *start)?;
        }
        // Extents end at or below `len`, so this only ever zero-fills the
        // tail, or cuts what the first truncation above already cut.
        let written_end = self
            .extents
            .iter()
            .next_back()
            .map_or(0, |(start, bytes)| start + bytes.len() as u64);
        if self.len != self.visible_durable.max(written_end) {
            disk.set_len(self.len)?;
        }
        Ok(())
    }
}

/// An in-file distance as a memory index. Every distance passed here is
/// bounded by the length of a buffer already in memory.
fn to_index(distance: u64) -> usize {
    usize::try_from(distance).expect("an in-memory distance fits usize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A backing file as a vector, with the same set_len semantics.
    struct VecDisk<'a>(&'a mut Vec<u8>);

    impl Disk for VecDisk<'_> {
        fn set_len(&mut self, len: u64) -> io::Result<()> {
            self.0.resize(to_index(len), 0);
            Ok(())
        }

        fn write_all_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
            let at = to_index(offset);
            if self.0.len() < at + data.len() {
                self.0.resize(at + data.len(), 0);
            }
            self.0[at..at + data.len()].copy_from_slice(data);
            Ok(())
        }
    }

    fn read_all(pending: &Pending, backing: &[u8]) -> Vec<u8> {
        pending
            .read(0, usize::MAX / 2, |offset, buf| {
                let at = to_index(offset);
                buf.copy_from_slice(&backing[at..at + buf.len()]);
                Ok(())
            })
            .expect("reading a vector cannot fail")
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write(u64, Vec<u8>),
        Truncate(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u64..64, proptest::collection::vec(any::<u8>(), 0..16)).prop_map(|(o, d)| Op::Write(o, d)),
            1 => (0u64..80).prop_map(Op::Truncate),
        ]
    }

    proptest! {
        /// Readers see what a plain file would hold after the same writes
        /// and truncations, and applying the pending state makes the
        /// backing file hold exactly that.
        #[test]
        fn reads_and_apply_match_a_plain_file(
            backing in proptest::collection::vec(any::<u8>(), 0..48),
            ops in proptest::collection::vec(op(), 0..24),
        ) {
            let mut model = backing.clone();
            let mut pending = Pending::new(backing.len() as u64);
            for op in ops {
                match op {
                    Op::Write(offset, data) => {
                        pending.write(offset, &data).expect("small offsets");
                        // Like pwrite(2), a write of nothing does not extend.
                        if !data.is_empty() {
                            VecDisk(&mut model).write_all_at(&data, offset).expect("vector");
                        }
                    }
                    Op::Truncate(len) => {
                        pending.truncate(len);
                        model.resize(to_index(len), 0);
                    }
                }
                prop_assert_eq!(pending.len(), model.len() as u64);
                prop_assert_eq!(read_all(&pending, &backing), model.clone());
            }
            let mut disk = backing.clone();
            pending.apply(VecDisk(&mut disk)).expect("vector");
            prop_assert_eq!(disk, model);
        }
    }

    #[test]
    fn appends_grow_one_extent() {
        let mut pending = Pending::new(0);
        for i in 0..100u64 {
            pending.write(i * 10, &[1; 10]).expect("small offsets");
        }
        assert_eq!(pending.extents.len(), 1);
        assert_eq!(pending.held_bytes(), 1000);
    }

    #[test]
    fn a_truncation_hides_the_durable_tail_even_after_growing_again() {
        let backing = b"durable!".to_vec();
        let mut pending = Pending::new(8);
        pending.truncate(3);
        pending.truncate(6);
        assert_eq!(read_all(&pending, &backing), b"dur\0\0\0");
    }

    #[test]
    fn a_write_past_the_end_leaves_zeros_between() {
        let backing = b"ab".to_vec();
        let mut pending = Pending::new(2);
        pending.write(5, b"z").expect("small offsets");
        assert_eq!(read_all(&pending, &backing), b"ab\0\0\0z");
        assert_eq!(pending.write(u64::MAX, b"x"), Err(OffsetOverflow));
    }
}

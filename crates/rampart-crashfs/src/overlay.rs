//! One file's un-synced data: what the page cache holds and the disk does not yet.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// The un-synced state of one regular file over its backing file, which holds exactly what
/// was last synced. Reads see the overlay; [`Overlay::sync`] writes it down; [`Overlay::crash`]
/// forgets it.
///
/// Invariant: `keep <= size`, and every extent lies below `size`. The file as read is: bytes
/// below `keep` from the backing file, then zeros up to `size`, with the extents written over
/// both.
#[derive(Debug)]
pub(crate) struct Overlay {
    /// Written and not yet synced: non-overlapping, non-adjacent extents keyed by offset.
    dirty: BTreeMap<u64, Vec<u8>>,
    /// The file's length as its users see it.
    size: u64,
    /// How much of the backing file still shows through: its length, lowered by every
    /// truncation since the last sync (a truncation below it, then a write past it, must read
    /// zeros in between, not the old bytes).
    keep: u64,
}

impl Overlay {
    /// The overlay of a backing file `len` bytes long, with nothing un-synced.
    pub(crate) fn new(len: u64) -> Overlay {
        Overlay {
            dirty: BTreeMap::new(),
            size: len,
            keep: len,
        }
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Bytes written and not synced.
    pub(crate) fn unsynced_bytes(&self) -> u64 {
        self.dirty.values().map(|e| e.len() as u64).sum()
    }

    /// Whether a crash now would change what the file reads.
    pub(crate) fn is_dirty(&self) -> bool {
        !self.dirty.is_empty() || self.keep != self.size
    }

    /// Reads up to `len` bytes at `offset`, as the page cache would serve them.
    pub(crate) fn read(&self, backing: &File, offset: u64, len: u32) -> io::Result<Vec<u8>> {
        let end = self.size.min(offset.saturating_add(u64::from(len)));
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = vec![0; (end - offset) as usize];
        let from_backing = self.keep.min(end).saturating_sub(offset) as usize;
        if from_backing > 0 {
            read_fully_at(backing, &mut out[..from_backing], offset)?;
        }
        // The extent starting at or before `offset` may reach into the range; so may every
        // one starting inside it.
        let first = self
            .dirty
            .range(..=offset)
            .next_back()
            .map_or(offset, |(&start, _)| start);
        for (&start, data) in self.dirty.range(first..end) {
            let lo = start.max(offset);
            let hi = (start + data.len() as u64).min(end);
            if lo < hi {
                out[(lo - offset) as usize..(hi - offset) as usize]
                    .copy_from_slice(&data[(lo - start) as usize..(hi - start) as usize]);
            }
        }
        Ok(out)
    }

    /// Writes `data` at `offset`, in memory only; the file grows if it ends past its size.
    pub(crate) fn write(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = offset + data.len() as u64;
        // Merge with an extent that reaches `offset` (the usual append extends it in place)
        // and with every extent that starts inside or right after the new bytes.
        let (start, mut buf) = match self.dirty.range(..=offset).next_back() {
            Some((&s, e)) if s + e.len() as u64 >= offset => {
                (s, self.dirty.remove(&s).expect("the key was just found"))
            }
            _ => (offset, Vec::new()),
        };
        let at = (offset - start) as usize;
        if buf.len() < at + data.len() {
            buf.resize(at + data.len(), 0);
        }
        buf[at..at + data.len()].copy_from_slice(data);
        let following: Vec<u64> = self.dirty.range(offset..=end).map(|(&s, _)| s).collect();
        for s in following {
            let extent = self.dirty.remove(&s).expect("the key was just found");
            let extent_end = s + extent.len() as u64;
            if extent_end > end {
                buf.extend_from_slice(&extent[(end - s) as usize..]);
            }
        }
        self.dirty.insert(start, buf);
        self.size = self.size.max(end);
    }

    /// Sets the size to `len` (truncate, `set_len`): bytes past it are gone, and growing the
    /// file again reads zeros.
    pub(crate) fn set_size(&mut self, len: u64) {
        if len < self.size {
            let doomed: Vec<u64> = self.dirty.range(len..).map(|(&s, _)| s).collect();
            for s in doomed {
                self.dirty.remove(&s);
            }
            if let Some((&s, extent)) = self.dirty.range_mut(..len).next_back() {
                extent.truncate((len - s).min(extent.len() as u64) as usize);
            }
            self.keep = self.keep.min(len);
        }
        self.size = len;
    }

    /// Writes the overlay down to the backing file, which then holds exactly what the file
    /// reads, and forgets it. No fsync of the backing file: the host does not lose power, the
    /// simulated disk is the backing directory.
    pub(crate) fn sync(&mut self, backing: &File) -> io::Result<()> {
        if !self.is_dirty() {
            return Ok(());
        }
        let backing_len = backing.metadata()?.len();
        if backing_len > self.keep {
            backing.set_len(self.keep)?;
        }
        for (&start, data) in &self.dirty {
            backing.write_all_at(data, start)?;
        }
        backing.set_len(self.size)?;
        self.dirty.clear();
        self.keep = self.size;
        Ok(())
    }

    /// Forgets everything not synced: the file reads what its backing file holds.
    pub(crate) fn crash(&mut self, backing: &File) -> io::Result<()> {
        let len = backing.metadata()?.len();
        *self = Overlay::new(len);
        Ok(())
    }
}

/// Reads `buf.len()` bytes at `offset`, zeros where the backing file ends first (it can be
/// shorter than `keep` only if changed behind the mount's back).
fn read_fully_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf[done..].fill(0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backing(content: &[u8]) -> (tempfile::NamedTempFile, File) {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), content).unwrap();
        let file = File::options()
            .read(true)
            .write(true)
            .open(tmp.path())
            .unwrap();
        (tmp, file)
    }

    fn all(overlay: &Overlay, file: &File) -> Vec<u8> {
        overlay.read(file, 0, u32::MAX).unwrap()
    }

    #[test]
    fn writes_merge_into_one_extent_and_read_over_the_backing_bytes() {
        let (_tmp, file) = backing(b"0123456789");
        let mut overlay = Overlay::new(10);
        overlay.write(2, b"ab");
        overlay.write(6, b"cd");
        overlay.write(3, b"XYZW"); // bridges both extents
        assert_eq!(overlay.dirty.len(), 1, "{:?}", overlay.dirty);
        assert_eq!(all(&overlay, &file), b"01aXYZWd89");
        overlay.write(12, b"!"); // a gap of zeros past the end
        assert_eq!(all(&overlay, &file), b"01aXYZWd89\0\0!");
        assert_eq!(overlay.read(&file, 5, 4).unwrap(), b"ZWd8");
        assert_eq!(overlay.unsynced_bytes(), 6 + 1);
        assert_eq!(std::fs::read(_tmp.path()).unwrap(), b"0123456789");
    }

    #[test]
    fn a_truncation_hides_the_backing_bytes_past_it_until_synced() {
        let (tmp, file) = backing(b"0123456789");
        let mut overlay = Overlay::new(10);
        overlay.write(8, b"ab");
        overlay.set_size(4);
        overlay.write(6, b"x");
        assert_eq!(all(&overlay, &file), b"0123\0\0x");
        overlay.sync(&file).unwrap();
        assert!(!overlay.is_dirty());
        assert_eq!(std::fs::read(tmp.path()).unwrap(), b"0123\0\0x");
        overlay.set_size(9);
        overlay.crash(&file).unwrap();
        assert_eq!(all(&overlay, &file), b"0123\0\0x");
    }

    #[test]
    fn a_crash_forgets_what_was_not_synced() {
        let (tmp, file) = backing(b"");
        let mut overlay = Overlay::new(0);
        overlay.write(0, b"synced");
        overlay.sync(&file).unwrap();
        overlay.write(6, b" and not");
        assert_eq!(all(&overlay, &file), b"synced and not");
        overlay.crash(&file).unwrap();
        assert_eq!(all(&overlay, &file), b"synced");
        assert_eq!(std::fs::read(tmp.path()).unwrap(), b"synced");
        assert_eq!(overlay.unsynced_bytes(), 0);
    }
}

//! The HTTP/2 frame header (RFC 9113 §4.1) and the frame types and flags the adapter reads.

/// The client connection preface that precedes the first frame (RFC 9113 §3.4).
pub(crate) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Length of a frame header: 24-bit length, type, flags, 31-bit stream id.
pub(crate) const HEADER_LEN: usize = 9;

pub(crate) const TYPE_HEADERS: u8 = 0x1;
pub(crate) const TYPE_CONTINUATION: u8 = 0x9;

pub(crate) const FLAG_END_STREAM: u8 = 0x1;
pub(crate) const FLAG_END_HEADERS: u8 = 0x4;
pub(crate) const FLAG_PADDED: u8 = 0x8;
pub(crate) const FLAG_PRIORITY: u8 = 0x20;

/// Length of the stream dependency and weight a HEADERS frame carries when PRIORITY is set.
pub(crate) const PRIORITY_LEN: usize = 5;

/// The initial and smallest allowed SETTINGS_MAX_FRAME_SIZE: every peer accepts payloads this
/// large without having announced anything, so rewritten header blocks are cut at this size.
pub(crate) const MIN_MAX_FRAME_SIZE: usize = 16_384;

/// One frame header, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    /// Payload length in bytes (at most 2^24 - 1).
    pub(crate) len: usize,
    pub(crate) kind: u8,
    pub(crate) flags: u8,
    /// Stream identifier with the reserved high bit cleared, as RFC 9113 §4.1 asks of receivers.
    pub(crate) stream_id: u32,
}

impl FrameHeader {
    pub(crate) fn parse(bytes: &[u8; HEADER_LEN]) -> Self {
        FrameHeader {
            len: usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]),
            kind: bytes[3],
            flags: bytes[4],
            stream_id: u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff,
        }
    }

    /// The wire form. `len` must fit in 24 bits; callers only build frames of at most
    /// [`MIN_MAX_FRAME_SIZE`] bytes.
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        debug_assert!(self.len < 1 << 24);
        let len = (self.len as u32).to_be_bytes();
        let id = (self.stream_id & 0x7fff_ffff).to_be_bytes();
        [
            len[1], len[2], len[3], self.kind, self.flags, id[0], id[1], id[2], id[3],
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_ignores_the_reserved_bit() {
        let header = FrameHeader {
            len: 0x01_02_03,
            kind: TYPE_HEADERS,
            flags: FLAG_END_HEADERS | FLAG_END_STREAM,
            stream_id: 0x7fff_fffd,
        };
        let mut bytes = header.encode();
        assert_eq!(bytes, [1, 2, 3, 1, 5, 0x7f, 0xff, 0xff, 0xfd]);
        assert_eq!(FrameHeader::parse(&bytes), header);
        bytes[5] |= 0x80;
        assert_eq!(FrameHeader::parse(&bytes), header);
    }
}

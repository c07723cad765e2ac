//! The latency strip (`docs/latency-strip.md`): 48 cells along the top edge carrying the capture
//! time in Unix milliseconds mod 2^40 and a CRC-8, drawn into I420 frames and decoded from luma.

pub const CELLS: usize = 48;
pub const LUMA_ONE: u8 = 235;
pub const LUMA_ZERO: u8 = 16;
pub const NEUTRAL_CHROMA: u8 = 128;
/// Latencies above this are decoding errors, not measurements.
pub const MAX_PLAUSIBLE_LATENCY_MS: u64 = 600_000;
const VALUE_MASK: u64 = (1 << 40) - 1;

/// CRC-8/SMBUS: polynomial 0x07, init 0, no reflection, no final XOR.
pub fn crc8(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |mut crc, byte| {
        crc ^= byte;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 { (crc << 1) ^ 0x07 } else { crc << 1 };
        }
        crc
    })
}

/// The 48-bit word for capture time `unix_ms`, as its six big-endian bytes.
pub fn encode(unix_ms: u64) -> [u8; 6] {
    let value = unix_ms & VALUE_MASK;
    let mut word = [0u8; 6];
    word[..5].copy_from_slice(&value.to_be_bytes()[3..]);
    word[5] = crc8(&word[..5]);
    word
}

/// Cell side in pixels for a frame `width` wide.
pub fn cell_size(width: u32) -> usize {
    width as usize / CELLS
}

fn bit(word: &[u8; 6], cell: usize) -> bool {
    word[cell / 8] & (0x80 >> (cell % 8)) != 0
}

/// A mutable view of one plane of a frame.
pub struct Plane<'a> {
    pub data: &'a mut [u8],
    pub stride: usize,
}

/// Draws the strip for `unix_ms` into the planes of an I420 frame `width` wide.
pub fn draw_i420(y: Plane<'_>, u: Plane<'_>, v: Plane<'_>, width: u32, unix_ms: u64) {
    let c = cell_size(width);
    let word = encode(unix_ms);
    for row in 0..c {
        let line = &mut y.data[row * y.stride..][..CELLS * c];
        for (cell, pixels) in line.chunks_exact_mut(c).enumerate() {
            pixels.fill(if bit(&word, cell) { LUMA_ONE } else { LUMA_ZERO });
        }
    }
    // Chroma is subsampled by two both ways; round up so odd cell sizes stay covered.
    for chroma in [u, v] {
        for row in 0..c.div_ceil(2) {
            chroma.data[row * chroma.stride..][..(CELLS * c).div_ceil(2)].fill(NEUTRAL_CHROMA);
        }
    }
}

/// Decodes the strip from a luma (or grey) plane; `None` when the CRC does not match.
pub fn decode_luma(luma: &[u8], stride: usize, width: u32) -> Option<u64> {
    let c = cell_size(width);
    if c < 2 || luma.len() < stride * c {
        return None;
    }
    let half = (c / 2).max(1);
    let start = (c - half) / 2;
    let mut word = [0u8; 6];
    for cell in 0..CELLS {
        let mut sum = 0u32;
        for row in start..start + half {
            let offset = row * stride + cell * c + start;
            sum += luma[offset..offset + half].iter().map(|&p| u32::from(p)).sum::<u32>();
        }
        if sum / (half * half) as u32 > 128 {
            word[cell / 8] |= 0x80 >> (cell % 8);
        }
    }
    if crc8(&word[..5]) != word[5] {
        return None;
    }
    let mut value = [0u8; 8];
    value[3..].copy_from_slice(&word[..5]);
    Some(u64::from_be_bytes(value))
}

/// Glass-to-glass latency of a frame whose strip decoded to `value`, seen at `now_ms`.
pub fn latency_ms(value: u64, now_ms: u64) -> Option<u64> {
    let latency = now_ms.wrapping_sub(value) & VALUE_MASK;
    (latency <= MAX_PLAUSIBLE_LATENCY_MS).then_some(latency)
}

pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_check_value() {
        assert_eq!(crc8(b"123456789"), 0xF4);
    }

    #[test]
    fn spec_worked_example() {
        assert_eq!(1_795_000_000_123u64 & VALUE_MASK, 695_488_372_347);
        assert_eq!(encode(1_795_000_000_123), [0xA1, 0xEE, 0x56, 0x5E, 0x7B, 0xD4]);
    }

    fn frame(width: u32, height: u32, unix_ms: u64) -> (Vec<u8>, usize) {
        let stride = width as usize + 16; // padded, as real buffers often are
        let cstride = stride / 2;
        let mut y = vec![90u8; stride * height as usize];
        let mut u = vec![30u8; cstride * height as usize / 2];
        let mut v = vec![200u8; cstride * height as usize / 2];
        draw_i420(
            Plane { data: &mut y, stride },
            Plane { data: &mut u, stride: cstride },
            Plane { data: &mut v, stride: cstride },
            width,
            unix_ms,
        );
        assert!(u[..cstride].iter().take(CELLS * cell_size(width) / 2).all(|&p| p == NEUTRAL_CHROMA));
        (y, stride)
    }

    #[test]
    fn round_trip_at_common_widths() {
        for width in [640, 1280, 1920, 100] {
            let t = 1_795_000_000_123 + u64::from(width);
            let (y, stride) = frame(width, 96, t);
            assert_eq!(decode_luma(&y, stride, width), Some(t & VALUE_MASK), "width {width}");
        }
    }

    #[test]
    fn a_flipped_cell_fails_the_crc() {
        let (mut y, stride) = frame(1280, 96, 1_795_000_000_123);
        let c = cell_size(1280);
        for row in 0..c {
            for x in 5 * c..6 * c {
                y[row * stride + x] = 255 - y[row * stride + x];
            }
        }
        assert_eq!(decode_luma(&y, stride, 1280), None);
    }

    #[test]
    fn latency_wraps_and_rejects_nonsense() {
        let t = 1_795_000_000_123u64;
        assert_eq!(latency_ms(t & VALUE_MASK, t + 42), Some(42));
        assert_eq!(latency_ms(VALUE_MASK, (1 << 40) + 9), Some(10));
        assert_eq!(latency_ms(t & VALUE_MASK, t + 700_000), None);
    }
}

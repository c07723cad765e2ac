//! Just enough of RFC 6184 to find where a keyframe starts in a stream of RTP payloads.

const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const STAP_A: u8 = 24;
const FU_A: u8 = 28;

fn starts_access_unit_with_keyframe(nal_type: u8) -> bool {
    // The payloader sends SPS (and PPS) right before every IDR, so either marks the start.
    nal_type == NAL_SPS || nal_type == NAL_IDR
}

/// Whether this RTP payload is the first packet of a keyframe: a viewer that joins or lost
/// packets can start decoding here.
pub fn starts_keyframe(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else {
        return false;
    };
    match first & 0x1f {
        // STAP-A: 16-bit size, then a NAL, repeated. Encoders put an access unit delimiter
        // (and SEI) before the SPS, so look at every NAL it holds.
        STAP_A => stap_a_nal_types(&payload[1..]).any(starts_access_unit_with_keyframe),
        FU_A => {
            payload.get(1).is_some_and(|header| header & 0x80 != 0 && starts_access_unit_with_keyframe(header & 0x1f))
        }
        nal_type => starts_access_unit_with_keyframe(nal_type),
    }
}

fn stap_a_nal_types(mut rest: &[u8]) -> impl Iterator<Item = u8> + '_ {
    std::iter::from_fn(move || {
        let size = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
        let nal = rest.get(2..2 + size).filter(|nal| !nal.is_empty())?;
        rest = &rest[2 + size..];
        Some(nal[0] & 0x1f)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_keyframe_starts() {
        assert!(starts_keyframe(&[0x67, 0x42]), "single SPS");
        assert!(starts_keyframe(&[0x65, 0x88]), "single IDR slice");
        assert!(starts_keyframe(&[0x78, 0x00, 0x02, 0x67, 0x42]), "STAP-A starting with SPS");
        assert!(starts_keyframe(&[0x78, 0x00, 0x02, 0x09, 0xf0, 0x00, 0x02, 0x67, 0x42]), "STAP-A: AUD, then SPS");
        assert!(starts_keyframe(&[0x7c, 0x85, 0x88]), "FU-A start of an IDR");
    }

    #[test]
    fn rejects_everything_else() {
        assert!(!starts_keyframe(&[]));
        assert!(!starts_keyframe(&[0x41, 0x9a]), "non-IDR slice");
        assert!(!starts_keyframe(&[0x7c, 0x05, 0x88]), "FU-A middle of an IDR");
        assert!(!starts_keyframe(&[0x7c, 0x81]), "FU-A start of a non-IDR slice");
        assert!(!starts_keyframe(&[0x78, 0x00, 0x02, 0x68]), "STAP-A with only a PPS first");
        assert!(!starts_keyframe(&[0x78, 0x00]), "truncated STAP-A");
        assert!(
            !starts_keyframe(&[0x78, 0x00, 0x02, 0x09, 0xf0, 0x00, 0x09, 0x06]),
            "STAP-A: AUD, then a size past the end"
        );
    }
}

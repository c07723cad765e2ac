//! Which camera video can be forwarded to browsers as it is: H.264 in a profile every browser
//! decodes. Anything else is decoded and encoded again (or refused with `--transcode never`).

use gstreamer as gst;
use serde::Serialize;

/// The H.264 a source sends, as parsed by `h264parse`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct H264Profile {
    /// As GStreamer names it: `constrained-baseline`, `baseline`, `main`, `high`, `constrained-high`.
    pub profile: String,
    /// The SDP `profile-level-id` (RFC 6184 § 8.1): profile_idc, constraint flags, level_idc.
    pub profile_level_id: String,
}

/// Profiles browsers decode over WebRTC and in MSE, with the profile_idc and constraint byte
/// they are offered with.
const DECODABLE: [(&str, &str); 5] = [
    ("constrained-baseline", "42e0"),
    ("baseline", "4200"),
    ("main", "4d00"),
    ("high", "6400"),
    ("constrained-high", "640c"),
];

pub const ACCEPTED_PROFILES: &str = "H.264 constrained-baseline, baseline, main, high or constrained-high";

/// Whether parsed caps (`video/x-h264,parsed=true,…`) can be forwarded untouched, and if not, why.
pub fn forwardable(caps: &gst::StructureRef) -> Result<H264Profile, String> {
    if caps.name() != "video/x-h264" {
        return Err(format!(
            "the source sends {}, not H.264; forwarded untouched is only {ACCEPTED_PROFILES}",
            caps.name()
        ));
    }
    let profile = caps.get::<&str>("profile").map_err(|_| "its H.264 profile is unknown".to_owned())?;
    let Some((_, idc_and_flags)) = DECODABLE.iter().find(|(name, _)| *name == profile) else {
        return Err(format!("the source sends H.264 {profile}; forwarded untouched is only {ACCEPTED_PROFILES}"));
    };
    let level = caps.get::<&str>("level").ok().and_then(level_idc).unwrap_or(0x1f);
    Ok(H264Profile { profile: profile.to_owned(), profile_level_id: format!("{idc_and_flags}{level:02x}") })
}

/// level_idc of a GStreamer level name: "3.1" → 31, "4" → 40, "1b" → 11.
fn level_idc(level: &str) -> Option<u8> {
    if level == "1b" {
        return Some(11);
    }
    let (major, minor) = level.split_once('.').unwrap_or((level, "0"));
    major.parse::<u8>().ok()?.checked_mul(10)?.checked_add(minor.parse::<u8>().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(text: &str) -> gst::Structure {
        text.parse().unwrap()
    }

    #[test]
    fn browser_profiles_are_forwarded_with_their_profile_level_id() {
        gst::init().unwrap();
        let high = forwardable(&caps("video/x-h264, parsed=true, profile=high, level=(string)4")).unwrap();
        assert_eq!((high.profile.as_str(), high.profile_level_id.as_str()), ("high", "640028"));
        let main = forwardable(&caps("video/x-h264, profile=main, level=(string)3.1")).unwrap();
        assert_eq!(main.profile_level_id, "4d001f");
        let baseline = forwardable(&caps("video/x-h264, profile=constrained-baseline")).unwrap();
        assert_eq!(baseline.profile_level_id, "42e01f", "no level: 3.1");
    }

    #[test]
    fn other_video_says_what_it_is_and_what_is_accepted() {
        gst::init().unwrap();
        let err = forwardable(&caps("video/x-h264, profile=high-4:4:4")).unwrap_err();
        assert!(err.contains("high-4:4:4") && err.contains(ACCEPTED_PROFILES), "{err}");
        let err = forwardable(&caps("video/x-h265, profile=main")).unwrap_err();
        assert!(err.contains("video/x-h265"), "{err}");
        assert!(forwardable(&caps("video/x-h264, level=(string)4")).unwrap_err().contains("unknown"));
    }
}

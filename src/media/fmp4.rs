//! Fragmented MP4 (CMAF) for Low-Latency HLS: one initialisation segment per encoder, then a
//! `moof` + `mdat` per part. The boxes are mp4-atom's; this module only decides their contents.

use bytes::Bytes;
use mp4_atom::{
    Audio, Avc1, Avcc, Dinf, Dref, Encode, Esds, FourCC, Ftyp, Hdlr, Mdat, Mdhd, Mdia, Mfhd, Minf, Moof, Moov, Mp4a,
    Mvex, Mvhd, Smhd, Stbl, Stco, Stsc, Stsd, Stsz, Stts, Tfdt, Tfhd, Tkhd, Traf, Trak, Trex, Trun, TrunEntry, Url,
    Visual, Vmhd,
};

pub const VIDEO_TRACK: u32 = 1;
pub const AUDIO_TRACK: u32 = 2;
/// 90 kHz, as RTP and MPEG-TS count video.
pub const VIDEO_TIMESCALE: u32 = 90_000;

/// Sample flags (ISO/IEC 14496-12 § 8.8.3.1): a sync sample depends on no other; any other
/// depends on others and is not a sync sample.
const SYNC_SAMPLE: u32 = 0x0200_0000;
const NON_SYNC_SAMPLE: u32 = 0x0101_0000;

#[derive(Debug, thiserror::Error)]
pub enum Fmp4Error {
    #[error("bad H.264 parameter sets: {0}")]
    BadParameterSets(String),
    #[error("AAC configuration of {0} bytes (expected at least 2)")]
    BadAudioConfig(usize),
    #[error("writing MP4 boxes: {0}")]
    Encode(String),
}

/// The picture an H.264 stream describes in its parameter sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoFormat {
    pub width: u16,
    pub height: u16,
    pub sps: Vec<u8>,
    pub pps: Vec<u8>,
}

/// AAC, described by its AudioSpecificConfig (ISO/IEC 14496-3 § 1.6.2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioFormat {
    pub sample_rate: u32,
    pub channels: u16,
    pub object_type: u8,
    pub frequency_index: u8,
    pub channel_config: u8,
}

impl AudioFormat {
    pub fn from_config(config: &[u8], sample_rate: u32, channels: u16) -> Result<AudioFormat, Fmp4Error> {
        let [a, b, ..] = *config else { return Err(Fmp4Error::BadAudioConfig(config.len())) };
        Ok(AudioFormat {
            sample_rate,
            channels,
            object_type: a >> 3,
            frequency_index: ((a & 0x07) << 1) | (b >> 7),
            channel_config: (b >> 3) & 0x0f,
        })
    }
}

/// One access unit or audio frame, timed in its track's timescale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub decode_time: u64,
    pub duration: u32,
    /// Presentation less decode time (non-zero with B-frames).
    pub composition_offset: i32,
    pub sync: bool,
    /// Length-prefixed NAL units (video) or a raw AAC frame.
    pub data: Bytes,
}

/// `ftyp` + `moov` describing the tracks, with no samples of their own (all are in fragments).
pub fn init_segment(video: &VideoFormat, audio: Option<&AudioFormat>) -> Result<Bytes, Fmp4Error> {
    let avcc = Avcc::new(&video.sps, &video.pps).map_err(|err| Fmp4Error::BadParameterSets(err.to_string()))?;
    let video_entry = Avc1 {
        visual: Visual {
            data_reference_index: 1,
            width: video.width,
            height: video.height,
            horizresolution: 72.into(),
            vertresolution: 72.into(),
            frame_count: 1,
            compressor: "livegate".into(),
            depth: 24,
        },
        avcc,
        ..Default::default()
    };
    let mut traks = vec![track(
        VIDEO_TRACK,
        VIDEO_TIMESCALE,
        b"vide",
        Minf { vmhd: Some(Vmhd::default()), ..empty_minf(video_entry.into()) },
        Tkhd { width: video.width.into(), height: video.height.into(), ..Default::default() },
    )];
    if let Some(audio) = audio {
        let mut esds = Esds::default();
        let config = &mut esds.es_desc.dec_config;
        esds.es_desc.es_id = AUDIO_TRACK as u16;
        config.object_type_indication = 0x40; // MPEG-4 audio
        config.stream_type = 5; // audio
        config.dec_specific.profile = audio.object_type;
        config.dec_specific.freq_index = audio.frequency_index;
        config.dec_specific.chan_conf = audio.channel_config;
        let audio_entry = Mp4a {
            audio: Audio {
                data_reference_index: 1,
                channel_count: audio.channels,
                sample_size: 16,
                sample_rate: (audio.sample_rate.min(u16::MAX.into()) as u16).into(),
            },
            esds,
            btrt: None,
            taic: None,
        };
        traks.push(track(
            AUDIO_TRACK,
            audio.sample_rate,
            b"soun",
            Minf { smhd: Some(Smhd::default()), ..empty_minf(audio_entry.into()) },
            Tkhd { alternate_group: 1, volume: 1.into(), ..Default::default() },
        ));
    }
    let moov = Moov {
        mvhd: Mvhd {
            timescale: 1000,
            rate: 1.into(),
            volume: 1.into(),
            next_track_id: traks.len() as u32 + 1,
            ..Default::default()
        },
        mvex: Some(Mvex {
            trex: traks
                .iter()
                .map(|trak| Trex {
                    track_id: trak.tkhd.track_id,
                    default_sample_description_index: 1,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        trak: traks,
        ..Default::default()
    };
    let ftyp = Ftyp {
        major_brand: b"iso6".into(),
        minor_version: 0,
        compatible_brands: vec![b"iso6".into(), b"cmfc".into(), b"mp41".into()],
    };
    let mut out = Vec::new();
    ftyp.encode(&mut out).map_err(encode_error)?;
    moov.encode(&mut out).map_err(encode_error)?;
    Ok(out.into())
}

fn track(id: u32, timescale: u32, handler: &[u8; 4], minf: Minf, tkhd: Tkhd) -> Trak {
    Trak {
        tkhd: Tkhd { track_id: id, enabled: true, ..tkhd },
        mdia: Mdia {
            mdhd: Mdhd { timescale, language: "und".into(), ..Default::default() },
            hdlr: Hdlr { handler: FourCC::new(handler), name: "livegate".into() },
            minf,
        },
        ..Default::default()
    }
}

fn empty_minf(entry: mp4_atom::Codec) -> Minf {
    Minf {
        dinf: Dinf { dref: Dref { urls: vec![Url { location: String::new() }] } },
        stbl: Stbl {
            stsd: Stsd { codecs: vec![entry] },
            stts: Stts::default(),
            stsc: Stsc::default(),
            stsz: Stsz::default(),
            stco: Some(Stco::default()),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// One `moof` + `mdat` holding `video` then `audio` samples (either may be empty).
pub fn fragment(sequence: u32, video: &[Sample], audio: &[Sample]) -> Result<Bytes, Fmp4Error> {
    let tracks: Vec<(u32, &[Sample])> =
        [(VIDEO_TRACK, video), (AUDIO_TRACK, audio)].into_iter().filter(|(_, samples)| !samples.is_empty()).collect();
    let traf = |track_id: u32, samples: &[Sample], data_offset: i32| Traf {
        tfhd: Tfhd { track_id, default_base_is_moof: true, ..Default::default() },
        tfdt: Some(Tfdt { base_media_decode_time: samples[0].decode_time }),
        trun: vec![Trun {
            data_offset: Some(data_offset),
            entries: samples
                .iter()
                .map(|s| TrunEntry {
                    duration: Some(s.duration),
                    size: Some(s.data.len() as u32),
                    flags: Some(if s.sync { SYNC_SAMPLE } else { NON_SYNC_SAMPLE }),
                    cts: Some(s.composition_offset),
                })
                .collect(),
        }],
        ..Default::default()
    };
    let moof_with = |offsets: &[i32]| Moof {
        mfhd: Mfhd { sequence_number: sequence },
        traf: tracks.iter().zip(offsets).map(|((id, samples), offset)| traf(*id, samples, *offset)).collect(),
    };
    // The offsets do not change the moof's size: measure it, then point each track at its data.
    let mut sized = Vec::new();
    moof_with(&vec![0; tracks.len()]).encode(&mut sized).map_err(encode_error)?;
    const MDAT_HEADER: usize = 8;
    let mut offset = sized.len() + MDAT_HEADER;
    let mut offsets = Vec::with_capacity(tracks.len());
    let mut data = Vec::new();
    for (_, samples) in &tracks {
        offsets.push(offset as i32);
        for sample in samples.iter() {
            data.extend_from_slice(&sample.data);
            offset += sample.data.len();
        }
    }
    let mut out = Vec::with_capacity(offset);
    moof_with(&offsets).encode(&mut out).map_err(encode_error)?;
    Mdat { data }.encode(&mut out).map_err(encode_error)?;
    Ok(out.into())
}

fn encode_error(err: mp4_atom::Error) -> Fmp4Error {
    Fmp4Error::Encode(err.to_string())
}

/// An H.264 access unit in MP4's form.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AccessUnit {
    /// The picture's NAL units, each after its 4-byte length.
    pub data: Vec<u8>,
    pub sps: Option<Vec<u8>>,
    pub pps: Option<Vec<u8>>,
}

/// Rewrites an Annex B access unit (start codes) into length-prefixed NAL units; parameter sets
/// go to the initialisation segment instead, access unit delimiters nowhere.
pub fn access_unit(annex_b: &[u8]) -> AccessUnit {
    let mut unit = AccessUnit::default();
    for nal in nal_units(annex_b) {
        match nal[0] & 0x1f {
            7 => unit.sps = Some(nal.to_vec()),
            8 => unit.pps = Some(nal.to_vec()),
            9 => {}
            _ => {
                unit.data.extend_from_slice(&(nal.len() as u32).to_be_bytes());
                unit.data.extend_from_slice(nal);
            }
        }
    }
    unit
}

/// The NAL units between start codes (`00 00 01` or `00 00 00 01`), without trailing zeros.
fn nal_units(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let ends: Vec<usize> = starts.iter().skip(1).map(|&next| next - 3).chain(std::iter::once(data.len())).collect();
    starts.into_iter().zip(ends).filter_map(move |(start, end)| {
        let mut end = end;
        while end > start && data[end - 1] == 0 {
            end -= 1;
        }
        (end > start).then(|| &data[start..end])
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mp4_atom::Decode;

    /// x264's constrained-baseline 640x360 parameter sets.
    const SPS: &[u8] = &[
        0x67, 0x42, 0xc0, 0x1e, 0xd9, 0x00, 0xa0, 0x2f, 0xf9, 0x70, 0x11, 0x00, 0x00, 0x03, 0x00, 0x01, 0x00, 0x00,
        0x03, 0x00, 0x3c, 0x0f, 0x16, 0x2e, 0x48,
    ];
    const PPS: &[u8] = &[0x68, 0xcb, 0x83, 0xcb, 0x20];

    #[test]
    fn annex_b_becomes_length_prefixed_and_parameter_sets_move_out() {
        let mut annex_b = vec![0, 0, 0, 1, 0x09, 0xf0, 0, 0, 0, 1];
        annex_b.extend_from_slice(SPS);
        annex_b.extend_from_slice(&[0, 0, 1]);
        annex_b.extend_from_slice(PPS);
        annex_b.extend_from_slice(&[0, 0, 1, 0x65, 0xaa, 0xbb, 0, 0, 1, 0x65, 0xcc, 0]);
        let unit = access_unit(&annex_b);
        assert_eq!(unit.sps.as_deref(), Some(SPS));
        assert_eq!(unit.pps.as_deref(), Some(PPS));
        assert_eq!(unit.data, [0, 0, 0, 3, 0x65, 0xaa, 0xbb, 0, 0, 0, 2, 0x65, 0xcc]);
    }

    #[test]
    fn aac_configuration_is_read() {
        // AAC-LC, 48 kHz (index 3), stereo.
        let audio = AudioFormat::from_config(&[0x11, 0x90], 48_000, 2).unwrap();
        assert_eq!((audio.object_type, audio.frequency_index, audio.channel_config), (2, 3, 2));
        assert!(matches!(AudioFormat::from_config(&[0x11], 48_000, 2), Err(Fmp4Error::BadAudioConfig(1))));
    }

    #[test]
    fn init_segment_describes_both_tracks() {
        let video = VideoFormat { width: 640, height: 360, sps: SPS.to_vec(), pps: PPS.to_vec() };
        let audio = AudioFormat::from_config(&[0x11, 0x90], 48_000, 2).unwrap();
        let init = init_segment(&video, Some(&audio)).unwrap();
        let mut bytes: &[u8] = &init;
        let ftyp = Ftyp::decode(&mut bytes).unwrap();
        assert!(ftyp.compatible_brands.contains(&b"cmfc".into()));
        let moov = Moov::decode(&mut bytes).unwrap();
        assert_eq!(moov.trak.len(), 2);
        assert_eq!(moov.trak[0].mdia.mdhd.timescale, VIDEO_TIMESCALE);
        assert_eq!(moov.trak[1].mdia.mdhd.timescale, 48_000);
        assert_eq!(moov.mvex.unwrap().trex.len(), 2);
    }

    #[test]
    fn fragment_offsets_point_at_each_tracks_samples() {
        let sample = |decode_time, data: &'static [u8], sync| Sample {
            decode_time,
            duration: 3000,
            composition_offset: 0,
            sync,
            data: Bytes::from_static(data),
        };
        let video = [sample(90_000, b"VVVV", true), sample(93_000, b"vv", false)];
        let audio = [sample(48_000, b"AAA", true)];
        let bytes = fragment(7, &video, &audio).unwrap();
        let mut rest: &[u8] = &bytes;
        let moof = Moof::decode(&mut rest).unwrap();
        assert_eq!(moof.mfhd.sequence_number, 7);
        assert!(moof.traf.iter().all(|t| t.tfhd.default_base_is_moof));
        let at = |traf: &Traf| traf.trun[0].data_offset.unwrap() as usize;
        assert_eq!(&bytes[at(&moof.traf[0])..][..6], b"VVVVvv");
        assert_eq!(&bytes[at(&moof.traf[1])..][..3], b"AAA");
        assert_eq!(moof.traf[1].tfdt.as_ref().unwrap().base_media_decode_time, 48_000);
        assert_eq!(moof.traf[0].trun[0].entries[1].flags, Some(NON_SYNC_SAMPLE));
        assert_eq!(Mdat::decode(&mut rest).unwrap().data, b"VVVVvvAAA");
    }
}

//! Picks the camera mode closest to what was asked for, from the caps a V4L2 device offers.

use std::path::{Path, PathBuf};

use gstreamer as gst;

/// Formats we can take from a camera, in order of preference at equal size and rate: raw
/// needs no decoding, MJPEG needs a JPEG decoder but fits higher rates through USB 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CameraFormat {
    Yuy2,
    Nv12,
    I420,
    Mjpeg,
}

impl CameraFormat {
    fn from_structure(s: &gst::StructureRef) -> Option<CameraFormat> {
        match s.name().as_str() {
            "image/jpeg" => Some(CameraFormat::Mjpeg),
            "video/x-raw" => match s.get::<&str>("format").ok()? {
                "YUY2" => Some(CameraFormat::Yuy2),
                "NV12" => Some(CameraFormat::Nv12),
                "I420" => Some(CameraFormat::I420),
                _ => None,
            },
            _ => None,
        }
    }

    pub fn needs_jpeg_decoder(self) -> bool {
        self == CameraFormat::Mjpeg
    }

    fn caps_prefix(self) -> &'static str {
        match self {
            CameraFormat::Yuy2 => "video/x-raw,format=YUY2",
            CameraFormat::Nv12 => "video/x-raw,format=NV12",
            CameraFormat::I420 => "video/x-raw,format=I420",
            CameraFormat::Mjpeg => "image/jpeg",
        }
    }
}

/// One fixed mode a camera offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CameraMode {
    pub format: CameraFormat,
    pub width: i32,
    pub height: i32,
    pub fps: gst::Fraction,
}

impl CameraMode {
    pub fn caps(&self) -> gst::Caps {
        format!(
            "{},width={},height={},framerate={}/{}",
            self.format.caps_prefix(),
            self.width,
            self.height,
            self.fps.numer(),
            self.fps.denom()
        )
        .parse()
        .expect("camera caps built from parsed values")
    }

    fn fps_f64(&self) -> f64 {
        f64::from(self.fps.numer()) / f64::from(self.fps.denom())
    }
}

/// Expands caps (ranges and lists of rates) into the fixed modes they contain.
pub fn modes(caps: &gst::CapsRef) -> Vec<CameraMode> {
    let mut modes = Vec::new();
    for s in caps.iter() {
        let Some(format) = CameraFormat::from_structure(s) else {
            continue;
        };
        let (Ok(width), Ok(height)) = (s.get::<i32>("width"), s.get::<i32>("height")) else {
            continue;
        };
        let rates: Vec<gst::Fraction> = match s.value("framerate") {
            Ok(v) => {
                if let Ok(f) = v.get::<gst::Fraction>() {
                    vec![f]
                } else if let Ok(list) = v.get::<gst::List>() {
                    list.iter().filter_map(|f| f.get::<gst::Fraction>().ok()).collect()
                } else if let Ok(range) = v.get::<gst::FractionRange>() {
                    vec![range.max()]
                } else {
                    continue;
                }
            }
            Err(_) => continue,
        };
        modes.extend(rates.into_iter().filter(|f| f.numer() > 0).map(|fps| CameraMode { format, width, height, fps }));
    }
    modes
}

/// The best mode for `width`x`height` at `fps`: first one that covers the size (scaling down is
/// cheap and sharp, scaling up is neither) and the rate, then the smallest such size, then the
/// rate closest to the one asked for, then raw before MJPEG.
pub fn choose(caps: &gst::CapsRef, width: u32, height: u32, fps: u32) -> Option<CameraMode> {
    let (w, h, fps) = (width as i32, height as i32, f64::from(fps));
    modes(caps).into_iter().min_by(|a, b| {
        let key = |m: &CameraMode| {
            let covers_size = m.width >= w && m.height >= h;
            let covers_rate = m.fps_f64() + 0.01 >= fps;
            let area_distance = (i64::from(m.width) * i64::from(m.height) - i64::from(w) * i64::from(h)).abs();
            let rate_distance = ((m.fps_f64() - fps).abs() * 1000.0) as i64;
            (!covers_size, !covers_rate, area_distance, rate_distance, m.format.needs_jpeg_decoder())
        };
        key(a).cmp(&key(b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webcam_caps() -> gst::Caps {
        gst::init().unwrap();
        // What a typical UVC webcam reports: raw is slow at high sizes, MJPEG is fast.
        "video/x-raw, format=YUY2, width=1280, height=720, framerate={ 10/1, 5/1 }; \
         video/x-raw, format=YUY2, width=640, height=480, framerate={ 30/1, 15/1 }; \
         image/jpeg, width=1920, height=1080, framerate={ 30/1, 15/1 }; \
         image/jpeg, width=1280, height=720, framerate={ 60/1, 30/1 }; \
         video/x-raw, format=BGRx, width=1280, height=720, framerate=30/1"
            .parse()
            .unwrap()
    }

    #[test]
    fn prefers_mjpeg_when_raw_cannot_reach_the_rate() {
        let mode = choose(&webcam_caps(), 1280, 720, 30).unwrap();
        assert_eq!(
            (mode.format, mode.width, mode.height, mode.fps),
            (CameraFormat::Mjpeg, 1280, 720, gst::Fraction::new(30, 1))
        );
        assert_eq!(mode.caps().to_string(), "image/jpeg, width=(int)1280, height=(int)720, framerate=(fraction)30/1");
    }

    #[test]
    fn prefers_raw_when_it_fits() {
        let mode = choose(&webcam_caps(), 640, 480, 30).unwrap();
        assert_eq!((mode.format, mode.width, mode.fps), (CameraFormat::Yuy2, 640, gst::Fraction::new(30, 1)));
    }

    #[test]
    fn falls_back_to_the_closest_when_nothing_covers() {
        let mode = choose(&webcam_caps(), 3840, 2160, 30).unwrap();
        assert_eq!((mode.width, mode.height), (1920, 1080));
    }

    #[test]
    fn nothing_usable() {
        gst::init().unwrap();
        let caps: gst::Caps = "video/x-raw, format=BGRx, width=640, height=480, framerate=30/1".parse().unwrap();
        assert_eq!(choose(&caps, 640, 480, 30), None);
    }
}

/// Where Linux lists video devices, each with the name its driver reports.
pub const SYSFS_VIDEO4LINUX: &str = "/sys/class/video4linux";

/// The name a V4L2 device reports (`<sysfs>/videoN/name`), e.g. "HD Pro Webcam C920".
pub fn device_name(sysfs: &Path, device: &Path) -> Option<String> {
    let node = device.file_name()?;
    let name = std::fs::read_to_string(sysfs.join(node).join("name")).ok()?;
    Some(name.trim().to_owned()).filter(|n| !n.is_empty())
}

/// The device to open for a camera configured as `configured`: that path while it exists;
/// after an unplug, the device that came back under another number with the name the camera
/// had (the lowest such number: a USB camera's metadata node follows its capture node).
pub fn locate(sysfs: &Path, dev: &Path, configured: &Path, known_name: Option<&str>) -> Option<PathBuf> {
    if configured.exists() {
        return Some(configured.to_owned());
    }
    let known_name = known_name?;
    let mut matches: Vec<(u32, PathBuf)> = std::fs::read_dir(sysfs)
        .ok()?
        .filter_map(|entry| {
            let node = entry.ok()?.file_name().into_string().ok()?;
            let number = node.strip_prefix("video")?.parse::<u32>().ok()?;
            let device = dev.join(&node);
            (device.exists() && device_name(sysfs, &device).as_deref() == Some(known_name)).then_some((number, device))
        })
        .collect();
    matches.sort();
    matches.into_iter().next().map(|(_, device)| device)
}

#[cfg(test)]
mod locate_tests {
    use super::*;

    /// A fake sysfs and /dev: `devices` are (node, name) pairs.
    fn fake(devices: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let (sysfs, dev) = (root.path().join("sys"), root.path().join("dev"));
        std::fs::create_dir_all(&dev).unwrap();
        for (node, name) in devices {
            std::fs::create_dir_all(sysfs.join(node)).unwrap();
            std::fs::write(sysfs.join(node).join("name"), format!("{name}\n")).unwrap();
            std::fs::write(dev.join(node), "").unwrap();
        }
        (root, sysfs, dev)
    }

    #[test]
    fn an_unplugged_camera_is_found_again_by_name() {
        let (_root, sysfs, dev) = fake(&[("video0", "Lab Cam"), ("video1", "Lab Cam")]);
        let configured = dev.join("video0");
        assert_eq!(device_name(&sysfs, &configured).as_deref(), Some("Lab Cam"));
        assert_eq!(locate(&sysfs, &dev, &configured, Some("Lab Cam")), Some(configured.clone()), "still there");

        // Unplugged: nothing to open.
        let (_root, sysfs, dev) = fake(&[("video7", "Other Cam")]);
        let configured = dev.join("video0");
        assert_eq!(locate(&sysfs, &dev, &configured, Some("Lab Cam")), None);

        // Plugged back in as video2/video3 (capture and metadata nodes), beside another camera.
        let (_root, sysfs, dev) = fake(&[("video1", "Other Cam"), ("video3", "Lab Cam"), ("video2", "Lab Cam")]);
        let configured = dev.join("video0");
        assert_eq!(locate(&sysfs, &dev, &configured, Some("Lab Cam")), Some(dev.join("video2")));
        assert_eq!(locate(&sysfs, &dev, &configured, None), None, "a camera never seen has no name to look for");
    }
}

/// Where Linux lists sound cards.
pub const SYSFS_SOUND: &str = "/sys/class/sound";

/// The ALSA card number of the sound card on the same USB device as the V4L2 `device` (a
/// webcam's microphone), if there is one. A USB device's functions are interfaces (`1-1:1.0`
/// video, `1-1:1.2` audio) under one device folder (`1-1`): both `device` links lead there.
pub fn sound_card_of(video4linux: &Path, sound: &Path, device: &Path) -> Option<u32> {
    let usb_device = |interface: PathBuf| std::fs::canonicalize(interface).ok()?.parent().map(Path::to_owned);
    let camera = usb_device(video4linux.join(device.file_name()?).join("device"))?;
    let mut cards: Vec<u32> = std::fs::read_dir(sound)
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let number = entry.file_name().into_string().ok()?.strip_prefix("card")?.parse::<u32>().ok()?;
            (usb_device(entry.path().join("device"))? == camera).then_some(number)
        })
        .collect();
    cards.sort();
    cards.first().copied()
}

#[cfg(test)]
mod sound_card_tests {
    use super::*;

    #[test]
    fn the_microphone_is_the_card_on_the_cameras_usb_device() {
        let root = tempfile::tempdir().unwrap();
        let devices = root.path().join("devices/usb1");
        for interface in ["1-1/1-1:1.0", "1-1/1-1:1.2", "1-2/1-2:1.0"] {
            std::fs::create_dir_all(devices.join(interface)).unwrap();
        }
        let (v4l, sound) = (root.path().join("video4linux"), root.path().join("sound"));
        for (link, target) in [
            (v4l.join("video0"), "1-1/1-1:1.0"),
            (v4l.join("video2"), "1-2/1-2:1.0"),
            (sound.join("card0"), "1-2/1-2:1.0"),
            (sound.join("card3"), "1-1/1-1:1.2"),
        ] {
            std::fs::create_dir_all(&link).unwrap();
            std::os::unix::fs::symlink(devices.join(target), link.join("device")).unwrap();
        }
        std::fs::create_dir_all(sound.join("timer")).unwrap();
        assert_eq!(sound_card_of(&v4l, &sound, Path::new("/dev/video0")), Some(3));
        assert_eq!(sound_card_of(&v4l, &sound, Path::new("/dev/video2")), Some(0));
        assert_eq!(sound_card_of(&v4l, &sound, Path::new("/dev/video9")), None, "no such camera");
    }
}

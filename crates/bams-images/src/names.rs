//! Checking the names the image service takes from the outside: MAC addresses (from boot
//! ROMs), UUIDs, image names and target disks. Everything here ends up in URLs, boot
//! scripts and kernel command lines, so only plain characters pass.

use crate::ImageError;

/// A MAC address as `aa:bb:cc:dd:ee:ff` from the forms boot ROMs and people write
/// (`AA-BB-…`, `aabb.ccdd.eeff`, `aabbccddeeff`).
pub fn normalize_mac(raw: &str) -> Result<String, ImageError> {
    let hex: String = raw.chars().filter(|c| !matches!(c, ':' | '-' | '.')).collect();
    let separators_ok = raw.len() <= 17 && raw.chars().all(|c| c.is_ascii_hexdigit() || matches!(c, ':' | '-' | '.'));
    if !separators_ok || hex.len() != 12 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ImageError::Invalid(format!("{raw:?} is not a MAC address (like 52:54:00:12:34:56)")));
    }
    let hex = hex.to_ascii_lowercase();
    Ok((0..6).map(|i| &hex[i * 2..i * 2 + 2]).collect::<Vec<_>>().join(":"))
}

/// A new random (version 4) UUID.
pub fn new_uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// A UUID in its canonical lowercase form.
pub fn check_uuid(raw: &str) -> Result<String, ImageError> {
    let lower = raw.to_ascii_lowercase();
    let groups: Vec<&str> = lower.split('-').collect();
    let ok = groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(lower)
    } else {
        Err(ImageError::NotFound(format!("image {raw:?}")))
    }
}

/// Image and set names: 1-128 printable characters without path separators or controls.
pub fn check_name(what: &str, name: &str) -> Result<(), ImageError> {
    let ok = !name.trim().is_empty()
        && name.chars().count() <= 128
        && !name.chars().any(|c| c.is_control() || matches!(c, '/' | '\\'))
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(ImageError::Invalid(format!("invalid {what} name {name:?}: 1-128 printable characters, no '/' or '\\'")))
    }
}

/// A target disk on a machine: an absolute path under `/dev/` of plain components.
pub fn check_disk(disk: &str) -> Result<(), ImageError> {
    let rest = disk.strip_prefix("/dev/").unwrap_or("");
    let ok = !rest.is_empty()
        && disk.len() <= 128
        && rest.split('/').all(|p| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
        });
    if ok {
        Ok(())
    } else {
        Err(ImageError::Invalid(format!("invalid disk {disk:?}: a device under /dev/ such as /dev/sda")))
    }
}

/// Machine names: like host names.
pub fn check_machine_name(name: &str) -> Result<(), ImageError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ImageError::Invalid(format!("invalid machine name {name:?}: letters, digits, '-', '_', '.'")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_normalized_and_junk_refused() {
        for ok in ["52:54:00:12:34:56", "52-54-00-12-34-56", "525400123456", "5254.0012.3456", "52:54:00:AB:CD:EF"] {
            let m = normalize_mac(ok).expect(ok);
            assert_eq!(m.len(), 17, "{m}");
            assert!(m.starts_with("52:54:00:"));
        }
        assert_eq!(normalize_mac("52:54:00:AB:CD:EF").expect("mac"), "52:54:00:ab:cd:ef");
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "zz:54:00:12:34:56",
            "../../etc/passwd",
            "52 54 00 12 34 56",
            "5254001234567",
        ] {
            assert!(normalize_mac(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn uuids_names_and_disks_are_checked() {
        let u = new_uuid();
        assert_eq!(check_uuid(&u.to_uppercase()).expect("uuid"), u);
        assert_eq!(&u[14..15], "4");
        for bad in ["", "x", "../etc", "0000000-0000-0000-0000-000000000000"] {
            assert!(check_uuid(bad).is_err(), "{bad:?}");
        }
        assert!(check_name("image", "Ubuntu 24.04 lab").is_ok());
        for bad in ["", " ", "a/b", "..", "x\ny", &"n".repeat(129)] {
            assert!(check_name("image", bad).is_err(), "{bad:?}");
        }
        for ok in ["/dev/sda", "/dev/nvme0n1", "/dev/disk/by-id/ata-X_1", "/dev/vda"] {
            assert!(check_disk(ok).is_ok(), "{ok}");
        }
        for bad in ["sda", "/dev/", "/dev/../etc/shadow", "/etc/passwd", "/dev/sda b", "/dev//sda"] {
            assert!(check_disk(bad).is_err(), "{bad:?}");
        }
    }
}

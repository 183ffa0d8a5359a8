//! The parser for `mt -f /dev/nstN status` (mt-st), tested on recorded outputs of real drives.

use super::DriveStatus;

/// Parse mt-st's status table; `None` when `text` is not one (e.g. "Device or resource busy").
pub fn parse_status(text: &str) -> Option<DriveStatus> {
    let mut lines = text.lines().map(str::trim).skip_while(|l| !l.ends_with("tape drive:"));
    lines.next()?;
    let mut st = DriveStatus::default();
    let mut in_bits = false;
    for line in lines {
        if in_bits {
            st.flags.extend(line.split_whitespace().map(str::to_string));
            continue;
        }
        if let Some(rest) = line.strip_prefix("File number=") {
            // "1, block number=0, partition=0."
            let mut parts = rest.split(',');
            st.file_number = parts.next().and_then(|v| v.trim().parse().ok()).filter(|n: &i64| *n >= 0);
            st.block_number = parts
                .next()
                .and_then(|p| p.trim().strip_prefix("block number="))
                .and_then(|v| v.trim().parse().ok())
                .filter(|n: &i64| *n >= 0);
        } else if let Some(rest) = line.strip_prefix("Tape block size ") {
            // "0 bytes. Density code 0x58 (LTO-5)."
            st.block_size = rest.split_whitespace().next().and_then(|v| v.parse().ok());
            st.density = rest.split_once("Density code ").map(|(_, d)| d.trim_end_matches('.').trim().to_string());
        } else if line.starts_with("General status bits on") {
            in_bits = true;
        }
    }
    st.write_protected = st.flags.iter().any(|f| f == "WR_PROT");
    st.online = st.flags.iter().any(|f| f == "ONLINE");
    Some(st)
}

//! Property tests over every parser of text or bytes that comes from outside: the outputs of
//! mtx, mt, lvs/vgs, zfs and tgtadm, journal and log lines, Bacula configs, and what a tape
//! cartridge holds. Inputs are noise and mutations of the recorded real outputs the parsers
//! are tested against: never a panic, never an unbounded loop or allocation.

use std::path::Path;

use bams_appliance::tape::device::{Record, TapeDevice, TapeError};
use bams_appliance::tape::vtl::Position;
use proptest::prelude::*;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name))
        .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// Real outputs to mutate.
fn corpus() -> Vec<String> {
    let mut v = Vec::new();
    for dir in ["mtx", "mt"] {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(dir);
        let mut names: Vec<_> = std::fs::read_dir(&base).expect("fixtures").flatten().map(|e| e.path()).collect();
        names.sort();
        v.extend(names.iter().map(|p| std::fs::read_to_string(p).expect("fixture")));
    }
    for f in ["lvs.json", "lvs-empty.json", "vgs.json", "zfs-list.txt", "tgtadm-show-session.txt", "scst.conf"] {
        v.push(fixture(f));
    }
    v
}

/// Mutate text at char boundaries: replace, duplicate or drop lines and flip characters.
fn mutate(base: &str, ops: &[(u8, usize, char)]) -> String {
    let mut lines: Vec<String> = base.lines().map(str::to_string).collect();
    for &(op, at, c) in ops {
        if lines.is_empty() {
            lines.push(c.to_string());
            continue;
        }
        let i = at % lines.len();
        match op % 5 {
            0 => lines[i].push(c),
            1 => {
                let l = lines[i].clone();
                lines.insert(i, l);
            }
            2 => {
                lines.remove(i);
            }
            3 => {
                let cut: String = lines[i].chars().take(at % 40).collect();
                lines[i] = cut;
            }
            _ => lines[i] = lines[i].replace(|ch: char| ch.is_ascii_digit(), &c.to_string()),
        }
    }
    lines.join("\n")
}

fn ops() -> impl Strategy<Value = Vec<(u8, usize, char)>> {
    prop::collection::vec((any::<u8>(), any::<usize>(), any::<char>()), 0..10)
}

fn every_parser(text: &str) {
    let _ = bams_appliance::tape::mtx::parse_status(text);
    let _ = bams_appliance::tape::mt::parse_status(text);
    let _ = bams_appliance::lvm::parse_vgs(text);
    let _ = bams_appliance::lvm::parse_lvs(text);
    let _ = bams_appliance::zfs::parse_list(text);
    let _ = bams_appliance::iscsi::tgt::parse_show(text);
    let _ = bams_appliance::iscsi::tgt::parse_accounts(text);
    let _ = bams_appliance::disk::parse_mountinfo(text);
    let _ = bams_appliance::logs::parse_since(text, 1_700_000_000_000_000);
    for line in text.lines() {
        let _ = bams_appliance::logs::parse_journal_line(line);
        let _ = bams_appliance::logs::parse_file_line(line);
    }
    let shown = bams_appliance::bacula::redact_secrets(text);
    let _ = bams_appliance::bacula::restore_secrets(&shown, text, "pw");
}

/// A cartridge whose records are given: what a hostile or damaged tape can hold.
struct Cartridge {
    records: Vec<Record>,
    at: usize,
}

impl TapeDevice for Cartridge {
    fn barcode(&self) -> &str {
        "FUZZ01L8"
    }
    fn rewind(&mut self) -> Result<(), TapeError> {
        self.at = 0;
        Ok(())
    }
    fn write(&mut self, _: &[u8]) -> Result<(), TapeError> {
        Ok(())
    }
    fn write_filemark(&mut self) -> Result<(), TapeError> {
        Ok(())
    }
    fn read(&mut self) -> Result<Record, TapeError> {
        let r = self.records.get(self.at).cloned().unwrap_or(Record::EndOfData);
        self.at += 1;
        Ok(r)
    }
    fn forward_filemarks(&mut self, _: u64) -> Result<(), TapeError> {
        Ok(())
    }
    fn to_end_of_data(&mut self) -> Result<(), TapeError> {
        self.at = self.records.len();
        Ok(())
    }
    fn position(&self) -> Position {
        Position { file: 0, block: self.at as u64, offset: 0 }
    }
    fn remaining(&self) -> Option<u64> {
        None
    }
    fn write_protected(&self) -> bool {
        true
    }
}

fn record() -> impl Strategy<Value = Record> {
    prop_oneof![
        Just(Record::Filemark),
        Just(Record::EndOfData),
        prop::collection::vec(any::<u8>(), 0..200).prop_map(Record::Data),
        // Plausible records: a length-prefixed JSON header and bytes, or JSON trailers.
        (any::<u32>(), "[a-z/.]{0,20}", any::<u64>(), any::<u64>()).prop_map(|(n, path, off, total)| {
            let h = format!(r#"{{"path":"{path}","offset":{off},"total":{total},"blake3":"00"}}"#);
            let mut r = (if n % 3 == 0 { n } else { h.len() as u32 }).to_le_bytes().to_vec();
            r.extend_from_slice(h.as_bytes());
            r.extend_from_slice(b"data");
            Record::Data(r)
        }),
        (any::<u32>(), "[a-z0-9-]{0,12}").prop_map(|(n, id)| Record::Data(
            format!(r#"{{"kind":"continues","set_id":"{id}","next_part":{n}}}"#).into_bytes()
        )),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn command_outputs_parse_or_fail_cleanly(pick in any::<usize>(), ops in ops(), noise in ".{0,300}") {
        every_parser(&noise);
        let corpus = corpus();
        every_parser(&mutate(&corpus[pick % corpus.len()], &ops));
    }

    #[test]
    fn tape_records_decode_or_fail_cleanly(records in prop::collection::vec(record(), 0..12)) {
        for r in &records {
            if let Record::Data(bytes) = r {
                if let Ok(bams_appliance::tape::set::SetRecord::Piece(h, _)) = bams_appliance::tape::set::parse_record(bytes) {
                    prop_assert!(!h.path.starts_with('/') && !h.path.split('/').any(|c| c == ".." || c.is_empty()));
                }
            }
        }
        let mut cart = Cartridge { records, at: 0 };
        let _ = bams_appliance::tape::volume::read_label(&mut cart);
        let _ = bams_appliance::tape::set::read_part_header(&mut cart);
    }
}

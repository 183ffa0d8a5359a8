//! Tape: mtx/mt parsers on recorded outputs of real changers and drives
//! (fixtures/TAPE-SOURCES.md), the mtx changer's exact command vectors, and the virtual
//! library's behaviour (what the server and the tape tier run on).

use std::sync::Arc;

use bams_appliance::runner::{CmdOutput, ScriptedRunner};
use bams_appliance::tape::mtx::{parse_status, MtxChanger};
use bams_appliance::tape::vtl::{VirtualLibrary, VtlShape};
use bams_appliance::tape::{self, Changer, Source};
use bams_appliance::ApplianceError;

fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn barcodes(lib: &tape::Library) -> Vec<Option<String>> {
    lib.slots.iter().map(|s| s.barcode.clone()).collect()
}

#[test]
fn mtx_two_drives_with_import_export_and_cleaning_cartridge() {
    let lib = parse_status(&fixture("mtx/lto9-2drives-24slots-ie.txt")).expect("parse");
    assert_eq!(lib.changer, "/dev/sg25");
    assert_eq!(lib.drives.len(), 2);
    let d0 = lib.drives[0].loaded.as_ref().expect("drive 0 loaded");
    assert_eq!((d0.barcode.as_deref(), d0.home_slot), (Some("042142L9"), Some(8)));
    assert_eq!(lib.drives[1].loaded.as_ref().and_then(|l| l.barcode.as_deref()), Some("HER002L9"));
    assert_eq!(lib.slots.len(), 24);
    assert_eq!(lib.slots.iter().filter(|s| s.import_export).count(), 1);
    let ie = lib.slot(24).expect("slot 24");
    assert!(ie.import_export && ie.full && ie.barcode.as_deref() == Some("HER003L9"));
    assert!(lib.slot(12).expect("12").cleaning);
    assert!(!lib.slot(8).expect("8").full);
    assert_eq!(lib.slots.iter().filter(|s| s.full).count(), 23);
    // Loading the cleaning cartridge, or into a full drive, is refused before the robot moves.
    assert!(
        matches!(lib.plan_load(0, &Source::Slot(1)), Err(ApplianceError::Conflict(m)) if m.contains("drive 0 is full"))
    );
    assert!(matches!(lib.plan_unload(0, None), Ok(8)));
    assert!(matches!(lib.plan_unload(0, Some(1)), Err(ApplianceError::Conflict(m)) if m.contains("slot 1 is full")));
}

#[test]
fn mtx_trailing_blanks_sense_noise_and_no_final_newline() {
    let q = parse_status(&fixture("mtx/quantum-1drive-8slots.txt")).expect("quantum");
    assert_eq!(q.drives[0].loaded.as_ref().and_then(|l| l.barcode.as_deref()), Some("NDD311L3"));
    assert_eq!(q.slot(8).expect("8").barcode.as_deref(), Some("NDD312L3"), "trailing blanks trimmed");
    assert_eq!(q.slots.len(), 8);

    let w = parse_status(&fixture("mtx/unit-attention-1drive-7slots.txt")).expect("unit attention");
    assert_eq!(w.changer, "/dev/sg5");
    assert!(w.drives[0].loaded.is_none());
    assert_eq!(w.slots.len(), 7);
    assert_eq!(w.slot(1).expect("1").barcode.as_deref(), Some("000711L4"));
    assert!(matches!(w.plan_load(0, &Source::Barcode("A00014L5".into())), Ok(4)));
    assert!(matches!(w.plan_load(0, &Source::Barcode("NOPE01L5".into())), Err(ApplianceError::NotFound(_))));

    let l = parse_status(&fixture("mtx/lto9-1drive-24slots-no-newline.txt")).expect("lto9");
    assert_eq!(l.changer, "/dev/sch0");
    assert_eq!(l.drives[0].loaded.as_ref().and_then(|x| x.home_slot), Some(24));
    assert!(!l.slot(24).expect("24").full, "the last line has no newline");
    assert!(l.slot(2).expect("2").cleaning);

    let e = parse_status(&fixture("mtx/2drives-30slots-empty.txt")).expect("empty");
    assert_eq!((e.drives.len(), e.slots.len()), (2, 30));
    assert!(e.slots.iter().all(|s| !s.full && s.barcode.is_none()));
    assert!(matches!(e.plan_load(1, &Source::Slot(3)), Err(ApplianceError::Conflict(m)) if m == "slot 3 is empty"));
    assert!(matches!(e.plan_unload(0, None), Err(ApplianceError::Conflict(m)) if m == "drive 0 is empty"));
    assert!(matches!(e.plan_load(2, &Source::Slot(3)), Err(ApplianceError::NotFound(_))));
    assert!(matches!(e.plan_load(0, &Source::Slot(31)), Err(ApplianceError::NotFound(_))));
}

#[test]
fn mtx_unknown_home_slot_alternate_tags_and_garbage() {
    let text = "  Storage Changer /dev/sg1:1 Drives, 2 Slots ( 0 Import/Export )\n\
Data Transfer Element 0:Full (Unknown Storage Element Loaded):VolumeTag = ABC123L6:AlternateVolumeTag = XYZ\n\
      Storage Element 1:Full \n      Storage Element 2:Empty\n";
    let lib = parse_status(text).expect("parse");
    let d = lib.drives[0].loaded.as_ref().expect("loaded");
    assert_eq!((d.barcode.as_deref(), d.home_slot), (Some("ABC123L6"), None));
    assert!(lib.slot(1).expect("1").full && lib.slot(1).expect("1").barcode.is_none(), "no barcode reader");
    // Unknown home slot: unload goes to the first empty storage slot.
    assert!(matches!(lib.plan_unload(0, None), Ok(2)));
    assert!(parse_status("mtx: No such file or directory\n").is_err());
    assert!(parse_status("Data Transfer Element zero:Empty\n").is_err());
}

#[test]
fn mt_status_of_real_drives() {
    use bams_appliance::tape::mt::parse_status;
    let w = parse_status(&fixture("mt/ibm-td5-after-write.txt")).expect("td5");
    assert_eq!((w.file_number, w.block_number, w.block_size), (Some(1), Some(0), Some(0)));
    assert_eq!(w.density.as_deref(), Some("0x58 (no translation)"));
    assert!(w.online && w.flags.contains(&"EOF".to_string()) && !w.write_protected);
    let n = parse_status(&fixture("mt/no-tape.txt")).expect("no tape");
    assert!(!n.online && n.file_number.is_none() && n.flags.contains(&"DR_OPEN".to_string()));
    let p = parse_status(&fixture("mt/dds3-write-protected-bot.txt")).expect("dds3");
    assert!(p.write_protected && p.online && p.flags.contains(&"BOT".to_string()));
    assert_eq!(p.density.as_deref(), Some("0x25 (DDS-3)"));
    let s = parse_status(&fixture("mt/lto4-stk-bot.txt")).expect("stk");
    assert_eq!((s.file_number, s.block_number), (Some(0), Some(0)), "no final period");
    assert!(parse_status("/dev/nst0: Device or resource busy\n").is_none());
}

#[tokio::test]
async fn mtx_changer_runs_exact_vectors_and_reports_robot_failures() {
    let status = fixture("mtx/unit-attention-1drive-7slots.txt");
    let after = status.replacen(
        "Data Transfer Element 0:Empty",
        "Data Transfer Element 0:Full (Storage Element 2 Loaded):VolumeTag = A00008L5",
        1,
    );
    let after = after.replacen("Storage Element 2:Full :VolumeTag=A00008L5", "Storage Element 2:Empty", 1);
    let runner = Arc::new(
        ScriptedRunner::default()
            .expect(["mtx", "-f", "/dev/sg5", "status"], CmdOutput::ok(&status))
            .expect(["mtx", "-f", "/dev/sg5", "load", "2", "0"], CmdOutput::ok(""))
            .expect(["mtx", "-f", "/dev/sg5", "status"], CmdOutput::ok(&after))
            .expect(["mtx", "-f", "/dev/sg5", "status"], CmdOutput::ok(&after))
            .expect(["mt", "-f", "/dev/nst0", "offline"], CmdOutput::ok(""))
            .expect(
                ["mtx", "-f", "/dev/sg5", "unload", "2", "0"],
                CmdOutput::failed(
                    1,
                    "Unloading drive 0 into Storage Element 2...mtx: Request Sense: Sense Key=Illegal Request",
                ),
            )
            .expect(["mt", "-f", "/dev/nst0", "status"], CmdOutput::ok(&fixture("mt/ibm-td5-after-write.txt")))
            .expect(["mtx", "-f", "/dev/sg5", "status"], CmdOutput::ok(&after))
            .expect(["mtx", "-f", "/dev/sg5", "transfer", "3", "2"], CmdOutput::ok(""))
            .expect(["mtx", "-f", "/dev/sg5", "status"], CmdOutput::ok(&after))
            .expect(["mtx", "-f", "/dev/sg5", "status"], CmdOutput::ok(&after)),
    );
    let changer = MtxChanger::new(runner.clone(), "/dev/sg5", vec!["/dev/nst0".into()]);
    let lib = tape::load(&changer, 0, &Source::Barcode("A00008L5".into())).await.expect("load");
    assert_eq!(lib.drives[0].device.as_deref(), Some("/dev/nst0"));
    assert_eq!(lib.drives[0].loaded.as_ref().and_then(|l| l.home_slot), Some(2));
    let failed = tape::unload(&changer, 0, None).await.expect_err("robot failure");
    match failed {
        ApplianceError::Command(bams_appliance::runner::RunError::Failed { stderr, .. }) => {
            assert!(stderr.contains("Illegal Request"), "{stderr}")
        }
        other => panic!("{other:?}"),
    }
    let st = changer.drive_status(0).await.expect("mt status");
    assert_eq!(st.file_number, Some(1));
    assert!(matches!(changer.drive_status(1).await, Err(ApplianceError::NotFound(_))));
    // Slot to slot, checked against the status first (slot 2 is empty in this capture).
    tape::transfer(&changer, 3, 2).await.expect("transfer");
    assert!(
        matches!(tape::transfer(&changer, 2, 4).await, Err(ApplianceError::Conflict(m)) if m.contains("slot 2 is empty"))
    );
    assert!(runner.finished(), "{:?}", runner.seen());
}

#[tokio::test]
async fn virtual_library_moves_cartridges_like_a_robot_and_persists() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shape = VtlShape { drives: 2, slots: 6, import_export: 1, cartridges: 4, ..VtlShape::default() };
    let vtl = VirtualLibrary::open_or_create(dir.path(), &shape).expect("create");
    let lib = vtl.status().await.expect("status");
    assert_eq!((lib.drives.len(), lib.slots.len()), (2, 7));
    assert!(lib.slot(7).expect("ie").import_export);
    assert_eq!(
        barcodes(&lib)[..5],
        [Some("VT0001L8".into()), Some("VT0002L8".into()), Some("VT0003L8".into()), Some("VT0004L8".into()), None]
    );

    let lib = tape::load(&vtl, 1, &Source::Barcode("VT0003L8".into())).await.expect("load");
    assert!(!lib.slot(3).expect("3").full);
    assert_eq!(
        lib.drives[1].loaded.as_ref().map(|l| (l.barcode.clone(), l.home_slot)),
        Some((Some("VT0003L8".into()), Some(3)))
    );
    let st = vtl.drive_status(1).await.expect("drive status");
    assert!(st.online && st.flags.contains(&"BOT".to_string()));
    assert_eq!(st.capacity_bytes, Some(256 << 20));
    assert!(vtl.drive_status(0).await.expect("empty drive").flags.contains(&"DR_OPEN".to_string()));

    // Operator mistakes are refused and change nothing.
    assert!(
        matches!(tape::load(&vtl, 1, &Source::Slot(1)).await, Err(ApplianceError::Conflict(m)) if m.contains("drive 1 is full"))
    );
    assert!(
        matches!(tape::load(&vtl, 0, &Source::Slot(5)).await, Err(ApplianceError::Conflict(m)) if m == "slot 5 is empty")
    );
    assert!(
        matches!(tape::load(&vtl, 0, &Source::Barcode("VT0003L8".into())).await, Err(ApplianceError::Conflict(m)) if m.contains("already in drive 1"))
    );
    assert!(matches!(tape::unload(&vtl, 0, None).await, Err(ApplianceError::Conflict(m)) if m == "drive 0 is empty"));
    assert!(matches!(tape::unload(&vtl, 1, Some(1)).await, Err(ApplianceError::Conflict(m)) if m == "slot 1 is full"));
    assert!(matches!(tape::load(&vtl, 9, &Source::Slot(1)).await, Err(ApplianceError::NotFound(_))));

    // A new cartridge enters through the mail slot; reopening keeps every position.
    assert_eq!(vtl.add_cartridge("NEW001L8", 8 << 20).expect("import"), 7);
    assert!(matches!(vtl.add_cartridge("NEW001L8", 8 << 20), Err(ApplianceError::Conflict(_))));
    assert!(matches!(vtl.add_cartridge("bad/../x", 8 << 20), Err(ApplianceError::Invalid(_))));
    vtl.set_write_protected("VT0003L8", true).expect("write protect");
    let reopened = VirtualLibrary::open_or_create(dir.path(), &VtlShape { drives: 9, ..shape }).expect("reopen");
    let lib = reopened.status().await.expect("status");
    assert_eq!(lib.drives.len(), 2, "an existing library keeps its shape");
    assert_eq!(lib.slot(7).expect("7").barcode.as_deref(), Some("NEW001L8"));
    assert!(reopened.drive_status(1).await.expect("status").write_protected);
    let lib = tape::unload(&reopened, 1, None).await.expect("unload home");
    assert_eq!(lib.slot(3).expect("3").barcode.as_deref(), Some("VT0003L8"));
    assert!(lib.drives.iter().all(|d| d.loaded.is_none()));
}

#[tokio::test]
async fn virtual_library_stays_consistent_under_concurrent_moves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shape = VtlShape { drives: 4, slots: 8, import_export: 0, cartridges: 8, ..VtlShape::default() };
    let vtl = VirtualLibrary::open_or_create(dir.path(), &shape).expect("create");
    // Eight tasks race for four drives, each loading then unloading its own cartridge a few
    // times; a failed race is a clean Conflict, and no cartridge is ever lost or duplicated.
    let mut tasks = Vec::new();
    for i in 0..8u32 {
        let v = vtl.clone();
        tasks.push(tokio::spawn(async move {
            let mut moved = 0;
            for round in 0..5 {
                let drive = (i + round) % 4;
                match tape::load(&v, drive, &Source::Barcode(format!("VT{:04}L8", i + 1))).await {
                    Ok(_) => {
                        tape::unload(&v, drive, None).await.expect("unload own cartridge");
                        moved += 1;
                    }
                    Err(ApplianceError::Conflict(_)) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            moved
        }));
    }
    let mut moved = 0;
    for t in tasks {
        moved += t.await.expect("task");
    }
    assert!(moved > 0);
    let lib = vtl.status().await.expect("status");
    let mut seen: Vec<String> = lib.slots.iter().filter_map(|s| s.barcode.clone()).collect();
    seen.sort();
    assert_eq!(seen, (1..=8).map(|i| format!("VT{i:04}L8")).collect::<Vec<_>>());
}

#[tokio::test]
async fn virtual_drive_records_filemarks_end_of_medium_write_protect_and_labels() {
    use bams_appliance::tape::device::{Record, TapeDevice, TapeError, VirtualDrive};
    use bams_appliance::tape::volume;
    let dir = tempfile::tempdir().expect("tempdir");
    let shape = VtlShape { drives: 1, slots: 4, import_export: 1, cartridges: 2, ..VtlShape::default() };
    let vtl = VirtualLibrary::open_or_create(dir.path(), &shape).expect("create");
    tape::load(&vtl, 0, &Source::Barcode("VT0001L8".into())).await.expect("load");

    let mut d = VirtualDrive::open(&vtl, 0).expect("open");
    assert!(volume::read_label(&mut d).expect("blank").is_none());
    let l = volume::label(&mut d, "daily", false).expect("label");
    assert_eq!((l.barcode.as_str(), l.pool.as_str()), ("VT0001L8", "daily"));
    assert!(
        matches!(volume::label(&mut d, "daily", false), Err(TapeError::Appliance(ApplianceError::Conflict(m))) if m.contains("use force"))
    );
    assert!(volume::label(&mut d, "bad pool!", true).is_err());
    // Records and filemarks after the label, read back in order.
    d.to_end_of_data().expect("eod");
    for r in [&b"one"[..], b"two", b"three"] {
        d.write(r).expect("write");
    }
    d.write_filemark().expect("fm");
    d.write(b"second file").expect("write");
    assert_eq!(d.position().file, 2);
    d.rewind().expect("rewind");
    d.forward_filemarks(1).expect("fsf");
    let mut got = Vec::new();
    loop {
        match d.read().expect("read") {
            Record::Data(b) => got.push(String::from_utf8(b).expect("utf8")),
            Record::Filemark => got.push("|".into()),
            Record::EndOfData => break,
        }
    }
    assert_eq!(got, ["one", "two", "three", "|", "second file"]);
    // Writing in the middle erases what followed, as on tape.
    d.rewind().expect("rewind");
    d.forward_filemarks(1).expect("fsf");
    d.write(b"replaced").expect("write");
    assert_eq!(d.read().expect("read"), Record::EndOfData);
    assert!(d.forward_filemarks(5).is_err());

    // The head position survives closing; the cartridge cannot be unloaded while in use.
    let pos = d.position();
    assert!(matches!(tape::unload(&vtl, 0, None).await, Err(ApplianceError::Conflict(m)) if m.contains("in use")));
    d.close().expect("close");
    assert_eq!(VirtualDrive::open(&vtl, 0).expect("reopen").position(), pos);
    tape::unload(&vtl, 0, None).await.expect("unload");

    // A small cartridge fills up: the record that does not fit is refused, the rest reads back.
    vtl.add_cartridge("SMALL1L8", 1 << 20).expect("import");
    tape::load(&vtl, 0, &Source::Barcode("SMALL1L8".into())).await.expect("load small");
    let mut d = VirtualDrive::open(&vtl, 0).expect("open");
    let block = vec![7u8; 300 << 10];
    let mut written = 0;
    let full = loop {
        match d.write(&block) {
            Ok(()) => written += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(full, TapeError::EndOfMedium { ref barcode } if barcode == "SMALL1L8"), "{full}");
    assert_eq!(written, 3);
    assert!(d.remaining().expect("a virtual cartridge knows its room") < block.len() as u64);
    d.rewind().expect("rewind");
    for _ in 0..written {
        assert_eq!(d.read().expect("read"), Record::Data(block.clone()));
    }
    assert_eq!(d.read().expect("read"), Record::EndOfData);
    d.close().expect("close");
    tape::unload(&vtl, 0, None).await.expect("unload");

    // Write-protected: reads work, writes are refused.
    vtl.set_write_protected("VT0001L8", true).expect("protect");
    tape::load(&vtl, 0, &Source::Barcode("VT0001L8".into())).await.expect("load");
    let mut d = VirtualDrive::open(&vtl, 0).expect("open");
    assert_eq!(volume::read_label(&mut d).expect("label").map(|l| l.pool), Some("daily".into()));
    assert!(matches!(d.write(b"x"), Err(TapeError::WriteProtected { .. })));
    d.close().expect("close");
    tape::unload(&vtl, 0, None).await.expect("unload");

    // Foreign data is recognised and only erased on purpose.
    std::fs::write(vtl.cartridge_path("VT0002L8"), b"\x01\x03\x00\x00\x00tar").expect("foreign");
    tape::load(&vtl, 0, &Source::Barcode("VT0002L8".into())).await.expect("load");
    let mut d = VirtualDrive::open(&vtl, 0).expect("open");
    assert!(matches!(volume::read_label(&mut d), Err(TapeError::Corrupt { .. })));
    assert!(
        matches!(volume::label(&mut d, "daily", false), Err(TapeError::Appliance(ApplianceError::Conflict(m))) if m.contains("not a BAMS label"))
    );
    volume::label(&mut d, "daily", true).expect("forced label");
    std::fs::OpenOptions::new()
        .append(true)
        .open(vtl.cartridge_path("VT0002L8"))
        .expect("open")
        .set_len(3)
        .expect("cut");
    assert!(matches!(volume::read_label(&mut d), Err(TapeError::Corrupt { .. })), "a cut record is reported");
}

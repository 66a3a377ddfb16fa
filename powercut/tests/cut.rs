//! What survives a power cut, file by file, through the real kernel
//! (README.md, "What survives a cut").

mod support;

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};

use support::Rig;

fn contents(path: &std::path::Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[test]
fn a_write_without_fsync_is_gone_after_a_cut() {
    let rig = Rig::new();
    fs::write(rig.path("f"), b"never synced").unwrap();
    assert_eq!(
        contents(&rig.path("f")),
        b"never synced",
        "reads see unsynced data, like the page cache"
    );
    assert_eq!(rig.mount().pending_bytes(), 12);

    let cut = rig.mount().cut_power();

    assert_eq!((cut.files, cut.bytes), (1, 12));
    assert_eq!(rig.mount().pending_bytes(), 0);
    // The name was created on the disk at once; its contents never were.
    assert_eq!(contents(&rig.path("f")), b"");
}

#[test]
fn a_write_with_fsync_survives_a_cut() {
    let rig = Rig::new();
    let mut f = File::create(rig.path("f")).unwrap();
    f.write_all(b"synced").unwrap();
    f.sync_data().unwrap();
    drop(f);
    assert_eq!(
        contents(&rig.on_disk("f")),
        b"synced",
        "fsync wrote it to the backing file"
    );

    let cut = rig.mount().cut_power();

    assert_eq!(cut.bytes, 0);
    assert_eq!(contents(&rig.path("f")), b"synced");
}

#[test]
fn only_the_synced_prefix_survives_a_cut() {
    let rig = Rig::new();
    let mut f = File::create(rig.path("log")).unwrap();
    f.write_all(b"one,two,").unwrap();
    f.sync_all().unwrap();
    f.write_all(b"three,").unwrap();
    assert_eq!(
        contents(&rig.on_disk("log")),
        b"one,two,",
        "the disk holds the synced prefix only"
    );

    rig.mount().cut_power();

    assert_eq!(contents(&rig.path("log")), b"one,two,");
}

#[test]
fn a_write_through_an_o_dsync_handle_survives_a_cut() {
    use std::os::unix::fs::OpenOptionsExt;
    let rig = Rig::new();
    let dsync = rustix::fs::OFlags::DSYNC.bits() as i32;
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(dsync)
        .open(rig.path("f"))
        .unwrap();
    f.write_all(b"synced as written").unwrap();

    rig.mount().cut_power();

    assert_eq!(contents(&rig.path("f")), b"synced as written");
}

#[test]
fn a_rename_after_fsync_survives_a_cut() {
    // Redis's manifest, an upload completed: write a temporary file, fsync
    // it, rename it over the real name.
    let rig = Rig::new();
    fs::write(rig.path("manifest"), b"old").unwrap();
    File::open(rig.path("manifest")).unwrap().sync_all().unwrap();
    let mut tmp = File::create(rig.path("temp-manifest")).unwrap();
    tmp.write_all(b"new").unwrap();
    tmp.sync_all().unwrap();
    drop(tmp);
    fs::rename(rig.path("temp-manifest"), rig.path("manifest")).unwrap();

    rig.mount().cut_power();

    assert_eq!(contents(&rig.path("manifest")), b"new");
    assert!(!rig.path("temp-manifest").exists());
}

#[test]
fn a_rename_before_fsync_leaves_an_empty_file_after_a_cut() {
    // The classic bug this filesystem exists to catch: renaming a file into
    // place without fsyncing it first.
    let rig = Rig::new();
    fs::write(rig.path("manifest"), b"old").unwrap();
    File::open(rig.path("manifest")).unwrap().sync_all().unwrap();
    fs::write(rig.path("temp-manifest"), b"new").unwrap();
    fs::rename(rig.path("temp-manifest"), rig.path("manifest")).unwrap();
    assert_eq!(
        contents(&rig.path("manifest")),
        b"new",
        "unsynced data moves with the renamed file"
    );

    rig.mount().cut_power();

    assert_eq!(contents(&rig.path("manifest")), b"");
}

#[test]
fn a_truncation_without_fsync_is_undone_by_a_cut() {
    let rig = Rig::new();
    let mut f = File::create(rig.path("f")).unwrap();
    f.write_all(b"durable").unwrap();
    f.sync_all().unwrap();
    f.set_len(3).unwrap();
    assert_eq!(contents(&rig.path("f")), b"dur");

    rig.mount().cut_power();

    assert_eq!(contents(&rig.path("f")), b"durable");
}

#[test]
fn open_files_are_stale_after_a_cut_and_new_ones_work() {
    let rig = Rig::new();
    let mut f = File::create(rig.path("f")).unwrap();
    f.write_all(b"synced").unwrap();
    f.sync_all().unwrap();
    let mut reader = File::open(rig.path("f")).unwrap();

    rig.mount().cut_power();

    let eio = |r: std::io::Result<()>| r.expect_err("a stale handle fails").raw_os_error();
    assert_eq!(eio(f.write_all(b"more")), Some(5));
    assert_eq!(eio(f.sync_all()), Some(5));
    assert_eq!(eio(reader.read(&mut [0; 8]).map(drop)), Some(5));
    // A file opened after the cut is the new boot's.
    let mut again = OpenOptions::new().append(true).open(rig.path("f")).unwrap();
    again.write_all(b", again").unwrap();
    again.sync_all().unwrap();
    assert_eq!(contents(&rig.path("f")), b"synced, again");
}

#[test]
fn directories_renames_and_unlinks_are_on_the_disk_at_once() {
    // Namespace operations are not held back: they survive a cut without a
    // directory fsync (README.md, "What is not modelled").
    let rig = Rig::new();
    fs::create_dir(rig.path("partial")).unwrap();
    fs::create_dir(rig.path("completed")).unwrap();
    let mut upload = File::create(rig.path("partial/u1")).unwrap();
    upload.write_all(b"bytes").unwrap();
    upload.sync_data().unwrap();
    drop(upload);
    fs::rename(rig.path("partial/u1"), rig.path("completed/u1")).unwrap();
    fs::write(rig.path("gone"), b"x").unwrap();
    fs::remove_file(rig.path("gone")).unwrap();

    rig.mount().cut_power();

    assert_eq!(contents(&rig.path("completed/u1")), b"bytes");
    assert!(!rig.path("partial/u1").exists());
    assert!(!rig.path("gone").exists());
}

#[test]
fn a_remount_after_a_cut_shows_what_was_synced() {
    let mut rig = Rig::new();
    let mut f = File::create(rig.path("f")).unwrap();
    f.write_all(b"synced").unwrap();
    f.sync_all().unwrap();
    f.write_all(b" lost").unwrap();
    drop(f);

    rig.mount().cut_power();
    rig.remount();

    assert_eq!(contents(&rig.path("f")), b"synced");
}

#[test]
fn a_clean_unmount_writes_unsynced_data_to_the_disk() {
    // Like umount(8), which writes back dirty pages: only a cut loses them.
    let mut rig = Rig::new();
    fs::write(rig.path("f"), b"written, not synced").unwrap();

    rig.remount();

    assert_eq!(contents(&rig.on_disk("f")), b"written, not synced");
    assert_eq!(contents(&rig.path("f")), b"written, not synced");
}

#[test]
fn an_unlinked_file_keeps_its_data_while_open() {
    let rig = Rig::new();
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(rig.path("f"))
        .unwrap();
    f.write_all(b"scratch").unwrap();
    fs::remove_file(rig.path("f")).unwrap();
    let mut read = String::new();
    std::io::Seek::rewind(&mut f).unwrap();
    f.read_to_string(&mut read).unwrap();
    assert_eq!(read, "scratch");
    assert_eq!(
        fs::metadata(rig.path("f")).map_err(|e| e.kind()).err(),
        Some(ErrorKind::NotFound)
    );
}

#[test]
fn mounting_over_a_missing_backing_directory_says_so() {
    let mountpoint = tempfile::tempdir().unwrap();
    let missing = mountpoint.path().join("no-such-disk");

    let error = drover_powercut::PowerCutFs::mount(&missing, mountpoint.path()).unwrap_err();

    assert!(matches!(error, drover_powercut::Error::Backing { .. }), "{error}");
}

//! What survives a power cut, file by file, through the real kernel
//! (README.md, "What survives a cut"). A file's contents need an fsync of
//! the file; its name (created, renamed, removed) needs an fsync of a
//! directory.

mod support;

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::Path;

use support::Rig;

fn contents(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn exists(path: &Path) -> bool {
    match fs::symlink_metadata(path) {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::NotFound => false,
        Err(e) => panic!("stat {}: {e}", path.display()),
    }
}

/// Commits every namespace change so far, as the upload store's `sync_dir`
/// and Redis's `fsyncFileDir` do.
fn sync_dir(dir: &Path) {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .unwrap_or_else(|e| panic!("fsync of directory {}: {e}", dir.display()));
}

/// Writes `name`, fsyncs it and its directory: durable, contents and name.
fn write_durably(rig: &Rig, name: &str, bytes: &[u8]) {
    let path = rig.path(name);
    File::create(&path)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    sync_dir(path.parent().expect("a file in a directory"));
}

#[test]
fn a_write_without_fsync_is_gone_after_a_cut() {
    let rig = Rig::new();
    fs::write(rig.path("f"), b"never synced").unwrap();
    sync_dir(&rig.path(""));
    assert_eq!(
        contents(&rig.path("f")),
        b"never synced",
        "reads see unsynced data, like the page cache"
    );
    assert_eq!(rig.mount().pending_bytes(), 12);

    let cut = rig.mount().cut_power();

    assert_eq!((cut.files, cut.bytes), (1, 12));
    assert_eq!(rig.mount().pending_bytes(), 0);
    // Its name was committed by the directory fsync; its contents never were.
    assert_eq!(contents(&rig.path("f")), b"");
}

#[test]
fn a_write_with_fsync_survives_a_cut() {
    let rig = Rig::new();
    let mut f = File::create(rig.path("f")).unwrap();
    f.write_all(b"synced").unwrap();
    f.sync_data().unwrap();
    drop(f);
    sync_dir(&rig.path(""));
    assert_eq!(
        contents(&rig.on_disk("f")),
        b"synced",
        "fsync wrote it to the backing file"
    );

    let cut = rig.mount().cut_power();

    assert_eq!((cut.bytes, cut.namespace_changes), (0, 0));
    assert_eq!(contents(&rig.path("f")), b"synced");
}

#[test]
fn a_file_fsynced_in_a_directory_never_fsynced_is_gone_after_a_cut() {
    let rig = Rig::new();
    let mut f = File::create(rig.path("f")).unwrap();
    f.write_all(b"synced, but nameless").unwrap();
    f.sync_all().unwrap();

    let cut = rig.mount().cut_power();

    assert_eq!(cut.namespace_changes, 1);
    assert!(!exists(&rig.path("f")));
    assert!(!exists(&rig.on_disk("f")));
}

#[test]
fn only_the_synced_prefix_survives_a_cut() {
    let rig = Rig::new();
    let mut f = File::create(rig.path("log")).unwrap();
    sync_dir(&rig.path(""));
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
    sync_dir(&rig.path(""));
    f.write_all(b"synced as written").unwrap();

    rig.mount().cut_power();

    assert_eq!(contents(&rig.path("f")), b"synced as written");
}

#[test]
fn a_rename_after_fsync_and_a_directory_fsync_survives_a_cut() {
    // Redis's manifest, the upload store's meta: write a temporary file,
    // fsync it, rename it over the real name, fsync the directory.
    let rig = Rig::new();
    write_durably(&rig, "manifest", b"old");
    let mut tmp = File::create(rig.path("temp-manifest")).unwrap();
    tmp.write_all(b"new").unwrap();
    tmp.sync_all().unwrap();
    drop(tmp);
    fs::rename(rig.path("temp-manifest"), rig.path("manifest")).unwrap();
    sync_dir(&rig.path(""));

    rig.mount().cut_power();

    assert_eq!(contents(&rig.path("manifest")), b"new");
    assert!(!exists(&rig.path("temp-manifest")));
}

#[test]
fn a_rename_without_a_directory_fsync_is_undone_by_a_cut() {
    let rig = Rig::new();
    write_durably(&rig, "manifest", b"old");
    write_durably(&rig, "temp-manifest", b"new");
    fs::rename(rig.path("temp-manifest"), rig.path("manifest")).unwrap();
    assert_eq!(contents(&rig.path("manifest")), b"new");

    let cut = rig.mount().cut_power();

    assert_eq!(cut.namespace_changes, 1);
    assert_eq!(contents(&rig.path("manifest")), b"old", "the replaced file is back");
    assert_eq!(contents(&rig.path("temp-manifest")), b"new");
}

#[test]
fn a_rename_before_fsync_leaves_an_empty_file_after_a_cut() {
    // The classic bug: renaming a file into place without fsyncing it
    // first. The directory fsync commits the rename; the contents were
    // never written.
    let rig = Rig::new();
    write_durably(&rig, "manifest", b"old");
    fs::write(rig.path("temp-manifest"), b"new").unwrap();
    fs::rename(rig.path("temp-manifest"), rig.path("manifest")).unwrap();
    sync_dir(&rig.path(""));
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
    write_durably(&rig, "f", b"durable");
    let f = OpenOptions::new().write(true).open(rig.path("f")).unwrap();
    f.set_len(3).unwrap();
    assert_eq!(contents(&rig.path("f")), b"dur");

    rig.mount().cut_power();

    assert_eq!(contents(&rig.path("f")), b"durable");
}

#[test]
fn open_files_are_stale_after_a_cut_and_new_ones_work() {
    let rig = Rig::new();
    write_durably(&rig, "f", b"synced");
    let mut f = OpenOptions::new().append(true).open(rig.path("f")).unwrap();
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
fn the_upload_store_sequence_survives_a_cut() {
    // Drover's upload store: each directory made durable by fsyncing its
    // parent, bytes by fdatasync, completion by renaming into completed/
    // and fsyncing both directories.
    let rig = Rig::new();
    for dir in ["partial", "partial/u1", "completed"] {
        fs::create_dir(rig.path(dir)).unwrap();
        sync_dir(rig.path(dir).parent().unwrap());
    }
    let mut data = File::create(rig.path("partial/u1/data")).unwrap();
    sync_dir(&rig.path("partial/u1"));
    data.write_all(b"bytes").unwrap();
    data.sync_data().unwrap();
    drop(data);
    write_durably(&rig, "completed/u1.json", b"{}");
    fs::rename(rig.path("partial/u1/data"), rig.path("completed/u1")).unwrap();
    sync_dir(&rig.path("completed"));
    sync_dir(&rig.path("partial/u1"));
    fs::remove_dir(rig.path("partial/u1")).unwrap();

    let cut = rig.mount().cut_power();

    assert_eq!(cut.namespace_changes, 1, "only the last rmdir was uncommitted");
    assert_eq!(contents(&rig.path("completed/u1")), b"bytes");
    assert_eq!(contents(&rig.path("completed/u1.json")), b"{}");
    assert!(!exists(&rig.path("partial/u1/data")));
    assert!(rig.path("partial/u1").is_dir(), "the uncommitted rmdir is undone");
}

#[test]
fn a_directory_fsync_commits_every_earlier_namespace_change() {
    let rig = Rig::new();
    write_durably(&rig, "kept", b"kept");
    write_durably(&rig, "removed", b"removed");
    write_durably(&rig, "moved", b"moved");
    fs::create_dir(rig.path("empty")).unwrap();
    sync_dir(&rig.path(""));

    fs::remove_file(rig.path("removed")).unwrap();
    fs::rename(rig.path("moved"), rig.path("elsewhere")).unwrap();
    fs::remove_dir(rig.path("empty")).unwrap();
    fs::create_dir(rig.path("new")).unwrap();
    // Fsyncing "new" commits every change before it, in any directory
    // (an ordered journal), but not the one after.
    write_durably(&rig, "new/f", b"in a new directory");
    fs::remove_file(rig.path("kept")).unwrap();

    let cut = rig.mount().cut_power();

    assert_eq!(
        cut.namespace_changes, 1,
        "one change came after the last directory fsync"
    );
    assert_eq!(contents(&rig.path("kept")), b"kept");
    assert!(!exists(&rig.path("removed")));
    assert_eq!(contents(&rig.path("elsewhere")), b"moved");
    assert!(!exists(&rig.path("empty")));
    assert_eq!(contents(&rig.path("new/f")), b"in a new directory");
}

#[test]
fn every_kind_of_namespace_change_is_undone() {
    let rig = Rig::new();
    write_durably(&rig, "removed", b"removed");
    write_durably(&rig, "moved", b"moved");
    write_durably(&rig, "replaced", b"replaced");
    fs::create_dir(rig.path("empty")).unwrap();
    sync_dir(&rig.path(""));

    fs::create_dir(rig.path("new")).unwrap();
    fs::write(rig.path("new/f"), b"x").unwrap();
    fs::remove_file(rig.path("removed")).unwrap();
    fs::rename(rig.path("moved"), rig.path("new/moved")).unwrap();
    fs::rename(rig.path("new/f"), rig.path("replaced")).unwrap();
    fs::remove_dir(rig.path("empty")).unwrap();

    let cut = rig.mount().cut_power();

    assert_eq!(cut.namespace_changes, 6);
    assert!(!exists(&rig.path("new")));
    assert_eq!(contents(&rig.path("removed")), b"removed");
    assert_eq!(contents(&rig.path("moved")), b"moved");
    assert_eq!(contents(&rig.path("replaced")), b"replaced");
    assert!(rig.path("empty").is_dir());
    let mut names: Vec<_> = fs::read_dir(rig.path(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["empty", "moved", "removed", "replaced"],
        "the graveyard stays hidden"
    );
}

#[test]
fn a_removed_directory_comes_back_with_what_was_removed_from_it() {
    let rig = Rig::new();
    fs::create_dir(rig.path("d")).unwrap();
    write_durably(&rig, "d/g", b"g");
    fs::create_dir(rig.path("empty")).unwrap();
    fs::create_dir(rig.path("moved")).unwrap();
    sync_dir(&rig.path(""));

    fs::remove_file(rig.path("d/g")).unwrap();
    fs::remove_dir(rig.path("d")).unwrap();
    // A directory renamed over an empty one.
    fs::rename(rig.path("moved"), rig.path("empty")).unwrap();
    fs::write(rig.path("empty/f"), b"").unwrap();
    assert_eq!(
        fs::remove_dir(rig.path("empty")).map_err(|e| e.kind()).err(),
        Some(ErrorKind::DirectoryNotEmpty),
        "rmdir keeps its checks, though it moves the directory to the graveyard"
    );

    let cut = rig.mount().cut_power();

    assert_eq!(cut.namespace_changes, 4);
    assert_eq!(contents(&rig.path("d/g")), b"g");
    assert!(rig.path("empty").is_dir() && rig.path("moved").is_dir());
    assert!(!exists(&rig.path("empty/f")));
}

#[test]
fn a_remount_after_a_cut_shows_what_was_synced() {
    let mut rig = Rig::new();
    write_durably(&rig, "f", b"synced");
    let mut f = OpenOptions::new().append(true).open(rig.path("f")).unwrap();
    f.write_all(b" lost").unwrap();
    drop(f);
    fs::write(rig.path("g"), b"lost with its name").unwrap();

    rig.mount().cut_power();
    rig.remount();

    assert_eq!(contents(&rig.path("f")), b"synced");
    assert!(!exists(&rig.path("g")));
}

#[test]
fn a_clean_unmount_writes_everything_to_the_disk() {
    // Like umount(8), which writes back dirty pages and commits the
    // journal: only a cut loses anything.
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
    assert!(!exists(&rig.path("f")));
}

#[test]
fn mounting_over_a_missing_backing_directory_says_so() {
    let mountpoint = tempfile::tempdir().unwrap();
    let missing = mountpoint.path().join("no-such-disk");

    let error = drover_powercut::PowerCutFs::mount(&missing, mountpoint.path()).unwrap_err();

    assert!(matches!(error, drover_powercut::Error::Backing { .. }), "{error}");
}

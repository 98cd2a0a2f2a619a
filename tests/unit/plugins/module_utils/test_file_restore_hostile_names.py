"""Extraction never writes outside the destination: hostile guest names ('..', '/' inside a name, absolute-looking
and device names, control characters, undecodable bytes), symlinks in the guest and in the destination, force."""
import os

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError
from ansible_collections.hyperv.backup.plugins.module_utils.guestfs import extract
from ansible_collections.hyperv.backup.plugins.module_utils.guestfs.filesystem import ChunkCache, open_filesystem
from ansible_collections.hyperv.backup.plugins.module_utils.guestfs.partitions import read_partitions
from ansible_collections.hyperv.backup.plugins.module_utils.lab import guest_filesystems

from test_file_restore import FileReader

MiB = 1024 * 1024


@pytest.fixture
def hostile_fs(tmp_path):
    """An ext4 partition whose names were patched in the image after mkfs (Linux cannot create them): '..', 'a/b'."""
    source = tmp_path / "source"
    (source / "dir").mkdir(parents=True)
    (source / "ok.txt").write_bytes(b"fine\n")
    (source / "zz").write_bytes(b"escape via dotdot\n")           # becomes '..'
    (source / "a_b").write_bytes(b"slash inside a name\n")          # becomes 'a/b'
    (source / "CON").write_bytes(b"device\n")
    (source / "nul.txt").write_bytes(b"device with extension\n")
    (source / "back\\slash").write_bytes(b"windows separator\n")
    (source / "ctl\x01name").write_bytes(b"control\n")
    (source / "dir" / "inner.txt").write_bytes(b"inner\n")
    os.symlink("/etc/passwd", str(source / "link"))
    with open(os.path.join(str(source).encode(), b"bad\xffutf8"), "wb") as handle:
        handle.write(b"undecodable\n")
    raw = str(tmp_path / "disk.raw")
    guest_filesystems.build_image(raw, 32 * MiB, [{"type": "ext4", "source": str(source)}], scheme="mbr")
    with open(raw, "r+b") as handle:
        data = handle.read()
        for old, new in ((b"\x02\x01zz", b"\x02\x01.."), (b"\x03\x01a_b", b"\x03\x01a/b")):   # name_len, file type, name
            position = data.find(old)
            assert position > 0, old
            handle.seek(position)
            handle.write(new)
    disk = ChunkCache(FileReader(raw))
    return open_filesystem(disk, read_partitions(disk)[0], "disk")


def outside(tmp_path, dest):
    """Every path under tmp_path that is not under dest (the source fixture and image excluded)."""
    out = set()
    for root, dirs, files in os.walk(str(tmp_path)):
        for name in dirs + files:
            full = os.path.join(root, name)
            if not full.startswith(dest + os.sep) and not full.startswith(str(tmp_path / "source")):
                out.add(full)
    return out


def test_hostile_names_are_skipped_and_nothing_lands_outside(tmp_path, hostile_fs):
    dest = str(tmp_path / "dest")
    before = outside(tmp_path, dest)
    result = extract.extract(hostile_fs, ["/"], dest)
    assert outside(tmp_path, dest) - before == {dest}
    reasons = {item["path"]: item["reason"] for item in result["skipped"]}
    # The patched '..' entry is indistinguishable from the directory's own '..' and is never listed or written.
    assert not [f for f in result["files"] if "escape" in open(f["target"], "rb").read().decode()]
    assert "path separator" in reasons["/a/b"]
    assert "Windows device name" in reasons["/CON"] and "Windows device name" in reasons["/nul.txt"]
    assert "path separator" in reasons["/back\\slash"]
    assert "control character" in reasons["/ctl\x01name"]
    assert "not valid Unicode" in [r for p, r in reasons.items() if p.startswith("/bad")][0]
    assert "symlink" in reasons["/link"]
    written = sorted(os.path.relpath(os.path.join(r, n), dest) for r, _d, files in os.walk(dest) for n in files)
    assert written == ["dir/inner.txt", "ok.txt"]


def test_unsafe_name_rules():
    assert extract.unsafe_name("x" * 256)
    assert extract.unsafe_name("é" * 128)               # 256 bytes in UTF-8
    assert extract.unsafe_name("a\0b") and extract.unsafe_name("/abs") and extract.unsafe_name("..")
    assert extract.unsafe_name("COM1.log") and extract.unsafe_name("lpt9") and extract.unsafe_name("aux ")
    assert extract.unsafe_name("bad\udcff")              # what an undecodable byte or a lone UTF-16 surrogate becomes
    assert not extract.unsafe_name("CONFIG.SYS") and not extract.unsafe_name("Übersicht.docx") and not extract.unsafe_name("x" * 255)


def test_existing_files_need_force_and_symlinks_in_dest_are_never_followed(tmp_path, hostile_fs):
    dest = tmp_path / "dest"
    dest.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"must stay\n")
    os.symlink(str(victim), str(dest / "ok.txt"))
    with pytest.raises(HyperVBackupError, match="already exist.*nothing was written"):
        extract.extract(hostile_fs, ["/ok.txt", "/dir"], str(dest))
    assert not (dest / "dir").exists()
    planned = extract.extract(hostile_fs, ["/ok.txt"], str(dest), force=True, check_mode=True)
    assert planned["replaced"] == [str(dest / "ok.txt")] and os.path.islink(str(dest / "ok.txt"))
    extract.extract(hostile_fs, ["/ok.txt"], str(dest), force=True)
    assert victim.read_bytes() == b"must stay\n"
    assert not os.path.islink(str(dest / "ok.txt")) and (dest / "ok.txt").read_bytes() == b"fine\n"
    # A symlinked directory on the way is refused, not followed.
    os.symlink(str(tmp_path), str(dest / "dir"))
    with pytest.raises(HyperVBackupError):
        extract.extract(hostile_fs, ["/dir/inner.txt"], str(dest), force=True)
    assert not (tmp_path / "inner.txt").exists()


def test_glob_patterns_match_part_by_part(tmp_path, hostile_fs):
    result = extract.extract(hostile_fs, ["/*.txt"], str(tmp_path / "g"), check_mode=True)
    assert [f["path"] for f in result["files"]] == ["/ok.txt"]          # nul.txt is matched but skipped
    assert [s["path"] for s in result["skipped"]] == ["/nul.txt"]
    with pytest.raises(HyperVBackupError, match="No path"):
        extract.extract(hostile_fs, ["/nothing*"], str(tmp_path / "g"))

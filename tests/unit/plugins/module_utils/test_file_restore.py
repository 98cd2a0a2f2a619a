"""File restore (guestfs/): files extracted from lab disks with real NTFS, ext4, XFS and FAT32 file systems equal the
originals (sha256, mtime), from a full and an incremental backup, on a local and an encrypted S3 repository; partition
tables; errors that name the partition; only the chunks needed are read."""
import hashlib
import os
import shutil
import struct

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.backup.backup_engine import run_backup
from ansible_collections.hyperv.backup.plugins.module_utils.guestfs import partitions as partition_tables
from ansible_collections.hyperv.backup.plugins.module_utils.guestfs.file_restore import add_filesystem_checks, check_backup_filesystems, run_file_restore
from ansible_collections.hyperv.backup.plugins.module_utils.guestfs.filesystem import ChunkCache, open_filesystem
from ansible_collections.hyperv.backup.plugins.module_utils.guestfs.partitions import GuestFileSystemError, read_partitions
from ansible_collections.hyperv.backup.plugins.module_utils.host.connection import HostSession
from ansible_collections.hyperv.backup.plugins.module_utils.lab import guest_filesystems, lab_admin
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository

from test_repository import s3_server  # noqa: F401  pylint: disable=unused-import

MiB = 1024 * 1024
CHUNK = 256 * 1024
KINDS = ("ntfs", "ext4", "fat32", "xfs")        # partition 1, 2, 3, 4
# FAT keeps modification times in 2 s steps; the lab's source files use even seconds, so every kind is exact.
TIMES = {"big.bin": 1700000000, "small.txt": 1600000002, "sub/inner.txt": 1500000004}


class FileReader:
    """A DiskReader-like view of a raw image file (for partition-table tests without a repository)."""

    def __init__(self, path, chunk_size=CHUNK):
        self.path, self.chunk_size = path, chunk_size
        self.virtual_size = os.path.getsize(path)

    def read(self, offset, length):
        with open(self.path, "rb") as handle:
            handle.seek(offset)
            return handle.read(length)


def make_source(root, nested=True, seed=1):
    os.makedirs(os.path.join(root, "sub"), exist_ok=True)
    files = {"big.bin": os.urandom(700 * 1024) + bytes([seed]), "small.txt": b"hello %d\n" % seed}
    if nested:
        files["sub/inner.txt"] = b"inner\n"
    else:
        os.rmdir(os.path.join(root, "sub"))
    for name, data in files.items():
        with open(os.path.join(root, name), "wb") as handle:
            handle.write(data)
        os.utime(os.path.join(root, name), (TIMES[name], TIMES[name]))
    return root


def sha(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def tree(root):
    """{relative path: (sha256, mtime)} of the files under root."""
    out = {}
    for directory, _dirs, files in os.walk(root):
        for name in files:
            full = os.path.join(directory, name)
            out[os.path.relpath(full, root)] = (sha(full), int(os.stat(full).st_mtime))
    return out


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    base = tmp_path_factory.mktemp("sources")
    return {"flat": make_source(str(base / "flat"), nested=False), "tree": make_source(str(base / "tree"))}


def lab_with_filesystems(tmp_path, sources, scheme="gpt"):
    directory = str(tmp_path / "lab")
    layout = LabLayout(directory, "h1")
    lab_admin.ensure_host(layout, era="2019")
    partitions = [{"type": "ntfs", "source": sources["flat"], "size": 16 * MiB},
                  {"type": "ext4", "source": sources["tree"], "size": 16 * MiB},
                  {"type": "fat32", "source": sources["tree"], "size": 48 * MiB},
                  {"type": "xfs", "source": sources["tree"]}]
    lab_admin.ensure_vm(layout, {"name": "vm", "disks": [{"size": 400 * MiB, "guest_filesystem": {"scheme": scheme, "partitions": partitions}}]})
    return layout, dict(transport="lab", host="h1", lab_directory=directory, vm="vm")


@pytest.fixture(params=["local", "s3-encrypted"])
def repository(request, tmp_path, s3_server):  # noqa: F811
    if request.param == "local":
        return Repository.init(str(tmp_path / "repo"), chunk_size=CHUNK)
    location, options = s3_server.new_bucket()
    return Repository.init(location, s3_options=options, passphrase="file restore secret", chunk_size=CHUNK)


def test_files_equal_the_originals_from_full_and_incremental_backups(tmp_path, sources, repository):
    layout, params = lab_with_filesystems(tmp_path, sources)
    with HostSession.from_module_params(params) as session:
        full = run_backup(session, repository, params)
        changed = tmp_path / "changed.bin"
        changed.write_bytes(os.urandom(300 * 1024))
        os.utime(str(changed), (1400000006, 1400000006))
        for number in (2, 3, 4):   # ext4, FAT32, XFS: a new file in a new place, a changed file, a deleted file
            lab_admin.guest_files(layout, "vm", partition=number, files=[
                {"path": "/sub/added.bin", "source": str(changed), "mtime": 1400000006},
                {"path": "/small.txt", "content": "changed\n", "mtime": 1400000008},
                {"path": "/big.bin", "state": "absent"}])
        lab_admin.guest_files(layout, "vm", partition=1, files=[{"path": "/small.txt", "content": "changed\n", "mtime": 1400000008}])
        incremental = run_backup(session, repository, params)
    assert incremental["type"] == "incremental"
    expected_full = {1: tree(sources["flat"]), 2: tree(sources["tree"]), 3: tree(sources["tree"]), 4: tree(sources["tree"])}
    changed_small = (hashlib.sha256(b"changed\n").hexdigest(), 1400000008)
    for number, kind in enumerate(KINDS, 1):
        dest = str(tmp_path / ("full-%d" % number))
        result = run_file_restore(repository, {"backup_id": full["backup_id"], "state": "extracted", "partition": number,
                                               "paths": ["/"], "dest": dest})
        assert result["filesystem"] == kind and result["changed"]
        assert tree(dest) == expected_full[number], kind
        assert 0 < result["bytes_read"] < 400 * MiB / 4
        dest = str(tmp_path / ("incremental-%d" % number))
        run_file_restore(repository, {"vm": "vm", "state": "extracted", "partition": number, "paths": ["/"], "dest": dest})
        got = tree(dest)
        if number == 1:
            assert got == dict(expected_full[1], **{"small.txt": changed_small})
        else:
            assert got == {"small.txt": changed_small, "sub/inner.txt": expected_full[number]["sub/inner.txt"],
                           "sub/added.bin": (sha(str(changed)), 1400000006)}, kind


def test_listing_partitions_entries_and_the_filesystem_check(tmp_path, sources):
    _layout, params = lab_with_filesystems(tmp_path, sources, scheme="mbr")
    repo = Repository.init(str(tmp_path / "repo"), chunk_size=CHUNK)
    with HostSession.from_module_params(params) as session:
        backup_id = run_backup(session, repo, params)["backup_id"]
    listed = run_file_restore(repo, {"backup_id": backup_id, "state": "listed"})
    assert [(p["number"], p["scheme"], p["filesystem"]) for p in listed["partitions"]] == [
        (1, "mbr", "ntfs"), (2, "mbr", "ext4"), (3, "mbr", "fat32"), (4, "mbr", "xfs")]
    assert listed["partitions"][0]["offset"] == MiB and listed["partitions"][0]["size"] == 16 * MiB
    entries = run_file_restore(repo, {"backup_id": backup_id, "state": "listed", "partition": 4, "path": "/", "recursive": True})["entries"]
    assert [(e["path"], e["type"]) for e in entries] == [
        ("/big.bin", "file"), ("/small.txt", "file"), ("/sub", "directory"), ("/sub/inner.txt", "file")]
    limited = run_file_restore(repo, {"backup_id": backup_id, "state": "listed", "partition": 4, "recursive": True, "limit": 2})
    assert len(limited["entries"]) == 2 and limited["truncated"]
    checks = check_backup_filesystems(repo, repo.get_backup(backup_id))
    assert [(c["partition"], c["filesystem"], c["ok"]) for c in checks] == [(1, "ntfs", True), (2, "ext4", True), (3, "fat32", True),
                                                                            (4, "xfs", True)]


def test_extraction_reads_only_the_chunks_it_needs(tmp_path, sources):
    _layout, params = lab_with_filesystems(tmp_path, sources)
    repo = Repository.init(str(tmp_path / "repo"), chunk_size=64 * 1024)
    with HostSession.from_module_params(params) as session:
        backup = run_backup(session, repo, params)
    stored = sum(disk["chunk_count"] for disk in repo.get_backup(backup["backup_id"]).disks) * 64 * 1024
    result = run_file_restore(repo, {"backup_id": backup["backup_id"], "state": "extracted", "partition": 2,
                                     "paths": ["/sub/inner.txt"], "dest": str(tmp_path / "one")})
    assert [f["path"] for f in result["files"]] == ["/sub/inner.txt"]
    assert result["bytes_read"] < stored / 4, (result["bytes_read"], stored)


def test_damaged_gpt_bitlocker_and_unknown_filesystem_name_the_partition(tmp_path, sources):
    raw = str(tmp_path / "disk.raw")
    guest_filesystems.build_image(raw, 64 * MiB, [{"type": "ext4", "source": sources["tree"], "size": 16 * MiB},
                                                  {"type": "ext4", "source": sources["tree"], "size": 16 * MiB},
                                                  {"type": "ext4", "source": sources["tree"]}])
    disk = ChunkCache(FileReader(raw))
    parts = read_partitions(disk)
    assert [p.number for p in parts] == [1, 2, 3]
    with open(raw, "r+b") as handle:               # partition 2: BitLocker's signature; partition 3: no file system
        handle.seek(parts[1].offset + 3)
        handle.write(b"-FVE-FS-")
        handle.seek(parts[2].offset)
        handle.write(bytes(4096))
    disk = ChunkCache(FileReader(raw))
    with pytest.raises(GuestFileSystemError, match="partition 2 is encrypted with BitLocker"):
        open_filesystem(disk, parts[1], "disk")
    with pytest.raises(GuestFileSystemError, match="partition 3 holds no file system"):
        open_filesystem(disk, parts[2], "disk")
    # Primary GPT damaged: the backup copy at the disk's end is used, as firmware does.
    with open(raw, "r+b") as handle:
        handle.seek(512 + 40)
        handle.write(b"\xff")
    assert [p.number for p in read_partitions(ChunkCache(FileReader(raw)))] == [1, 2, 3]
    # Both copies damaged: refused, saying which table and why.
    with open(raw, "r+b") as handle:
        handle.seek(64 * MiB - 512 + 40)
        handle.write(b"\xff")
    with pytest.raises(GuestFileSystemError, match="GPT cannot be read: header checksum mismatch"):
        read_partitions(ChunkCache(FileReader(raw)))


def test_mbr_partition_outside_the_disk_and_overlaps_are_refused_by_number(tmp_path):
    raw = str(tmp_path / "mbr.raw")
    with open(raw, "wb") as handle:
        handle.truncate(8 * MiB)
        mbr = bytearray(512)
        struct.pack_into("<B3sB3sII", mbr, 446, 0, b"\0\0\0", 0x83, b"\0\0\0", 2048, 4096)
        struct.pack_into("<B3sB3sII", mbr, 462, 0, b"\0\0\0", 0x07, b"\0\0\0", 4000, 4096)
        mbr[510:512] = b"\x55\xaa"
        handle.write(mbr)
    with pytest.raises(GuestFileSystemError, match="partition 2 of the MBR overlaps partition 1"):
        read_partitions(FileReader(raw))
    with open(raw, "r+b") as handle:
        handle.seek(462 + 8)
        handle.write(struct.pack("<II", 8192, 409600))
    with pytest.raises(GuestFileSystemError, match="partition 2 of the MBR lies outside the disk"):
        read_partitions(FileReader(raw))


def test_damaged_filesystem_is_reported_although_the_bytes_are_intact(tmp_path, sources):
    """A lab disk whose ext4 root directory block was destroyed before the backup: verify-level bytes are fine, the
    file-system check names partition 2 and the first error."""
    _layout, params = lab_with_filesystems(tmp_path, sources)
    layout = LabLayout(params["lab_directory"], "h1")
    vm = layout.read_vm(list(layout.vm_ids())[0])
    disk = vm["disks"][0]
    spec = disk["guest_filesystem"]["partitions"][1]
    image = ChunkCache(FileReader(disk["guest_filesystem"]["image"]))
    assert open_filesystem(image, partition_tables.find_partition(read_partitions(image), 2)).check()["files"] == 3
    with open(disk["guest_filesystem"]["image"], "rb") as handle:   # overwrite the start of group 0's inode table
        handle.seek(spec["offset"] + 1024)
        superblock = handle.read(1024)
    first_data_block = struct.unpack_from("<I", superblock, 20)[0]
    block_size = 1024 << struct.unpack_from("<I", superblock, 24)[0]
    with open(disk["guest_filesystem"]["image"], "rb") as handle:
        handle.seek(spec["offset"] + (first_data_block + 1) * block_size)
        descriptor = handle.read(64)
    inode_table = struct.unpack_from("<I", descriptor, 8)[0]
    garbage = os.urandom(block_size * 2)
    guest_filesystems._write_changes(disk, _patched(disk["guest_filesystem"]["image"], tmp_path,
                                                    spec["offset"] + inode_table * block_size, garbage))
    repo = Repository.init(str(tmp_path / "repo"), chunk_size=CHUNK)
    with HostSession.from_module_params(params) as session:
        backup_id = run_backup(session, repo, params)["backup_id"]
    report = repo.verify(backup_ids=[backup_id], record_status=False)
    assert report["ok"]                             # every chunk is intact
    checks = {c["partition"]: c for c in check_backup_filesystems(repo, repo.get_backup(backup_id))}
    assert checks[1]["ok"] and checks[3]["ok"] and checks[4]["ok"]
    assert not checks[2]["ok"] and "partition 2" in checks[2]["error"], checks[2]
    # What hyperv_backup_repository state=verified check_filesystems=true reports.
    report = add_filesystem_checks(repo, report)
    assert not report["ok"] and report["damaged_backups"] == [backup_id]
    problem = report["backups"][0]["problems"][-1]
    assert problem.startswith("guest file system damaged: disk scsi0-0, partition 2: "), problem


def _patched(image, tmp_path, offset, data):
    copy = str(tmp_path / "damaged.raw")
    shutil.copyfile(image, copy)
    with open(copy, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)
    return copy

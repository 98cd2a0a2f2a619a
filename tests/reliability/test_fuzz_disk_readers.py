"""Fuzz the VHDX and VHD readers with mutated files: every failure must be a clear VirtualDiskError.

Seeds are small real files of every kind the readers accept (our VHDX writer, qemu's VHDX, a VHDX
with a pending log, a differencing VHDX, qemu's dynamic and fixed VHD, a differencing VHD). Hypothesis
mutates their structures -- headers, region table, metadata, BAT, log, footers, locators, bitmaps --
with bit flips, byte and integer overwrites, truncation and extension, optionally re-sealing the
checksums so that the mutation reaches the deeper checks. Each mutated file is opened and read in a
separate process (disk_fuzz_worker.py) with a 1 GiB address-space cap and a per-file time limit, so
a hang or a runaway allocation is caught and reported instead of stalling the suite.

Examples per seed: RELIABILITY_FUZZ_EXAMPLES (default 120).
"""
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import create_vhdx
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhd import vhd_checksum
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhdx import VhdxImage
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vhdx_format import (
    BAT_REGION, HEADER_OFFSETS, HEADER_SIZE, METADATA_REGION, REGION_TABLE_OFFSETS, REGION_TABLE_SIZE, with_checksum)

from disk_helpers import MiB, make_dirty, make_vhd, needs_qemu, random_image, run, write_file

EXAMPLES = int(os.environ.get("RELIABILITY_FUZZ_EXAMPLES", "120"))
PER_FILE_SECONDS = 20          # generous for a loaded CI runner; a healthy open+read takes milliseconds
MEMORY_CAP = 1024 * MiB
WORKER = Path(__file__).resolve().parent / "disk_fuzz_worker.py"
KiB = 1024

pytestmark = [pytest.mark.reliability, needs_qemu]


class ReaderProcess:
    """The worker subprocess; restarted after a hang (killed) or a crash that ends it."""

    def __init__(self):
        self.proc = None

    def _start(self):
        self.proc = subprocess.Popen([sys.executable, str(WORKER), str(MEMORY_CAP)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=dict(os.environ))

    def check(self, path, timeout=PER_FILE_SECONDS):
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        self.proc.stdin.write(json.dumps({"path": str(path)}) + "\n")
        self.proc.stdin.flush()
        import selectors
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            ready = selector.select(timeout)
        if not ready:
            self.stop()
            return {"outcome": "hang", "message": "no answer within %d s" % timeout}
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            self.proc = None
            return {"outcome": "crash", "type": "process died", "message": "worker exited with %s" % code}
        return json.loads(line)

    def stop(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture(scope="module")
def reader():
    process = ReaderProcess()
    yield process
    process.stop()


# --- seeds -------------------------------------------------------------------------------------

def _vhdx_zones(path):
    """Structural zones of a VHDX: (name, offset, length)."""
    image = VhdxImage(path)
    try:
        bat_offset, bat_length = image.regions[BAT_REGION]
        meta_offset, meta_length = image.regions[METADATA_REGION]
        log_offset, log_length = image.header.log_offset, image.header.log_length
    finally:
        image.close()
    return [("file_identifier", 0, 512),
            ("header_1", HEADER_OFFSETS[0], 128), ("header_2", HEADER_OFFSETS[1], 128),
            ("region_table_1", REGION_TABLE_OFFSETS[0], 96), ("region_table_2", REGION_TABLE_OFFSETS[1], 96),
            ("log", log_offset, min(log_length, 16 * KiB)),
            ("metadata_table", meta_offset, 256), ("metadata_items", meta_offset + 64 * KiB, min(meta_length - 64 * KiB, 4 * KiB)),
            ("bat", bat_offset, min(bat_length, 512))]


def _vhd_zones(path, dynamic=True):
    size = os.path.getsize(path)
    zones = [("footer_end", size - 512, 512)]
    if dynamic:
        with open(path, "rb") as handle:
            handle.seek(512)
            header = handle.read(1024)
        bat_offset, entries = struct.unpack_from(">Q", header, 16)[0], struct.unpack_from(">I", header, 28)[0]
        zones += [("footer_copy", 0, 512), ("dynamic_header", 512, 1024), ("bat", bat_offset, entries * 4),
                  ("first_block_bitmap", bat_offset + max(512, entries * 4), 512)]
    return zones


def _make_seeds(directory):
    """Build every seed file; returns {name: (path, kind, zones)}."""
    seeds = {}
    ours = str(directory / "ours.vhdx")
    with create_vhdx(ours, 8 * MiB, block_size=1 * MiB) as writer:
        writer.write(0, b"\x01" * MiB)
        writer.write(5 * MiB + 512, b"\x05" * (MiB - 1024))
    seeds["vhdx_ours"] = ours

    raw = str(directory / "image.raw")
    write_file(raw, random_image(6 * MiB, seed=7, extents=4, max_extent=MiB))
    qemu_vhdx = str(directory / "qemu.vhdx")
    run("qemu-img", "convert", "-f", "raw", "-O", "vhdx", "-o", "subformat=dynamic,block_size=1M", raw, qemu_vhdx)
    seeds["vhdx_qemu"] = qemu_vhdx

    dirty = str(directory / "dirty.vhdx")
    make_dirty(ours, dirty, 3, b"\xd1\x7e")
    seeds["vhdx_dirty_log"] = dirty

    base = str(directory / "base.vhdx")
    shutil.copyfile(ours, base)
    child = str(directory / "child.avhdx")
    with create_vhdx(child, None, block_size=1 * MiB, parent=base) as writer:
        writer.write(2048, b"\xc1" * 4096)
        writer.write(6 * MiB, b"\xc2" * MiB)
    seeds["vhdx_differencing"] = child

    vhd_dynamic = str(directory / "dynamic.vhd")
    run("qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic", raw, vhd_dynamic)
    seeds["vhd_dynamic"] = vhd_dynamic
    vhd_fixed = str(directory / "fixed.vhd")
    run("qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed", raw, vhd_fixed)
    seeds["vhd_fixed"] = vhd_fixed

    vhd_parent = str(directory / "vparent.vhd")
    parent_id = make_vhd(vhd_parent, 4 * MiB, {0: (None, b"\x11" * (2 * MiB))})
    vhd_child = str(directory / "vchild.vhd")
    make_vhd(vhd_child, 4 * MiB, {1: (b"\xf0" + b"\x00" * 511, b"\x22" * (2 * MiB))},
             parent=(vhd_parent, parent_id, ".\\vparent.vhd"))
    seeds["vhd_differencing"] = vhd_child

    out = {}
    for name, path in seeds.items():
        with open(path, "rb") as handle:
            data = handle.read()
        if name.startswith("vhdx"):
            zones = _vhdx_zones(path)
        else:
            zones = _vhd_zones(path, dynamic=name != "vhd_fixed")
        out[name] = (path, data, zones)
    return out


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return _make_seeds(tmp_path_factory.mktemp("fuzz_seeds"))


# --- mutations ---------------------------------------------------------------------------------

INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
               MiB, 32 * MiB, 1 << 40, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]


@st.composite
def mutation(draw, zones, file_size):
    kind = draw(st.sampled_from(["flip", "bytes", "integer", "truncate", "extend"]))
    name, start, length = draw(st.sampled_from(zones))
    offset = start + draw(st.integers(0, max(0, length - 1)))
    if kind == "flip":
        return ("flip", name, offset, draw(st.integers(0, 7)))
    if kind == "bytes":
        return ("bytes", name, offset, draw(st.binary(min_size=1, max_size=16)))
    if kind == "integer":
        width = draw(st.sampled_from([1, 2, 4, 8]))
        value = draw(st.sampled_from(INTERESTING) | st.integers(0, (1 << (8 * width)) - 1)) & ((1 << (8 * width)) - 1)
        order = draw(st.sampled_from(["<", ">"]))
        return ("integer", name, offset, value.to_bytes(width, "little" if order == "<" else "big"))
    if kind == "truncate":
        return ("truncate", name, draw(st.sampled_from([offset, draw(st.integers(0, file_size - 1))])), None)
    return ("extend", name, 0, draw(st.sampled_from([b"\x00", b"\xff", b"conectix"])) * draw(st.integers(1, 300000)))


def apply(data, mutations, reseal, vhdx):
    buf = bytearray(data)
    for kind, _zone, offset, arg in mutations:
        if kind == "flip" and offset < len(buf):
            buf[offset] ^= 1 << arg
        elif kind in ("bytes", "integer") and offset < len(buf):
            buf[offset:offset + len(arg)] = arg[:max(0, len(buf) - offset)]
        elif kind == "truncate":
            del buf[offset:]
        elif kind == "extend":
            buf += arg
    if reseal:
        _reseal(buf, vhdx)
    return bytes(buf)


def _reseal(buf, vhdx):
    """Recompute the checksums so that the mutation is judged by the structural checks behind them."""
    if vhdx:
        for offset, size in [(o, HEADER_SIZE) for o in HEADER_OFFSETS] + [(o, REGION_TABLE_SIZE) for o in REGION_TABLE_OFFSETS]:
            if offset + size <= len(buf):
                buf[offset:offset + size] = with_checksum(bytearray(buf[offset:offset + size]))
        return
    for offset in (0, len(buf) - 512):
        if offset >= 0 and offset + 512 <= len(buf) and buf[offset:offset + 8] == b"conectix":
            struct.pack_into(">I", buf, offset + 64, vhd_checksum(bytes(buf[offset:offset + 512]), 64))
    if len(buf) >= 1536 and buf[512:520] == b"cxsparse":
        struct.pack_into(">I", buf, 512 + 36, vhd_checksum(bytes(buf[512:1536]), 36))


# --- the property --------------------------------------------------------------------------------

def _judge(result, path, fault_ledger, seed_name, mutations, reseal):
    label = "malformed %s file (%s)" % ("VHDX" if seed_name.startswith("vhdx") else "VHD",
                                        "checksums resealed" if reseal else "raw mutation")
    if result["outcome"] == "ok":
        fault_ledger.record(label, "read without error (mutation was benign)")
        return
    if result["outcome"] == "error":
        # the message names a file of the chain (the mutated one, or its parent in the same directory)
        assert result["path_named"] or str(Path(path).parent) in result["message"], result
        fault_ledger.record(label, "VirtualDiskError naming the file")
        return
    fault_ledger.record(label, result["outcome"])
    pytest.fail("seed %s, mutations %r, reseal %s: %s %s\n%s" % (
        seed_name, [(k, z, o, a if not isinstance(a, bytes) or len(a) < 40 else "%d bytes" % len(a))
                    for k, z, o, a in mutations], reseal, result["outcome"], result.get("type"),
        result.get("traceback", result.get("message"))))


SEED_NAMES = ["vhdx_ours", "vhdx_qemu", "vhdx_dirty_log", "vhdx_differencing", "vhd_dynamic", "vhd_fixed", "vhd_differencing"]


@pytest.mark.parametrize("seed_name", SEED_NAMES)
def test_seed_reads_cleanly(seed_name, seeds, reader):
    """The unmutated seeds open and read: the fuzz failures below are due to the mutations."""
    path = seeds[seed_name][0]
    assert reader.check(path) == {"outcome": "ok"}


@pytest.mark.parametrize("seed_name", SEED_NAMES)
def test_mutated_disk_gives_clear_error_or_reads(seed_name, seeds, reader, tmp_path, fault_ledger):
    path, data, zones = seeds[seed_name]
    target = Path(path).parent / ("fuzz-%s%s" % (seed_name, Path(path).suffix))
    vhdx = seed_name.startswith("vhdx")
    if seed_name == "vhdx_differencing":
        target = Path(path)   # keep the name: the parent checks the child's locator, not the file name
        original = data

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])
    @given(mutations=st.lists(mutation(zones, len(data)), min_size=1, max_size=3), reseal=st.booleans())
    def check(mutations, reseal):
        target.write_bytes(apply(data, mutations, reseal, vhdx))
        result = reader.check(target)
        _judge(result, target, fault_ledger, seed_name, mutations, reseal)

    try:
        check()   # pylint: disable=no-value-for-parameter
    finally:
        if seed_name == "vhdx_differencing":
            target.write_bytes(original)


def test_a_hanging_reader_is_detected(reader, tmp_path):
    """The harness itself: a request that does not finish in time is reported as a hang, not waited for."""
    fifo = tmp_path / "never.vhdx"
    os.mkfifo(fifo)   # open() of a FIFO with no writer blocks forever
    assert reader.check(fifo, timeout=2)["outcome"] == "hang"
    assert reader.proc is None

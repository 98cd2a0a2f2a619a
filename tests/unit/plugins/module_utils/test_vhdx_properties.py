"""Property test: any sequence of sector-aligned writes into a differencing child reads back as the model says."""
import os
import tempfile

from hypothesis import HealthCheck, given, settings, strategies as st

from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import create_vhdx, open_disk, open_vhdx_for_write

from disk_helpers import MiB

SIZE = 3 * MiB + 64 * 1024         # not a multiple of the 1 MiB block


def writes(sector):
    sectors = SIZE // sector
    one = st.tuples(st.integers(0, sectors - 1), st.integers(1, 2 * MiB // sector), st.integers(1, 255))
    return st.lists(one, min_size=1, max_size=12)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sector=st.sampled_from([512, 4096]), first=st.data(), reopen=st.booleans())
def test_child_writes_match_model(sector, first, reopen):
    session_one = first.draw(writes(sector))
    session_two = first.draw(writes(sector))
    with tempfile.TemporaryDirectory() as directory:
        base = os.path.join(directory, "base.vhdx")
        child = os.path.join(directory, "child.avhdx")
        model = bytearray(os.urandom(SIZE))
        with create_vhdx(base, SIZE, block_size=1 * MiB, logical_sector_size=sector) as writer:
            writer.write(0, bytes(model))
        writer = create_vhdx(child, None, block_size=1 * MiB, logical_sector_size=sector, parent=base)
        for batch in (session_one, session_two):
            for start, count, value in batch:
                offset = start * sector
                data = bytes([value]) * min(count * sector, SIZE - offset)
                writer.write(offset, data)
                model[offset:offset + len(data)] = data
            if reopen:
                writer.close()
                writer = open_vhdx_for_write(child)
            else:
                writer.flush()
        writer.close()
        with open_disk(child) as disk:
            assert disk.read(0, SIZE) == bytes(model)
            for start, count, _value in session_one + session_two:   # unaligned reads around each write edge
                edge = min(SIZE - 1, start * sector + count * sector)
                low = max(0, edge - 1000)
                assert disk.read(low, min(SIZE, edge + 777) - low) == bytes(model[low:min(SIZE, edge + 777)])

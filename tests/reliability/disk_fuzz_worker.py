"""Subprocess that opens and reads virtual disk files for the fuzz tests, under a memory cap.

Protocol: one JSON request per stdin line ``{"path": ...}``, one JSON answer per stdout line
``{"outcome": "ok"|"error"|"crash", "type": exception class, "message": str, "path_named": bool}``.
``error`` means a VirtualDiskError (the clear error we want); ``crash`` is any other exception,
including MemoryError when the address space cap (RLIMIT_AS, argv[1] bytes) is hit. A hang is
detected by the parent, which kills this process and starts another.
"""
import json
import resource
import sys
import traceback

READ_BUDGET = 16 * 1024 * 1024   # bytes read per file: enough to touch every block of the small seeds
PIECE = 1024 * 1024


def exercise(path):
    from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import disk_info, open_disk
    disk_info(path)
    with open_disk(path) as disk:
        size = disk.virtual_size
        budget = READ_BUDGET
        for offset, length in disk.allocated_ranges():
            end = offset + min(length, budget)
            while offset < end and budget > 0:
                step = min(PIECE, end - offset)
                disk.read(offset, step)
                budget -= step
                offset += step
        for offset in (0, size // 2, max(0, size - 4096)):
            disk.read(offset, min(4096, size - offset))


def main():
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # import before the first request so that start-up is not counted against a request's time
    from ansible_collections.hyperv.backup.plugins.module_utils.errors import VirtualDiskError
    for line in sys.stdin:
        path = json.loads(line)["path"]
        try:
            exercise(path)
            answer = {"outcome": "ok"}
        except VirtualDiskError as err:
            answer = {"outcome": "error", "type": type(err).__name__, "message": str(err),
                      "path_named": path in str(err)}
        except BaseException as err:   # pylint: disable=broad-except  # any other type is the bug we hunt
            answer = {"outcome": "crash", "type": type(err).__name__, "message": str(err)[:2000],
                      "traceback": traceback.format_exc()[-4000:]}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()

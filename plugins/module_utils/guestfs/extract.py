# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Copy files out of a guest file system (guestfs.filesystem) into a local directory, never outside it.

``plan_extraction`` matches ``paths`` (exact guest paths or glob patterns, matched part by part: ``*`` never
crosses a '/') and expands directories; ``extract`` writes the plan. Guest names are data from a backup of a
machine that may be compromised, so every name part is checked before it becomes a local name: empty, '.',
'..', a '/', '\\' or NUL inside a name, control characters, undecodable bytes or invalid UTF-16 (lone surrogates),
Windows device names (CON, NUL, COM1, ...), names over 255 bytes and paths over 4000 bytes are refused and listed
in ``skipped``, never written. Symbolic links and special files are skipped too (a link could point anywhere).

Files are written under a temporary name with O_EXCL|O_NOFOLLOW in a directory made here (a symlink on the way
is refused, never followed), get the guest's modification time, and are renamed into place; an existing file
is replaced only with ``force`` (otherwise nothing is written and the conflicts are named).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import fnmatch
import hashlib
import os
import re
import stat

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError
from ansible_collections.hyperv.backup.plugins.module_utils.guestfs.filesystem import DIRECTORY, FILE

COPY_BLOCK = 1024 * 1024
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4000
_DEVICE_NAMES = re.compile(r"^(CON|PRN|AUX|NUL|CONIN\$|CONOUT\$|CLOCK\$|COM[0-9\u00b9\u00b2\u00b3]|LPT[0-9\u00b9\u00b2\u00b3])(\..*)?$", re.I)
_GLOB = re.compile(r"[*?\[]")
TEMP_SUFFIX = ".extracting"


def unsafe_name(name):
    """Why the guest name part ``name`` must not become a local name, or None when it is safe."""
    if name in ("", ".", ".."):
        return "is empty, '.' or '..'"
    if "/" in name or "\\" in name or "\0" in name:
        return "holds a path separator or NUL"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return "holds a control character"
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in name):
        return "is not valid Unicode (undecodable bytes or invalid UTF-16)"
    if _DEVICE_NAMES.match(name.rstrip(" .")):
        return "is a Windows device name"
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        return "is longer than %d bytes" % MAX_NAME_BYTES
    return None


def _parts(path):
    return [part for part in path.split("/") if part]


def _matches(pattern_parts, path):
    parts = _parts(path)
    return len(parts) == len(pattern_parts) and all(fnmatch.fnmatchcase(p, q) for p, q in zip(parts, pattern_parts))


def _matched(fs, pattern):
    """Entries matching one ``paths`` item: an exact path, or a glob matched against the tree below its fixed prefix."""
    pattern = "/" + "/".join(_parts(str(pattern).replace("\\", "/")))
    if not _GLOB.search(pattern):
        return [fs.stat(pattern)]
    pattern_parts = _parts(pattern)
    fixed = []
    for part in pattern_parts:
        if _GLOB.search(part):
            break
        fixed.append(part)
    return [entry for entry in fs.entries("/" + "/".join(fixed), recursive=True) if _matches(pattern_parts, entry.path)]


def plan_extraction(fs, paths, destination):
    """{files, directories, skipped}: what ``paths`` select, each with its local ``target`` under ``destination``."""
    root = os.path.realpath(destination)
    chosen, skipped, seen = [], [], set()

    def take(entry):
        if entry.path in seen:
            return
        seen.add(entry.path)
        problems = ["%r %s" % (part, unsafe_name(part)) for part in _parts(entry.path) if unsafe_name(part)]
        if entry.path != "/" and unsafe_name(entry.name) and not problems:
            problems.append("%r %s" % (entry.name, unsafe_name(entry.name)))
        target = os.path.join(root, *_parts(entry.path)) if entry.path != "/" else root
        if not problems and len(target.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
            problems.append("the local path would be longer than %d bytes" % MAX_PATH_BYTES)
        if problems:
            skipped.append({"path": entry.path, "reason": "; ".join(problems)})
            return
        if entry.type not in (FILE, DIRECTORY):
            skipped.append({"path": entry.path, "reason": "is a %s (only files and directories are extracted)" % entry.type})
            return
        chosen.append((entry, target))
        if entry.type == DIRECTORY:
            for child in fs.entries(entry.path, recursive=False):
                take(child)

    matched_any = False
    for pattern in paths:
        entries = _matched(fs, pattern)
        if not entries:
            raise HyperVBackupError("No path in %s matches %r." % (fs.where, pattern),
                                    hint="List the partition with state=listed (recursive=true) to see its paths.")
        matched_any = True
        for entry in entries:
            take(entry)
    if not matched_any:
        raise HyperVBackupError("paths is empty: say which files to extract.")
    return {"root": root, "entries": chosen, "skipped": skipped}


def _conflicts(plan):
    out = []
    for entry, target in plan["entries"]:
        try:
            info = os.lstat(target)
        except FileNotFoundError:
            continue
        if entry.type == DIRECTORY and stat.S_ISDIR(info.st_mode):
            continue
        out.append({"path": entry.path, "target": target,
                    "existing": "directory" if stat.S_ISDIR(info.st_mode) else "symlink" if stat.S_ISLNK(info.st_mode) else "file"})
    return out


def _make_directory(root, target):
    """Create ``target`` (under ``root``) part by part; an existing part that is not a real directory is refused."""
    current = root
    for part in os.path.relpath(target, root).split(os.sep):
        if part in ("", "."):
            continue
        current = os.path.join(current, part)
        try:
            os.mkdir(current, 0o755)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(current).st_mode):
                raise HyperVBackupError("%s exists and is not a directory (a symlink is never followed)." % current,
                                        hint="Remove it or extract into another destination.")


def _write_file(fs, entry, target, root):
    _make_directory(root, os.path.dirname(target))
    temporary = target + TEMP_SUFFIX
    digest, size = hashlib.sha256(), 0
    try:
        os.unlink(temporary)
    except FileNotFoundError:
        pass
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        stream = fs.open(entry.path)
        with os.fdopen(handle, "wb") as out:
            while True:
                block = stream.read(COPY_BLOCK)
                if not block:
                    break
                out.write(block)
                digest.update(block)
                size += len(block)
        if size != entry.size:
            raise HyperVBackupError("%s: %s read %d bytes of %d." % (fs.where, entry.path, size, entry.size),
                                    hint="The file system in the backup is damaged; try another backup.")
        mtime_ns = int(round(entry.mtime * 1e9))
        os.utime(temporary, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
        if os.path.lexists(target) and stat.S_ISDIR(os.lstat(target).st_mode):
            raise HyperVBackupError("%s is a directory; the guest file %s cannot replace it." % (target, entry.path))
        os.replace(temporary, target)      # over a symlink at the name, never through it
    except BaseException:
        if os.path.lexists(temporary):
            os.unlink(temporary)
        raise
    return {"path": entry.path, "target": target, "size": size, "mtime": entry.mtime, "sha256": digest.hexdigest()}


def extract(fs, paths, destination, force=False, check_mode=False):
    """Copy what ``paths`` select from ``fs`` into ``destination``; returns {files, directories, skipped, replaced, changed}."""
    plan = plan_extraction(fs, paths, destination)
    conflicts = _conflicts(plan)
    if conflicts and not force:
        raise HyperVBackupError("%d file(s) already exist in %s, for example %s; nothing was written." % (
            len(conflicts), plan["root"], conflicts[0]["target"]), hint="Set force=true to replace them, or pick another dest.",
            conflicts=conflicts[:20])
    files = [{"path": e.path, "target": t, "size": e.size, "mtime": e.mtime} for e, t in plan["entries"] if e.type == FILE]
    directories = [{"path": e.path, "target": t, "mtime": e.mtime} for e, t in plan["entries"] if e.type == DIRECTORY]
    result = {"files": files, "directories": directories, "skipped": plan["skipped"], "replaced": [c["target"] for c in conflicts],
              "changed": bool(files or directories)}
    if check_mode:
        return result
    if not os.path.isdir(plan["root"]):
        os.makedirs(plan["root"], 0o755)
    result["files"] = []
    for entry, target in plan["entries"]:
        if entry.type == DIRECTORY:
            _make_directory(plan["root"], target)
        else:
            result["files"].append(_write_file(fs, entry, target, plan["root"]))
    # Directory times last, deepest first: writing into a directory changes its time.
    for entry, target in sorted(((e, t) for e, t in plan["entries"] if e.type == DIRECTORY and e.path != "/"), key=lambda item: -len(item[1])):
        mtime_ns = int(round(entry.mtime * 1e9))
        os.utime(target, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
    return result

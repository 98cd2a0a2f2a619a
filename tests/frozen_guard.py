"""The general guard of issue 12: every committed backup equals the disk at its recovery point.

With ``HYPERV_LAB_KEEP_FROZEN=1`` the lab keeps, for each recovery point it creates, the content of every frozen
disk as the guest saw it at that instant (``lab_frozen.py``: ``<lab directory>/.frozen/<point key>/``). The guard
finds the lab directories and the repositories under a directory, and for every committed backup whose
``metadata.recovery_point.id`` has a frozen copy restores each disk (the repository's DiskReader, into a sparse
raw file) and compares it with ``qemu-img compare`` against the frozen copy. A difference names the backup, the
disk and the first differing offset.

``FrozenGuard`` remembers what it checked, so that a suite can call it after every test over the whole
temporary directory of the session (also the labs and repositories of module-scoped fixtures) and check each
backup once; ``check_directory`` is the one-shot form for a single test.
"""
import json
import os
import shutil
import subprocess
import tempfile

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.errors import RepositoryError
from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_frozen
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import FORMAT_NAME, Repository

QEMU_IMG = shutil.which("qemu-img") or "/usr/bin/qemu-img"
# Directories that are never a repository or a lab directory and can be large: not walked into.
_SKIP_DIRS = {"chunks", "vms", "drives", "vss", "ansible_home", "ansible_tmp", "node_modules", ".git", "__pycache__"}


def is_repository(path):
    """A local repository root: a ``config`` file of the hyperv.backup repository format."""
    config = os.path.join(path, "config")
    if not os.path.isfile(config):
        return False
    try:
        with open(config, "rb") as handle:
            return json.loads(handle.read(65536).decode("utf-8")).get("format") == FORMAT_NAME
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        return False


def find(root):
    """(lab directories holding frozen copies, repository roots) under ``root``."""
    labs, repositories = [], []
    for directory, dirnames, _filenames in os.walk(root):
        if lab_frozen.FROZEN_DIR in dirnames:
            labs.append(directory)
        if is_repository(directory):
            repositories.append(directory)
            dirnames[:] = []
            continue
        dirnames[:] = [name for name in dirnames if name not in _SKIP_DIRS and name != lab_frozen.FROZEN_DIR
                       and not os.path.islink(os.path.join(directory, name))]
    return sorted(labs), sorted(repositories)


def frozen_points(labs):
    """{point key: index} over every lab directory."""
    out = {}
    for lab in labs:
        out.update(lab_frozen.all_points(lab))
    return out


def restore_raw(reader, target):
    """Write one backed-up disk into a sparse raw file (zero chunks stay holes)."""
    with open(target, "wb") as out:
        for offset, data in reader.iter_chunks(skip_zero=True):
            os.pwrite(out.fileno(), data, offset)
        out.truncate(reader.virtual_size)


def qemu_compare(frozen, restored):
    """None when both raw images hold the same bytes, else qemu-img's words (the first differing offset)."""
    proc = subprocess.run([QEMU_IMG, "compare", "-f", "raw", "-F", "raw", frozen, restored],
                          capture_output=True, text=True, check=False)
    if proc.returncode == 0:
        return None
    return (proc.stdout + proc.stderr).strip() or "qemu-img compare exited with %d" % proc.returncode


def _slot(values):
    return (str(values.get("controller_type") or "").upper(), values.get("controller_number"), values.get("controller_location"))


def frozen_disk_for(index, record, disk):
    """The frozen copy entry of one backed-up disk: same VM, same controller slot (else the same disk id)."""
    vm_id = str(record.vm_id or "").lower()
    candidates = [entry for entry in index["disks"] if entry["vm_id"].lower() == vm_id]
    meta = disk.get("metadata") or {}
    by_slot = [entry for entry in candidates if meta.get("controller_type") is not None and _slot(entry) == _slot(meta)]
    if len(by_slot) == 1:
        return by_slot[0]
    by_id = [entry for entry in candidates if meta.get("disk_id") and entry["disk_id"].lower() == str(meta["disk_id"]).lower()]
    return by_id[0] if len(by_id) == 1 else None


class Outcome:
    """What one pass of the guard saw: backups checked (and their disks), backups without a frozen copy, problems."""

    def __init__(self):
        self.checked = []         # backup ids compared disk by disk
        self.disks = 0
        self.unmatched = []       # backup ids whose recovery point has no frozen copy (made without the lab's copy)
        self.synthetic = []       # backup ids that name no recovery point (written straight into a repository by a test)
        self.problems = []        # what is wrong, one sentence each
        self.notes = []           # what could not be looked at and why (not a failure by itself)
        self.frozen = 0           # frozen copies (recovery points) seen
        self.new_frozen = 0       # ... of which this pass saw first (points the test just made)

    def summary(self):
        return ("frozen guard: %d backup(s) (%d disk(s)) equal to the disk at their recovery point, %d backup(s) of a point "
                "without a frozen copy, %d naming no recovery point, %d problem(s)"
                % (len(self.checked), self.disks, len(self.unmatched), len(self.synthetic), len(self.problems)))


class FrozenGuard:
    """Checks every committed backup under a directory once; ``passphrases`` open encrypted repositories."""

    def __init__(self, scratch=None):
        self.done = set()          # (repository, backup id) compared (or found without a frozen copy)
        self.ignored = set()       # repositories a test damaged on purpose (it opted out), or unreadable without lab points
        self.passphrases = [None]
        self.seen_points = set()
        self.scratch = scratch
        self.totals = {"checked": 0, "disks": 0, "unmatched": 0, "synthetic": 0, "frozen": 0}

    def add_passphrase(self, passphrase):
        if passphrase not in self.passphrases:
            self.passphrases.append(passphrase)

    def _open(self, location):
        """The repository for reading only: the guard must not even refresh a catalog a test looks at later."""
        last = None
        for passphrase in self.passphrases:
            try:
                return Repository.open(location, passphrase=passphrase).read_only_view()
            except RepositoryError as err:
                last = err
        raise last

    def _all_done(self, location):
        """True when every committed backup of a local repository (``backups/<id>``) was looked at already."""
        try:
            names = os.listdir(os.path.join(location, "backups"))
        except OSError:
            return True
        return all((location, name) in self.done for name in names if not name.startswith("."))

    def ignore(self, root):
        """An opted-out test ran: the repositories under ``root`` with backups not checked yet are left alone for good."""
        _labs, repositories = find(root)
        for location in repositories:
            if location in self.ignored:
                continue
            try:
                backup_ids = [r.backup_id for r in self._open(location).list_backups()]
            except (RepositoryError, OSError, ValueError):
                backup_ids = None
            if backup_ids is None or any((location, backup_id) not in self.done for backup_id in backup_ids):
                self.ignored.add(location)

    def check(self, root):
        """Compare every backup under ``root`` not compared before with its frozen copy; returns an Outcome."""
        outcome = Outcome()
        labs, repositories = find(root)
        points = frozen_points(labs)
        outcome.frozen = len(points)
        outcome.new_frozen = len(set(points) - self.seen_points)
        self.seen_points.update(points)
        for location in repositories:
            if location in self.ignored or self._all_done(location):
                continue
            try:
                repo = self._open(location)
                records = repo.list_backups()
            except (RepositoryError, OSError, ValueError) as err:
                if outcome.new_frozen:
                    outcome.problems.append("repository %s could not be read (%s); if the test encrypts it, give the guard the "
                                            "passphrase: @pytest.mark.frozen_guard(passphrase=...)" % (location, err))
                else:   # it cannot hold a backup of a lab recovery point; not retried after later tests
                    outcome.notes.append("repository %s not read (%s); the test made no lab recovery point" % (location, err))
                    self.ignored.add(location)
                continue
            for record in records:
                if (location, record.backup_id) in self.done:
                    continue
                self._check_backup(repo, location, record, points, outcome)
        for name, count in (("checked", len(outcome.checked)), ("disks", outcome.disks), ("unmatched", len(outcome.unmatched)),
                            ("synthetic", len(outcome.synthetic)), ("frozen", outcome.new_frozen)):
            self.totals[name] += count
        return outcome

    def _check_backup(self, repo, location, record, points, outcome):
        point_id = ((record.metadata or {}).get("recovery_point") or {}).get("id")
        index = points.get(lab_frozen.point_key(point_id))
        if index is None:
            (outcome.unmatched if point_id else outcome.synthetic).append(record.backup_id)
            self.done.add((location, record.backup_id))
            return
        what = "backup %s of VM %s (recovery point %s, repository %s)" % (record.backup_id, record.vm_name, point_id, location)
        wrong = []
        scratch = tempfile.mkdtemp(prefix="frozen-guard-", dir=self.scratch)
        try:
            for disk in record.disks:
                frozen = frozen_disk_for(index, record, disk)
                if frozen is None:
                    wrong.append("disk %s: no disk of the VM at that slot in the frozen copy (%s)"
                                 % (disk["disk_key"], ", ".join(e["file"] for e in index["disks"]) or "none"))
                    continue
                if int(frozen["virtual_size"]) != int(disk["virtual_size"]):
                    wrong.append("disk %s: %d bytes backed up, the disk had %d bytes at the point"
                                 % (disk["disk_key"], disk["virtual_size"], frozen["virtual_size"]))
                    continue
                restored = os.path.join(scratch, "restored.raw")
                try:
                    restore_raw(repo.open_disk_reader(record.backup_id, disk["disk_key"]), restored)
                except (RepositoryError, OSError) as err:
                    wrong.append("disk %s: cannot be restored: %s" % (disk["disk_key"], err))
                    continue
                difference = qemu_compare(os.path.join(index["directory"], frozen["file"]), restored)
                os.unlink(restored)
                if difference:
                    wrong.append("disk %s differs from the disk at the recovery point: %s" % (disk["disk_key"], difference))
                else:
                    outcome.disks += 1
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        self.done.add((location, record.backup_id))
        if wrong:
            outcome.problems.append("%s: %s" % (what, "; ".join(wrong)))
        else:
            outcome.checked.append(record.backup_id)


def verdict(outcome):
    """What fails a test: each difference, and backups of recovery points none of which could be checked."""
    problems = list(outcome.problems)
    if outcome.unmatched and not outcome.checked:
        problems.append("%d backup(s) were made but none has a frozen copy of its recovery point (%s): the lab did not keep "
                        "them (is %s=1 in the environment of the process that created the points?), so nothing was checked"
                        % (len(outcome.unmatched), ", ".join(outcome.unmatched[:5]), lab_frozen.ENVIRONMENT))
    return problems


def check_directory(root, passphrases=()):
    """One pass over ``root`` (a test's directory): an Outcome."""
    guard = FrozenGuard()
    for passphrase in passphrases:
        guard.add_passphrase(passphrase)
    return guard.check(str(root))


# --- pytest wiring (tests/integration/conftest.py and tests/reliability/conftest.py use these) ----------------

MARK_OFF = "frozen_guard_off"      # @pytest.mark.frozen_guard_off(reason): the test damages repositories on purpose
MARK = "frozen_guard"              # @pytest.mark.frozen_guard(passphrase=...): how to open its encrypted repositories
_PROCESS_GUARD = []


def process_guard():
    """The guard of this pytest process (one per xdist worker): it remembers what it checked across tests."""
    if not _PROCESS_GUARD:
        _PROCESS_GUARD.append(FrozenGuard())
    return _PROCESS_GUARD[0]


def process_totals():
    """{checked, disks, unmatched, frozen} of this process's guard, or None when no test used it."""
    return dict(_PROCESS_GUARD[0].totals) if _PROCESS_GUARD else None


def keep_frozen_environment(monkeypatch_module):
    """Make every lab process the tests start keep frozen copies (module-scoped, so module fixtures are covered)."""
    monkeypatch_module.setenv(lab_frozen.ENVIRONMENT, "1")


def check_after_test(request, basetemp):
    """Generator body of the suites' autouse fixture: after the test, check every new backup under ``basetemp``.

    The test fails (an error in its teardown) naming each backup whose restored disk differs from the disk at its
    recovery point, and when it made backups none of which has a frozen copy (the check would be empty)."""
    guard = process_guard()
    off = request.node.get_closest_marker(MARK_OFF)
    if off is not None and not (off.args or off.kwargs.get("reason")):
        raise ValueError("@pytest.mark.%s needs the reason why the test's backups cannot be checked" % MARK_OFF)
    marker = request.node.get_closest_marker(MARK)
    if marker is not None and marker.kwargs.get("passphrase"):
        guard.add_passphrase(marker.kwargs["passphrase"])
    yield
    if off is not None:
        guard.ignore(str(basetemp))
        return
    outcome = guard.check(str(basetemp))
    problems = verdict(outcome)
    if problems:
        pytest.fail("%s\n%s" % (outcome.summary(), "\n".join(problems)), pytrace=False)


@pytest.fixture(scope="module", autouse=True)
def keep_frozen_copies():
    """Every lab process of the module's tests (and of its module-scoped fixtures) keeps frozen copies."""
    patch = pytest.MonkeyPatch()
    keep_frozen_environment(patch)
    yield
    patch.undo()


@pytest.fixture(autouse=True)
def check_backups_against_frozen_copies(request, tmp_path_factory):
    """After the test: every new backup in the session's temporary directory equals the disk at its recovery point."""
    yield from check_after_test(request, tmp_path_factory.getbasetemp())

# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one lock model of this collection: leases in files on the Hyper-V host.

Every proxy that works on a host sees the host's files, and the host has one clock, so locks live
there: ``<ProgramData>\\hyperv.backup\\locks\\<name>``, created exclusively (``bridge.write_file(...,
exclusive=True)``), holding ``{owner, proxy, seconds, expires, holds, process}``.

- **Expiry by the host's clock.** A lease is live while ``host now <= file modified + seconds``;
  both times come from the host (``bridge.list_directory()``), never from a proxy, so proxies with
  skewed clocks agree. ``expires`` in the file is informational (host clock as well).
- **Renewal.** The live run rewrites its lease (``Lease.renew``; ``Renewer`` is a background thread
  that does it every ``seconds / 4``). An owner that stops renewing (killed, disconnected) loses the
  lease when it expires; anyone may then take it over.
- **Dead owner on this proxy.** A lease also names the process that wrote it (``process``: pid, boot id
  and start time, see ``process_identity``). When that process ran on the proxy that judges the lease
  (same host name and boot) and is gone -- killed, crashed -- the lease is not live, whatever its age:
  a SIGKILLed backup must not hold its VM for ``VM_LEASE_SECONDS``. Another proxy cannot see the
  process and waits for the expiry as before. A lease that must outlive its process (the point of a
  ``hyperv_recovery_point state=present`` task, handed back by a later task) is rewritten without a
  process (``detach_run_leases``) and lives by expiry only.
- **Takeover race.** Taking over an expired lease removes it and creates it again exclusively; two
  contenders cannot both create it. A contender that judged an old file expired re-checks its modified
  time right before removing it, which leaves only a tiny window.

The leases in use (later work, e.g. parallel VMs per host or async role tasks, reuses them):

(a) ``vm-<vm id>.lease``: one backup run per VM. ``create_recovery_point`` takes it (owner = the run
    id of the point's tag) and hand-back / discard (``remove_recovery_point``,
    ``convert_to_reference_point``) release it. Stale cleanup never removes a point whose owner's
    lease is live.
(b) ``vss-snapshot-set.lock``: VSS creates one shadow copy set per host at a time (StartSnapshotSet ..
    DoSnapshotSet); held only while ``vss_points`` creates a set. Many sets may exist at once, so
    copies overlap freely.
(c) ``serial-<sha1 of key>.lease``: the Windows Server 2008 / 2008 R2 rule (one VM at a time per CSV
    across the cluster, or per host, without a hardware VSS provider), keyed by
    ``method_choice.parallel_safety``'s serialization key; taken with the VM lease and released with it.
    A CSV queue's lease lives on the CSV (``<CSV>\\hyperv.backup\\locks``), which every node sees, so two
    nodes never snapshot one CSV at once; a host queue's lives on the host. RCT VMs have no key and run at once.
    The queue lease names the VM it is held for (``held_for``, the VM lease's path): the run's other VMs on the
    queue (same owner: parallel jobs of the role, other nodes of the cluster) are refused like another run's.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import hashlib
import json
import os
import socket
import threading
import time

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError
from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import BridgeError
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.points_common import (
    host_name, iso, parse_dmtf, read_json, state_root, win_join)

LOCK_DIR = "locks"
VM_LEASE_SECONDS = 2 * 3600          # a backup that is not renewed holds its VM this long at most
VSS_SET_LOCK_SECONDS = 15 * 60       # longer than any shadow copy creation (writers time out well before)
VSS_SET_LOCK_NAME = "vss-snapshot-set.lock"


def lock_directory(bridge):
    return win_join(state_root(bridge), LOCK_DIR)


def vm_lease_name(vm_id):
    return "vm-%s.lease" % str(vm_id).strip("{}").lower()


def serial_lease_name(serialization_key):
    return "serial-%s.lease" % hashlib.sha1(str(serialization_key).encode("utf-8")).hexdigest()[:20]


def serial_lease_directory(bridge, serialization_key):
    """Where the queue lease of a serialization key lives: a CSV queue ('<cluster>:csv:<path>') on the CSV
    itself, which every node of the cluster sees, so VMs of one CSV are backed up one at a time across the
    cluster; a host queue ('<host>:host') on the host."""
    scope, _sep, csv_path = str(serialization_key).partition(":csv:")
    if csv_path and scope:
        return win_join(csv_path.rstrip("\\"), "hyperv.backup", LOCK_DIR)
    return lock_directory(bridge)


def serial_lease(bridge, serialization_key, owner, seconds=VM_LEASE_SECONDS, operation="lock"):
    return Lease(bridge, serial_lease_name(serialization_key), owner, seconds, operation=operation,
                 directory=serial_lease_directory(bridge, serialization_key))


def default_proxy():
    return socket.gethostname()


def _read_text(path):
    try:
        with open(path) as handle:
            return handle.read()
    except (IOError, OSError):
        return None


def _boot_id():
    text = _read_text("/proc/sys/kernel/random/boot_id")
    return text.strip() if text else None


def _process_start(pid):
    """(start time in clock ticks since boot, state letter) of a Linux process, or (None, None) without /proc."""
    text = _read_text("/proc/%d/stat" % int(pid))
    if not text or ")" not in text:
        return None, None
    fields = text.rsplit(")", 1)[1].split()
    try:
        return int(fields[19]), fields[0]       # stat fields 22 (starttime) and 3 (state), after "pid (comm)"
    except (IndexError, ValueError):
        return None, None


def process_identity(pid=None):
    """{"pid", "boot", "start"} of a process of this proxy (the current one by default); boot/start None off Linux."""
    pid = os.getpid() if pid is None else int(pid)
    return {"pid": pid, "boot": _boot_id(), "start": _process_start(pid)[0]}


def process_gone(process, proxy):
    """True only when ``process`` (a lease's ``process``) certainly ran here and no longer runs.

    Judged only on the proxy that wrote it (same host name and, where known, same boot); a pid that now
    belongs to a younger process (another start time) or a zombie counts as gone. Anything unsure: False."""
    if not isinstance(process, dict) or not process.get("pid") or proxy != default_proxy():
        return False
    boot = _boot_id()
    if process.get("boot") and boot and process["boot"] != boot:
        return False        # another boot, or another machine with our name: cannot tell here
    try:
        os.kill(int(process["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OSError, ValueError, OverflowError):
        return False
    start, state = _process_start(process["pid"])
    if state in ("Z", "X"):
        return True
    return bool(process.get("start") is not None and start is not None and start != process["start"])


class Lease:
    """One lease file on the host: ``acquire`` / ``renew`` / ``release`` / ``status``."""

    def __init__(self, bridge, name, owner, seconds=VM_LEASE_SECONDS, proxy=None, operation="lock", bound=True, directory=None,
                 held_for=None):
        if "\\" in name:          # a hold names the lease by its full path (a CSV queue lives on the CSV)
            directory, name = name.rsplit("\\", 1)
        self.bridge = bridge
        self.directory = directory or lock_directory(bridge)
        self.name = name
        self.owner = str(owner)
        self.seconds = int(seconds)
        self.proxy = proxy or default_proxy()
        self.operation = operation
        self.holds = []
        self.bound = bound          # written with this process's identity: not live once the process is gone
        # what the lease is held for (a queue lease: the VM lease of its VM); the same owner re-enters only for the same one
        self.held_for = held_for
        self.path = win_join(self.directory, name)

    # -- state ------------------------------------------------------------------------------
    def status(self):
        """{exists, owner, proxy, live, owner_gone, age_seconds, remaining_seconds, holds, modified}: expiry judged by the
        host's clock; ``owner_gone`` (then not live) when the writing process ran on this proxy and has ended."""
        listing = self.bridge.list_directory(self.directory)
        entry = [e for e in listing.get("entries") or [] if e.get("name", "").lower() == self.name.lower()]
        if not entry:
            return {"exists": False, "live": False, "owner": None}
        doc = read_json(self.bridge, self.path) or {}
        now, modified = parse_dmtf(listing.get("now")), parse_dmtf(entry[0].get("modified"))
        seconds = int(doc.get("seconds") or self.seconds)
        age = (now - modified).total_seconds() if now and modified else 0.0
        owner_gone = process_gone(doc.get("process"), doc.get("proxy"))
        return {"exists": True, "owner": doc.get("owner"), "proxy": doc.get("proxy"), "holds": list(doc.get("holds") or []),
                "held_for": doc.get("held_for"),
                "live": age <= seconds and not owner_gone, "owner_gone": owner_gone, "age_seconds": age,
                "remaining_seconds": seconds - age, "modified": entry[0].get("modified")}

    def _same_purpose(self, state):
        """Whether this owner's lease ``state`` may be re-entered: held for nothing in particular, or for what we hold it for."""
        return not state.get("held_for") or not self.held_for or state["held_for"] == self.held_for

    def _document(self):
        now = parse_dmtf(self.bridge.host_environment().get("now"))
        expires = iso(now + datetime.timedelta(seconds=self.seconds)) if now else None
        process = process_identity() if self.bound and self.proxy == default_proxy() else None
        return json.dumps({"owner": self.owner, "proxy": self.proxy, "seconds": self.seconds, "expires": expires,
                           "holds": list(self.holds), "name": self.name, "process": process, "held_for": self.held_for},
                          sort_keys=True).encode("utf-8")

    # -- taking and giving back ---------------------------------------------------------------
    def try_acquire(self):
        """True when this owner holds the lease now (fresh, re-entered or taken over); False when another live owner does."""
        try:
            self.bridge.write_file(self.path, self._document(), exclusive=True)
            return True
        except BridgeError as err:
            if err.code != "exists":
                raise
        state = self.status()
        if not state["exists"]:
            return self.try_acquire_once()
        if state["owner"] == self.owner and self._same_purpose(state):
            self.holds = sorted(set(self.holds) | set(state.get("holds") or []))
            self.renew()
            return True
        if state["live"]:
            return False
        # expired: take it over, unless it changed since we judged it
        again = self.status()
        if again.get("modified") != state.get("modified") or again.get("live"):
            return False
        self.bridge.remove_file(self.path)
        return self.try_acquire_once()

    def try_acquire_once(self):
        try:
            self.bridge.write_file(self.path, self._document(), exclusive=True)
            return True
        except BridgeError as err:
            if err.code == "exists":
                return False
            raise

    def acquire(self, wait_seconds=0, poll_seconds=2.0, sleep=time.sleep, clock=time.monotonic):
        """Take the lease, waiting up to ``wait_seconds`` (with backoff); raise category 'busy' naming the holder."""
        deadline = clock() + max(0, wait_seconds)
        delay = max(0.05, float(poll_seconds))
        while True:
            if self.try_acquire():
                return self
            if clock() >= deadline:
                state = self.status()
                raise HostOperationError(
                    host_name(self.bridge), self.operation, "busy",
                    "%s is held by run %s on %s (renewed %d s ago, expires in %d s)" % (
                        self.name, state.get("owner"), state.get("proxy"), int(state.get("age_seconds") or 0),
                        int(state.get("remaining_seconds") or 0)),
                    hint="Wait for that run to finish; a lease whose run died expires by itself.",
                    holder=state.get("owner"), lease=self.name)
            sleep(min(delay, max(0.0, deadline - clock())))
            delay = min(delay * 2, 30.0)

    def renew(self, create=True):
        """Rewrite the lease (its modified time is the renewal); refuse when another owner took it over.

        ``create=False`` (the Renewer) leaves a lease that was released meanwhile released."""
        state = self.status()
        if not state["exists"] and not create:
            return
        if state["exists"] and state["owner"] == self.owner and self.held_for is None:
            self.held_for = state.get("held_for")      # a renewer does not know what the lease is for: keep it
        if state["exists"] and state["owner"] != self.owner:
            raise HostOperationError(host_name(self.bridge), self.operation, "busy",
                                     "%s was taken over by run %s after it expired" % (self.name, state["owner"]),
                                     hint="The run held it longer than its lease without renewing; start it again.")
        self.bridge.write_file(self.path, self._document())

    def release(self):
        """Remove the lease if this owner holds it; True when removed."""
        state = self.status()
        if not state["exists"] or state["owner"] != self.owner:
            return False
        return bool(self.bridge.remove_file(self.path))

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


class Renewer:
    """A daemon thread that renews leases every ``interval`` seconds until ``stop()`` (for long copies)."""

    def __init__(self, leases, interval=None):
        self.leases = list(leases)
        self.interval = interval or max(5.0, min(lease.seconds for lease in self.leases) / 4.0)
        self.errors = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-renewer", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            for lease in self.leases:
                try:
                    lease.renew(create=False)
                except Exception as err:    # pylint: disable=broad-except
                    self.errors.append(err)   # a missed renewal is harmless unless it lasts the whole lease

    def stop(self):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


# --- the leases of a backup run -------------------------------------------------------------------

def vm_lease(bridge, vm_id, owner, seconds=VM_LEASE_SECONDS, operation="create_recovery_point"):
    return Lease(bridge, vm_lease_name(vm_id), owner, seconds, operation=operation)


def take_run_leases(bridge, vm_id, owner, serialization_key=None, seconds=VM_LEASE_SECONDS, operation="create_recovery_point"):
    """Take the VM lease and, with a serialization key, the queue lease (released together). Returns the VM lease."""
    lease = vm_lease(bridge, vm_id, owner, seconds, operation)
    if not lease.try_acquire():
        state = lease.status()
        raise HostOperationError(host_name(bridge), operation, "busy",
                                 "VM %s is being backed up by run %s from %s (lease renewed %d s ago)"
                                 % (vm_id, state.get("owner"), state.get("proxy"), int(state.get("age_seconds") or 0)),
                                 hint="Wait for that run to finish; if it died, its lease expires after %d s." % seconds,
                                 holder=state.get("owner"))
    if serialization_key:
        queue = serial_lease(bridge, serialization_key, owner, seconds, operation=operation)
        # held for this VM: the run's other VMs on the queue (other nodes of the cluster, parallel jobs) wait their turn
        queue.held_for = lease.path
        if not queue.try_acquire():
            state = queue.status()
            lease.release()
            raise HostOperationError(host_name(bridge), operation, "busy",
                                     "run %s holds the queue %s for %s (one VM at a time on this CSV / host)"
                                     % (state.get("owner"), serialization_key, _vm_of_lease(state.get("held_for"))),
                                     hint="Back up these VMs one after the other (serial: 1, or throttle by serialization_key).",
                                     serialization_key=serialization_key, holder=state.get("owner"))
        lease.holds = [queue.path]
        lease.renew()
    return lease


def _vm_of_lease(path):
    """'VM <id>' for a VM lease's path (what a queue lease is held for), else 'another VM'."""
    name = str(path or "").rsplit("\\", 1)[-1]
    if name.startswith("vm-") and name.endswith(".lease"):
        return "VM %s" % name[3:-len(".lease")]
    return "another VM"


def release_run_leases(bridge, vm_id, owner):
    """Release the VM lease of ``owner`` and the queue leases it holds; False when ``owner`` held none."""
    lease = vm_lease(bridge, vm_id, owner)
    state = lease.status()
    if not state["exists"] or state["owner"] != str(owner):
        return False
    for name in state.get("holds") or []:
        Lease(bridge, name, owner).release()
    return lease.release()


def detach_run_leases(bridge, vm_id, owner):
    """Let the run leases of ``owner`` outlive this process: rewrite them without a process, so that they end
    only by hand-back or expiry (a recovery point created by one task and handed back by a later one).
    False when ``owner`` holds no lease of the VM."""
    lease = vm_lease(bridge, vm_id, owner)
    state = lease.status()
    if not state["exists"] or state["owner"] != str(owner):
        return False
    for name in state.get("holds") or []:
        queue = Lease(bridge, name, owner, bound=False)
        if queue.status().get("owner") == str(owner):
            queue.renew()
    lease.bound = False
    lease.holds = list(state.get("holds") or [])
    lease.renew()
    return True


def run_renewer(bridge, vm_id, owner, interval=None):
    """A started Renewer for the VM lease of ``owner`` and the queue leases it holds (stop it before hand-back)."""
    lease = vm_lease(bridge, vm_id, owner)
    lease.holds = list(lease.status().get("holds") or [])      # a renewal rewrites the file: keep what it holds
    leases = [lease] + [Lease(bridge, name, owner) for name in lease.holds]
    return Renewer(leases, interval).start()


def vm_lease_holder(bridge, vm_id):
    """Lease status of a VM: {exists, owner, live, ...}."""
    return vm_lease(bridge, vm_id, owner="?").status()


def serial_lease_holder(bridge, serialization_key):
    return serial_lease(bridge, serialization_key, owner="?").status()

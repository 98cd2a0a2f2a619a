# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which VM a backup is of, when two hosts report the same VM id: the lineage (issue 12, point 2).

Hyper-V's VM id is not unique across hosts: registering a restored copy on another host keeps the id by default
(hyperv_restore ``generate_new_id: false``, like Import-VM without -GenerateNewId), and so does an exported copy.
Keyed by id alone, two such VMs share one chain and one retention: the next ``keep_last: 1`` deletes the other
VM's latest backup, and ``vm: web`` restores one of the two silently.

A VM that moves keeps its backups' chain and retention: live migration, quick/cluster failover and storage
migration keep the VM's virtual disks (their VirtualDiskId travels in the file), and a cluster's nodes are one
place. So a backup continues the lineage whose latest backup was made

  * on the same host, or
  * on a node of the same cluster, or
  * of a VM with one of the same virtual disks (a VirtualDiskId in common),

and a VM with the id of an existing lineage that matches none of these (another host, other disks) starts its own
lineage ``<vm id>@<host>``, with a warning saying so. The first lineage of an id is the id itself, so repositories
written before lineages existed read unchanged. Two lineages matching at once (e.g. both copies of the same disks
on two hosts) is refused: the backup cannot tell which chain it continues.

What this cannot see: a copy made with the same disk files (export/import keeping the id) on a host outside the
cluster looks like a move. docs/backup_restore.md says so and tells to give copies a new id.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError


class Lineage:
    """The lineage a new backup continues (or starts), its latest backup (the parent candidate) and why."""

    def __init__(self, name, latest=None, reason=None, warning=None):
        self.name = name
        self.latest = latest
        self.reason = reason
        self.warning = warning


def record_disk_ids(record):
    """Every VirtualDiskId a backup recorded for its disks (base of chain, frozen file, chain), lower case."""
    ids = set()
    for disk in record.disks or []:
        metadata = disk.get("metadata") or {}
        for key in ("disk_id", "file_disk_id"):
            if metadata.get(key):
                ids.add(str(metadata[key]).lower())
        ids.update(str(value).lower() for value in metadata.get("chain_disk_ids") or [] if value)
    return ids


def vm_disk_ids(vm):
    """The VirtualDiskIds a host reports for a VM's disks (get_vms), lower case."""
    ids = set()
    for disk in vm.get("disks") or []:
        for key in ("disk_id", "file_disk_id"):
            if disk.get(key):
                ids.add(str(disk[key]).lower())
        ids.update(str(value).lower() for value in disk.get("chain_disk_ids") or [] if value)
    return ids


def _cluster_of(record):
    return ((record.metadata or {}).get("host_cluster") or "").lower()


def _same(first, second):
    return bool(first) and bool(second) and first.lower() == second.lower()


def _match(latest, host, cluster, disk_ids):
    """Why the VM on ``host`` is the VM of the lineage whose latest backup is ``latest``, or None."""
    if _same(latest.host, host):
        return "same host %s" % host
    if cluster and _same(_cluster_of(latest), cluster):
        return "moved within cluster %s (from %s)" % (cluster, latest.host)
    common = record_disk_ids(latest) & disk_ids
    if common:
        return "moved from host %s with its disks (VirtualDiskId %s)" % (latest.host, sorted(common)[0])
    return None


def _describe(lineage, latest):
    return "%s (latest backup %s from host %s)" % (lineage, latest.backup_id, latest.host)


def choose_lineage(records, vm, host, cluster=None):
    """The Lineage the next backup of ``vm`` (a get_vms entry) on ``host`` continues; ``records`` are the repository's
    complete backups of the VM's id (any order). Raises HyperVBackupError when two lineages match."""
    vm_id = vm["id"]
    latest_of = {}
    for record in records:
        current = latest_of.get(record.lineage)
        if current is None or record.order_key > current.order_key:
            latest_of[record.lineage] = record
    if not latest_of:
        return Lineage(vm_id, reason="first backup of VM id %s" % vm_id)
    disk_ids = vm_disk_ids(vm)
    matches = []
    for name, latest in latest_of.items():
        why = _match(latest, host, cluster, disk_ids)
        if why:
            matches.append((name, latest, why))
    if len(matches) > 1:
        same_host = [m for m in matches if _same(m[1].host, host)]
        matches = same_host if len(same_host) == 1 else matches
    if len(matches) == 1:
        name, latest, why = matches[0]
        return Lineage(name, latest, why)
    if matches:
        raise HyperVBackupError(
            "VM %s (id %s) on host %s matches %d VMs the repository knows under this id: %s. The backup cannot tell which "
            "one's chain it continues." % (vm.get("name"), vm_id, host, len(matches),
                                           "; ".join(_describe(name, latest) for name, latest, _why in matches)),
            hint="Two hosts report the same VM id with the same disks (a copy registered without a new id?). Give the copy a new id "
                 "(Hyper-V: Import-VM -GenerateNewId; hyperv_restore: generate_new_id: true) and back it up again.",
            category="vm_identity")
    name = "%s@%s" % (vm_id, host.lower())
    suffix = 2
    while name in latest_of:
        name = "%s@%s-%d" % (vm_id, host.lower(), suffix)
        suffix += 1
    others = "; ".join(_describe(other, latest) for other, latest in sorted(latest_of.items()))
    warning = ("VM %s on host %s reports id %s, which the repository already knows from another VM: %s. Its disks and host differ, "
               "so it is kept apart as VM lineage %s: its own full backup, its own retention, and restores by vm name or id must "
               "say which one (source_host). If this VM is that VM moved by a copy (a restore on another host), the older "
               "lineage's backups stay until you prune them." % (vm.get("name"), host, vm_id, others, name))
    return Lineage(name, None, "a second VM with id %s, on host %s" % (vm_id, host), warning)


def lineages_of(records):
    """{lineage: [records, oldest first]} of ``records``."""
    out = {}
    for record in sorted(records, key=lambda r: r.order_key):
        out.setdefault(record.lineage, []).append(record)
    return out


def pick_one_lineage(records, vm, source_host=None):
    """The records of the one VM a ``vm:`` lookup means (restore, info); refuses when the name or id names several.

    ``source_host`` picks the lineage with a backup from that host. Records are returned oldest first."""
    groups = lineages_of(records)
    if source_host:
        groups = dict((name, group) for name, group in groups.items() if any(_same(r.host, source_host) for r in group))
    if len(groups) <= 1:
        return next(iter(groups.values()), [])
    described = "; ".join("%s = VM %s (id %s) backed up from %s, latest %s" % (
        name, group[-1].vm_name, group[-1].vm_id, ", ".join(sorted(set(r.host or "?" for r in group))), group[-1].backup_id)
        for name, group in sorted(groups.items()))
    raise HyperVBackupError("vm %r names %d different VMs in the repository: %s." % (vm, len(groups), described),
                            hint="Say which one: add source_host (a host it was backed up from), or restore by backup_id.",
                            category="vm_identity")

# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What ``hyperv_backup_repository`` shows with ``--diff``: the repository's config, its key slots, its backups.

Built from the module's parameters and result (the result of every state describes the repository after the task,
or as it is in check mode), so the diff reads nothing more from the storage. Never a secret: key slots appear by
label only, passphrases not at all.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

CONFIG_KEYS = ("location", "backend", "chunk_size", "encrypted", "compression", "padding", "object_lock_days")


def _slots(labels):
    return dict((label, "key slot") for label in labels or [])


def config_summary(described):
    """The settings of a repository, from ``Repository.describe()``."""
    out = dict((key, described.get(key)) for key in CONFIG_KEYS)
    out["key_slots"] = _slots(described.get("key_slots"))
    return out


def planned_config(params):
    """The settings a repository created with ``params`` gets (check mode, before it exists)."""
    encrypted = params.get("repository_passphrase") is not None
    location = params["repository"]
    return {"location": location, "backend": "s3" if location.startswith("s3://") else "local", "chunk_size": params["chunk_size"],
            "encrypted": encrypted, "compression": {"algorithm": "zstd", "level": params["compression_level"]},
            "padding": params["padding"], "object_lock_days": params["object_lock_days"],
            "key_slots": _slots(["passphrase"] if encrypted else [])}


def _key_slot_states(state, result, check_mode):
    """(before, after) key slots of passphrase_changed, key_slot_added, key_slot_removed."""
    slots = _slots(result.get("key_slots"))       # after the task, or as they are in check mode
    label = result.get("key_slot")
    if not result.get("changed"):
        return slots, dict(slots)
    if state == "passphrase_changed":
        return dict(slots, **{label: "key slot (current passphrase)"}), dict(slots, **{label: "key slot (new passphrase)"})
    if state == "key_slot_added":
        if check_mode:
            return slots, dict(slots, **{label: "key slot"})
        return dict((k, v) for k, v in slots.items() if k != label), slots
    # key_slot_removed
    if check_mode:
        return slots, dict((k, v) for k, v in slots.items() if k != label)
    return dict(slots, **{label: "key slot"}), slots


def repository_diff(params, result, check_mode=False):
    """{before, after, headers} for the task's state; None for O(state=verified), which changes nothing."""
    state = params["state"]
    location = params["repository"]
    header = "repository %s" % location
    if state == "verified":
        return None
    if state == "present":
        if result.get("created"):
            before, after = {}, (planned_config(params) if check_mode else config_summary(result["repository"]))
        else:
            before = after = config_summary(result.get("repository") or {})
    elif state in ("passphrase_changed", "key_slot_added", "key_slot_removed"):
        before_slots, after_slots = _key_slot_states(state, result, check_mode)
        before, after = {"key_slots": before_slots}, {"key_slots": after_slots}
    elif state == "key_exported":
        header = "key file %s" % result.get("key_file")
        before = {"key_file": result.get("key_file"), "holds": "the keys of %s" % location if not result.get("changed") else
                  "no key export of this repository"}
        after = {"key_file": result.get("key_file"), "holds": "the keys of %s" % location}
    elif state in ("key_imported", "config_recovered"):
        source = ("the key file %s" % result.get("key_file") if state == "key_imported"
                  else "stored version %s" % result.get("recovered_version"))
        before = {"config": "intact" if not result.get("changed") else "missing, damaged or not opening with the keys"}
        after = {"config": "intact" if not result.get("changed") else "written back from %s" % source}
        if result.get("repository"):
            after["key_slots"] = _slots(result["repository"].get("key_slots"))
    else:   # pruned
        report = result.get("prune") or {}
        kept = sorted(b["backup_id"] for b in (report.get("kept") or []) + (report.get("locked") or []))
        removed = sorted(b["backup_id"] for b in report.get("removed") or [])
        gc = report.get("gc") or {}
        before = {"backups": sorted(kept + removed)}
        after = {"backups": kept, "unreferenced_chunks_deleted": gc.get("chunks_removed") or 0}
    return {"before": before, "after": after, "before_header": header, "after_header": header}

# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The repository options every module shares, and turning them (and backups) into module terms.

``repository_argument_spec()`` matches ``doc_fragments/repository.py`` (a unit test keeps them in step);
``open_repository(params)`` / ``ensure_repository(params, ...)`` build a Repository from module params;
``backup_result(record)`` is the shape in which modules return a backup.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.module_utils.basic import env_fallback

from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository import Repository


def repository_argument_spec():
    """Argument spec of the repository options (see doc_fragments/repository.py)."""
    return dict(
        repository=dict(type="str", required=True, fallback=(env_fallback, ["HYPERV_BACKUP_REPOSITORY"])),
        repository_passphrase=dict(type="str", no_log=True, fallback=(env_fallback, ["HYPERV_BACKUP_REPOSITORY_PASSPHRASE"])),
        repository_s3_endpoint_url=dict(type="str", fallback=(env_fallback, ["HYPERV_BACKUP_S3_ENDPOINT_URL"])),
        repository_s3_region=dict(type="str", fallback=(env_fallback, ["AWS_REGION", "AWS_DEFAULT_REGION"])),
        repository_s3_access_key=dict(type="str", no_log=True, fallback=(env_fallback, ["AWS_ACCESS_KEY_ID"])),
        repository_s3_secret_key=dict(type="str", no_log=True, fallback=(env_fallback, ["AWS_SECRET_ACCESS_KEY"])),
        repository_s3_session_token=dict(type="str", no_log=True, fallback=(env_fallback, ["AWS_SESSION_TOKEN"])),
        repository_s3_profile=dict(type="str", fallback=(env_fallback, ["AWS_PROFILE"])),
        repository_s3_validate_certs=dict(type="bool", default=True),
        repository_s3_ca_bundle=dict(type="path"),
        repository_s3_object_lock_mode=dict(type="str", choices=["COMPLIANCE", "GOVERNANCE"], default="COMPLIANCE"),
    )


def s3_options_from_params(params):
    """The s3_options dict of Repository for an s3:// location, else None."""
    if not str(params["repository"]).startswith("s3://"):
        return None
    return {
        "endpoint_url": params.get("repository_s3_endpoint_url"),
        "region": params.get("repository_s3_region"),
        "access_key": params.get("repository_s3_access_key"),
        "secret_key": params.get("repository_s3_secret_key"),
        "session_token": params.get("repository_s3_session_token"),
        "profile": params.get("repository_s3_profile"),
        "validate_certs": params.get("repository_s3_validate_certs", True),
        "ca_bundle": params.get("repository_s3_ca_bundle"),
        "object_lock_mode": params.get("repository_s3_object_lock_mode"),
    }


def open_repository(params):
    """Open the repository the module params name (RepositoryError if missing or the passphrase is wrong)."""
    return Repository.open(params["repository"], passphrase=params.get("repository_passphrase"),
                           s3_options=s3_options_from_params(params))


def ensure_repository(params, **init_options):
    """Open or create it: (repository, created)."""
    return Repository.ensure(params["repository"], passphrase=params.get("repository_passphrase"),
                             s3_options=s3_options_from_params(params), **init_options)


def backup_result(record):
    """A BackupRecord as a module returns it: the record plus the totals a person looks for first."""
    out = record.as_dict()
    stats = record.stats
    out["virtual_size"] = sum(d.get("virtual_size") or 0 for d in record.disks)
    out["stored_bytes"] = stats.get("stored_bytes", sum(d.get("stored_bytes") or 0 for d in record.disks))
    out["bytes_read"] = stats.get("bytes_read")
    out["duration_seconds"] = stats.get("duration_seconds")
    return out


def verify_message(report):
    """One sentence a person can act on, from a Repository.verify report."""
    if report["ok"]:
        return "Verified %d backup(s): all %d chunk(s) (%d bytes) are present and intact." % (
            report["backups_checked"], report["chunks_checked"], report["bytes_checked"])
    parts = []
    for entry in report["backups"]:
        if entry["ok"]:
            continue
        what = []
        if entry.get("missing_count"):
            what.append("%d missing chunk(s)" % entry["missing_count"])
        if entry.get("corrupt_count"):
            what.append("%d corrupt chunk(s)" % entry["corrupt_count"])
        what.extend(entry["problems"][:2])
        parts.append("%s (VM %s): %s" % (entry["backup_id"], entry.get("vm_name"), "; ".join(what)))
    return ("Verify found %d damaged backup(s) of %d: %s. Do not restore from these; take a new full backup of the "
            "affected VMs." % (len(report["damaged_backups"]), report["backups_checked"], " | ".join(parts)))


def prune_message(report):
    """One sentence from a Repository.prune report."""
    verb = "Would remove" if report["dry_run"] else "Removed"
    text = "%s %d backup(s), kept %d" % (verb, len(report["removed"]), len(report["kept"]))
    if report["locked"]:
        text += ", %d locked by Object Lock (kept until %s)" % (
            len(report["locked"]), min(entry["kept_until"] for entry in report["locked"]))
    gc = report.get("gc")
    if gc:
        text += "; %s %d unreferenced chunk(s), %d bytes" % (
            "would free" if report["dry_run"] else "freed", gc["chunks_removed"], gc["bytes_removed"])
        leftovers = gc.get("stale_sessions_removed", 0) + gc.get("orphan_manifests_removed", 0)
        if leftovers:
            text += "; %s %d leftover(s) of interrupted backups" % ("would clear" if report["dry_run"] else "cleared", leftovers)
        if gc["live_sessions"]:
            text += " (%d backup(s) running: their new chunks were kept)" % gc["live_sessions"]
    return text + "."

#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module hyperv_backup_report: write the JSON report and HTML page of one backup run."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: hyperv_backup_report
short_description: Write the JSON report and the HTML page of a Hyper-V backup run
version_added: 0.1.0
description:
  - Takes the per-VM results of one backup run (usually gathered by the C(hyperv.backup.hyperv_backup) role
    from every host of the run) and writes C(<run_id>.json), C(<run_id>.html), C(latest.json) and C(index.html)
    into O(directory).
  - The HTML page is self-contained (inline CSS and an inline SVG chart, no network assets) and shows
    per-VM status, backup type, sizes and durations, and a chart of bytes stored and duration per run.
  - The history comes from O(catalog) (backup records of the repository catalogue, as returned by
    C(hyperv.backup.hyperv_backup_info)) and from the earlier reports found in O(directory).
  - Runs on the controller or backup proxy; use C(delegate_to) and C(run_once) in a multi-host play.
author:
  - hyperv.backup contributors (@hyperv-backup)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
options:
  directory:
    description: Directory for the report files; created if missing.
    type: path
    required: true
  run_id:
    description:
      - Identifier of the run, used as the file name (letters, digits, C(.), C(_), C(-), C(:)).
    type: str
    required: true
  results:
    description:
      - One mapping per VM with the keys C(host), C(vm), C(status) (C(success), C(failed) or C(skipped)) and
        optionally C(vm_id), C(backup_type), C(method), C(backup_id), C(virtual_size), C(bytes_read),
        C(bytes_stored), C(started), C(finished) (ISO 8601), C(duration_seconds), C(serialization_key), C(error).
    type: list
    elements: dict
    required: true
  started:
    description: Start of the run (ISO 8601); defaults to the earliest VM start.
    type: str
  finished:
    description: End of the run (ISO 8601); defaults to the latest VM end.
    type: str
  catalog:
    description:
      - Backup records of the repository catalogue for the history chart. Each record may carry
        C(run_id) (or C(metadata.run_id)), C(created), C(stored_bytes), C(read_bytes) and C(duration_seconds).
    type: list
    elements: dict
    default: []
  title:
    description: Title of the HTML page.
    type: str
  copy:
    description:
      - The registered result of M(hyperv.backup.hyperv_backup_copy) when the run made a second copy (register it with
        C(ignore_errors) so that a failed copy is reported); the report shows what was copied where, and a failed copy
        makes the run C(failed).
    type: dict
    version_added: 0.1.0
attributes:
  check_mode:
    support: full
    details: In check mode the report is built and returned but no file is written.
  diff_mode:
    support: none
  platform:
    platforms: posix
    details: Runs on the controller or the backup proxy; it never contacts a Hyper-V host.
notes:
  - The module does not fail when VMs failed; it returns RV(status) and RV(problems) so that the caller can
    end the run failed after the report is written.
seealso:
  - module: hyperv.backup.hyperv_backup
  - module: hyperv.backup.hyperv_backup_info
"""

EXAMPLES = r"""
- name: Write the report of this run
  hyperv.backup.hyperv_backup_report:
    directory: /var/lib/hyperv-backup/reports
    run_id: "{{ hyperv_backup_run_id }}"
    results: "{{ all_vm_results }}"
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
status:
  description: C(successful) when every VM succeeded, C(failed) otherwise.
  returned: always
  type: str
  sample: failed
problems:
  description: The VMs that failed or were skipped, with the reason.
  returned: always
  type: list
  elements: dict
  sample: [{"host": "hv01", "vm": "sql01", "status": "failed", "error": "Host hv01, operation create_recovery_point: ..."}]
summary:
  description: Counts and byte totals of the run.
  returned: always
  type: dict
  sample: {"vms": 12, "succeeded": 11, "failed": 1, "skipped": 0, "hosts": 3, "bytes_read": 1048576, "bytes_stored": 524288}
report:
  description:
    - The whole report document (what the JSON file holds); C(copy) is the run's second copy (C(status), C(target),
      C(copied), C(backup_ids), C(bytes_uploaded), C(same_keys), C(verified), C(error)) or null.
  returned: always
  type: dict
json_path:
  description: Path of the run's JSON report.
  returned: always
  type: str
html_path:
  description: Path of the run's HTML page.
  returned: always
  type: str
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError
from ansible_collections.hyperv.backup.plugins.module_utils.backup.report import (
    build_report, combine_history, history_from_catalog, history_from_reports, write_report,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            directory=dict(type="path", required=True),
            run_id=dict(type="str", required=True),
            results=dict(type="list", elements="dict", required=True),
            started=dict(type="str"),
            finished=dict(type="str"),
            catalog=dict(type="list", elements="dict", default=[]),
            title=dict(type="str"),
            copy=dict(type="dict"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        # The earlier reports know failures and exact run spans, so they win over the catalogue.
        history = combine_history(history_from_catalog(params["catalog"]), history_from_reports(params["directory"]),
                                  run_started=params["started"])
        report = build_report(params["run_id"], params["results"], started=params["started"],
                              finished=params["finished"], history=history, title=params["title"], copy=params["copy"])
        safe = report["run_id"].replace(":", "-")
        paths = {"json": os.path.join(params["directory"], safe + ".json"),
                 "html": os.path.join(params["directory"], safe + ".html")}
        if not module.check_mode:
            paths = write_report(params["directory"], report)
    except HyperVBackupError as err:
        module.fail_json(msg=str(err), **err.details())
    module.exit_json(changed=not module.check_mode, status=report["status"], problems=report["problems"],
                     summary=report["summary"], report=report, json_path=paths["json"], html_path=paths["html"])


if __name__ == "__main__":
    main()

# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Hyper-V VSS writer's state from ``vssadmin list writers``, read by position and number only.

vssadmin prints one block of five lines per writer, in the host's language::

    Writer name: 'Microsoft Hyper-V VSS Writer'          Verfassername: "Microsoft Hyper-V VSS Writer"
       Writer Id: {66841cd4-6ded-4f4b-8f17-fd23f8ddc3de}    Verfasserkennung: {66841cd4-...}
       Writer Instance Id: {...}                            Verfasserinstanzkennung: {...}
       State: [1] Stable                                    Status: [1] Stabil
       Last error: No error                                 Letzter Fehler: Kein Fehler

(the German labels as public tests of a VSS writer repair script reproduce them). Labels and words
are localised, the writer id and the bracketed state number are not: the block is found by the
writer id, the state is the line that carries ``[N]`` after it, and the last error is the line
after the state, whatever its words. Judging uses the number only (``host_checks``).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import BridgeError

HYPERV_VSS_WRITER_ID = "66841cd4-6ded-4f4b-8f17-fd23f8ddc3de"
HYPERV_VSS_WRITER_NAME = "Microsoft Hyper-V VSS Writer"
# VSS_WRITER_STATE (vss.h): 1 Stable, 5 Waiting for completion are fine; 2..4 are a backup in progress
# (freeze, thaw, post-snapshot); 6 and up are failures.
STATE_NAMES = {0: "Unknown", 1: "Stable", 2: "Waiting for freeze", 3: "Waiting for thaw", 4: "Waiting for post snapshot",
               5: "Waiting for backup complete", 6: "Failed at identify", 7: "Failed at prepare backup",
               8: "Failed at prepare snapshot", 9: "Failed at freeze", 10: "Failed at thaw",
               11: "Failed at post snapshot", 12: "Failed at backup complete", 13: "Failed at pre restore",
               14: "Failed at post restore", 15: "Failed at backup shutdown"}
_STATE = re.compile(r"\[(\d+)\]\s*(.*)$")
# Lines a block may span between the id line and the state line (instance id, sometimes a wrapped line).
_MAX_GAP = 4


def _value(line):
    """The text after the label: everything after the first ':' (labels have no colon in any language)."""
    return line.split(":", 1)[1].strip() if ":" in line else line.strip()


def parse_writer(output, writer_id=HYPERV_VSS_WRITER_ID):
    """{state: '[N] words' | None, state_number: N | None, last_error: text | None} of one writer."""
    lines = str(output or "").splitlines()
    wanted = writer_id.lower()
    for index, line in enumerate(lines):
        if wanted not in line.lower():
            continue
        for offset in range(1, _MAX_GAP + 1):
            if index + offset >= len(lines):
                break
            match = _STATE.search(lines[index + offset])
            if not match:
                continue
            number = int(match.group(1))
            words = match.group(2).strip()
            after = index + offset + 1
            last_error = _value(lines[after]) if after < len(lines) and lines[after].strip() else None
            return {"state": "[%d] %s" % (number, words or STATE_NAMES.get(number, "")), "state_number": number,
                    "last_error": last_error}
        break
    return {"state": None, "state_number": None, "last_error": None}


def hyperv_vss_writer(bridge):
    """The hyperv_vss_writer fact of get_host_info: {name, id, state, state_number, last_error[, not_read]}.

    ``vssadmin list writers`` starts a stopped (demand-start) VSS service, so it is run only while VSS
    runs: reading facts (hyperv_host_info, check mode) must change nothing on the host. Otherwise the
    writer is reported unread, with ``not_read`` saying why and ``startable`` whether VSS can start
    (it is not Disabled); hyperv_vss_ensure starts the service and then reads the writer.
    """
    out = {"name": HYPERV_VSS_WRITER_NAME, "id": "{%s}" % HYPERV_VSS_WRITER_ID, "state": None, "state_number": None,
           "last_error": None}
    try:
        service = bridge.service("vss")
    except BridgeError:
        service = None
    if service is not None and service.get("status") != "Running":
        out.update(not_read="the Volume Shadow Copy service is %s; the writer is read once it runs" % service.get("status"),
                   startable=service.get("start_type") != "Disabled")
        return out
    try:
        listed = bridge.vss_writers()
    except BridgeError:
        return out
    if int(listed.get("exit_code") or 0) != 0:
        return out
    out.update(parse_writer(listed.get("output")))
    return out

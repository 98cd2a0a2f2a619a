# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab host's services and VSS: ``service``, ``vssadmin list writers``, ``diskshadow`` and Win32_ShadowCopy.

What the bridge calls ``service``, ``vss_writers`` and ``diskshadow`` of a lab host answer (LabBridge
delegates here), and the instances of ``Win32_ShadowCopy`` (``shadow_copies``).

Rules:

- ``service(name, start)``: start_service's rules as before (fault ``service_wont_start:<svc>`` -> 0x8007041D,
  a Disabled service -> 0x80070422, unknown service -> 0x80070424); display names in the host's locale.
- VSS (``vss``) and the software provider (``swprv``) are demand-start services: a requestor (vssadmin,
  diskshadow) activates them through COM, so the lab starts a stopped Manual/Automatic one itself, as the
  service control manager does; a Disabled or unstartable one makes the tool fail. (Windows demand-starts
  COM servers; that vssadmin and diskshadow trigger it this way is general knowledge, UNCONFIRMED by a source
  here.) The Hyper-V writer lives in ``vmms``: it is listed only while vmms runs.
- ``vss_writers()``: the text of ``vssadmin list writers`` in the host's locale (lab_locale; German words
  partly UNCONFIRMED), several writers with the Hyper-V writer not first, state ``[1] Stable`` or with fault
  ``vss_writer_failed`` ``[8] Failed`` / Retryable error.
- ``diskshadow(script)``: the commands of lab_diskshadow (see there), one shadow copy set creation at a time
  per host (VSS_E_SNAPSHOT_SET_IN_PROGRESS 0x80042316 for the second).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import uuid

from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import BridgeError
from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_files, lab_locale
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import (
    HARDWARE_VSS_PROVIDER, HYPERV_VSS_WRITER, host_faults)

SERVICE_NO_RESPONSE = 0x8007041D       # ERROR_SERVICE_REQUEST_TIMEOUT (1053)
SERVICE_DISABLED = 0x80070422          # ERROR_SERVICE_DISABLED (1058)
SERVICE_DOES_NOT_EXIST = 0x80070424    # ERROR_SERVICE_DOES_NOT_EXIST (1060)
VSS_E_WRITERERROR_RETRYABLE = 0x800423F3

# Writers every Windows Server lists (ids as vssadmin prints them on any host); the Hyper-V writer is
# put in the middle so that a parser reading by position, not by id, is caught.
OTHER_WRITERS = (
    ("Task Scheduler Writer", "d61d61c8-d73a-4eee-8cdd-f6f9786b7124"),
    ("VSS Metadata Store Writer", "75dfb225-e2e4-4d39-9ac9-ffaff65ddf06"),
    ("Performance Counters Writer", "0bada1de-01a9-4625-8278-69e735f39dd2"),
    ("System Writer", "e8132975-6f93-4464-a53e-1050253ae220"),
)
TRAILING_WRITERS = (
    ("Registry Writer", "afbab4a2-367d-4d15-a586-71dbb18f8485"),
    ("COM+ REGDB Writer", "542da469-d3e1-473c-9f4f-7847f01fc64f"),
    ("WMI Writer", "a6ad56c2-b509-4e6c-bb19-49d8f43532f0"),
)


# --- services ------------------------------------------------------------------------------------

def _locale(host_doc):
    return host_doc.get("locale") or lab_locale.DEFAULT_LOCALE


def _display_name(host_doc, name, service):
    return lab_locale.service_display_name(_locale(host_doc), name) or service.get("display_name") or name


def _start(host_doc, name):
    """Start a stopped service in ``host_doc`` (caller writes it back); BridgeError when Windows would refuse."""
    service = host_doc["services"][name]
    if service["status"] == "Running":
        return False
    display = _display_name(host_doc, name, service)
    if "service_wont_start:%s" % name in host_faults(host_doc):
        raise BridgeError("Service '%s (%s)' cannot be started due to the following error: Cannot start service %s on computer "
                          "'.'. The service did not respond to the start or control request in a timely fashion."
                          % (display, name, name), code=SERVICE_NO_RESPONSE, category="service",
                          hint="Check the System event log for service control manager errors (lab fault "
                               "'service_wont_start:%s')." % name)
    if service["start_type"] == "Disabled":
        raise BridgeError("Service '%s (%s)' cannot be started due to the following error: The service cannot be started, "
                          "either because it is disabled or because it has no enabled devices associated with it."
                          % (display, name), code=SERVICE_DISABLED, category="service",
                          hint="Set its start type to Manual or Automatic.")
    service["status"] = "Running"
    return True


def service(layout, name, start=False):
    """{name, display_name, status, start_type, previous_status} of a host service, started first if ``start``."""
    key = str(name).lower()
    with layout.host_lock():
        host_doc = layout.read_host()
        stored = host_doc["services"].get(key)
        if stored is None:
            raise BridgeError("Cannot find any service with service name '%s'." % name, code=SERVICE_DOES_NOT_EXIST,
                              category="not_found", hint="The lab host has services: %s." % ", ".join(sorted(host_doc["services"])))
        previous = stored["status"]
        if start and _start(host_doc, key):
            layout.write_host(host_doc)
    return {"name": key, "display_name": _display_name(host_doc, key, stored), "status": stored["status"],
            "start_type": stored["start_type"], "previous_status": previous}


def demand_start(layout, names):
    """Start the demand-start services a VSS requestor needs (COM activation); BridgeError if one cannot start."""
    with layout.host_lock():
        host_doc = layout.read_host()
        changed = False
        for name in names:
            if name in host_doc["services"]:
                changed = _start(host_doc, name) or changed
        if changed:
            layout.write_host(host_doc)
    return host_doc


# --- writers -------------------------------------------------------------------------------------

def writers(host_doc):
    """[{name, id, instance_id, state, error}] as VSS lists them now (state: VSS_WRITER_STATE number)."""
    listed = list(OTHER_WRITERS)
    if (host_doc["services"].get("vmms") or {}).get("status") == "Running":
        listed.append((HYPERV_VSS_WRITER["name"], HYPERV_VSS_WRITER["id"].strip("{}")))
    listed.extend(TRAILING_WRITERS)
    failed = "vss_writer_failed" in host_faults(host_doc)
    out = []
    for name, writer_id in listed:
        instance = uuid.uuid5(uuid.NAMESPACE_URL, "hyperv-lab-writer:%s:%s" % (host_doc["name"].lower(), writer_id))
        hyperv = writer_id == HYPERV_VSS_WRITER["id"].strip("{}")
        out.append({"name": name, "id": writer_id, "instance_id": str(instance), "state": 8 if hyperv and failed else 1,
                    "error": "retryable" if hyperv and failed else "none"})
    return out


def _copyright_years(host_doc):
    # vssadmin of Windows Server 2008 (R2) prints 2001-2005 (a public 2008 transcript); 2012 and later 2001-2013.
    return "2001-2005" if host_doc["era"] == "2008r2" else "2001-2013"


def vss_writers(layout):
    """{"exit_code", "output"} of ``vssadmin list writers`` on the lab host."""
    host_doc = layout.read_host()
    locale = _locale(host_doc)
    banner = [lab_locale.text(locale, "vssadmin.banner"),
              lab_locale.text(locale, "vssadmin.copyright").replace("2001-2013", _copyright_years(host_doc)), ""]
    try:
        host_doc = demand_start(layout, ("vss",))
    except BridgeError as exc:
        # UNCONFIRMED wording and exit code of vssadmin when VSS cannot start; callers must judge exit_code.
        failure = [lab_locale.text(locale, "vssadmin.service_error"), "(0x%08X) %s" % (exc.code, exc), ""]
        return {"exit_code": 2, "output": "\r\n".join(banner + failure)}
    quote = lab_locale.text(locale, "vssadmin.quote")
    lines = list(banner)
    for writer in writers(host_doc):
        lines.extend([
            "%s: %s%s%s" % (lab_locale.text(locale, "vssadmin.writer_name"), quote, writer["name"], quote),
            "   %s: {%s}" % (lab_locale.text(locale, "vssadmin.writer_id"), writer["id"]),
            "   %s: {%s}" % (lab_locale.text(locale, "vssadmin.writer_instance_id"), writer["instance_id"]),
            "   %s: [%d] %s" % (lab_locale.text(locale, "vssadmin.state"), writer["state"], lab_locale.text(locale, "vssadmin.state.%d" % writer["state"])),
            "   %s: %s" % (lab_locale.text(locale, "vssadmin.last_error"), lab_locale.text(locale, "vssadmin.error.%s" % writer["error"])),
            ""])
    return {"exit_code": 0, "output": "\r\n".join(lines) + "\r\n"}


# --- shadow copies -------------------------------------------------------------------------------

def shadow_copies(layout):
    """Win32_ShadowCopy instances' properties (only names the schema lists) of every shadow copy of the host.

    UNCONFIRMED, what the lab does: ID / SetID / ProviderID in upper case with braces; ExposedName with a
    trailing backslash; ExposedPath None for a local exposure (VSS_SNAPSHOT_PROP.m_pwszExposedPath names the
    shared part of a remotely exposed copy); State 12 (VSS_SS_CREATED).
    """
    host_doc = layout.read_host()
    records = lab_files.read_shadows(layout)["shadows"]
    out = []
    for record in records:
        hardware = record["provider_id"].lower() == HARDWARE_VSS_PROVIDER["id"].lower()
        exposed = record.get("exposed_name")
        out.append({
            "Caption": None, "Description": None, "Name": None, "Status": None,
            "ID": "{%s}" % record["id"].upper(), "SetID": "{%s}" % record["set_id"].upper(),
            "ProviderID": record["provider_id"].upper(), "DeviceObject": record["device_object"],
            "VolumeName": record["volume_name"], "OriginatingMachine": host_doc["name"].upper(),
            "ServiceMachine": host_doc["name"].upper(), "ExposedName": exposed, "ExposedPath": None,
            "InstallDate": record["install_date"], "Count": record["count"], "State": 12,
            "Persistent": bool(record.get("persistent", True)), "ClientAccessible": bool(record.get("client_accessible")),
            "NoAutoRelease": bool(record.get("persistent", True)), "NoWriters": bool(record.get("no_writers")),
            "Transportable": False, "NotSurfaced": False, "HardwareAssisted": hardware, "Differential": not hardware,
            "Plex": hardware, "Imported": False, "ExposedRemotely": False, "ExposedLocally": bool(exposed)})
    return out


def diskshadow(layout, script):
    """{"exit_code", "output"} of ``diskshadow /s <file holding script>`` on the lab host (see lab_diskshadow)."""
    from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_diskshadow   # it imports this module
    return lab_diskshadow.run(layout, script)

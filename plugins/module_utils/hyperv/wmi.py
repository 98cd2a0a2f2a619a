# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared WMI helpers for every ``hyperv/`` module: namespace, services, method calls, times, errors.

Everything here goes through the bridge (``host/bridge.py``) only. ``call`` is the one place that
turns a method's ``ReturnValue`` and its job's ``JobState``/``ErrorCode`` into ``HostOperationError``
with a category from ``host_operations.ERROR_CATEGORIES``, so every operation reports failures the
same way. Classes, properties, methods and return codes are the ones of
``hyperv_wmi_schema.json`` (see ``docs/powershell.md`` for the sources).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import re
import uuid
from xml.etree import ElementTree

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HostOperationError
from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import (
    JOB_FINISHED_STATES, JOB_STARTED, JOB_SUCCESS_STATES, NAMESPACE_CIMV2, NAMESPACE_V1, NAMESPACE_V2, WBEM_E_INVALID_CLASS,
    WBEM_E_INVALID_METHOD, WBEM_E_INVALID_NAMESPACE, WBEM_E_INVALID_QUERY, WBEM_E_METHOD_NOT_IMPLEMENTED, WBEM_E_NOT_FOUND,
    BridgeError)

# Return codes of the two documented families (schema conventions.return_code_sets).
CIM_GENERIC_TEXT = {1: "Not Supported", 2: "Failed", 3: "Timeout", 4: "Invalid Parameter", 5: "Invalid State",
                    6: "Incompatible Parameters"}
HYPERV_TEXT = {32768: "Failed", 32769: "Access Denied", 32770: "Not Supported", 32771: "Status is unknown",
               32772: "Timeout", 32773: "Invalid parameter", 32774: "System is in use",
               32775: "Invalid state for this operation", 32776: "Incorrect data type", 32777: "System is not available",
               32778: "Out of memory", 32779: "File not found or in use"}
# Codes whose meaning fixes the category whatever the operation (the plan: 32770/1 unsupported, 32774 busy).
CODE_CATEGORIES = {1: "unsupported", 32770: "unsupported", 32774: "busy"}
JOB_STATE_TEXT = {7: "Completed", 8: "Terminated", 9: "Killed", 10: "Exception", 32768: "Completed with warnings"}
# WBEM status codes that mean "this host (era) has no such thing": the caller asked for something the
# Windows version lacks, which is 'unsupported', not a failure of the host.
UNSUPPORTED_WBEM = (WBEM_E_INVALID_CLASS, WBEM_E_INVALID_NAMESPACE, WBEM_E_METHOD_NOT_IMPLEMENTED, WBEM_E_INVALID_METHOD,
                    WBEM_E_INVALID_QUERY)
# Bridge failure categories that are about reaching the host; they pass through unchanged.
PASS_THROUGH_CATEGORIES = ("unreachable", "authentication", "service", "busy", "not_found", "unsupported")

VSMS = "Msvm_VirtualSystemManagementService"
IMAGE_SERVICE = "Msvm_ImageManagementService"
SNAPSHOT_SERVICE = "Msvm_VirtualSystemSnapshotService"
REFERENCE_POINT_SERVICE = "Msvm_VirtualSystemReferencePointService"
EFFECT_CREATE = 5      # Msvm_AffectedJobElement.ElementEffects: 5 = Create

_NAMESPACE_CACHE_ATTRIBUTE = "_hyperv_backup_wmi_cache"
_DMTF = re.compile(r"^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})\.(\d{6})([+-])(\d{3})$")
_GUID = re.compile(r"^\{?([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\}?$")


def host_of(bridge):
    return getattr(bridge, "host", None) or "host"


# --- errors ------------------------------------------------------------------------------------

def bridge_failure(bridge, operation, exc, what, category=None, hint=None):
    """A HostOperationError for a BridgeError raised while doing ``what`` (a short phrase)."""
    code = getattr(exc, "code", None)
    if code in UNSUPPORTED_WBEM:
        found = "unsupported"
        hint = hint or ("This Windows version does not have it; the operation is not possible on this host (%s)."
                        % _wbem_name(code))
    elif code == WBEM_E_NOT_FOUND:
        found = "not_found"
    elif getattr(exc, "category", None) in PASS_THROUGH_CATEGORIES:
        found = exc.category
    else:
        found = category or "failed"
    return HostOperationError(host_of(bridge), operation, found, "%s failed: %s" % (what, getattr(exc, "message", exc)),
                              hint=hint or getattr(exc, "hint", None), windows_error=code_text(code))


def _wbem_name(code):
    names = {WBEM_E_INVALID_CLASS: "WBEM_E_INVALID_CLASS", WBEM_E_INVALID_NAMESPACE: "WBEM_E_INVALID_NAMESPACE",
             WBEM_E_METHOD_NOT_IMPLEMENTED: "WBEM_E_METHOD_NOT_IMPLEMENTED", WBEM_E_INVALID_METHOD: "WBEM_E_INVALID_METHOD",
             WBEM_E_INVALID_QUERY: "WBEM_E_INVALID_QUERY"}
    return names.get(code, code_text(code))


def code_text(code):
    if isinstance(code, int) and code > 0xFFFF:
        return "0x%08X" % code
    return None if code is None else str(code)


def is_missing(exc):
    """True when a BridgeError says the class / namespace / method does not exist on this host."""
    return isinstance(exc, BridgeError) and getattr(exc, "code", None) in UNSUPPORTED_WBEM


_HRESULT = re.compile(r"\b0x[89ACac][0-9A-Fa-f]{7}\b")


def _hresult_in(description, errors):
    """The HRESULT a failed job names (Windows puts it in ErrorDescription / Msvm_Error texts as 0x8....... or
    0xC.......), so callers can tell errors such as 0xC03A0022 apart without reading the words; None if it names none."""
    for text in [description] + list(errors or []):
        found = _HRESULT.search(str(text or ""))
        if found:
            return "0x" + found.group(0)[2:].upper()
    return None


def return_text(code):
    return CIM_GENERIC_TEXT.get(code) or HYPERV_TEXT.get(code) or "code %s" % code


def category_of(code, category="failed", code_categories=None):
    """The error category for a ReturnValue / job ErrorCode: the caller's table, then the fixed ones."""
    if code_categories and code in code_categories:
        return code_categories[code]
    return CODE_CATEGORIES.get(code, category)


# --- namespace and services --------------------------------------------------------------------

def _cache(bridge):
    cache = getattr(bridge, _NAMESPACE_CACHE_ATTRIBUTE, None)
    if cache is None:
        cache = {}
        try:
            setattr(bridge, _NAMESPACE_CACHE_ATTRIBUTE, cache)
        except AttributeError:      # a bridge that refuses attributes: no cache, only repeated queries
            pass
    return cache


def version_tuple(text):
    """'6.1.7601' -> (6, 1, 7601); unreadable parts count as 0."""
    out = []
    for part in str(text or "").split("."):
        try:
            out.append(int(part))
        except ValueError:
            out.append(0)
    return tuple(out)


def os_facts(bridge, operation="get_host_info"):
    """Win32_OperatingSystem's Version, BuildNumber and Caption (cached per bridge)."""
    cache = _cache(bridge)
    if "os" not in cache:
        try:
            found = bridge.query(NAMESPACE_CIMV2, "Win32_OperatingSystem", properties=["Version", "BuildNumber", "Caption"])
        except BridgeError as exc:
            raise bridge_failure(bridge, operation, exc, "reading Win32_OperatingSystem")
        if not found:
            raise HostOperationError(host_of(bridge), operation, "failed", "Win32_OperatingSystem returned no instance",
                                     hint="Check WMI on the host (winmgmt service, 'Get-WmiObject Win32_OperatingSystem').")
        item = found[0]
        version = str(item.get("Version") or "")
        build = item.get("BuildNumber")
        try:
            build = int(build)
        except (TypeError, ValueError):
            parts = version_tuple(version)
            build = parts[2] if len(parts) > 2 else 0
        cache["os"] = {"version": version, "build": build, "caption": item.get("Caption")}
    return cache["os"]


def namespace(bridge, operation="get_vms"):
    """root\\virtualization\\v2 when Win32_OperatingSystem.Version >= 6.2 (Windows Server 2012), else v1."""
    facts = os_facts(bridge, operation)
    return NAMESPACE_V2 if version_tuple(facts["version"])[:2] >= (6, 2) else NAMESPACE_V1


def is_v1(ns):
    return ns == NAMESPACE_V1


def build(bridge, operation="get_vms"):
    return int(os_facts(bridge, operation)["build"] or 0)


def service(bridge, class_name, operation, ns=None):
    """The single instance of a host service class (Msvm_VirtualSystemManagementService, ...), cached."""
    ns = ns or namespace(bridge, operation)
    cache = _cache(bridge)
    key = ("service", ns, class_name)
    if key not in cache:
        try:
            found = bridge.query(ns, class_name)
        except BridgeError as exc:
            raise bridge_failure(bridge, operation, exc, "finding %s" % class_name,
                                 hint="Check that the Hyper-V role and its management service (vmms) run on the host.")
        if not found:
            raise HostOperationError(host_of(bridge), operation, "service", "%s has no instance on the host" % class_name,
                                     hint="Start the Hyper-V Virtual Machine Management service (vmms).")
        cache[key] = found[0]
    return cache[key]


def forget(bridge):
    """Drop the cached facts (after a reconnect, or in tests)."""
    _cache(bridge).clear()


# --- method calls ------------------------------------------------------------------------------

def call(bridge, operation_name, ns, path, method, arguments=None, ok=(0,), category="failed", code_categories=None,
         what=None, hint=None):
    """Invoke ``method`` and return the bridge's result dict when it succeeded; raise HostOperationError otherwise.

    ``ok``: return values that mean success besides a successful job (ReturnValue 4096 is followed
    through its job). ``category``: the category of a failure no table names; ``code_categories``
    {code: category} wins over the fixed table (32770/1 -> unsupported, 32774 -> busy).
    """
    what = what or method
    try:
        result = bridge.invoke(ns, path, method, arguments or {})
    except BridgeError as exc:
        raise bridge_failure(bridge, operation_name, exc, what, category=category, hint=hint)
    code = result.get("ReturnValue")
    if code in ok:
        return result
    job = result.get("job")
    if code == JOB_STARTED and job is not None:
        state = job.get("JobState")
        error = job.get("ErrorCode") or 0
        if state in JOB_SUCCESS_STATES and not error:
            return result
        finished = state in JOB_FINISHED_STATES
        detail = job.get("ErrorDescription") or job.get("ErrorSummaryDescription") or ""
        message = "%s: the job %s (state %s%s, error code %s%s)%s" % (
            what, "failed" if finished else "did not finish", state,
            " " + JOB_STATE_TEXT[state] if state in JOB_STATE_TEXT else "", error,
            " " + return_text(error) if error in CIM_GENERIC_TEXT or error in HYPERV_TEXT else "",
            ": " + detail if detail else "")
        raise HostOperationError(host_of(bridge), operation_name, category_of(error, category, code_categories), message,
                                 hint=hint or _default_hint(category_of(error, category, code_categories)),
                                 windows_error=_hresult_in(detail, job.get("errors")) or "job ErrorCode %s" % error,
                                 job_errors=list(job.get("errors") or []))
    if code == JOB_STARTED:
        message = "%s: started a job the bridge did not report" % what
        raise HostOperationError(host_of(bridge), operation_name, category, message, hint=hint or _default_hint(category),
                                 windows_error="ReturnValue 4096")
    found = category_of(code, category, code_categories)
    raise HostOperationError(host_of(bridge), operation_name, found, "%s returned %s (%s)" % (what, code, return_text(code)),
                             hint=hint or _default_hint(found), windows_error="ReturnValue %s" % code)


def _default_hint(category):
    if category == "unsupported":
        return "This Windows version or this VM cannot do it; check the host's version and the VM's configuration version."
    if category == "busy":
        return "Another operation holds the VM or host (a backup, a migration, a checkpoint merge); retry later."
    if category == "not_found":
        return "The file or object does not exist (any more); check the VM's disks and checkpoints."
    return "See the Hyper-V-VMMS Admin event log on the host for details."


def affected_elements(result, class_name=None, effect=EFFECT_CREATE):
    """Instances the job of ``result`` affected with ``effect`` (5 = Create), optionally of one class.

    After ReturnValue 4096 the object a method created is read from Msvm_AffectedJobElement, not
    from its out-parameter (hyperv_wmi.md section 1).
    """
    out = []
    for item in result.get("affected") or []:
        effects = item.get("ElementEffects") or []
        if effect is not None and effect not in effects:
            continue
        if class_name and item.get("__CLASS") != class_name:
            continue
        out.append(item)
    return out


# --- values ------------------------------------------------------------------------------------

def dmtf_to_iso(value):
    """'20261202073512.123456+060' -> '2026-12-02T06:35:12.123456Z'; None for null, empty or an interval."""
    if value is None:
        return None
    text = str(value).strip()
    match = _DMTF.match(text)
    if not match:
        return None         # intervals ('...:000') and unreadable values carry no point in time
    year, month, day, hour, minute, second, micro, sign, offset = match.groups()
    try:
        moment = datetime.datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), int(micro))
    except ValueError:
        return None
    shift = datetime.timedelta(minutes=int(offset))
    moment = moment - shift if sign == "+" else moment + shift
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def iso_to_dmtf(value):
    """'2026-12-02T06:35:12Z' (or with microseconds / +00:00) -> '20261202063512.000000+000'."""
    text = str(value).strip().replace("Z", "+00:00")
    moment = None
    for fmt in ("%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%dT%H:%M:%S%z"):
        try:
            moment = datetime.datetime.strptime(text, fmt)
            break
        except ValueError:
            continue
    if moment is None:
        raise ValueError("%r is not an ISO 8601 time" % (value,))
    moment = moment.astimezone(datetime.timezone.utc)
    return moment.strftime("%Y%m%d%H%M%S.%f") + "+000"


def canonical_guid(text):
    """'{ABC...}' / 'abc...' -> lowercase GUID without braces, or None when it is not a GUID."""
    match = _GUID.match(str(text or "").strip())
    return match.group(1).lower() if match else None


def guid_suffix(text):
    """The GUID after the last ':' or '\\' of an id such as 'Microsoft:<VM>\\<GUID>' (lowercase), or None."""
    tail = re.split(r"[:\\]", str(text or ""))[-1]
    return canonical_guid(tail)


def first(values):
    """First element of a WMI array property (or the scalar itself), None when empty."""
    if isinstance(values, (list, tuple)):
        return values[0] if values else None
    return values


def as_int(value, default=None):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def substitute_disk_id(base_path):
    """A stable disk id for hosts whose VirtualDiskId is empty (2008 R2, 2012: issue point 5).

    The base file of the chain keeps its path while checkpoints come and go, so the id is a name-based
    GUID (uuid5) of that path, compared case-insensitively as Windows does. Every module that reports
    disks (inventory, recovery points) uses this one function so that the ids agree.
    """
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "hyperv.backup:disk:" + str(base_path or "").lower()))


# --- embedded instances (CIM-XML) ---------------------------------------------------------------

def parse_embedded(text):
    """An embedded instance (GetVirtualHardDiskSettingData.SettingData, ...) as {property: value}.

    Uses host/cim_xml.parse_instance when it exists (helper H1); the fallback here reads the same
    CIM-XML: <INSTANCE CLASSNAME=..> with PROPERTY / PROPERTY.ARRAY children, a missing VALUE = null.
    Values stay strings; callers convert with as_int.
    """
    if text is None:
        return None
    if isinstance(text, dict):
        return dict(text)
    try:
        from ansible_collections.hyperv.backup.plugins.module_utils.host import cim_xml
        parse = getattr(cim_xml, "parse_instance", None)
    except ImportError:
        parse = None
    if parse is not None:
        return parse(text)
    return _parse_cim_xml(text)


def _parse_cim_xml(text):
    root = ElementTree.fromstring(text)
    instance = root if root.tag == "INSTANCE" else root.find(".//INSTANCE")
    if instance is None:
        raise ValueError("no INSTANCE element in the embedded instance")
    out = {"__CLASS": instance.get("CLASSNAME")}
    for prop in instance:
        name = prop.get("NAME")
        if not name:
            continue
        if prop.tag == "PROPERTY.ARRAY":
            array = prop.find("VALUE.ARRAY")
            out[name] = None if array is None else [value.text or "" for value in array.findall("VALUE")]
        else:
            value = prop.find("VALUE")
            out[name] = None if value is None else (value.text or "")
    return out

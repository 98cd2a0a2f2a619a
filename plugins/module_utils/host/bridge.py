# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The WMI bridge: the only calls that cross from the Python Hyper-V logic to a host.

Every decision about Hyper-V (which VM, which snapshot, which reference point is ours, change lists,
integration and writer state, method choice) is made once, in ``module_utils/hyperv/``, from these
few generic calls. Three transports answer them: ``psrp`` and ``winrm`` run the PowerShell 2.0 bridge
scripts (``host/bridge_scripts.py``) on a real host; ``lab`` answers them from the lab host's emulated
WMI object model (``module_utils/lab/``). Nothing else reaches a host, so the lab checks exactly the
calls a real host receives.

Values
------
An *instance* is a dict: its properties by their WMI names (``"ElementName"``, ``"EnabledState"``, ...)
plus ``"__CLASS"`` (class name), ``"__NAMESPACE"`` and ``"__PATH"`` (the full WMI object path,
``\\\\HOST\\root\\virtualization\\v2:Msvm_ComputerSystem.CreationClassName="Msvm_ComputerSystem",Name="<GUID>"``;
opaque to callers: pass it back, never parse it). CIM types map to Python as: strings -> ``str``;
(u)int8..64 -> ``int``; boolean -> ``bool``; datetime -> the DMTF string (``"20261202073512.000000+000"``);
``X REF`` -> the path string; arrays -> ``list``; null -> ``None``. A property the class has but
that is null is present with ``None``; a property the class does not have is absent.

Calls (every method raises ``BridgeError`` on a WMI / service / file failure)
-----------------------------------------------------------------------------
``query(namespace, class_name, where=None, properties=None) -> [instance]``
    ``SELECT <properties or *> FROM <class_name> [WHERE a='x' AND b=2]``: ``where`` is a dict of
    property -> value, equality only; the bridge builds the WQL and escapes values, so a user value is
    never part of a query text a caller writes. ``properties`` limits what is returned (the path and
    class always come back). Unknown namespace: ``code`` 0x8004100E; unknown class: 0x80041010
    (WBEM_E_INVALID_CLASS); unknown property in ``where``/``properties``: 0x80041017 (WBEM_E_INVALID_QUERY).
``associators(namespace, path, assoc_class, result_class=None) -> [instance]``
    ``ASSOCIATORS OF {path} WHERE AssocClass=<assoc_class> [ResultClass=<result_class>]``.
``invoke(namespace, path, method, arguments=None) -> dict``
    Calls ``method`` on the instance or class at ``path`` (a class path is ``"\\\\.\\<namespace>:<Class>"``,
    see ``class_path``). ``arguments`` maps parameter names to values: plain values, ``Ref(path)``
    for ``X REF`` parameters, ``Embedded(...)`` for parameters that take an embedded instance, and
    lists of those. The bridge waits for a started job (ReturnValue 4096) until the session's
    operation timeout and returns::

        {"ReturnValue": int,            # the method's own return value (0, 4096, or an error code)
         "out": {name: value},          # out-parameters except ReturnValue and Job; embedded instances
                                        # (e.g. SettingData, Info) as CIM-XML text (see host/cim_xml.py)
         "job": None | {"InstanceID", "JobState", "ErrorCode", "ErrorDescription", "ErrorSummaryDescription",
                        "errors": [CIM-XML text of each Msvm_Error from GetErrorEx, may be empty]},
         "affected": [instance + {"ElementEffects": [int]}]}   # Msvm_AffectedJobElement of the job

    A method that the class lacks raises ``BridgeError`` (0x80041055, WBEM_E_METHOD_NOT_IMPLEMENTED
    or 0x8004102E WBEM_E_INVALID_METHOD); a *failed* method is not an exception: callers read
    ``ReturnValue`` and ``job`` (``hyperv/wmi.py`` does this once for everyone).
``invoke_paged(namespace, path, method, arguments, paging) -> dict``
    Calls a paged method (``GetVirtualDiskChanges``) again and again *on the host*, in one round trip:
    ``paging`` (a ``Paging``) names the offset and length parameters, the out-parameter that says how much a
    call processed, the window ``[start, end)``, the longest length to ask, the most calls to make and the
    array out-parameters to collect. Each call gets ``arguments`` plus offset = where the previous one
    stopped and length = ``min(end - offset, max_length)``. The loop ends at ``end``, after ``max_calls``,
    at the first call that does not succeed (ReturnValue other than 0, or 4096 with a failed job), or after a
    call that processed nothing. Returns::

        {"calls": int,                  # calls that succeeded
         "next_offset": int,            # where the next call would start
         "collected": {name: [value]},  # the collected out-arrays of the successful calls, concatenated
         "counts": {name: [[count, times]]},   # items each successful call gave, run-length encoded
         "stopped": None | {"offset": int, "length": int, "reason": "failed" | "no_progress",
                            "result": <invoke's dict for that call>}}

    The page-by-page logic (what a refused length means, which ranges to trust) stays in ``hyperv/``: this
    only saves a round trip per page, which is what made change lists of huge disks cost per page (issue 14).
``service(name, start=False) -> {"name", "display_name", "status", "start_type", "previous_status"}``
    ``status``/``start_type`` as PowerShell's ServiceController prints them (``Running``, ``Stopped``,
    ``Automatic``, ``Manual``, ``Disabled``). ``start=True`` starts a stopped service and waits for it;
    a service that will not start raises ``BridgeError`` with the Windows error.
``vss_writers() -> {"exit_code": int, "output": str}``
    ``vssadmin list writers`` as printed, in the host's language; ``hyperv/vss.py`` reads it by position
    and by state number only.
``diskshadow(script) -> {"exit_code": int, "output": str}``
    Runs ``diskshadow /s <file with script>``; the script text is built and validated by
    ``hyperv/vss.py`` (GUIDs in canonical form, local paths without quotes or ``%``).
``read_file(path, max_bytes) -> bytes | None``       (``None`` when the file does not exist)
``write_file(path, data, exclusive=False) -> {"modified": DMTF, "now": DMTF}``
    Creates parent directories; atomic (temporary name, then rename); ``exclusive=True`` fails with
    ``BridgeError`` code ``"exists"`` when the file exists (a lock file).
``remove_file(path) -> bool``                          (``False`` when it was already gone)
``list_directory(path) -> {"now": DMTF, "entries": [{"name", "directory": bool, "length", "modified": DMTF}]}``
    ``entries`` is empty for a missing directory. ``now`` and ``modified`` come from the host's clock,
    so leases compare times of one clock whatever the proxies' clocks say.
``host_environment() -> {"ps_version": "2.0", "program_data": "C:\\ProgramData", "computer_name": str,
                        "now": DMTF}``
    What scripts cannot get from WMI (the OS version comes from ``Win32_OperatingSystem``).

Paths in ``read_file`` / ``write_file`` / ``remove_file`` / ``list_directory`` are absolute Windows paths
on the host (``C:\\ProgramData\\hyperv.backup\\...``); the lab maps them to its directory.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import itertools

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError

NAMESPACE_V2 = "root\\virtualization\\v2"
NAMESPACE_V1 = "root\\virtualization"
NAMESPACE_CIMV2 = "root\\cimv2"
NAMESPACE_CLUSTER = "root\\MSCluster"

# WBEM status codes a bridge reports (WbemErrorEnum); scripts pass the HRESULT of the COM exception.
WBEM_E_NOT_FOUND = 0x80041002
WBEM_E_INVALID_NAMESPACE = 0x8004100E
WBEM_E_INVALID_CLASS = 0x80041010
WBEM_E_INVALID_QUERY = 0x80041017
WBEM_E_READ_ONLY = 0x8004101F          # Put of an instance whose property may not be written
WBEM_E_INVALID_METHOD = 0x8004102E
WBEM_E_INVALID_METHOD_PARAMETERS = 0x8004102F
WBEM_E_METHOD_NOT_IMPLEMENTED = 0x80041055

JOB_STARTED = 4096
JOB_FINISHED_STATES = (7, 8, 9, 10, 32768)       # Completed, Terminated, Killed, Exception, CompletedWithWarnings
JOB_SUCCESS_STATES = (7, 32768)


class BridgeError(HyperVBackupError):
    """A bridge call failed on the host: ``code`` is the HRESULT / WBEM status (int) or a short word."""

    def __init__(self, message, code=None, hint=None, category="failed"):
        super(BridgeError, self).__init__(message, hint=hint)
        self.code = code
        self.category = category


class Ref(object):
    """An ``X REF`` argument: the object path of an instance."""

    def __init__(self, path):
        self.path = path

    def __eq__(self, other):
        return isinstance(other, Ref) and other.path == self.path

    def __repr__(self):
        return "Ref(%r)" % (self.path,)


class Embedded(object):
    """An embedded-instance argument, built client-side as Windows needs it.

    ``based_on``: the path of an existing instance whose copy is changed by ``properties`` (how
    ModifySystemSettings / ModifyResourceSettings take a changed setting), or ``None`` to spawn a new
    instance of ``class_name`` (how CreateSnapshot takes Msvm_VirtualSystemSnapshotSettingData).
    Changing the local copy of an instance is never an error, whatever the property; whether the
    method honours it is the method's business.
    """

    def __init__(self, class_name, properties=None, based_on=None):
        self.class_name = class_name
        self.properties = dict(properties or {})
        self.based_on = based_on

    def __repr__(self):
        return "Embedded(%r, %r, based_on=%r)" % (self.class_name, self.properties, self.based_on)


class Paging(object):
    """How ``invoke_paged`` pages a method: parameter names, the window and the bounds of one round trip."""

    def __init__(self, offset, length, processed, start, end, max_length, max_calls, collect=()):
        self.offset = offset
        self.length = length
        self.processed = processed
        self.start = int(start)
        self.end = int(end)
        self.max_length = int(max_length)
        self.max_calls = int(max_calls)
        self.collect = tuple(collect)

    def names(self):
        return (self.offset, self.length, self.processed) + self.collect


def call_succeeded(result):
    """True when an ``invoke`` result is a success: ReturnValue 0, or 4096 with a job that completed without error."""
    code = result.get("ReturnValue")
    if code == 0:
        return True
    job = result.get("job")
    return code == JOB_STARTED and job is not None and job.get("JobState") in JOB_SUCCESS_STATES and not job.get("ErrorCode")


def page_through(invoke_once, arguments, paging):
    """The loop of ``invoke_paged`` over ``invoke_once(arguments) -> invoke result`` (see the module docstring).

    The lab and bridges without a host-side loop run it here; the PowerShell bridge runs the same loop on the
    host (``bridge_scripts_wmi.INVOKE_PAGED``).
    """
    names = paging.collect
    collected = dict((name, []) for name in names)
    per_call = dict((name, []) for name in names)       # items of each successful call, run-length encoded at the end
    lanes = [(name, collected[name], per_call[name]) for name in names]
    offset, calls, stopped = paging.start, 0, None
    end, max_length, max_calls, processed_name = paging.end, paging.max_length, paging.max_calls, paging.processed
    offset_name, length_name = paging.offset, paging.length
    values = dict(arguments or {})
    # a 64 TiB disk is 65,536 pages of 1 GiB in the lab: this loop is kept to what each page needs
    while offset < end and calls < max_calls:
        length = end - offset
        if length > max_length:
            length = max_length
        page = values.copy()
        page[offset_name] = offset
        page[length_name] = length
        result = invoke_once(page)
        if result.get("ReturnValue") != 0 and not call_succeeded(result):
            stopped = {"offset": offset, "length": length, "reason": "failed", "result": result}
            break
        calls += 1
        out = result.get("out") or {}
        for name, items, sizes in lanes:
            got = out.get(name)
            if got is None:         # (not "if not got": a single change at offset 0 comes as the scalar 0)
                sizes.append(0)
            elif got.__class__ is list or isinstance(got, list):
                if got:
                    items.extend(got)
                sizes.append(len(got))
            else:
                items.append(got)
                sizes.append(1)
        processed = out.get(processed_name)
        if processed.__class__ is not int:
            processed = int(processed) if processed else 0
        if processed <= 0:
            stopped = {"offset": offset, "length": length, "reason": "no_progress", "result": result}
            break
        offset += processed
    counts = dict((name, [[size, len(list(run))] for size, run in itertools.groupby(per_call[name])]) for name in names)
    return {"calls": calls, "next_offset": offset, "collected": collected, "counts": counts, "stopped": stopped}


def class_path(namespace, class_name):
    """The path of a class (for static methods and spawning): ``\\\\.\\<namespace>:<Class>``."""
    return "\\\\.\\%s:%s" % (namespace, class_name)


class Bridge(object):
    """What every transport implements; see the module docstring for the calls and their shapes."""

    host = None

    def query(self, namespace, class_name, where=None, properties=None):
        raise NotImplementedError

    def associators(self, namespace, path, assoc_class, result_class=None):
        raise NotImplementedError

    def invoke(self, namespace, path, method, arguments=None):
        raise NotImplementedError

    def invoke_paged(self, namespace, path, method, arguments, paging):
        """The paged calls one ``invoke`` at a time; transports that can loop on the host override it."""
        return page_through(lambda values: self.invoke(namespace, path, method, values), arguments, paging)

    def service(self, name, start=False):
        raise NotImplementedError

    def vss_writers(self):
        raise NotImplementedError

    def diskshadow(self, script):
        raise NotImplementedError

    def read_file(self, path, max_bytes):
        raise NotImplementedError

    def write_file(self, path, data, exclusive=False):
        raise NotImplementedError

    def remove_file(self, path):
        raise NotImplementedError

    def list_directory(self, path):
        raise NotImplementedError

    def host_environment(self):
        raise NotImplementedError

    def close(self):
        """Release the connection; safe to call twice."""

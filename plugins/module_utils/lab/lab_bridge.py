# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""``LabBridge(lab_directory, host)``: the bridge of ``host/bridge.py`` answered by a lab host.

The WMI calls (``query``, ``associators``, ``invoke``) are answered by an emulation of the Hyper-V
WMI object model of the host's era and locale over the lab's files (``wmi_*.py``); services, vssadmin,
diskshadow and host files are delegated to ``lab_vss`` / ``lab_files`` (helper H3). Every call
first applies the host faults a real host would show before anything else: ``unreachable`` and
``auth_fails`` fail every call (category ``unreachable`` / ``authentication``), and a stopped vmms
makes every ``root\\virtualization[\\v2]`` call fail with a provider error (UNCONFIRMED which WBEM code
Windows gives; the lab uses 0x80041013 WBEM_E_PROVIDER_LOAD_FAILURE).

Nothing can write a property directly: the bridge has no Put call, so the only way to change a
setting is the documented Modify*/method way, as the schema says.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import (
    NAMESPACE_V1, NAMESPACE_V2, WBEM_E_INVALID_METHOD, WBEM_E_INVALID_METHOD_PARAMETERS, WBEM_E_INVALID_NAMESPACE,
    WBEM_E_METHOD_NOT_IMPLEMENTED, WBEM_E_NOT_FOUND, Bridge, BridgeError, page_through)
from ansible_collections.hyperv.backup.plugins.module_utils.lab import (
    wmi_classes, wmi_host, wmi_methods_v1, wmi_methods_v2, wmi_methods_vsms, wmi_v1, wmi_v2, wmi_world)
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout, host_faults
from ansible_collections.hyperv.backup.plugins.module_utils.lab.wmi_model import Call, Model, dmtf_now, parse_path, same_namespace, wbem

WBEM_E_PROVIDER_LOAD_FAILURE = 0x80041013
WINRM_CANNOT_CONNECT = 0x80338012
ACCESS_DENIED = 0x80070005
DEFAULT_LOCALE = "en-US"


def _registry():
    providers, associations = {}, {}
    for namespace, module in ((NAMESPACE_V2, wmi_v2), (NAMESPACE_V1, wmi_v1)):
        for cls, provider in module.PROVIDERS.items():
            providers[(namespace.lower(), cls)] = provider
        for assoc, handler in module.ASSOCIATIONS.items():
            associations[(namespace.lower(), assoc)] = handler
    for (namespace, cls), provider in wmi_host.PROVIDERS.items():
        providers[(namespace.lower(), cls)] = provider
    methods = {}
    for module in (wmi_methods_v2, wmi_methods_vsms, wmi_methods_v1):
        for (namespace, cls, name), entry in module.METHODS.items():
            methods[(namespace.lower(), cls, name)] = entry
    return providers, associations, methods


PROVIDERS, ASSOCIATIONS, METHOD_HANDLERS = _registry()


def _optional(module_name):
    """lab_files / lab_vss of helper H3, or None while they do not exist yet."""
    try:
        if module_name == "lab_files":
            from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_files as module
        else:
            from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_vss as module
        return module
    except ImportError:
        return None


class LabBridge(Bridge):
    """The lab host behind the bridge contract (see the module docstring)."""

    def __init__(self, lab_directory, host):
        self.layout = LabLayout(lab_directory, host)
        self.host = host

    @property
    def path_map(self):
        """{Windows prefix: local directory} of everything the host has now (VM folders, C:\\, shadow copies)."""
        return wmi_world.path_map(self.layout)

    # --- plumbing -----------------------------------------------------------------------------

    def _host_doc(self):
        if not self.layout.exists():
            raise BridgeError("WinRM cannot complete the operation: the lab host %s does not exist under %s"
                              % (self.host, self.layout.lab_directory), code=WINRM_CANNOT_CONNECT, category="unreachable",
                              hint="Create it with the hyperv.backup.hyperv_lab module, or check host and lab_directory.")
        host_doc = self.layout.read_host()
        faults = host_faults(host_doc)
        if "unreachable" in faults:
            raise BridgeError("WinRM cannot complete the operation. Verify that the specified computer name is valid, that "
                              "the computer is accessible over the network, and that a firewall exception for the WinRM "
                              "service is enabled.", code=WINRM_CANNOT_CONNECT, category="unreachable",
                              hint="Check that the host is up and port 5985/5986 is reachable (lab fault 'unreachable').")
        if "auth_fails" in faults:
            raise BridgeError("Access is denied: the credentials were refused.", code=ACCESS_DENIED, category="authentication",
                              hint="Check username, password and auth (lab fault 'auth_fails').")
        return host_doc

    def world(self):
        host_doc = self._host_doc()
        return wmi_world.World(self.layout, host_doc, host_doc.get("era", "2022"), host_doc.get("locale") or DEFAULT_LOCALE)

    def model(self, namespace=None):
        world = self.world()
        model = Model(world, PROVIDERS, ASSOCIATIONS)
        if namespace is not None:
            model.table(namespace)
            if Model.canonical_namespace(namespace) in (NAMESPACE_V1, NAMESPACE_V2):
                service = world.host_doc.get("services", {}).get("vmms", {})
                if service.get("status", "Running") != "Running":
                    raise BridgeError("Provider load failure: the Hyper-V Virtual Machine Management service (vmms) is %s"
                                      % service.get("status"), code=WBEM_E_PROVIDER_LOAD_FAILURE, category="service",
                                      hint="Start the vmms service (lab: services: {vmms: Running}).")
        return model

    # --- WMI ------------------------------------------------------------------------------------

    def query(self, namespace, class_name, where=None, properties=None):
        return self.model(namespace).query(namespace, class_name, where=where, properties=properties)

    def associators(self, namespace, path, assoc_class, result_class=None):
        return self.model(namespace).associators(namespace, path, assoc_class, result_class=result_class)

    def _method(self, namespace, path, method, arguments):
        """(model, namespace, target, method name, handler, parameter names) of a method call, as Windows checks it."""
        model = self.model(namespace)
        namespace = Model.canonical_namespace(namespace)
        target_namespace, class_name, keys = parse_path(path)
        if not same_namespace(target_namespace, namespace):
            raise wbem(WBEM_E_INVALID_NAMESPACE, "the path %s is not in namespace %s" % (path, namespace))
        class_name, _info = model.class_info(namespace, class_name)
        target = None
        if keys:
            target = model.get(path)
            if target is None:
                raise wbem(WBEM_E_NOT_FOUND, "Not found: %s" % (path,))
        names = wmi_classes.methods_of(namespace, class_name, model.era)
        matches = [name for name in names if name.lower() == str(method).lower()]
        if not matches:
            if method in wmi_classes.NOT_EMULATED.get(namespace, {}).get(class_name, ()):
                raise wbem(WBEM_E_METHOD_NOT_IMPLEMENTED, "%s.%s is not emulated by the lab host" % (class_name, method))
            raise wbem(WBEM_E_INVALID_METHOD, "Invalid method: %s has no method %s on this host (%s)"
                       % (class_name, method, model.era))
        handler, parameters = METHOD_HANDLERS[(namespace.lower(), class_name, matches[0])]
        unknown = [name for name in (arguments or {}) if name not in parameters]
        if unknown:
            raise wbem(WBEM_E_INVALID_METHOD_PARAMETERS, "Invalid method parameter(s): %s.%s has no parameter %s"
                       % (class_name, matches[0], ", ".join(sorted(unknown))))
        return model, namespace, target, matches[0], handler, parameters

    def invoke(self, namespace, path, method, arguments=None):
        model, namespace, target, name, handler, _parameters = self._method(namespace, path, method, arguments)
        call = Call(model, namespace, target, name, arguments, self)
        answer = handler(call)
        return self._answer(namespace, answer, call.job_doc)

    def invoke_paged(self, namespace, path, method, arguments, paging):
        """The host-side loop of the PowerShell bridge (bridge.page_through), with the method resolved once.

        The calls share ``Call.memo``: a handler may keep there what it looked up for the first page (the disk
        behind a path, its change-tracking file), because the host answers all pages of one round trip from the
        same frozen disk. Each page is still answered by the same handler as a single ``invoke``.
        """
        model, namespace, target, name, handler, parameters = self._method(namespace, path, method, arguments)
        missing = [n for n in (paging.offset, paging.length) if n not in parameters]
        if missing:
            raise wbem(WBEM_E_INVALID_METHOD_PARAMETERS, "Invalid method parameter(s): %s has no parameter %s"
                       % (name, ", ".join(missing)))
        call = Call(model, namespace, target, name, arguments, self)
        call.memo = {}

        def once(values):
            call.args, call.job_doc = values, None      # page_through hands each call a fresh dict
            answer = handler(call)
            # a page answered without a job is already what page_through reads (ReturnValue and out)
            return answer if call.job_doc is None else self._answer(namespace, answer, call.job_doc)

        return page_through(once, arguments, paging)

    def _answer(self, namespace, answer, job_doc):
        out = answer["out"]
        if "Job" in out or "ReturnValue" in out:
            out = dict((key, value) for key, value in out.items() if key not in ("Job", "ReturnValue"))
        result = {"ReturnValue": answer["ReturnValue"], "out": out, "job": None, "affected": []}
        if job_doc is not None:
            result["job"] = {"InstanceID": job_doc["InstanceID"], "JobState": job_doc["JobState"],
                             "ErrorCode": job_doc["ErrorCode"], "ErrorDescription": job_doc["ErrorDescription"],
                             "ErrorSummaryDescription": job_doc["ErrorSummaryDescription"], "errors": []}
            fresh = Model(self.world(), PROVIDERS, ASSOCIATIONS)
            for path, effects in job_doc["affected"]:
                instance = fresh.get(path)
                if instance is not None:
                    result["affected"].append(dict(instance, ElementEffects=list(effects)))
        return result

    # --- services, VSS, files (helper H3's modules) -------------------------------------------------

    def _delegate(self, module_name, function, *args):
        self._host_doc()
        module = _optional(module_name)
        if module is None or not hasattr(module, function):
            raise BridgeError("the lab host cannot answer %s yet (lab/%s.py is missing)" % (function, module_name),
                              code="not_emulated")
        return getattr(module, function)(self.layout, *args)

    def service(self, name, start=False):
        return self._delegate("lab_vss", "service", name, start)

    def vss_writers(self):
        return self._delegate("lab_vss", "vss_writers")

    def diskshadow(self, script):
        return self._delegate("lab_vss", "diskshadow", script)

    def read_file(self, path, max_bytes):
        return self._delegate("lab_files", "read_file", path, max_bytes)

    def write_file(self, path, data, exclusive=False):
        return self._delegate("lab_files", "write_file", path, data, exclusive)

    def remove_file(self, path):
        return self._delegate("lab_files", "remove_file", path)

    def list_directory(self, path):
        return self._delegate("lab_files", "list_directory", path)

    def host_environment(self):
        host_doc = self._host_doc()
        module = _optional("lab_files")
        if module is not None and hasattr(module, "host_environment"):
            return module.host_environment(self.layout)
        return {"ps_version": "2.0", "program_data": "C:\\ProgramData", "computer_name": str(host_doc["name"]).upper(),
                "now": dmtf_now()}

    def close(self):
        """Nothing to release."""

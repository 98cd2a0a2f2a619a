# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's WMI engine: object paths, instances, WQL-like queries, associations, embedded arguments, jobs.

Knows nothing about VMs: ``wmi_v2`` / ``wmi_v1`` / ``wmi_host`` register *providers* (class ->
function(world) -> [property dict]) and *associations*; this module turns them into instances the
way Windows prints them (every property of the class in that era, null ones as ``None``, plus
``__CLASS``, ``__NAMESPACE``, ``__PATH``) and refuses what WMI refuses: an unknown namespace
(0x8004100E), a class the era lacks (0x80041010), an unknown property in a query (0x80041017).

Object paths: ``\\\\<COMPUTER>\\<namespace>:<Class>.<Key1>="v1",<Key2>="v2"`` with the keys in
alphabetical order and ``\\`` and ``"`` in values escaped with a backslash, as WMI prints __PATH.
Numeric keys are not used by any emulated class.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import os
import re
import time
import uuid
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import (
    WBEM_E_INVALID_CLASS, WBEM_E_INVALID_METHOD_PARAMETERS, WBEM_E_INVALID_NAMESPACE, WBEM_E_INVALID_QUERY,
    WBEM_E_NOT_FOUND, BridgeError, Embedded, Ref)
from ansible_collections.hyperv.backup.plugins.module_utils.lab import wmi_classes
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import make_private_dir, read_json, write_json_atomic

JOBS_DIR = "wmi-jobs"
JOB_KEEP_SECONDS = 300          # Msvm_ConcreteJob.TimeBeforeRemoval: 00000000000500.000000:000
TIME_BEFORE_REMOVAL = "00000000000500.000000:000"
_PATH_RE = re.compile(r'^\\\\([^\\]+)\\(.+?):([A-Za-z0-9_]+)(?:\.(.*))?$')
_KEY_RE = re.compile(r'([A-Za-z0-9_]+)=(?:"((?:[^"\\]|\\.)*)"|([^,]*))(?:,|$)')


def wbem(code, message, hint=None, category="failed"):
    return BridgeError(message, code=code, hint=hint, category=category)


# --- times -------------------------------------------------------------------------------------

def dmtf(iso_text):
    """'2026-12-02T07:35:12.123456Z' (the lab's timestamps) -> '20261202073512.123456+000'."""
    if not iso_text:
        return None
    stamp = datetime.datetime.strptime(iso_text.replace("Z", ""), "%Y-%m-%dT%H:%M:%S.%f")
    return stamp.strftime("%Y%m%d%H%M%S.%f") + "+000"


def dmtf_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d%H%M%S.%f") + "+000"


def guid_for(*parts):
    """A stable upper-case GUID derived from ``parts`` (device ids that must not change between calls)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "/".join(str(part) for part in parts))).upper()


# --- paths -------------------------------------------------------------------------------------

def _escape_value(value):
    return str(value).replace("\\", "\\\\").replace('"', '\\"')


def format_path(computer, namespace, class_name, keys):
    """``\\\\HOST\\ns:Class.K1="v1",K2="v2"`` (keys sorted case-insensitively, as WMI prints them)."""
    text = "\\\\%s\\%s:%s" % (computer, namespace, class_name)
    if keys:
        text += "." + ",".join('%s="%s"' % (name, _escape_value(keys[name])) for name in sorted(keys, key=str.lower))
    return text


# {id(class table): (table, {lower-case class name: class name})}: WMI class names are case-insensitive
_LOWER_NAMES = {}


def parse_path(path):
    """(namespace, class, {key: value}) of an object or class path; WBEM_E_NOT_FOUND when it is none."""
    if isinstance(path, Ref):
        path = path.path
    match = _PATH_RE.match(str(path or ""))
    if not match:
        raise wbem(WBEM_E_NOT_FOUND, "Not found: %r is not a WMI object path (\\\\HOST\\namespace:Class.Key=\"value\")" % (path,))
    namespace, class_name, key_text = match.group(2), match.group(3), match.group(4)
    keys = {}
    if key_text:
        position = 0
        while position < len(key_text):
            key_match = _KEY_RE.match(key_text, position)
            if not key_match:
                raise wbem(WBEM_E_NOT_FOUND, "Not found: cannot read the keys of %r" % (path,))
            quoted = key_match.group(2)
            keys[key_match.group(1)] = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else key_match.group(3)
            position = key_match.end()
    return namespace, class_name, keys


def same_namespace(first, second):
    return str(first).lower() == str(second).lower()


# --- CIM-XML of embedded instances -------------------------------------------------------------

def _cim_type(value, declared=None):
    if declared:
        return declared
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "uint64"
    return "string"


def format_instance_xml(class_name, properties, types=None):
    """CIM-XML ``<INSTANCE>`` text of an embedded instance (host/cim_xml.format_instance when present)."""
    try:
        from ansible_collections.hyperv.backup.plugins.module_utils.host import cim_xml   # written by another helper
        return cim_xml.format_instance(class_name, properties, types or {})
    except (ImportError, AttributeError, TypeError):
        pass
    types = types or {}
    parts = ['<INSTANCE CLASSNAME="%s">' % escape(class_name)]
    for name, value in properties.items():
        if isinstance(value, (list, tuple)):
            element_type = _cim_type(value[0] if value else "", types.get(name))
            items = "".join("<VALUE>%s</VALUE>" % escape(_text(item)) for item in value)
            parts.append('<PROPERTY.ARRAY NAME="%s" TYPE="%s"><VALUE.ARRAY>%s</VALUE.ARRAY></PROPERTY.ARRAY>'
                         % (escape(name), element_type, items))
        elif value is None:
            parts.append('<PROPERTY NAME="%s" TYPE="%s"></PROPERTY>' % (escape(name), types.get(name, "string")))
        else:
            parts.append('<PROPERTY NAME="%s" TYPE="%s"><VALUE>%s</VALUE></PROPERTY>'
                         % (escape(name), _cim_type(value, types.get(name)), escape(_text(value))))
    parts.append("</INSTANCE>")
    return "".join(parts)


def _text(value):
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    return str(value)


def parse_instance_xml(text):
    """(class name, {property: value}) of CIM-XML ``<INSTANCE>`` text (host/cim_xml.parse_instance when present)."""
    try:
        from ansible_collections.hyperv.backup.plugins.module_utils.host import cim_xml   # written by another helper
    except ImportError:
        cim_xml = None
    if cim_xml is not None and hasattr(cim_xml, "parse_instance"):
        try:
            parsed = cim_xml.parse_instance(text)
        except Exception as exc:  # pylint: disable=broad-except
            raise wbem(WBEM_E_INVALID_METHOD_PARAMETERS, "Invalid method parameter(s): the embedded instance is not CIM-XML (%s)" % exc)
        class_name = parsed.pop("__CLASS")
        return class_name, parsed
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        raise wbem(WBEM_E_INVALID_METHOD_PARAMETERS, "Invalid method parameter(s): the embedded instance is not CIM-XML (%s)" % exc)
    if root.tag != "INSTANCE":
        root = root.find(".//INSTANCE")
        if root is None:
            raise wbem(WBEM_E_INVALID_METHOD_PARAMETERS, "Invalid method parameter(s): no <INSTANCE> in the embedded text")
    props = {}
    for element in root:
        name = element.get("NAME")
        if element.tag == "PROPERTY":
            value = element.find("VALUE")
            props[name] = _typed(value.text if value is not None else None, element.get("TYPE"))
        elif element.tag == "PROPERTY.ARRAY":
            props[name] = [_typed(item.text, element.get("TYPE")) for item in element.iter("VALUE")]
    return root.get("CLASSNAME"), props


def _typed(text, cim_type):
    if text is None:
        return None
    if cim_type == "boolean":
        return text.strip().lower() == "true"
    if cim_type and (cim_type.startswith("uint") or cim_type.startswith("sint")):
        return int(text)
    return text


# --- the model -----------------------------------------------------------------------------------

class Model:
    """Instances of one moment of a lab host (``world``), built on demand per class."""

    def __init__(self, world, providers, associations):
        self.world = world
        self.era = world.era
        self.computer = world.computer
        self.providers = providers            # {(namespace lower, class): fn(world) -> [props]}
        self.associations = associations      # {(namespace lower, assoc): fn(model, instance) -> [instance]}
        self._cache = {}

    # classes and instances
    def table(self, namespace):
        table = wmi_classes.class_table(self.canonical_namespace(namespace), self.era)
        if table is None:
            raise wbem(WBEM_E_INVALID_NAMESPACE, "Invalid namespace \"%s\" (Windows Server %s has no such namespace)"
                       % (namespace, self.era))
        return table

    @staticmethod
    def canonical_namespace(namespace):
        for name in wmi_classes.NAMESPACE_ERAS:
            if same_namespace(name, namespace):
                return name
        return namespace

    def class_info(self, namespace, class_name):
        table = self.table(namespace)
        cached = _LOWER_NAMES.get(id(table))
        if cached is None or cached[0] is not table:     # class tables are built once per process (wmi_classes)
            cached = _LOWER_NAMES[id(table)] = (table, dict((name.lower(), name) for name in table))
        name = cached[1].get(str(class_name).lower())
        if name is not None:
            return name, table[name]
        raise wbem(WBEM_E_INVALID_CLASS, "Invalid class \"%s\" in %s on this host (%s)" % (class_name, namespace, self.era))

    def make(self, namespace, class_name, props):
        """A full instance: every property of the class in this era (absent -> None), __PATH from the keys."""
        namespace = self.canonical_namespace(namespace)
        name, (keys, names) = self.class_info(namespace, class_name)
        known = set(wmi_classes.all_properties(namespace, name))
        unknown = set(props) - known
        if unknown:
            raise AssertionError("lab WMI bug: %s has no properties %s" % (name, sorted(unknown)))
        instance = dict((prop, props.get(prop)) for prop in names)
        instance["__CLASS"] = name
        instance["__NAMESPACE"] = namespace
        instance["__PATH"] = format_path(self.computer, namespace, name, dict((key, props[key]) for key in keys)) if keys else None
        return instance

    def instances(self, namespace, class_name):
        namespace = self.canonical_namespace(namespace)
        name, _info = self.class_info(namespace, class_name)
        cache_key = (namespace.lower(), name)
        if cache_key not in self._cache:
            provider = self.providers.get(cache_key)
            rows = provider(self.world) if provider else []
            self._cache[cache_key] = [self.make(namespace, name, row) for row in rows]
        return self._cache[cache_key]

    def query(self, namespace, class_name, where=None, properties=None):
        name, (_keys, names) = self.class_info(namespace, class_name)
        lowered = dict((prop.lower(), prop) for prop in names)
        for prop in list(where or {}) + list(properties or []):
            if str(prop).lower() not in lowered:
                raise wbem(WBEM_E_INVALID_QUERY, "Invalid query: %s has no property %r on this host" % (name, prop))
        out = []
        for instance in self.instances(namespace, name):
            if all(_wql_equal(instance.get(lowered[str(prop).lower()]), value) for prop, value in (where or {}).items()):
                if properties:
                    wanted = set(lowered[str(prop).lower()] for prop in properties)
                    instance = dict((key, value) for key, value in instance.items() if key in wanted or key.startswith("__"))
                out.append(dict(instance))
        return out

    def get(self, path):
        """The instance at ``path`` or None (the class must exist: else WBEM_E_INVALID_CLASS)."""
        namespace, class_name, keys = parse_path(path)
        if not keys:
            return None
        for instance in self.instances(namespace, class_name):
            _namespace, _class, own = parse_path(instance["__PATH"])
            if set(own) == set(keys) and all(str(own[key]).lower() == str(keys[key]).lower() for key in keys):
                return instance
        return None

    def associators(self, namespace, path, assoc_class, result_class=None):
        namespace = self.canonical_namespace(namespace)
        self.table(namespace)
        names = wmi_classes.associations_of(namespace, self.era)
        matches = [name for name in names if name.lower() == str(assoc_class).lower()]
        if not matches:
            raise wbem(WBEM_E_INVALID_CLASS, "Invalid class \"%s\": no such association in %s on this host (%s)"
                       % (assoc_class, namespace, self.era))
        if result_class:
            self.class_info(namespace, result_class)
        source = self.get(path)
        if source is None:
            raise wbem(WBEM_E_NOT_FOUND, "Not found: %s" % (path.path if isinstance(path, Ref) else path,))
        handler = self.associations.get((namespace.lower(), matches[0]))
        found = handler(self, source) if handler else []
        if result_class:
            found = [item for item in found if item["__CLASS"].lower() == str(result_class).lower()]
        return [dict(item) for item in found]

    def find(self, namespace, class_name, **where):
        return self.query(namespace, class_name, where=where)

    # embedded arguments
    def embedded(self, namespace, value):
        """(class, {property: value}) of an embedded argument: Embedded, or CIM-XML text.

        Editing the local copy is never an error as long as the property exists on the class (setting a
        property a WMI object does not have fails client-side with "Property ... cannot be found").
        """
        if isinstance(value, Embedded):
            if value.based_on:
                base = self.get(value.based_on)
                if base is None:
                    raise wbem(WBEM_E_NOT_FOUND, "Not found: %s" % (value.based_on,))
                class_name = base["__CLASS"]
                props = dict((key, item) for key, item in base.items() if not key.startswith("__"))
            else:
                class_name = self.embedded_class(namespace, value.class_name)
                props = dict((prop, None) for prop in wmi_classes.era_properties(namespace, class_name, self.era))
            for prop, item in value.properties.items():
                if prop not in props:
                    raise wbem(WBEM_E_NOT_FOUND, "Property '%s' cannot be found on this object (%s); make sure that it exists."
                               % (prop, class_name))
                props[prop] = item.path if isinstance(item, Ref) else item
            return class_name, props
        if isinstance(value, str) and value.strip():
            class_name, props = parse_instance_xml(value)
            return self.embedded_class(namespace, class_name), props
        return None, None

    def embedded_class(self, namespace, class_name):
        """An embedded instance can only be built of a class the host has (the client fetches the class first)."""
        namespace = self.canonical_namespace(namespace)
        for name in wmi_classes.CLASSES.get(namespace, {}):
            if name.lower() == str(class_name).lower() and wmi_classes.class_table(namespace, self.era) is not None \
                    and name in wmi_classes.class_table(namespace, self.era):
                return name
        raise wbem(WBEM_E_INVALID_CLASS, "Invalid class \"%s\" in %s on this host (%s)" % (class_name, namespace, self.era))


def _wql_equal(have, wanted):
    """WQL '=': strings compare case-insensitively; booleans and numbers by value."""
    if isinstance(wanted, Ref):
        wanted = wanted.path
    if isinstance(have, str) and isinstance(wanted, str):
        return have.lower() == wanted.lower()
    if isinstance(have, bool) or isinstance(wanted, bool):
        return bool(have) == bool(wanted) and have is not None
    return have == wanted


# --- jobs ------------------------------------------------------------------------------------------

class JobStore:
    """Msvm_ConcreteJob instances of one host, kept as files for five minutes after they finish."""

    def __init__(self, host_dir):
        self.directory = os.path.join(host_dir, JOBS_DIR)

    def add(self, namespace, job_type, affected=(), error_code=0, description=None, summary=None):
        make_private_dir(self.directory)
        job_id = str(uuid.uuid4()).upper()
        failed = bool(error_code)
        doc = {"InstanceID": job_id, "namespace": namespace, "JobType": job_type, "JobState": 10 if failed else 7,
               "ErrorCode": int(error_code), "ErrorDescription": description if failed else None,
               "ErrorSummaryDescription": summary if failed else None, "created": time.time(), "submitted": dmtf_now(),
               "affected": [[path, list(effects)] for path, effects in affected]}
        write_json_atomic(os.path.join(self.directory, job_id + ".json"), doc)
        return doc

    def all(self):
        if not os.path.isdir(self.directory):
            return []
        out = []
        for name in sorted(os.listdir(self.directory)):
            if not name.endswith(".json") or name.startswith("."):
                continue
            path = os.path.join(self.directory, name)
            try:
                doc = read_json(path)
            except (OSError, ValueError):
                continue
            if time.time() - doc["created"] > JOB_KEEP_SECONDS:
                try:
                    os.unlink(path)
                except OSError:
                    pass
                continue
            out.append(doc)
        return out

    @staticmethod
    def properties(doc):
        return {"InstanceID": doc["InstanceID"], "JobState": doc["JobState"], "ErrorCode": doc["ErrorCode"],
                "ErrorDescription": doc["ErrorDescription"], "ErrorSummaryDescription": doc["ErrorSummaryDescription"],
                "JobType": doc["JobType"], "PercentComplete": 100, "TimeSubmitted": doc["submitted"],
                "StartTime": doc["submitted"], "TimeBeforeRemoval": TIME_BEFORE_REMOVAL, "Caption": "Hyper-V job",
                "JobStatus": "Job failed" if doc["ErrorCode"] else "Job completed successfully",
                "ElementName": "Hyper-V job", "Description": "Hyper-V job"}


# --- method calls -------------------------------------------------------------------------------------

class Call:
    """One method invocation: the target instance, the arguments by name, and how to answer.

    ``finish`` answers synchronously (ReturnValue 0 or an error code); ``job`` starts (and, in the lab,
    finishes at once) an Msvm_ConcreteJob and answers 4096 with the Job out-parameter, as Windows does
    for the long-running methods; what the job created is reachable through Msvm_AffectedJobElement.
    """

    def __init__(self, model, namespace, target, method, arguments, bridge):
        self.model = model
        self.world = model.world
        self.namespace = namespace
        self.target = target
        self.method = method
        self.args = dict(arguments or {})
        self.bridge = bridge
        self.job_doc = None
        self.memo = None        # a dict shared by the pages of one invoke_paged round trip (lab_bridge)

    def arg(self, name, default=None):
        value = self.args.get(name, default)
        return value.path if isinstance(value, Ref) else value

    def finish(self, code=0, **out):
        return {"ReturnValue": int(code), "out": out}

    def job(self, job_type, affected=(), error_code=0, description=None, summary=None, **out):
        self.job_doc = self.world.jobs.add(self.namespace, job_type, affected, error_code, description, summary)
        out["Job"] = format_path(self.world.computer, self.namespace, "Msvm_ConcreteJob",
                                 {"InstanceID": self.job_doc["InstanceID"]})
        return {"ReturnValue": 4096, "out": out}

    def failed_job(self, job_type, error_code, description):
        return self.job(job_type, (), error_code, description, description)

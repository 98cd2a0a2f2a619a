"""Microsoft's Hyper-V WMI schema (shared/reference/hyperv_wmi_schema.json) as the tests ask it.

``Schema().check_class(namespace, class_name, era)`` and friends return a list of problems (empty when
the name is documented for that namespace and Windows era). The schema is looked for beside the
checkout (``../shared/reference``), where CI lays it out too.
"""
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
SCHEMA_PATH = ROOT.parent / "shared" / "reference" / "hyperv_wmi_schema.json"

# Windows releases in build order; the schema's "since" values name them.
ERA_ORDER = ["2003", "2008", "2008 R2", "2012", "2012 R2", "2016", "1703", "1709", "1803", "2019", "2022", "2025"]
LAB_ERAS = {"2008r2": "2008 R2", "2012": "2012", "2012r2": "2012 R2", "2016": "2016", "2019": "2019", "2022": "2022",
            "2025": "2025"}
V1 = "root\\virtualization"
V2 = "root\\virtualization\\v2"
# Names the schema lacks that were confirmed from Microsoft's documentation, each with its source
# (wmi_schema_additions.json beside this file; docs/powershell.md lists them too).
ADDITIONS_PATH = Path(__file__).resolve().parent / "wmi_schema_additions.json"
_ADDED = json.loads(ADDITIONS_PATH.read_text())
ADDITIONS = dict(((entry["namespace"].lower(), entry["class"]), entry) for entry in _ADDED["classes"])
ADDED_METHODS = dict(((entry["namespace"].lower(), entry["class"], entry["method"]), entry) for entry in _ADDED["methods"])
# Classes every WMI class has through CIM inheritance or the WMI system properties.
SYSTEM_PROPERTIES = {"__CLASS", "__PATH", "__NAMESPACE", "__RELPATH", "__SERVER", "__GENUS", "__SUPERCLASS", "__DYNASTY",
                     "__DERIVATION", "__PROPERTY_COUNT"}


def era_index(name):
    name = (name or "2008").strip()
    for known in sorted(ERA_ORDER, key=len, reverse=True):
        if name.startswith(known):
            return ERA_ORDER.index(known)
    raise ValueError("unknown release %r" % name)


class Schema:
    def __init__(self, path=SCHEMA_PATH):
        self.doc = json.loads(Path(path).read_text())

    def _entry(self, namespace, class_name):
        if namespace.lower() == V1.lower():
            return self.doc["v1"]["classes"].get(class_name) or ADDITIONS.get((V1.lower(), class_name))
        entry = (self.doc["classes"].get(class_name) or self.doc["associations"].get(class_name)
                 or ADDITIONS.get((namespace.lower(), class_name)) or self._related(class_name))
        if entry and entry.get("namespace", "").lower() != namespace.lower():
            return None
        return entry

    def _related(self, class_name):
        """A class the schema names only in ``related_not_detailed``: its properties are the ones its note names."""
        note = self.doc.get("related_not_detailed", {}).get(class_name)
        if not note:
            return None
        namespace = note.split(" ", 1)[0] if note.startswith("root\\") else None
        words = set(re.findall(r"[A-Za-z][A-Za-z0-9]+", note))
        return {"namespace": namespace or "", "properties": dict((w, {}) for w in words)}

    def check_class(self, namespace, class_name, era):
        entry = self._entry(namespace, class_name)
        if entry is None:
            return ["%s:%s is not in the schema" % (namespace, class_name)]
        if namespace.lower() == V1.lower():
            if era_index(LAB_ERAS[era]) > era_index("2012"):
                return ["%s exists only on 2008/2008 R2/2012, not on %s" % (V1, era)]
            return []
        since = entry.get("since")
        if since and era_index(since) > era_index(LAB_ERAS[era]):
            return ["%s:%s exists from %s, not on %s" % (namespace, class_name, since, era)]
        return []

    def check_property(self, namespace, class_name, prop, era):
        if prop in SYSTEM_PROPERTIES:
            return []
        entry = self._entry(namespace, class_name)
        if entry is None:
            return ["%s:%s is not in the schema" % (namespace, class_name)]
        props = entry.get("properties")
        if props is None and namespace.lower() == V1.lower():
            return []   # the v1 part lists classes without every property: the class check is all it allows
        if props is None and "ends" in entry:
            props = dict((k, {}) for k in entry["ends"])
        if prop not in (props or {}):
            return ["%s.%s is not in the schema" % (class_name, prop)]
        since = props[prop].get("since")
        if since and era_index(since) > era_index(LAB_ERAS[era]):
            return ["%s.%s exists from %s, not on %s" % (class_name, prop, since, era)]
        return []

    def check_method(self, namespace, class_name, method, params, era):
        entry = self._entry(namespace, class_name)
        if entry is None:
            return ["%s:%s is not in the schema" % (namespace, class_name)]
        methods = dict(entry.get("methods") or {})
        added = ADDED_METHODS.get((namespace.lower(), class_name, method))
        if added:
            methods[method] = added
        if method not in methods:
            return ["%s.%s() is not in the schema" % (class_name, method)]
        spec = methods[method]
        since = spec.get("since")
        if since and era_index(since) > era_index(LAB_ERAS[era]):
            return ["%s.%s() exists from %s, not on %s" % (class_name, method, since, era)]
        known = set(spec.get("in") or {})
        unknown = sorted(set(params) - known) if known else []
        return ["%s.%s() has no parameter %s" % (class_name, method, p) for p in unknown]

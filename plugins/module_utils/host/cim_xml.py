# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""CIM-XML instances: the text of embedded WMI instances (DSP0201 ``<INSTANCE>``).

Windows returns embedded out-parameters (``GetVirtualHardDiskSettingData.SettingData``, v1
``GetVirtualHardDiskInfo.Info``, ``GetErrorEx.Errors``) as CIM-XML, what ``GetText_(1)`` / PowerShell's
``.psbase.GetText(1)`` print, and accepts the same text for embedded in-parameters::

    <INSTANCE CLASSNAME="Msvm_VirtualHardDiskSettingData">
      <PROPERTY NAME="Format" TYPE="uint16"><VALUE>3</VALUE></PROPERTY>
      <PROPERTY NAME="ParentPath" TYPE="string"></PROPERTY>                       (no VALUE = null)
      <PROPERTY.ARRAY NAME="HostResource" TYPE="string"><VALUE.ARRAY><VALUE>C:\\d.vhdx</VALUE></VALUE.ARRAY></PROPERTY.ARRAY>
      <PROPERTY.REFERENCE NAME="X" REFERENCECLASS="C"><VALUE.REFERENCE>...</VALUE.REFERENCE></PROPERTY.REFERENCE>
    </INSTANCE>

Shape as read by public code (os-win test fixtures and ``vhdutils``: ElementTree ``findall("PROPERTY")``;
duplicati ``HyperVUtility.cs``: ``//PROPERTY[@NAME='ParentPath']/VALUE``). ``parse_instance`` gives
``{"__CLASS": name, property: value}`` typed by the TYPE attribute (integers -> int, boolean -> bool,
real -> float, everything else incl. datetime -> str; a reference -> its WMI object path string).
``format_instance`` writes the same shape (the lab returns embedded out-parameters with it). How Windows
spells booleans in this text is UNCONFIRMED: both ``true``/``TRUE`` are read, ``true`` is written
(DSP0201's spelling).

Parsing is safe for untrusted text: a DOCTYPE (hence any entity definition) is refused before
ElementTree sees the text, so no entity can expand or reach outside.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape, quoteattr

INTEGER_TYPES = ("uint8", "sint8", "uint16", "sint16", "uint32", "sint32", "uint64", "sint64")
REAL_TYPES = ("real32", "real64")


class CimXmlError(ValueError):
    """The text is not a CIM-XML instance this module can read."""


def _convert(text, cim_type):
    if text is None:
        return None
    if cim_type in INTEGER_TYPES:
        return int(text.strip(), 0) if text.strip().lower().startswith("0x") else int(text.strip())
    if cim_type == "boolean":
        lowered = text.strip().lower()
        if lowered not in ("true", "false"):
            raise CimXmlError("not a boolean: %r" % text)
        return lowered == "true"
    if cim_type in REAL_TYPES:
        return float(text)
    return text


def _value_text(element):
    """The text of a VALUE element ('' for <VALUE/>, which is an empty string, not null)."""
    return element.text or ""


def _path_of(reference):
    """WMI object path of a VALUE.REFERENCE (INSTANCEPATH / LOCALINSTANCEPATH / INSTANCENAME / CLASSPATH)."""
    host, namespace, name = None, None, None
    for element in reference.iter():
        if element.tag == "HOST":
            host = (element.text or "").strip()
        elif element.tag == "LOCALNAMESPACEPATH":
            namespace = "\\".join(n.get("NAME", "") for n in element.findall("NAMESPACE"))
        elif element.tag in ("INSTANCENAME", "CLASSNAME") and name is None:
            name = element
    if name is None:
        return (reference.text or "").strip() or None
    text = name.get("NAME") if name.tag == "CLASSNAME" else name.get("CLASSNAME")
    keys = []
    for binding in name.findall("KEYBINDING"):
        value = binding.find("KEYVALUE")
        if value is None:
            value = binding.find("VALUE.REFERENCE")
            keys.append('%s="%s"' % (binding.get("NAME"), _escape_key(_path_of(value) if value is not None else "")))
        elif value.get("VALUETYPE", "string") == "string":
            keys.append('%s="%s"' % (binding.get("NAME"), _escape_key(value.text or "")))
        else:
            keys.append("%s=%s" % (binding.get("NAME"), (value.text or "").strip()))
    if keys:
        text += "." + ",".join(keys)
    if namespace:
        text = "%s:%s" % (namespace, text)
        if host:
            text = "\\\\%s\\%s" % (host, text)
    return text


def _escape_key(text):
    return text.replace("\\", "\\\\").replace('"', '\\"')


def parse_instance(text):
    """``{"__CLASS": name, property: typed value}`` of one CIM-XML INSTANCE (also inside VALUE.NAMEDINSTANCE etc.)."""
    if not isinstance(text, str) or not text.strip():
        raise CimXmlError("no CIM-XML text")
    if re.search(r"<!\s*(DOCTYPE|ENTITY)", text, re.I):
        raise CimXmlError("CIM-XML with a DOCTYPE or ENTITY is refused")
    try:
        root = ET.fromstring(text.strip())
    except ET.ParseError as exc:
        raise CimXmlError("not XML: %s" % exc)
    instance = root if root.tag == "INSTANCE" else root.find(".//INSTANCE")
    if instance is None:
        raise CimXmlError("no INSTANCE element (root is %s)" % root.tag)
    result = {"__CLASS": instance.get("CLASSNAME")}
    for prop in instance:
        name = prop.get("NAME")
        if prop.tag == "PROPERTY":
            value = prop.find("VALUE")
            result[name] = None if value is None else _convert(_value_text(value), prop.get("TYPE", "string"))
        elif prop.tag == "PROPERTY.ARRAY":
            array = prop.find("VALUE.ARRAY")
            if array is None:
                result[name] = None
            else:
                result[name] = [None if item.tag == "VALUE.NULL" else _convert(_value_text(item), prop.get("TYPE", "string"))
                                for item in array if item.tag in ("VALUE", "VALUE.NULL")]
        elif prop.tag == "PROPERTY.REFERENCE":
            value = prop.find("VALUE.REFERENCE")
            result[name] = None if value is None else _path_of(value)
    return result


def _text(value):
    """Element text; a carriage return as a character reference, since XML parsers turn a raw one into a newline."""
    return escape(value, {"\r": "&#13;"})


def _format_scalar(value, cim_type):
    if isinstance(value, bool) or cim_type == "boolean":
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


_PATH = re.compile(r'^(?:\\\\(?P<host>[^\\]+)\\)?(?:(?P<namespace>[^:"]+):)?(?P<class>[A-Za-z_][A-Za-z0-9_]*)(?:\.(?P<keys>.*))?$', re.S)
_KEY = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,]*))\s*(?:,|$)', re.S)


def _format_reference(path):
    """VALUE.REFERENCE of a WMI object path (INSTANCEPATH when it names host and namespace)."""
    match = _PATH.match(path or "")
    if not match:
        return "<VALUE.REFERENCE>%s</VALUE.REFERENCE>" % escape(path or "")
    keys = []
    for key in _KEY.finditer(match.group("keys") or ""):
        if key.group(2) is not None:
            value = re.sub(r"\\(.)", r"\1", key.group(2))
            keys.append('<KEYBINDING NAME=%s><KEYVALUE VALUETYPE="string">%s</KEYVALUE></KEYBINDING>' % (quoteattr(key.group(1)), escape(value)))
        else:
            keys.append('<KEYBINDING NAME=%s><KEYVALUE VALUETYPE="numeric">%s</KEYVALUE></KEYBINDING>' % (
                quoteattr(key.group(1)), escape(key.group(3).strip())))
    name = "<INSTANCENAME CLASSNAME=%s>%s</INSTANCENAME>" % (quoteattr(match.group("class")), "".join(keys))
    if match.group("namespace"):
        namespace = "".join('<NAMESPACE NAME=%s/>' % quoteattr(part) for part in match.group("namespace").split("\\") if part)
        local = "<LOCALNAMESPACEPATH>%s</LOCALNAMESPACEPATH>" % namespace
        if match.group("host"):
            name = "<INSTANCEPATH><NAMESPACEPATH><HOST>%s</HOST>%s</NAMESPACEPATH>%s</INSTANCEPATH>" % (
                escape(match.group("host")), local, name)
        else:
            name = "<LOCALINSTANCEPATH>%s%s</LOCALINSTANCEPATH>" % (local, name)
    return "<VALUE.REFERENCE>%s</VALUE.REFERENCE>" % name


def _type_of(value):
    if isinstance(value, (list, tuple)):
        first = next((item for item in value if item is not None), "")
        return _type_of(first) + "[]"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "uint64" if value >= 0 else "sint64"
    if isinstance(value, float):
        return "real64"
    return "string"


def format_instance(class_name, properties, types=None):
    """CIM-XML text of an instance: ``properties`` {name: value} in their order, ``types`` {name: CIM type}.

    A type ending in ``[]`` is an array; ``"<Class> REF"`` a reference (value = object path). A name without
    a type gets one from its value (bool -> boolean, int -> uint64 / sint64, float -> real64, else string;
    a list -> that type + ``[]``). ``None`` is written as a PROPERTY without VALUE.
    """
    parts = ["<INSTANCE CLASSNAME=%s>" % quoteattr(class_name)]
    for name, value in properties.items():
        cim_type = (types or {}).get(name) or _type_of(value)
        if cim_type.endswith(" REF") or cim_type == "reference":
            reference_class = cim_type[:-4] if cim_type.endswith(" REF") else ""
            attrs = "NAME=%s" % quoteattr(name) + (" REFERENCECLASS=%s" % quoteattr(reference_class) if reference_class else "")
            inner = "" if value is None else _format_reference(value)
            parts.append("<PROPERTY.REFERENCE %s>%s</PROPERTY.REFERENCE>" % (attrs, inner))
        elif cim_type.endswith("[]"):
            base = cim_type[:-2]
            inner = ""
            if value is not None:
                inner = "<VALUE.ARRAY>%s</VALUE.ARRAY>" % "".join(
                    "<VALUE.NULL/>" if item is None else "<VALUE>%s</VALUE>" % _text(_format_scalar(item, base)) for item in value)
            parts.append("<PROPERTY.ARRAY NAME=%s TYPE=%s>%s</PROPERTY.ARRAY>" % (quoteattr(name), quoteattr(base), inner))
        else:
            inner = "" if value is None else "<VALUE>%s</VALUE>" % _text(_format_scalar(value, cim_type))
            parts.append("<PROPERTY NAME=%s TYPE=%s>%s</PROPERTY>" % (quoteattr(name), quoteattr(cim_type), inner))
    parts.append("</INSTANCE>")
    return "".join(parts)

"""cim_xml: embedded CIM-XML instances as Windows returns them, parsed typed, written back the same way."""
import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.host.cim_xml import CimXmlError, format_instance, parse_instance

# The shape of GetVirtualHardDiskSettingData's SettingData in os-win's test fixtures (os_win/tests/.../test_vhdutils.py),
# with PROPAGATED attributes and a null property as public parsers report them from real hosts.
WINDOWS_TEXT = (
    '<INSTANCE CLASSNAME="Msvm_VirtualHardDiskSettingData">'
    '<PROPERTY NAME="BlockSize" TYPE="uint32"><VALUE>33554432</VALUE></PROPERTY>'
    '<PROPERTY NAME="DataAlignment" PROPAGATED="true" TYPE="uint64"></PROPERTY>'
    '<PROPERTY NAME="Format" TYPE="uint16"><VALUE>3</VALUE></PROPERTY>'
    '<PROPERTY NAME="MaxInternalSize" TYPE="uint64"><VALUE>18446744073709551615</VALUE></PROPERTY>'
    '<PROPERTY NAME="ParentPath" TYPE="string"><VALUE></VALUE></PROPERTY>'
    '<PROPERTY NAME="Path" TYPE="string"><VALUE>C:\\VMs\\a &amp; b.vhdx</VALUE></PROPERTY>'
    '<PROPERTY NAME="VirtualDiskId" TYPE="string"><VALUE>{5F0E0B7C-0000-4000-8000-000000000001}</VALUE></PROPERTY>'
    '<PROPERTY NAME="IsPmemCompatible" TYPE="boolean"><VALUE>TRUE</VALUE></PROPERTY>'
    '</INSTANCE>')


def test_windows_text_is_read_typed():
    got = parse_instance(WINDOWS_TEXT)
    assert got == {"__CLASS": "Msvm_VirtualHardDiskSettingData", "BlockSize": 33554432, "DataAlignment": None, "Format": 3,
                   "MaxInternalSize": 18446744073709551615, "ParentPath": "", "Path": "C:\\VMs\\a & b.vhdx",
                   "VirtualDiskId": "{5F0E0B7C-0000-4000-8000-000000000001}", "IsPmemCompatible": True}


def test_arrays_references_and_round_trip():
    properties = {
        "InstanceID": "Microsoft:5F0E\\L", "HostResource": ["C:\\d\u00e4.vhdx", None], "Empty": [], "Missing": None,
        "Flag": False, "Count": -3, "Created": "20261202073512.000000+000", "Text": "line1\r\nline2 <x> \"q\" 'a'",
        "Parent": '\\\\HV01\\root\\virtualization\\v2:Msvm_ComputerSystem.CreationClassName="Msvm_ComputerSystem",Name="5F0E"',
        "Number": 'root\\cimv2:Win32_Thing.Id=5',
    }
    types = {"InstanceID": "string", "HostResource": "string[]", "Empty": "uint16[]", "Missing": "uint64", "Flag": "boolean",
             "Count": "sint32", "Created": "datetime", "Text": "string", "Parent": "Msvm_ComputerSystem REF", "Number": "Win32_Thing REF"}
    text = format_instance("Msvm_StorageAllocationSettingData", properties, types)
    assert text.startswith('<INSTANCE CLASSNAME="Msvm_StorageAllocationSettingData"><PROPERTY NAME="InstanceID" TYPE="string">')
    assert '<PROPERTY NAME="Missing" TYPE="uint64"></PROPERTY>' in text
    assert '<PROPERTY.ARRAY NAME="HostResource" TYPE="string"><VALUE.ARRAY><VALUE>' in text
    assert '<PROPERTY.REFERENCE NAME="Parent" REFERENCECLASS="Msvm_ComputerSystem"><VALUE.REFERENCE><INSTANCEPATH>' in text
    back = parse_instance(text)
    assert back.pop("__CLASS") == "Msvm_StorageAllocationSettingData"
    assert back == properties


def test_names_in_parse_follow_property_elements_only():
    text = ('<VALUE.NAMEDINSTANCE><INSTANCENAME CLASSNAME="X"/><INSTANCE CLASSNAME="Msvm_Error">'
            '<QUALIFIER NAME="Abstract" TYPE="boolean"><VALUE>TRUE</VALUE></QUALIFIER>'
            '<PROPERTY NAME="Message" TYPE="string"><QUALIFIER NAME="x" TYPE="string"><VALUE>q</VALUE></QUALIFIER>'
            '<VALUE>Failed to create</VALUE></PROPERTY></INSTANCE></VALUE.NAMEDINSTANCE>')
    assert parse_instance(text) == {"__CLASS": "Msvm_Error", "Message": "Failed to create"}


@pytest.mark.parametrize("text", [
    "", "not xml", "<VALUE>1</VALUE>",
    '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaa">]>'
    '<INSTANCE CLASSNAME="X"><PROPERTY NAME="A" TYPE="string"><VALUE>&a;</VALUE></PROPERTY></INSTANCE>',
    '<!DOCTYPE x SYSTEM "file:///etc/passwd"><INSTANCE CLASSNAME="X"/>',
    '<INSTANCE CLASSNAME="X"><PROPERTY NAME="A" TYPE="boolean"><VALUE>maybe</VALUE></PROPERTY></INSTANCE>',
])
def test_bad_or_unsafe_text_is_refused(text):
    with pytest.raises(CimXmlError):
        parse_instance(text)


def test_types_default_from_the_values():
    properties = {"Size": 1 << 40, "Offset": -1, "On": True, "Ratio": 0.5, "Name": "n", "Ids": [1, 2], "Names": ["a"], "Gone": None}
    text = format_instance("X", properties)
    assert '<PROPERTY NAME="Size" TYPE="uint64">' in text and '<PROPERTY NAME="Offset" TYPE="sint64">' in text
    assert '<PROPERTY.ARRAY NAME="Ids" TYPE="uint64">' in text and '<PROPERTY NAME="Gone" TYPE="string"></PROPERTY>' in text
    back = parse_instance(text)
    assert back.pop("__CLASS") == "X" and back == properties

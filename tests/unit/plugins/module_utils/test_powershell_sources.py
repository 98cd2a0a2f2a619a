"""Names the PowerShell scripts read, as the sources pin them down (docs/powershell.md, "Sources checked").

No PowerShell runs here: each check reads the function's syntax tree (tree-sitter-powershell) and is also run on a
broken variant of the text, the way the names were written before they were checked, to show it can fail.
"""
import re

from test_powershell_vss import PARSER, _function, _nodes, _text

from ansible_collections.hyperv.backup.plugins.module_utils.host import powershell_common, powershell_vm, powershell_vss
from ansible_collections.hyperv.backup.plugins.module_utils.host.powershell_scripts import SCRIPTS


def vss_component_lookup_problems(text):
    """Msvm_VssComponent must be found by the documented DeviceID prefix (or SystemName), in one function only."""
    problems = []
    fn, source = _function(text, "Get-HvVssComponent")
    body = _text(fn, source)
    if "'Microsoft:' + $VmGuid + '\\'" not in body:
        problems.append("Get-HvVssComponent does not match DeviceID 'Microsoft:<VM GUID>\\...'")
    if "OrdinalIgnoreCase" not in body:
        problems.append("the DeviceID prefix is compared case-sensitively (VM GUIDs come upper- and lower-case)")
    whole = text.encode("utf-8")
    queries = [c for c in _nodes(PARSER.parse(whole).root_node, "command") if "-ClassName Msvm_VssComponent" in _text(c, whole)]
    if len(queries) != 1:
        problems.append("Msvm_VssComponent is queried %d times; only Get-HvVssComponent may query it" % len(queries))
    return problems


def provider_kind_problems(text):
    """A VSS provider is 'hardware' only for Win32_ShadowProvider.Type 3; the English name is never parsed."""
    problems = []
    if not re.search(r"\[int\]\$p\.Type -eq 3\) \{ \$kind = 'hardware' \}", text):
        problems.append("provider kind is not taken from Win32_ShadowProvider.Type 3 (Hardware)")
    if re.search(r"\$p\.Name -match", text):
        problems.append("provider kind still parsed from the (localized) provider name")
    return problems


def v1_disk_problems(text):
    """v1 disks come from the VM's own settings (associations), ResourceType 21, not from every RASD on the host."""
    problems = []
    fn, source = _function(text, "Get-HvVssDisks")
    body = _text(fn, source)
    if "Get-CimAssociatedInstance -InputObject $Vm -ResultClassName Msvm_VirtualSystemSettingData" not in body:
        problems.append("v1 disks are not reached through the VM's Msvm_VirtualSystemSettingData")
    if "[int]$_.SettingType -ne 5" not in body:
        problems.append("v1 snapshot settings (SettingType 5) are not skipped")
    if "[int]$_.ResourceType -eq 21" not in body:
        problems.append("v1 disk RASDs are not filtered on ResourceType 21")
    if "Get-CimInstance -Namespace $HvNamespace -ClassName Msvm_ResourceAllocationSettingData" in body:
        problems.append("v1 disks are still picked from every RASD on the host")
    return problems


VSS_TEXT = powershell_common.PRELUDE + powershell_vss.VSS_FUNCTIONS


def test_vss_component_found_by_documented_keys():
    assert vss_component_lookup_problems(VSS_TEXT) == []
    assert vss_component_lookup_problems(powershell_vm.GET_VMS.text) == []


def test_vss_component_checker_fails_on_the_old_lookup():
    broken = VSS_TEXT + "\nfunction Get-Old { Get-CimInstance -Namespace $HvNamespace -ClassName Msvm_VssComponent |" \
        " Where-Object { $_.SystemName -eq $VmGuid } }\n"
    assert any("queried 2 times" in p for p in vss_component_lookup_problems(broken))
    no_prefix = VSS_TEXT.replace("$_.SystemName -eq $VmGuid -or ([string]$_.DeviceID).StartsWith($prefix, "
                                 "[StringComparison]::OrdinalIgnoreCase)", "$_.SystemName -eq $VmGuid")
    no_prefix = no_prefix.replace("'Microsoft:' + $VmGuid + '\\'", "$VmGuid")
    assert len(vss_component_lookup_problems(no_prefix)) == 2


def test_provider_kind_from_type():
    assert provider_kind_problems(SCRIPTS["get_host_info"].text) == []


def test_provider_checker_fails_on_the_name_heuristic():
    text = SCRIPTS["get_host_info"].text.replace(
        "if ([int]$p.Type -eq 3) { $kind = 'hardware' }",
        "if ([string]$p.Name -match 'Software Shadow Copy provider') { $kind = 'software' }")
    assert len(provider_kind_problems(text)) == 2


def test_v1_disks_from_the_vm_settings():
    assert v1_disk_problems(VSS_TEXT) == []


def test_v1_disk_checker_fails_on_the_host_wide_query():
    old = ("    $rasds = @(Get-CimInstance -Namespace $HvNamespace -ClassName Msvm_ResourceAllocationSettingData |\n"
           "        Where-Object { $_.ResourceSubType -eq 'Microsoft Virtual Hard Disk' })\n")
    fn, source = _function(VSS_TEXT, "Get-HvVssDisks")
    body = _text(fn, source)
    start = body.index("    $rasds = @()")
    end = body.index("    # Msvm_ImageManagementService (v1)")
    broken = VSS_TEXT.replace(body, body[:start] + old + body[end:])
    assert len(v1_disk_problems(broken)) == 4

"""The host-VSS (diskshadow) recovery point functions: parse, validate before writing, never interpolate user values.

There is no PowerShell here, so the checks read the syntax tree (tree-sitter-powershell): each checker is also
run on a broken variant of the text to show that it can fail.
"""
import re

import tree_sitter
import tree_sitter_powershell

from ansible_collections.hyperv.backup.plugins.module_utils.host import powershell_common, powershell_vss
from ansible_collections.hyperv.backup.plugins.module_utils.host.powershell_scripts import SCRIPTS

PARSER = tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))
TEXT = powershell_vss.VSS_FUNCTIONS
WRITER_ID = "66841cd4-6ded-4f4b-8f17-fd23f8ddc3de"


def _nodes(node, kind):
    stack, found = [node], []
    while stack:
        current = stack.pop()
        if current.type == kind:
            found.append(current)
        stack.extend(reversed(current.children))
    return found


def _text(node, source):
    return source[node.start_byte:node.end_byte].decode("utf-8")


def _function(text, name):
    """(node, source bytes) of the function called ``name``."""
    source = text.encode("utf-8")
    tree = PARSER.parse(source)
    for fn in _nodes(tree.root_node, "function_statement"):
        if _text(fn.child_by_field_name("name") or [c for c in fn.children if c.type == "function_name"][0], source) == name:
            return fn, source
    raise AssertionError("function %s not found" % name)


def _syntax_errors(text):
    tree = PARSER.parse(text.encode("utf-8"))
    return list(_nodes(tree.root_node, "ERROR")) + list(_nodes(tree.root_node, "MISSING"))


def guid_validator_problems(text):
    """Why ConvertTo-HvVssGuid would let a non-GUID through (empty list: it rejects them)."""
    fn, source = _function(text, powershell_vss.GUID_VALIDATOR)
    problems = []
    guarded = False
    for statement in _nodes(fn, "if_statement"):
        condition = _text(statement, source).split("{", 1)[0]
        body = [c for c in statement.children if c.type == "statement_block"]
        if re.search(r"-not \[guid\]::TryParse\(\$Value, \[ref\]\$guid\)", condition) and body and \
                _nodes(body[0], "flow_control_statement") and _text(body[0], source).lstrip("{ \n").startswith("throw"):
            guarded = True
    if not guarded:
        problems.append("no 'if (-not [guid]::TryParse($Value, [ref]$guid)) { throw ... }'")
    returns = [_text(n, source) for n in _nodes(fn, "flow_control_statement") if _text(n, source).startswith("return")]
    if returns != ["return $guid.ToString()"]:
        problems.append("must return only the parsed GUID's canonical text, returns: %r" % returns)
    return problems


def generator_problems(text):
    """Why New-HvDiskShadowCreateText could write an unvalidated value into a diskshadow line."""
    fn, source = _function(text, powershell_vss.DISKSHADOW_GENERATOR)
    body = _text(fn, source)
    problems = []
    first_add = body.find("$lines.Add(")
    validated = body.find("$vmGuid = ConvertTo-HvVssGuid -Value $VmId")
    if validated < 0 or first_add < 0 or validated > first_add:
        problems.append("the VM id is not parsed as a GUID before the first line is written")
    for call in _nodes(fn, "invokation_expression"):
        if not _text(call, source).startswith("$lines.Add("):
            continue
        # Variables used directly in a line; those inside ConvertTo-HvVssPathText / ConvertTo-HvVssGuid are validated there.
        checked = [c for c in _nodes(call, "command") if _text(c, source).split(" ", 1)[0] in (
            "ConvertTo-HvVssPathText", powershell_vss.GUID_VALIDATOR)]
        inside = set()
        for c in checked:
            inside.update(v.start_byte for v in _nodes(c, "variable"))
        raw = [_text(v, source) for v in _nodes(call, "variable") if v.start_byte not in inside and _text(v, source) != "$lines"]
        unexpected = [v for v in raw if v.lower() not in ("$vmguid", "$hvvsswriterid", "$i")]
        if unexpected:
            problems.append("line %r writes unvalidated %s" % (_text(call, source), ", ".join(unexpected)))
    if "$Tag" in body:
        problems.append("the tag is used in the diskshadow script")
    return problems


def test_vss_functions_parse():
    assert not _syntax_errors(TEXT)


def test_recovery_point_scripts_carry_the_vss_path():
    for name in ("create_recovery_point", "get_recovery_points", "remove_recovery_point"):
        assert TEXT in SCRIPTS[name].text, name
    create = SCRIPTS["create_recovery_point"].text
    assert "if ($Method -eq 'vss') { return (New-HvVssRecoveryPoint -Vm $vm -Consistency $Consistency -Tag $Tag) }" in create
    assert "not available from this collection yet" not in create
    assert "Remove-HvVssRecoveryPoint" in SCRIPTS["remove_recovery_point"].text
    assert "Get-HvVssRecoveryPoints" in SCRIPTS["get_recovery_points"].text
    # A VSS point never becomes a reference point: refused by id prefix.
    assert "$Id.StartsWith('vss:')" in SCRIPTS["convert_to_reference_point"].text


def test_guid_validator_rejects_a_vm_id_that_is_not_a_guid():
    assert guid_validator_problems(TEXT) == []
    # The same checker on a validator that lets anything through must complain.
    broken = TEXT.replace("if (-not [guid]::TryParse($Value, [ref]$guid)) {", "if ($false) {", 1)
    assert broken != TEXT and guid_validator_problems(broken)
    passthrough = TEXT.replace("    return $guid.ToString()\n}", "    return $Value\n}", 1)
    assert passthrough != TEXT and guid_validator_problems(passthrough)


def test_diskshadow_generator_validates_every_value_it_writes():
    assert generator_problems(TEXT) == []
    unchecked_vm = TEXT.replace("'# hyperv.backup recovery point of VM ' + $vmGuid", "'# hyperv.backup recovery point of VM ' + $VmId", 1)
    assert unchecked_vm != TEXT and generator_problems(unchecked_vm)
    unchecked_volume = TEXT.replace("(ConvertTo-HvVssPathText -Value $Volumes[$i] -What 'volume')", "$Volumes[$i]", 1)
    assert unchecked_volume != TEXT and generator_problems(unchecked_volume)
    late_check = TEXT.replace("    $vmGuid = ConvertTo-HvVssGuid -Value $VmId -What 'VM id'\n", "", 1).replace(
        "    [void]$lines.Add('create')\n", "    [void]$lines.Add('create')\n    $vmGuid = ConvertTo-HvVssGuid -Value $VmId -What 'VM id'\n", 1)
    assert late_check != TEXT and generator_problems(late_check)


def test_diskshadow_commands_in_documented_order():
    fn, source = _function(TEXT, powershell_vss.DISKSHADOW_GENERATOR)
    body = "\n".join(line for line in _text(fn, source).splitlines() if not line.strip().startswith("#"))
    order = ["'set context persistent'", "'set metadata '", "'begin backup'", "'writer verify {' + $HvVssWriterId + '}'",
             "'add volume '", "' alias hvb'", "'create'", "'expose '", "'end backup'"]
    positions = [body.find(item) for item in order]
    assert -1 not in positions, dict(zip(order, positions))
    assert positions == sorted(positions)
    assert "nowriters" not in body  # would exclude the Hyper-V writer
    assert "$HvVssWriterId = '%s'" % WRITER_ID in TEXT
    fn, source = _function(TEXT, "New-HvDiskShadowDeleteText")
    assert "'delete shadows set {'" in _text(fn, source) and "'delete shadows exposed '" in _text(fn, source)


def test_no_interpolated_strings():
    # Double-quoted PowerShell strings expand $variables: none of ours holds one, so no value is spliced into text.
    source = TEXT.encode("utf-8")
    tree = PARSER.parse(source)
    expanding = [_text(n, source) for n in _nodes(tree.root_node, "expandable_string_literal") if "$" in _text(n, source)]
    assert expanding == []
    assert "Invoke-Expression" not in TEXT and "iex " not in TEXT


def test_namespace_follows_os_version():
    prelude = powershell_common.PRELUDE
    assert "$HvNamespace = 'root\\virtualization\\v2'" in prelude
    assert "$HvNamespace = 'root\\virtualization' }" in prelude
    assert "$HvOsVersion.Minor -lt 2" in prelude

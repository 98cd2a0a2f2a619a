"""Every host script: parses as PowerShell, takes its values as parameters, prints one JSON document."""
import re

import pytest
import tree_sitter
import tree_sitter_powershell

from ansible_collections.hyperv.backup.plugins.module_utils.host import powershell_common
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.host_operations import OPERATIONS
from ansible_collections.hyperv.backup.plugins.module_utils.host.powershell_scripts import SCRIPTS, script_parameters
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.recovery_points import TAG_PREFIX
from ansible_collections.hyperv.backup.plugins.module_utils.host.transport_winrm import BOOTSTRAP

PARSER = tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))


def syntax_problems(text):
    """(line number, node type, line text) of every ERROR or MISSING node."""
    tree = PARSER.parse(text.encode("utf-8"))
    lines = text.splitlines()
    found, stack = [], [tree.root_node]
    while stack:
        node = stack.pop()
        if node.type == "ERROR" or node.is_missing:
            row = node.start_point[0]
            found.append((row + 1, "MISSING" if node.is_missing else "ERROR", lines[row] if row < len(lines) else ""))
        stack.extend(node.children)
    return sorted(found)


def test_the_checker_finds_errors():
    # The parser check itself must be able to fail (a known grammar gap and a plain syntax error).
    assert syntax_problems("Select-Object Id, Version\n")
    assert syntax_problems("function Broken {\n  if ($x) {\n")


def test_every_operation_has_a_script():
    assert sorted(SCRIPTS) == sorted(OPERATIONS)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_parses(name):
    problems = syntax_problems(SCRIPTS[name].text)
    assert not problems, "\n".join("line %d: %s: %s" % p for p in problems)


def test_winrm_bootstrap_parses():
    assert not syntax_problems(BOOTSTRAP)


def _param_block(text):
    assert text.lstrip().lower().startswith("param("), "param() must be the first statement"
    depth = 0
    for index, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return text[:index + 1]
    raise AssertionError("unbalanced param block")


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_takes_every_operation_parameter(name):
    block = _param_block(SCRIPTS[name].text)
    declared = set(v.lower() for v in re.findall(r"\$(\w+)", block)) - {"true", "false", "null"}
    expected = set(k.lower() for k in script_parameters(dict((p, None) for p in OPERATIONS[name].params), 1))
    assert declared == expected


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_prints_json_and_handles_errors(name):
    text = SCRIPTS[name].text
    assert "ConvertTo-Json -InputObject $HvResult -Depth 8 -Compress" in text
    assert "$ErrorActionPreference = 'Stop'" in text
    assert re.search(r"function Invoke-HvOperation \{", text)
    # The shared prelude appears once, word for word: one place for error handling.
    assert text.count(powershell_common.PRELUDE) == 1 and text.count(powershell_common.EPILOGUE) == 1


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_no_python_format_markers(name):
    text = SCRIPTS[name].text
    assert not re.search(r"(?<!@)\{\d*\}|%[sdr]\b|%\(\w+\)|\{[a-z_]+\}", text), "Python formatting left in the script text"


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_script_names_its_sources(name):
    script = SCRIPTS[name]
    assert script.sources
    assert re.search(r"# .*\[(HV2|XHVB|BAREOS|NXM|PSDOC|MSB|SUPPORT|WSDOCS|COLISEO|GOWMI|APPROACHES)", script.text)


def test_wmi_names_have_a_source_comment():
    # Every Msvm_ class used by a script is mentioned in a comment that carries a source tag.
    missing = {}
    for script in SCRIPTS.values():
        used = set(re.findall(r"Msvm_\w+", "\n".join(l for l in script.text.splitlines() if not l.strip().startswith("#"))))
        commented = set()
        for line in script.text.splitlines():
            if "#" in line and "[" in line.split("#", 1)[1]:
                commented.update(re.findall(r"Msvm_\w+", line))
        documented = commented | set(re.findall(r"Msvm_\w+", " ".join(l for l in script.text.splitlines() if l.strip().startswith("#"))))
        if used - documented:
            missing[script.name] = sorted(used - documented)
    assert not missing


def test_ours_prefix_matches_recovery_points():
    assert "$HvOursPrefix = '%s'" % TAG_PREFIX in powershell_common.PRELUDE


def test_script_parameters_are_pascal_case_plus_timeout():
    assert script_parameters({"vm_id": "x", "byte_offset": 3}, 60) == {"VmId": "x", "ByteOffset": 3, "HvTimeoutSeconds": 60}

"""The bridge scripts: parse as PowerShell, declare exactly the parameters the bridges pass, print one JSON line,
hold no value, and write the codes the Python side expects."""
import json
import re

import pytest
import tree_sitter
import tree_sitter_powershell

from ansible_collections.hyperv.backup.plugins.module_utils.host import bridge
from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge_scripts import BOOTSTRAP, CODES, EPILOGUE, PRELUDE, SCRIPTS
from ansible_collections.hyperv.backup.plugins.module_utils.host.script_bridge import ScriptBridge
from ansible_collections.hyperv.backup.plugins.module_utils.host.connection import ConnectionSettings

PARSER = tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))


def syntax_problems(text):
    """(line, line text) of every ERROR or MISSING node of tree-sitter-powershell."""
    tree = PARSER.parse(text.encode("utf-8"))
    lines = text.splitlines()
    found, stack = [], [tree.root_node]
    while stack:
        node = stack.pop()
        if node.type == "ERROR" or node.is_missing:
            row = node.start_point[0]
            found.append((row + 1, lines[row] if row < len(lines) else ""))
        stack.extend(node.children)
    return sorted(found)


def test_the_parser_check_can_fail():
    assert syntax_problems("function Broken {\n  if ($x) {\n")


def test_one_script_per_bridge_call():
    calls = [name for name in vars(bridge.Bridge) if not name.startswith("_") and callable(getattr(bridge.Bridge, name))]
    assert sorted(SCRIPTS) == sorted(set(calls) - {"close"})


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_parses(name):
    problems = syntax_problems(SCRIPTS[name].text)
    assert not problems, "\n".join("line %d: %s" % p for p in problems)


def test_bootstrap_parses():
    assert not syntax_problems(BOOTSTRAP)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_param_block_is_first_and_declares_the_parameters(name):
    script = SCRIPTS[name]
    first = script.text.splitlines()[0]
    assert first.startswith("param(") and first.endswith(")")
    assert re.findall(r"\$(\w+)", first) == list(script.parameters)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_shape_of_every_script(name):
    text = SCRIPTS[name].text
    assert text.count(PRELUDE.strip("\n")) == 1 and text.count(EPILOGUE.strip("\n")) == 1
    assert text.count("function Invoke-HvBridge {") == 1
    assert "$ErrorActionPreference = 'Stop'" in text
    lowered = text.lower()
    for forbidden in ("invoke-expression", "iex ", "[scriptblock]::create", "-typedefinition", "-comobject", "%s", "%(", "{0}"):
        assert forbidden not in lowered, forbidden
    # PowerShell 2.0 reads 0x80000000 and above as negative Int32: such codes are written in decimal.
    assert not [h for h in re.findall(r"0x[0-9A-Fa-f]{8}", re.sub(r"#.*", "", text)) if int(h, 16) > 0x7FFFFFFF]


def test_codes_written_in_decimal_are_the_documented_ones():
    text = "".join(script.text for script in SCRIPTS.values())
    expected = {2147749911: CODES["WBEM_E_INVALID_QUERY"], 2147749934: CODES["WBEM_E_INVALID_METHOD"],
                2147749935: CODES["WBEM_E_INVALID_METHOD_PARAMETERS"], 2147749904: bridge.WBEM_E_INVALID_CLASS,
                2147749902: bridge.WBEM_E_INVALID_NAMESPACE}
    for decimal, code in expected.items():
        assert decimal == code and str(decimal) in text
    assert CODES["WBEM_E_INVALID_METHOD"] == bridge.WBEM_E_INVALID_METHOD
    assert str(0x80070000) in text      # HRESULT_FROM_WIN32 base
    assert "@(7, 8, 9, 10, 32768)" in text and tuple(bridge.JOB_FINISHED_STATES) == (7, 8, 9, 10, 32768)
    assert "@(7, 32768)" in text and tuple(bridge.JOB_SUCCESS_STATES) == (7, 32768)
    assert "-eq 4096" in text and bridge.JOB_STARTED == 4096


def test_the_only_bootstrap_evaluation_is_the_script_block_of_the_script():
    assert BOOTSTRAP.lower().count("[scriptblock]::create") == 1 and "invoke-expression" not in BOOTSTRAP.lower()


class Recording(ScriptBridge):
    def __init__(self):
        super(Recording, self).__init__(ConnectionSettings(host="h", username="u", password="p", operation_timeout=5))
        self.sent = []

    def _execute(self, call, script_text, parameters):
        self.sent.append((call, script_text, parameters))
        answers = {"read_file": {"exists": False}, "remove_file": True}
        return json.dumps({"result": answers.get(call, {})}), []


def test_the_bridge_passes_exactly_the_declared_parameters():
    rec = Recording()
    rec.query(bridge.NAMESPACE_V2, "C")
    rec.associators(bridge.NAMESPACE_V2, "p", "A")
    rec.invoke(bridge.NAMESPACE_V2, "p", "M")
    rec.invoke_paged(bridge.NAMESPACE_V2, "p", "M", {"Path": "x"}, bridge.Paging("Off", "Len", "Done", 0, 10, 10, 4, ("A", "B")))
    rec.service("vss")
    rec.vss_writers()
    rec.diskshadow("x")
    rec.read_file("C:\\a", 1)
    rec.write_file("C:\\a", b"")
    rec.remove_file("C:\\a")
    rec.list_directory("C:\\")
    rec.host_environment()
    assert sorted(call for call, _t, _p in rec.sent) == sorted(SCRIPTS)
    for call, text, parameters in rec.sent:
        assert text == SCRIPTS[call].text
        assert list(parameters) == list(SCRIPTS[call].parameters), call
        if "HvTimeoutSeconds" in parameters:
            assert parameters["HvTimeoutSeconds"] == 5

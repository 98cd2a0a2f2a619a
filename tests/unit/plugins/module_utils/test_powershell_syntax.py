"""powershell_syntax: the tokenizer, and the PowerShell 2.0 checker catching every denylisted construct."""
import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge_scripts import BOOTSTRAP, SCRIPTS
from ansible_collections.hyperv.backup.plugins.module_utils.host.powershell_syntax import check_powershell2, tokenize

# Each snippet holds exactly one construct that PowerShell 2.0 lacks.
DENIED = [
    "Get-CimInstance -ClassName Msvm_ComputerSystem",
    "$vm | Invoke-CimMethod -MethodName RequestStateChange",
    "New-CimInstance -ClassName X -ClientOnly",
    "$x = ConvertTo-Json -InputObject $r -Depth 4",
    "$r = ConvertFrom-Json $text",
    "$h = [ordered]@{ a = 1 }",
    "$o = [pscustomobject]@{ a = 1 }",
    "$o = [PSCustomObject] @{ a = 1 }",
    "$l = [System.Collections.Generic.List[string]]::new()",
    "if ($a -in $b) { 1 }",
    "if ($a -notin $b) { 1 }",
    "$x = 1 -shl 2",
    "Get-Process -PipelineVariable p | ForEach-Object { $p }",
    "Get-ChildItem -Path C:\\ -File",
    "Get-ChildItem C:\\ -Directory",
    "dir C:\\ -Attributes Hidden",
    "$t = Get-Content -Path $f -Raw",
    "$PSItem.Name",
    "Get-Process | Where-Object Name -eq 'x'",
    "Get-Process | where Name -eq 'x'",
    "Get-Process | ? Name -eq 'x'",
    "Get-Process | ForEach-Object Name",
    "Get-Process | foreach Name",
    "Get-Process | % Name",
    "$a.ForEach({ $_ })",
    "$a.Where({ $_ })",
    "Invoke-Command { $using:x }",
    "using namespace System.IO",
    "class Foo { [int]$a }",
    "enum Color { Red }",
    "ConvertFrom-StringData -StringData $t -Delimiter ':'",
    "Remove-Item $p -ErrorAction Ignore",
    "Set-Content -Path $p -Value $v -NoNewline",
    "Join-Path C:\\ a -AdditionalChildPath b",
    "$x = [Microsoft.Management.Infrastructure.CimInstance]$y",
    "$s = [ciminstance]$y",
    "Get-VM -Name x",
    "Get-VMHardDiskDrive -VMName x",
    "a && b",
    "a || b",
    "$x = $a ?? $b",
    "$root = $PSScriptRoot",
    "workflow W { }",
    "$h = Get-FileHash $p",
    "Write-Information 'x'",
    "$p = New-TemporaryFile",
    "Invoke-RestMethod -Uri $u",
]

# The same words where PowerShell 2.0 is fine with them.
ALLOWED = [
    "Get-WmiObject -Namespace 'root\\virtualization\\v2' -Class Msvm_ComputerSystem",
    "$vm = [wmi]$path; $class = [wmiclass]$classPath; $vm.psbase.Get()",
    "$h = @{ class = 'x'; using = 1; in = 2 }",
    "foreach ($a in $b) { $a }",
    "Get-Process | ForEach-Object { $_.Name }",
    "Get-Process | ForEach-Object -Process { $_ }",
    "Get-Process | Where-Object { $_.Name -eq 'x' }",
    "Get-Process | Where-Object -FilterScript { $_ }",
    "Get-Process | % { $_ } | ? { $_ }",
    "if ($b -contains $a -and $b -notcontains $c) { }",
    "$x = New-Object System.Collections.ArrayList",
    "[void]$x.Add(1); $y = $x.ToArray(); $z = [string[]]$y",
    "$l = New-Object 'System.Collections.Generic.List[string]'",
    "Get-ChildItem -Path C:\\ -Filter *.json | Where-Object { -not $_.PSIsContainer }",
    "$t = [System.IO.File]::ReadAllText($p)",
    "Remove-Item $p -ErrorAction SilentlyContinue",
    "$m = $class.psbase.Methods; $n = $obj.Name.Length",
    "[int]$x = [long][int]$y",
    "$a = $list[0]; $b = $h['key']; $c = $x[$i].Value",
    "param([string]$Name, [string[]]$Items = @())",
    "$x = @\"\nvalue $($a.ForEach) -in [ordered]\n\"@",
    "# Get-CimInstance ConvertTo-Json [ordered] -in $PSItem ::new(\n$x = 1",
    "<# ConvertFrom-Json\n[pscustomobject] $using:x #>\n$y = 2",
    "$s = 'Get-CimInstance -in [ordered] $PSItem ::new( && ||'",
    "$s = \"ConvertTo-Json `\" -notin {\"",
    "$s = \u2018it\u2019\u2019s ConvertTo-Json\u2019",
    "$x = 0x8004 + 5kb - 3",
    "function Get-Thing { param($A) return $A }",
    "switch ($k) { 's' { return 1 } default { return 2 } }",
    "try { throw 'x' } catch { $null = $_ } finally { }",
    "$env:ProgramData + $script:x",
]


@pytest.mark.parametrize("text", DENIED)
def test_each_denied_construct_is_caught(text):
    assert len(check_powershell2(text)) == 1, text


@pytest.mark.parametrize("text", DENIED)
def test_denied_constructs_in_strings_and_comments_are_ignored(text):
    quoted = "'" + text.replace("'", "''") + "'"
    for wrapped in ("$s = " + quoted, "# " + text, "<# " + text + " #>", "$s = @'\n" + text + "\n'@"):
        assert check_powershell2(wrapped) == [], wrapped


@pytest.mark.parametrize("text", ALLOWED)
def test_powershell_2_constructs_pass(text):
    assert check_powershell2(text) == [], text


def test_subexpressions_in_expandable_strings_are_code():
    assert check_powershell2('$s = "name: $(ConvertTo-Json $x)"')
    assert check_powershell2('$s = @"\nname: $([ordered]@{})\n"@')
    assert check_powershell2('$s = "a $($x -in $y) b"')


@pytest.mark.parametrize("text,problem", [
    ("function A { if ($x) { 1 }", "never closed"),
    ("$a = (1 + 2))", "unbalanced"),
    ("$a = @(1, 2", "never closed"),
    ("$a = $b[0", "never closed"),
    ("$a = { ( }", "unbalanced"),
    ("$s = 'open", "unterminated"),
    ("<# open", "unterminated"),
    ("$s = @'\nno end", "unterminated"),
])
def test_unbalanced_brackets_and_unterminated_text(text, problem):
    problems = check_powershell2(text)
    assert any(problem in message for _line, message in problems), problems


def test_brackets_inside_strings_and_comments_do_not_count():
    assert check_powershell2("$s = '(((' + \"}}\" # ]]\n<# {{ #>\n$t = @\"\n)))\n\"@") == []


def test_tokens():
    tokens = [(t.kind, t.value) for t in tokenize("[void]$b.Append('x'); Get-WmiObject -Class X | % { $_ }") if t.kind != "newline"]
    assert tokens == [("type", "void"), ("variable", "b"), ("member", "append"), ("punct", "("), ("string", "x"), ("punct", ")"),
                      ("punct", ";"), ("word", "get-wmiobject"), ("dash", "-class"), ("word", "x"), ("punct", "|"), ("word", "%"),
                      ("punct", "{"), ("variable", "_"), ("punct", "}")]
    commands = [t.value for t in tokenize("$x = Get-Date\nif ($a) { Remove-Item $p }") if t.command]
    assert commands == ["get-date", "if", "remove-item"]
    lines = [(t.value, t.line) for t in tokenize("<# a\nb #>\n$x = @'\n1\n2\n'@\n$y") if t.kind == "variable"]
    assert lines == [("x", 3), ("y", 7)]


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_bridge_script_is_powershell_2(name):
    assert check_powershell2(SCRIPTS[name].text) == []


def test_the_winrm_bootstrap_is_powershell_2():
    assert check_powershell2(BOOTSTRAP) == []

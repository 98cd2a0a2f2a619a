# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The PowerShell 2.0 scripts of the WMI bridge: one generic script per call of ``host/bridge.py``.

``SCRIPTS = {call: BridgeScript(name, parameters, text)}``. A script is ``param(...)`` + ``PRELUDE``
(JSON writer, WMI value conversion, typed-value decoding, error handling) + its body (``function
Invoke-HvBridge``, in ``bridge_scripts_wmi`` / ``bridge_scripts_host``) + ``EPILOGUE``, which prints exactly one line: ``{"result": ...}`` or
``{"error": {"code", "message", "category", "type", "line"}}``. ``code`` is the HRESULT / WBEM status
as an unsigned number (0x80041010 invalid class = 2147749904) or a short word (``exists``, ``timeout``,
``too_large``, ``bad_request``). The scripts hold no Hyper-V logic and no user value: every value
arrives as a script parameter (``host/script_bridge.py`` builds them; docs/powershell.md).

Only PowerShell 2.0 / .NET 2.0 constructs (Windows Server 2008 R2 as shipped): ``Get-WmiObject``,
``[wmi]``, ``[wmiclass]``, ``.psbase``, System.Management, System.IO; no CIM cmdlets, no
ConvertTo/From-Json, no ``[ordered]``/``[pscustomobject]``, no ``::new(``, no ``-in``/``-notin``.
``host/powershell_syntax.py`` checks this for every script; numbers above 0x7FFFFFFF are written in
decimal because PowerShell 2.0 reads ``0x80041010`` as a negative Int32.

Typed values (``Where`` of query, ``Arguments`` of invoke) travel as a string array, one record a line,
fields separated by one space, every value base64 of UTF-8 (``.`` = empty)::

    V <target> <name> <kind> <value>          a scalar
    A <target> <name> [<kind>:<value> ...]    an array (no items = empty array)
    E <id> <class name> <based-on path>       an embedded instance (class and path base64; path '.' = spawn)

``target`` is ``w`` (WHERE of a query), ``a`` (method arguments) or ``e<id>`` (properties of embedded
instance ``id``); ``kind`` is ``s`` string, ``i`` integer (decimal text, any size), ``d`` real, ``b``
boolean (``1``/``0``), ``n`` null, ``r`` object path (REF), ``e`` embedded instance (value = its id).
Names must match ``^[A-Za-z_][A-Za-z0-9_]*$`` (checked on both sides). Embedded instances are built
in the order of their ``E`` records, so a nested one comes first.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge_scripts_host import (
    DISKSHADOW, HOST_ENVIRONMENT, LIST_DIRECTORY, READ_FILE, REMOVE_FILE, SERVICE, VSS_WRITERS, WRITE_FILE)
from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge_scripts_wmi import ASSOCIATORS, INVOKE, INVOKE_PAGED, QUERY


class BridgeScript(object):
    """One bridge script: the call it answers, its parameter names (in param() order) and its text."""

    def __init__(self, name, parameters, text):
        self.name = name
        self.parameters = tuple(parameters)
        self.text = text

    def __repr__(self):
        return "BridgeScript(%r, %d chars)" % (self.name, len(self.text))


# The script parameter that bounds every wait on the host (WMI jobs, service start, processes), in seconds.
TIMEOUT_PARAMETER = "HvTimeoutSeconds"

# WBEM / Win32 HRESULTs the scripts raise themselves (unsigned, decimal: PowerShell 2.0 has no uint32 hex literal).
CODES = {
    "WBEM_E_INVALID_QUERY": 0x80041017,
    "WBEM_E_INVALID_METHOD": 0x8004102E,
    "WBEM_E_INVALID_METHOD_PARAMETERS": 0x8004102F,
}

PRELUDE = r"""
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$HvInvariant = [System.Globalization.CultureInfo]::InvariantCulture
# Msvm_ConcreteJob.JobState: 7 Completed, 8 Terminated, 9 Killed, 10 Exception, 32768 CompletedWithWarnings
# [win32-hyperv-v2 msvm-concretejob; ms-samples-common]; success = 7 or 32768.
$HvFinishedStates = @(7, 8, 9, 10, 32768)
$HvSuccessStates = @(7, 32768)

function New-HvError {
    # Our own failures carry their code (unsigned HRESULT or a word) and category in Exception.Data.
    param($Code, [string]$Message, [string]$Category = 'failed')
    $exception = New-Object -TypeName System.Exception -ArgumentList $Message
    $exception.Data['hv_code'] = $Code
    $exception.Data['hv_category'] = $Category
    return $exception
}

function ConvertTo-HvUnsigned {
    param([long]$Number)
    if ($Number -lt 0) { $Number += 4294967296 }
    return $Number
}

function New-HvErrorInfo {
    param($Code, $Exception, [string]$Category = 'failed')
    return @{ code = $Code; message = $Exception.Message; category = $Category; type = $Exception.GetType().FullName }
}

function Get-HvErrorInfo {
    # Code and message of the innermost exception that says what Windows refused. PowerShell 2.0 wraps a
    # cmdlet error stopped by ErrorActionPreference in ActionPreferenceStopException (its ErrorRecord holds
    # the original) and .NET method errors in MethodInvocationException (InnerException); Exception.HResult
    # is not public on .NET 2.0, so the code comes from the exception type.
    param($Exception)
    $current = $Exception
    $seen = 0
    while ($null -ne $current -and $seen -lt 16) {
        $seen += 1
        if ($current.Data -and $current.Data.Contains('hv_code')) {
            return (New-HvErrorInfo -Code $current.Data['hv_code'] -Exception $current -Category ([string]$current.Data['hv_category']))
        }
        if ($current -is [System.Management.ManagementException]) {
            return (New-HvErrorInfo -Code (ConvertTo-HvUnsigned -Number ([long][int]$current.ErrorCode)) -Exception $current)
        }
        if ($current -is [System.ComponentModel.Win32Exception]) {
            # HRESULT_FROM_WIN32: 0x80070000 + the Win32 error (0x80070424 = no such service).
            return (New-HvErrorInfo -Code ([long]2147942400 + ($current.NativeErrorCode -band 65535)) -Exception $current)
        }
        if ($current -is [System.Runtime.InteropServices.ExternalException]) {
            return (New-HvErrorInfo -Code (ConvertTo-HvUnsigned -Number ([long]$current.ErrorCode)) -Exception $current)
        }
        $next = $current.InnerException
        if ($null -eq $next -and $current -is [System.Management.Automation.RuntimeException] -and $current.ErrorRecord) {
            if (-not [object]::ReferenceEquals($current.ErrorRecord.Exception, $current)) { $next = $current.ErrorRecord.Exception }
        }
        if ($null -eq $next) { break }
        $current = $next
    }
    $code = ConvertTo-HvUnsigned -Number ([long][System.Runtime.InteropServices.Marshal]::GetHRForException($current))
    return (New-HvErrorInfo -Code $code -Exception $current)
}

function Add-HvJsonString {
    # JSON string: quote, backslash, control characters and everything outside printable ASCII as \uXXXX,
    # so the document is plain ASCII whatever the console code page.
    param([System.Text.StringBuilder]$Builder, [string]$Text)
    [void]$Builder.Append('"')
    if ($Text -match '^[\x20\x21\x23-\x5B\x5D-\x7E]*\z') {
        [void]$Builder.Append($Text)
    } else {
        foreach ($character in $Text.ToCharArray()) {
            $number = [int]$character
            if ($number -eq 34) { [void]$Builder.Append('\"') }
            elseif ($number -eq 92) { [void]$Builder.Append('\\') }
            elseif ($number -lt 32 -or $number -gt 126) { [void]$Builder.Append('\u').Append($number.ToString('x4', $HvInvariant)) }
            else { [void]$Builder.Append($character) }
        }
    }
    [void]$Builder.Append('"')
}

function ConvertTo-HvDmtf {
    # DMTF datetime in UTC (yyyymmddHHMMSS.mmmmmm+000), the form WMI datetimes have.
    param([datetime]$Time)
    return $Time.ToUniversalTime().ToString('yyyyMMddHHmmss.ffffff', $HvInvariant) + '+000'
}

function Add-HvJson {
    param([System.Text.StringBuilder]$Builder, $Value)
    if ($null -eq $Value) { [void]$Builder.Append('null'); return }
    if ($Value -is [string] -or $Value -is [char]) { Add-HvJsonString -Builder $Builder -Text ([string]$Value); return }
    if ($Value -is [bool]) {
        if ($Value) { [void]$Builder.Append('true') } else { [void]$Builder.Append('false') }
        return
    }
    if ($Value -is [byte] -or $Value -is [sbyte] -or $Value -is [int16] -or $Value -is [uint16] -or $Value -is [int32] -or
        $Value -is [uint32] -or $Value -is [int64] -or $Value -is [uint64] -or $Value -is [decimal]) {
        [void]$Builder.Append($Value.ToString($HvInvariant))
        return
    }
    if ($Value -is [double] -or $Value -is [single]) {
        $real = [double]$Value
        if ([double]::IsNaN($real) -or [double]::IsInfinity($real)) { [void]$Builder.Append('null') }
        else { [void]$Builder.Append($real.ToString('R', $HvInvariant)) }
        return
    }
    if ($Value -is [datetime]) { Add-HvJsonString -Builder $Builder -Text (ConvertTo-HvDmtf -Time $Value); return }
    if ($Value -is [System.Collections.IDictionary]) {
        [void]$Builder.Append('{')
        $first = $true
        foreach ($key in $Value.Keys) {
            if (-not $first) { [void]$Builder.Append(',') }
            $first = $false
            Add-HvJsonString -Builder $Builder -Text ([string]$key)
            [void]$Builder.Append(':')
            Add-HvJson -Builder $Builder -Value $Value[$key]
        }
        [void]$Builder.Append('}')
        return
    }
    if ($Value -is [System.Collections.IEnumerable]) {
        [void]$Builder.Append('[')
        $first = $true
        foreach ($item in $Value) {
            if (-not $first) { [void]$Builder.Append(',') }
            $first = $false
            Add-HvJson -Builder $Builder -Value $item
        }
        [void]$Builder.Append(']')
        return
    }
    Add-HvJsonString -Builder $Builder -Text ([string]$Value)
}

function ConvertFrom-HvWmiValue {
    # A raw System.Management value as JSON-ready data: uint64/sint64 stay UInt64/Int64 (exact), DMTF
    # datetimes and REF paths are strings already, arrays become lists, an embedded object becomes its
    # CIM-XML text (GetText(CimDtd20), what os-win's GetText_(1) returns).
    param($Value)
    if ($null -eq $Value) { return $null }
    if ($Value -is [System.Management.ManagementBaseObject]) { return $Value.psbase.GetText([System.Management.TextFormat]::CimDtd20) }
    if ($Value -is [array]) {
        $list = New-Object System.Collections.ArrayList
        foreach ($item in $Value) { [void]$list.Add((ConvertFrom-HvWmiValue -Value $item)) }
        return ,$list
    }
    return $Value
}

function ConvertTo-HvInstance {
    # An instance as the bridge returns it: its properties by name plus __CLASS, __NAMESPACE and __PATH.
    param($Object, [string[]]$Only)
    $base = $Object.psbase
    $result = @{}
    $result['__CLASS'] = [string]$base.SystemProperties['__CLASS'].Value
    $result['__NAMESPACE'] = [string]$base.SystemProperties['__NAMESPACE'].Value
    $result['__PATH'] = [string]$base.SystemProperties['__PATH'].Value
    foreach ($property in $base.Properties) {
        if ($Only -and ($Only -notcontains $property.Name)) { continue }
        $result[$property.Name] = ConvertFrom-HvWmiValue -Value $property.Value
    }
    return $result
}

function Assert-HvName {
    # Class, property and parameter names are identifiers: they are written into WQL, values never are.
    param([string]$Name, [string]$What)
    if ($Name -notmatch '^[A-Za-z_][A-Za-z0-9_]*\z') {
        throw (New-HvError -Code 2147749911 -Message ('not a valid ' + $What + ' name: ' + $Name))  # 0x80041017 WBEM_E_INVALID_QUERY
    }
}

function Assert-HvNamespace {
    # A namespace is written into class paths ('\\.\<namespace>:<class>'): path segments of identifiers only.
    param([string]$Name)
    if ($Name -notmatch '^[A-Za-z0-9_]+(\\[A-Za-z0-9_]+)*\z') {
        throw (New-HvError -Code 2147749902 -Message ('not a valid namespace: ' + $Name))  # 0x8004100E WBEM_E_INVALID_NAMESPACE
    }
}

function Assert-HvRooted {
    param([string]$Path)
    if (-not $Path -or -not [System.IO.Path]::IsPathRooted($Path)) {
        throw (New-HvError -Code 'bad_request' -Message ('not an absolute path: ' + $Path))
    }
}

function ConvertFrom-HvBase64Text {
    param([string]$Text)
    if ($Text -eq '.') { return '' }
    return [System.Text.Encoding]::UTF8.GetString([System.Convert]::FromBase64String($Text))
}

function ConvertFrom-HvSpecValue {
    param([string]$Kind, [string]$Text)
    $raw = ConvertFrom-HvBase64Text -Text $Text
    switch ($Kind) {
        's' { return $raw }
        'r' { return $raw }
        'i' { return [decimal]::Parse($raw, [System.Globalization.NumberStyles]::AllowLeadingSign, $HvInvariant) }
        'd' { return [double]::Parse($raw, [System.Globalization.NumberStyles]::Float, $HvInvariant) }
        'b' { return ($raw -eq '1') }
        'n' { return $null }
    }
    throw (New-HvError -Code 'bad_request' -Message ('unknown value kind ' + $Kind))
}

function Read-HvSpec {
    # The typed-value records (see bridge_scripts.py): targets[target] = list of @{name; array; items},
    # embedded[id] = @{class; based_on}, order = embedded ids in build order.
    param([string[]]$Lines)
    $spec = @{ targets = @{}; embedded = @{}; order = (New-Object System.Collections.ArrayList) }
    foreach ($line in @($Lines)) {
        if (-not $line) { continue }
        $fields = $line.Split(' ')
        if ($fields[0] -eq 'E') {
            $spec.embedded[$fields[1]] = @{ class = (ConvertFrom-HvBase64Text -Text $fields[2]); based_on = (ConvertFrom-HvBase64Text -Text $fields[3]) }
            [void]$spec.order.Add($fields[1])
            continue
        }
        $target = $fields[1]
        Assert-HvName -Name $fields[2] -What 'property or parameter'
        if (-not $spec.targets.ContainsKey($target)) { $spec.targets[$target] = New-Object System.Collections.ArrayList }
        $items = New-Object System.Collections.ArrayList
        if ($fields[0] -eq 'V') {
            [void]$items.Add(@{ kind = $fields[3]; text = $fields[4] })
            [void]$spec.targets[$target].Add(@{ name = $fields[2]; array = $false; items = $items })
        } elseif ($fields[0] -eq 'A') {
            for ($index = 3; $index -lt $fields.Length; $index++) {
                $pair = $fields[$index].Split(':')
                [void]$items.Add(@{ kind = $pair[0]; text = $pair[1] })
            }
            [void]$spec.targets[$target].Add(@{ name = $fields[2]; array = $true; items = $items })
        } else {
            throw (New-HvError -Code 'bad_request' -Message ('unknown record ' + $fields[0]))
        }
    }
    return $spec
}

function Resolve-HvItem {
    # One value; an embedded instance becomes its object (parameters of CIM type Object) or CIM-XML text.
    param($Item, $Built, [string]$CimType)
    if ($Item.kind -eq 'e') {
        $embedded = $Built[(ConvertFrom-HvBase64Text -Text $Item.text)]
        if ($null -eq $embedded) { throw (New-HvError -Code 'bad_request' -Message 'embedded instance used before it is defined') }
        if ($CimType -eq 'Object') { return $embedded.object }
        return $embedded.text
    }
    return ConvertFrom-HvSpecValue -Kind $Item.kind -Text $Item.text
}

function Resolve-HvEntry {
    param($Entry, $Built, [string]$CimType)
    if ($Entry.array) {
        $values = New-Object System.Collections.ArrayList
        foreach ($item in $Entry.items) { [void]$values.Add((Resolve-HvItem -Item $item -Built $Built -CimType $CimType)) }
        return ,($values.ToArray())
    }
    return Resolve-HvItem -Item $Entry.items[0] -Built $Built -CimType $CimType
}

function Get-HvEntries {
    param($Spec, [string]$Target)
    $list = New-Object System.Collections.ArrayList
    if ($Spec.targets.ContainsKey($Target)) { foreach ($entry in $Spec.targets[$Target]) { [void]$list.Add($entry) } }
    return ,$list
}

function Invoke-HvProcess {
    # A console program with stdout and stderr in files (no pipe can fill and block), bounded by the timeout.
    # Its output is read in the OEM code page, what console programs write (UNCONFIRMED for redirected
    # vssadmin/diskshadow on localized hosts; only the localized words are affected).
    param([string]$FilePath, [string[]]$ArgumentList)
    $folder = Join-Path -Path ([System.IO.Path]::GetTempPath()) -ChildPath ('hvb-' + [guid]::NewGuid().ToString('N'))
    [void][System.IO.Directory]::CreateDirectory($folder)
    $stdout = Join-Path -Path $folder -ChildPath 'stdout.txt'
    $stderr = Join-Path -Path $folder -ChildPath 'stderr.txt'
    try {
        $process = Start-Process -FilePath $FilePath -ArgumentList $ArgumentList -NoNewWindow -PassThru `
            -RedirectStandardOutput $stdout -RedirectStandardError $stderr
        $null = $process.Handle   # keeps the handle so that ExitCode is readable after WaitForExit (.NET Process)
        if (-not $process.WaitForExit([int]([Math]::Max(1, $HvTimeoutSeconds)) * 1000)) {
            try { $process.Kill() } catch { $null = $_ }
            throw (New-HvError -Code 'timeout' -Message ($FilePath + ' still running after ' + $HvTimeoutSeconds + ' s'))
        }
        $encoding = [System.Text.Encoding]::GetEncoding([System.Globalization.CultureInfo]::CurrentCulture.TextInfo.OEMCodePage)
        $output = ''
        if ([System.IO.File]::Exists($stdout)) { $output = [System.IO.File]::ReadAllText($stdout, $encoding) }
        if ([System.IO.File]::Exists($stderr)) { $output = $output + [System.IO.File]::ReadAllText($stderr, $encoding) }
        return @{ exit_code = [int]$process.ExitCode; output = $output }
    } finally {
        Remove-Item -LiteralPath $folder -Recurse -Force -ErrorAction SilentlyContinue
    }
}
"""

EPILOGUE = r"""
function ConvertTo-HvErrorDocument {
    param($Record)
    $info = Get-HvErrorInfo -Exception $Record.Exception
    $line = $null
    if ($Record.InvocationInfo) { $line = $Record.InvocationInfo.ScriptLineNumber }
    return @{ error = @{ code = $info.code; message = $info.message; category = $info.category; type = $info.type; line = $line } }
}

$HvBuilder = New-Object -TypeName System.Text.StringBuilder
try {
    $HvResult = Invoke-HvBridge
    [void]$HvBuilder.Append('{"result":')
    Add-HvJson -Builder $HvBuilder -Value $HvResult
    [void]$HvBuilder.Append('}')
} catch {
    $HvBuilder.Length = 0
    Add-HvJson -Builder $HvBuilder -Value (ConvertTo-HvErrorDocument -Record $_)
}
Write-Output $HvBuilder.ToString()
"""

# call -> (param() declarations in order, body). Names match the keyword arguments ScriptBridge passes.
_DEFINITIONS = (
    ("query", (("string", "Namespace"), ("string", "ClassName"), ("string[]", "Where"), ("string[]", "Properties")), QUERY),
    ("associators", (("string", "Namespace"), ("string", "Path"), ("string", "AssocClass"), ("string", "ResultClass")), ASSOCIATORS),
    ("invoke", (("string", "Namespace"), ("string", "Path"), ("string", "Method"), ("string[]", "Arguments"),
                ("int", TIMEOUT_PARAMETER)), INVOKE),
    ("invoke_paged", (("string", "Namespace"), ("string", "Path"), ("string", "Method"), ("string[]", "Arguments"),
                      ("string", "OffsetParameter"), ("string", "LengthParameter"), ("string", "ProcessedParameter"),
                      ("long", "StartOffset"), ("long", "EndOffset"), ("long", "MaxLength"), ("int", "MaxCalls"),
                      ("string[]", "Collect"), ("int", TIMEOUT_PARAMETER)), INVOKE_PAGED),
    ("service", (("string", "Name"), ("bool", "Start"), ("int", TIMEOUT_PARAMETER)), SERVICE),
    ("vss_writers", (("int", TIMEOUT_PARAMETER),), VSS_WRITERS),
    ("diskshadow", (("string", "Script"), ("int", TIMEOUT_PARAMETER)), DISKSHADOW),
    ("read_file", (("string", "Path"), ("long", "MaxBytes")), READ_FILE),
    ("write_file", (("string", "Path"), ("string", "Data"), ("bool", "Exclusive")), WRITE_FILE),
    ("remove_file", (("string", "Path"),), REMOVE_FILE),
    ("list_directory", (("string", "Path"),), LIST_DIRECTORY),
    ("host_environment", (), HOST_ENVIRONMENT),
)


def _build(name, declarations, body):
    # The timeout has a default so that a script run by hand waits like a session with the default operation_timeout.
    params = ", ".join("[%s]$%s%s" % (kind, pname, " = 3600" if pname == TIMEOUT_PARAMETER else "") for kind, pname in declarations)
    text = "\n".join(("param(%s)" % params, PRELUDE.strip("\n"), body.strip("\n"), EPILOGUE.strip("\n"))) + "\n"
    return BridgeScript(name, [pname for _kind, pname in declarations], text)


SCRIPTS = dict((name, _build(name, declarations, body)) for name, declarations, body in _DEFINITIONS)

# The winrm transport's fixed command (powershell.exe -EncodedCommand): reads the request from stdin (see
# transport_winrm.request_payload), decodes it without ConvertFrom-Json, runs the script with the
# parameters splatted, and writes what it printed to stdout unformatted.
BOOTSTRAP = r"""
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
function ConvertFrom-HvPayloadValue {
    param([string]$Item)
    $pair = $Item.Split(':')
    $text = ''
    if ($pair[1] -ne '.') { $text = [System.Text.Encoding]::UTF8.GetString([System.Convert]::FromBase64String($pair[1])) }
    switch ($pair[0]) {
        's' { return $text }
        'i' { return [long]::Parse($text, [System.Globalization.CultureInfo]::InvariantCulture) }
        'b' { return ($text -eq '1') }
        'n' { return $null }
    }
    throw ('unknown payload kind ' + $pair[0])
}
$HvScript = $null
$HvParameters = @{}
foreach ($HvLine in ([string]($input | Out-String)).Split([char]10)) {
    $HvFields = $HvLine.Trim().Split(' ')
    if ($HvFields[0] -eq 'S') { $HvScript = ConvertFrom-HvPayloadValue -Item ('s:' + $HvFields[1]) }
    elseif ($HvFields[0] -eq 'P') { $HvParameters[$HvFields[1]] = ConvertFrom-HvPayloadValue -Item $HvFields[2] }
    elseif ($HvFields[0] -eq 'L') {
        $HvItems = New-Object System.Collections.ArrayList
        for ($HvIndex = 2; $HvIndex -lt $HvFields.Length; $HvIndex++) { [void]$HvItems.Add((ConvertFrom-HvPayloadValue -Item $HvFields[$HvIndex])) }
        $HvParameters[$HvFields[1]] = [string[]]$HvItems.ToArray()
    }
}
$HvBlock = [ScriptBlock]::Create($HvScript)
foreach ($HvOutput in @(& $HvBlock @HvParameters)) { [Console]::Out.WriteLine([string]$HvOutput) }
"""

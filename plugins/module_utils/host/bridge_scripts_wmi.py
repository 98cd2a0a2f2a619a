# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bodies of the WMI bridge scripts: query, associators, invoke, invoke_paged (``function Invoke-HvBridge``).

PowerShell 2.0 only; the shared functions they call (``Read-HvSpec``, ``ConvertTo-HvInstance``,
``Invoke-HvProcess``, ...) are in ``bridge_scripts.PRELUDE``, which ``bridge_scripts`` puts before each body.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

QUERY = r"""
function ConvertTo-HvWqlLiteral {
    # WQL string literals: backslash doubled (hyperv_wmi.md section 3); a quote as \' (UNCONFIRMED, docs/powershell.md).
    param($Value)
    if ($Value -is [bool]) {
        if ($Value) { return 'TRUE' }
        return 'FALSE'
    }
    if ($Value -is [decimal] -or $Value -is [double]) { return $Value.ToString($HvInvariant) }
    return "'" + ([string]$Value).Replace('\', '\\').Replace("'", "\'") + "'"
}

function Invoke-HvBridge {
    Assert-HvNamespace -Name $Namespace
    Assert-HvName -Name $ClassName -What 'class'
    $spec = Read-HvSpec -Lines $Where
    $conditions = New-Object System.Collections.ArrayList
    foreach ($entry in (Get-HvEntries -Spec $spec -Target 'w')) {
        if ($entry.array) { throw (New-HvError -Code 2147749911 -Message ('a WHERE value cannot be a list: ' + $entry.name)) }
        $value = Resolve-HvEntry -Entry $entry -Built @{} -CimType ''
        if ($null -eq $value) { [void]$conditions.Add($entry.name + ' IS NULL') }
        else { [void]$conditions.Add($entry.name + ' = ' + (ConvertTo-HvWqlLiteral -Value $value)) }
    }
    $wql = 'SELECT * FROM ' + $ClassName
    if ($conditions.Count -gt 0) { $wql = $wql + ' WHERE ' + ($conditions.ToArray() -join ' AND ') }
    $only = New-Object System.Collections.ArrayList
    foreach ($name in @($Properties)) {
        if (-not $name) { continue }
        Assert-HvName -Name $name -What 'property'
        [void]$only.Add($name)
    }
    # The query runs first: an unknown class or namespace is reported as Windows reports it (0x80041010, 0x8004100E).
    $objects = @(Get-WmiObject -Namespace $Namespace -Query $wql)
    if ($only.Count -gt 0) {
        # A property the class lacks is an invalid query, as it is in a WQL select list.
        $class = [wmiclass]('\\.\' + $Namespace + ':' + $ClassName)
        $known = @{}
        foreach ($property in $class.psbase.Properties) { $known[$property.Name] = $true }
        foreach ($name in $only) {
            if (-not $known.ContainsKey($name)) {
                throw (New-HvError -Code 2147749911 -Message ('class ' + $ClassName + ' has no property ' + $name))
            }
        }
    }
    $list = New-Object System.Collections.ArrayList
    foreach ($object in $objects) {
        [void]$list.Add((ConvertTo-HvInstance -Object $object -Only ($only.ToArray())))
    }
    return ,$list
}
"""

ASSOCIATORS = r"""
function Invoke-HvBridge {
    Assert-HvNamespace -Name $Namespace
    Assert-HvName -Name $AssocClass -What 'association class'
    if ($ResultClass) { Assert-HvName -Name $ResultClass -What 'result class' }
    if ($Path.IndexOf('}') -ge 0) { throw (New-HvError -Code 2147749911 -Message ('not an object path: ' + $Path)) }
    $wql = 'ASSOCIATORS OF {' + $Path + '} WHERE AssocClass = ' + $AssocClass
    if ($ResultClass) { $wql = $wql + ' ResultClass = ' + $ResultClass }
    $list = New-Object System.Collections.ArrayList
    foreach ($object in @(Get-WmiObject -Namespace $Namespace -Query $wql)) {
        [void]$list.Add((ConvertTo-HvInstance -Object $object))
    }
    return ,$list
}
"""

INVOKE_SHARED = r"""
function New-HvEmbedded {
    # An embedded instance built client-side: a copy of an existing instance ([wmi] path, Clone) with
    # properties changed, or a new one spawned from its class ([wmiclass].CreateInstance, os-win
    # SpawnInstance_). Changing the local copy is never an error; it is serialized with GetText(CimDtd20)
    # = os-win GetText_(1) [hyperv_wmi.md section 1].
    param($Definition, $Entries, $Built)
    if ($Definition.based_on) {
        $instance = ([wmi]$Definition.based_on).psbase.Clone()
    } else {
        Assert-HvName -Name $Definition.class -What 'class'
        $class = [wmiclass]('\\.\' + $Namespace + ':' + $Definition.class)
        $instance = $class.psbase.CreateInstance()
    }
    foreach ($entry in $Entries) {
        $cimType = [string]$instance.psbase.Properties[$entry.name].Type
        $instance.psbase.SetPropertyValue($entry.name, (Resolve-HvEntry -Entry $entry -Built $Built -CimType $cimType))
    }
    return @{ object = $instance; text = $instance.psbase.GetText([System.Management.TextFormat]::CimDtd20) }
}

function Get-HvJobErrors {
    # Msvm_ConcreteJob.GetErrorEx -> Errors (embedded Msvm_Error, CIM-XML); GetError -> Error where GetErrorEx
    # is missing (v1) [win32-hyperv-v2 geterrorex-msvm-concretejob, geterror-msvm-concretejob]. Best effort.
    param($Job)
    $errors = New-Object System.Collections.ArrayList
    try {
        $result = $Job.psbase.InvokeMethod('GetErrorEx', $null, $null)
        foreach ($text in @($result.psbase.GetPropertyValue('Errors'))) { if ($text) { [void]$errors.Add([string]$text) } }
    } catch {
        try {
            $result = $Job.psbase.InvokeMethod('GetError', $null, $null)
            $text = $result.psbase.GetPropertyValue('Error')
            if ($text) { [void]$errors.Add([string]$text) }
        } catch { $null = $_ }
    }
    return ,$errors
}

function Wait-HvJob {
    # ReturnValue 4096: poll the Msvm_ConcreteJob until JobState is final, or give up at the timeout.
    param([string]$JobPath)
    $deadline = (Get-Date).AddSeconds($HvTimeoutSeconds)
    $job = [wmi]$JobPath
    while ($HvFinishedStates -notcontains [int]$job.psbase.GetPropertyValue('JobState')) {
        if ((Get-Date) -gt $deadline) {
            $jobId = [string]$job.psbase.GetPropertyValue('InstanceID')
            throw (New-HvError -Code 'timeout' -Message ($Method + ' job ' + $jobId + ' still running after ' + $HvTimeoutSeconds + ' s'))
        }
        Start-Sleep -Milliseconds 500
        $job.psbase.Get()
    }
    $state = [int]$job.psbase.GetPropertyValue('JobState')
    $errorCode = [int]$job.psbase.GetPropertyValue('ErrorCode')
    $errors = New-Object System.Collections.ArrayList
    if (($HvSuccessStates -notcontains $state) -or $errorCode -ne 0) { $errors = Get-HvJobErrors -Job $job }
    return @{
        InstanceID = [string]$job.psbase.GetPropertyValue('InstanceID'); JobState = $state; ErrorCode = $errorCode
        ErrorDescription = $job.psbase.GetPropertyValue('ErrorDescription')
        ErrorSummaryDescription = $job.psbase.GetPropertyValue('ErrorSummaryDescription'); errors = $errors
    }
}

function Get-HvAffected {
    # Msvm_AffectedJobElement of the job: the affected instance plus the link's ElementEffects (5 = Create).
    param([string]$JobPath)
    $list = New-Object System.Collections.ArrayList
    try {
        $links = @(Get-WmiObject -Namespace $Namespace -Query ('REFERENCES OF {' + $JobPath + '} WHERE ResultClass = Msvm_AffectedJobElement'))
    } catch {
        # A namespace without the association (UNCONFIRMED for v1) has no affected elements to report.
        if ((Get-HvErrorInfo -Exception $_.Exception).code -eq 2147749904) { return ,$list }  # 0x80041010 invalid class
        throw
    }
    foreach ($link in $links) {
        $element = [wmi]([string]$link.psbase.GetPropertyValue('AffectedElement'))
        $instance = ConvertTo-HvInstance -Object $element
        $instance['ElementEffects'] = ConvertFrom-HvWmiValue -Value $link.psbase.GetPropertyValue('ElementEffects')
        [void]$list.Add($instance)
    }
    return ,$list
}

function Get-HvMethodTarget {
    # The instance or class at $Path, after checking that its class has $Method (else 0x8004102E).
    Assert-HvNamespace -Name $Namespace
    $objectPath = New-Object -TypeName System.Management.ManagementPath -ArgumentList $Path
    if ($objectPath.IsClass) { $target = [wmiclass]$Path } else { $target = [wmi]$Path }
    $known = $false
    $class = New-Object -TypeName System.Management.ManagementClass -ArgumentList $target.psbase.Scope, $target.psbase.ClassPath, $null
    foreach ($candidate in $class.psbase.Methods) { if ($candidate.Name -eq $Method) { $known = $true } }
    if (-not $known) {
        throw (New-HvError -Code 2147749934 -Message ('class ' + $class.psbase.ClassPath.ClassName + ' has no method ' + $Method))  # 0x8004102E
    }
    return $target
}

function New-HvBuiltInstances {
    # The embedded instances of the arguments, nested ones first.
    param($Spec)
    $built = @{}
    foreach ($id in $Spec.order) {
        $built[$id] = New-HvEmbedded -Definition $Spec.embedded[$id] -Entries (Get-HvEntries -Spec $Spec -Target ('e' + $id)) -Built $built
    }
    return $built
}

function Find-HvMethodParameter {
    # The in-parameter called $Name of $Method; a name the method lacks is 0x8004102F.
    param($MethodInput, [string]$Name)
    if ($null -ne $MethodInput) { foreach ($candidate in $MethodInput.psbase.Properties) { if ($candidate.Name -eq $Name) { return $candidate } } }
    throw (New-HvError -Code 2147749935 -Message ('method ' + $Method + ' has no parameter ' + $Name))  # 0x8004102F
}

function New-HvMethodInput {
    # The in-parameters of $Method: the typed arguments of the spec (embedded instances from $Built).
    param($Target, $Spec, $Built)
    $in = $Target.psbase.GetMethodParameters($Method)
    foreach ($entry in (Get-HvEntries -Spec $Spec -Target 'a')) {
        $parameter = Find-HvMethodParameter -MethodInput $in -Name $entry.name
        $in.psbase.SetPropertyValue($parameter.Name, (Resolve-HvEntry -Entry $entry -Built $Built -CimType ([string]$parameter.Type)))
    }
    return $in
}

function Invoke-HvMethodOnce {
    # One InvokeMethod: ReturnValue, out-parameters, and for 4096 the finished job and its affected elements.
    param($Target, $MethodInput)
    $out = $Target.psbase.InvokeMethod($Method, $MethodInput, $null)
    $returnValue = [long]$out.psbase.GetPropertyValue('ReturnValue')
    $values = @{}
    $jobPath = $null
    foreach ($property in $out.psbase.Properties) {
        if ($property.Name -eq 'ReturnValue') { continue }
        if ($property.Name -eq 'Job') { $jobPath = [string]$property.Value; continue }
        $values[$property.Name] = ConvertFrom-HvWmiValue -Value $property.Value
    }
    $job = $null
    $affected = New-Object System.Collections.ArrayList
    if ($returnValue -eq 4096 -and $jobPath) {
        $job = Wait-HvJob -JobPath $jobPath
        $affected = Get-HvAffected -JobPath $jobPath
    }
    return @{ ReturnValue = $returnValue; out = $values; job = $job; affected = $affected }
}
"""

INVOKE = INVOKE_SHARED + r"""
function Invoke-HvBridge {
    $target = Get-HvMethodTarget
    $spec = Read-HvSpec -Lines $Arguments
    $built = New-HvBuiltInstances -Spec $spec
    $in = New-HvMethodInput -Target $target -Spec $spec -Built $built
    return (Invoke-HvMethodOnce -Target $target -MethodInput $in)
}
"""

INVOKE_PAGED = INVOKE_SHARED + r"""
function Add-HvRun {
    # Run-length encoding of a per-call number: [value, times] pairs.
    param($Runs, $Value)
    if ($Runs.Count -gt 0 -and $Runs[$Runs.Count - 1][0] -eq $Value) { $Runs[$Runs.Count - 1][1] += 1 }
    else { [void]$Runs.Add(@($Value, 1)) }
}

function Invoke-HvBridge {
    # The loop of bridge.page_through, on the host: one round trip for many pages of a paged method.
    $target = Get-HvMethodTarget
    foreach ($name in (@($OffsetParameter, $LengthParameter, $ProcessedParameter) + @($Collect))) { Assert-HvName -Name $name -What 'parameter' }
    $spec = Read-HvSpec -Lines $Arguments
    $built = New-HvBuiltInstances -Spec $spec
    $collected = @{}
    $counts = @{}
    foreach ($name in @($Collect)) {
        $collected[$name] = New-Object System.Collections.ArrayList
        $counts[$name] = New-Object System.Collections.ArrayList
    }
    $offset = [decimal]$StartOffset
    $end = [decimal]$EndOffset
    $calls = 0
    $stopped = $null
    while ($offset -lt $end -and $calls -lt $MaxCalls) {
        $length = $end - $offset
        if ($length -gt [decimal]$MaxLength) { $length = [decimal]$MaxLength }
        $in = New-HvMethodInput -Target $target -Spec $spec -Built $built
        $in.psbase.SetPropertyValue((Find-HvMethodParameter -MethodInput $in -Name $OffsetParameter).Name, $offset)
        $in.psbase.SetPropertyValue((Find-HvMethodParameter -MethodInput $in -Name $LengthParameter).Name, $length)
        $answer = Invoke-HvMethodOnce -Target $target -MethodInput $in
        $ok = ($answer.ReturnValue -eq 0)
        if ($answer.ReturnValue -eq 4096 -and $null -ne $answer.job) {
            $ok = (($HvSuccessStates -contains $answer.job.JobState) -and $answer.job.ErrorCode -eq 0)
        }
        if (-not $ok) {
            $stopped = @{ offset = $offset; length = $length; reason = 'failed'; result = $answer }
            break
        }
        $calls += 1
        foreach ($name in @($Collect)) {
            $number = 0
            $items = $answer.out[$name]
            if ($null -ne $items) { foreach ($item in $items) { [void]$collected[$name].Add($item); $number += 1 } }
            Add-HvRun -Runs $counts[$name] -Value $number
        }
        $processed = [decimal]0
        if ($null -ne $answer.out[$ProcessedParameter]) { $processed = [decimal]$answer.out[$ProcessedParameter] }
        if ($processed -le 0) {
            $stopped = @{ offset = $offset; length = $length; reason = 'no_progress'; result = $answer }
            break
        }
        $offset += $processed
    }
    return @{ calls = $calls; next_offset = $offset; collected = $collected; counts = $counts; stopped = $stopped }
}
"""

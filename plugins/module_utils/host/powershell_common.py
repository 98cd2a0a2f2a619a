# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared PowerShell text of every host script: the error prelude, WMI job handling, the epilogue.

A script is ``param(...)`` + ``PRELUDE`` + ``function Invoke-HvOperation {...}`` + ``EPILOGUE``.
The epilogue prints exactly one JSON document: the result, or ``{"error": {category, message,
windows_error, hint}}``. User values only ever arrive as parameters (see ``script_parameters``).
Sources in ``# [TAG]`` comments are keys of /work/shared/reference/hyperv_api.md section 0.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class Script(object):
    """One operation's PowerShell script: its name, full text, and the sources of its WMI/cmdlet names."""

    def __init__(self, name, text, sources):
        self.name = name
        self.text = text
        self.sources = tuple(sources)

    def __repr__(self):
        return "Script(%r, %d chars)" % (self.name, len(self.text))


# Every script takes this parameter too: how long a WMI job may run before the script gives up.
TIMEOUT_PARAMETER = "HvTimeoutSeconds"


def powershell_parameter_name(name):
    """snake_case operation parameter -> the PascalCase name in the script's param() block."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def script_parameters(params, timeout_seconds):
    """The parameters a transport passes to a script: PascalCase names, plus the job timeout."""
    out = dict((powershell_parameter_name(k), v) for k, v in params.items())
    out[TIMEOUT_PARAMETER] = int(timeout_seconds)
    return out


PRELUDE = r"""
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
# [HV2:msvm-computersystem] the Hyper-V WMI v2 namespace (Windows Server 2012 = 6.2 and later); Windows Server
# 2008 / 2008 R2 (6.0 / 6.1) only have v1, root\virtualization [COLISEO; reference section 4].
$HvNamespace = 'root\virtualization\v2'
$HvOsVersion = [Environment]::OSVersion.Version
if ($HvOsVersion.Major -lt 6 -or ($HvOsVersion.Major -eq 6 -and $HvOsVersion.Minor -lt 2)) { $HvNamespace = 'root\virtualization' }
$HvDeadline = (Get-Date).AddSeconds($HvTimeoutSeconds)
$HvOursPrefix = 'hyperv.backup:'

# Both return-code families of Msvm methods [HV2:createsnapshot-msvm-virtualsystemsnapshotservice]
# (0..6, 4096) and [HV2:msvm-imagemanagementservice-getvirtualdiskchanges] (32768..32779).
$HvReturnText = @{
    1 = 'Not Supported'; 2 = 'Failed'; 3 = 'Timeout'; 4 = 'Invalid Parameter'; 5 = 'Invalid State'; 6 = 'Invalid Type'
    32768 = 'Failed'; 32769 = 'Access Denied'; 32770 = 'Not Supported'; 32771 = 'Status is unknown'; 32772 = 'Timeout'
    32773 = 'Invalid parameter'; 32774 = 'System is in use'; 32775 = 'Invalid state for this operation'
    32776 = 'Incorrect data type'; 32777 = 'System is not available'; 32778 = 'Out of memory'; 32779 = 'File not found or in use'
}
$HvReturnCategory = @{ 1 = 'unsupported'; 32770 = 'unsupported'; 32774 = 'busy' }

# virtdisk change-tracking errors (winerror.h, [HV2] section 2.9 of the reference): an RCT chain that cannot be used.
# 0xC03A0020..0xC03A0024 CTLOG_*, 0xC03A0029 invalid RCT id, 0xC03A002A tracking disabled, 0xC03A0030 no data for the id.
# Kept as text: PowerShell reads 0xC03A0020 as a negative Int32, so codes are compared in their 0xXXXXXXXX form.
$HvChangeTrackingCodes = @('0xC03A0020', '0xC03A0021', '0xC03A0022', '0xC03A0023', '0xC03A0024', '0xC03A0029', '0xC03A002A', '0xC03A0030')

function New-HvError {
    param([string]$Category, [string]$Message, [string]$WindowsError, [string]$Hint)
    $exception = New-Object -TypeName System.Exception -ArgumentList $Message
    $exception.Data['hv_category'] = $Category
    $exception.Data['hv_windows_error'] = $WindowsError
    $exception.Data['hv_hint'] = $Hint
    return $exception
}

function Format-HvCode {
    param([long]$Code)
    if ($Code -lt 0) { $Code += 4294967296 }
    return '0x' + $Code.ToString('X8')
}

function Test-HvChangeTrackingError {
    # How these codes surface through WMI (job ErrorCode, HRESULT, or only text) is UNCONFIRMED (reference 2.9;
    # searched: docs, issues and code for 0xC03A0029 / GetVirtualDiskChanges errors; nxmBackup treats any failure as
    # "no baseline" [NXM]), so both the number and the text are checked.
    param([long]$Code, [string]$Text)
    if ($HvChangeTrackingCodes -contains (Format-HvCode -Code $Code)) { return $true }
    if ($Text -match '0xC03A00(2[0-4]|29|2A|30)') { return $true }
    return ($Text -match 'change tracking')
}

function Wait-HvJob {
    # ReturnValue 0 = done, 4096 = job started, anything else = failure [HV2:msvm-concretejob; XHVB Trace-CimMethodExecution].
    param($Result, [string]$Method, [string]$Category = 'failed', [hashtable]$CodeCategories = @{})
    $code = [long]$Result.ReturnValue
    if ($code -eq 0) { return $Result }
    if ($code -ne 4096) {
        $category = $Category
        if ($CodeCategories.ContainsKey([int]$code)) { $category = $CodeCategories[[int]$code] }
        elseif ($HvReturnCategory.ContainsKey([int]$code)) { $category = $HvReturnCategory[[int]$code] }
        $text = $HvReturnText[[int]$code]
        throw (New-HvError -Category $category -Message ($Method + ' returned ' + $code + ' (' + $text + ')') `
            -WindowsError ('ReturnValue ' + $code) -Hint 'See the Hyper-V-VMMS Admin event log on the host for details.')
    }
    # A CIM job reference (Msvm_ConcreteJob) lacks non-key properties: re-read it [HV2:msvm-concretejob; XHVB Trace-CimMethodExecution].
    $job = $Result.Job | Get-CimInstance
    # Finished states: 7 Completed, 8 Terminated, 9 Killed, 10 Exception, 32768 CompletedWithWarnings
    # [HV2:msvm-concretejob; HV2:common-utilities-for-the-virtualization-samples-v2].
    while (@(7, 8, 9, 10, 32768) -notcontains [int]$job.JobState) {
        if ((Get-Date) -gt $HvDeadline) {
            throw (New-HvError -Category 'failed' -Message ($Method + ' job still running after ' + $HvTimeoutSeconds + ' s') `
                -Hint 'Raise operation_timeout, or check the job with Get-CimInstance Msvm_ConcreteJob on the host.')
        }
        Start-Sleep -Seconds 1
        $job = $job | Get-CimInstance
    }
    if (@(7, 32768) -notcontains [int]$job.JobState) {
        $text = [string]$job.ErrorDescription
        $category = $Category
        if (Test-HvChangeTrackingError -Code ([long]$job.ErrorCode) -Text $text) { $category = 'change_tracking' }
        elseif ($CodeCategories.ContainsKey([int]$job.ErrorCode)) { $category = $CodeCategories[[int]$job.ErrorCode] }
        throw (New-HvError -Category $category -Message ($Method + ' job failed (state ' + $job.JobState + '): ' + $text) `
            -WindowsError ('job ErrorCode ' + $job.ErrorCode + ' ' + [string]$job.ErrorSummaryDescription) `
            -Hint 'See the Hyper-V-VMMS Admin event log on the host for details.')
    }
    return $Result
}

function ConvertTo-HvEmbedded {
    # Embedded-instance string of a client-side CIM instance [XHVB ConvertTo-CimEmbeddedString; reference section 8].
    param([Microsoft.Management.Infrastructure.CimInstance]$Instance)
    $serializer = [Microsoft.Management.Infrastructure.Serialization.CimSerializer]::Create()
    $bytes = $serializer.Serialize($Instance, [Microsoft.Management.Infrastructure.Serialization.InstanceSerializationOptions]::None)
    return [System.Text.Encoding]::Unicode.GetString($bytes)
}

function ConvertFrom-HvEmbedded {
    # Embedded instances (GetVirtualHardDiskSettingData.SettingData, v1 GetVirtualHardDiskInfo.Info) are CIM-XML
    # INSTANCE/PROPERTY/VALUE: public code reads them the same way, by PROPERTY NAME [duplicati/duplicati
    # Duplicati/Library/Snapshots/Windows/HyperVUtility.cs GetVMVhdPathsWMI: //PROPERTY[@NAME = 'ParentPath']/VALUE;
    # PSHyperV GetVirtualHardDiskInfo: /INSTANCE/PROPERTY, find_string id 10787191480]. Missing properties stay null.
    param([string]$Text)
    $values = @{}
    if (-not $Text) { return $values }
    $document = [xml]$Text
    foreach ($property in $document.SelectNodes('//PROPERTY')) {
        $value = $property.SelectSingleNode('VALUE')
        if ($null -ne $value) { $values[$property.GetAttribute('NAME')] = $value.InnerText }
    }
    return $values
}

function ConvertTo-HvTime {
    param($Value)
    if ($null -eq $Value) { return $null }
    return ([datetime]$Value).ToUniversalTime().ToString('yyyy-MM-ddTHH:mm:ssZ')
}

function Get-HvVm {
    # VM by id: Msvm_ComputerSystem.Name is the VM GUID [XHVB; reference 2.1]. The id is parsed as a GUID
    # first, so the WQL filter only ever holds a canonical GUID.
    param([string]$VmId)
    $guid = [guid]::Empty
    if (-not [guid]::TryParse($VmId, [ref]$guid)) {
        throw (New-HvError -Category 'not_found' -Message ('VM id is not a GUID: ' + $VmId) -Hint 'Pass the id from get_vms.')
    }
    $vm = Get-CimInstance -Namespace $HvNamespace -ClassName Msvm_ComputerSystem -Filter ("Name='" + $guid.ToString() + "'")
    if (-not $vm) {
        throw (New-HvError -Category 'not_found' -Message ('no VM with id ' + $guid.ToString()) -Hint 'Check the VM id; list VMs with get_vms.')
    }
    return $vm
}

function Get-HvVssComponent {
    # The VM's Msvm_VssComponent (backup integration service state) [HV2:msvm-vsscomponent]. Its DeviceID is always
    # 'Microsoft:<VMGUID>\<GUID>' with VMGUID = Msvm_ComputerSystem.Name (class page, DeviceID); SystemName, the
    # CIM_LogicalDevice scoping system (SystemCreationClassName 'Msvm_ComputerSystem'), holds the same GUID: Microsoft's
    # Hyper-V tests select a VM's Msvm_Keyboard with "SystemName='<VM id>'" [microsoft/lis-test
    # WS2012R2/lisa/setupscripts/eventid_18602_regression.ps1]. Either match is accepted, compared case-insensitively.
    param([string]$VmGuid)
    $prefix = 'Microsoft:' + $VmGuid + '\'
    return (Get-CimInstance -Namespace $HvNamespace -ClassName Msvm_VssComponent -ErrorAction SilentlyContinue |
        Where-Object { $_.SystemName -eq $VmGuid -or ([string]$_.DeviceID).StartsWith($prefix, [StringComparison]::OrdinalIgnoreCase) } |
        Select-Object -First 1)
}

function Get-HvDiskInfo {
    # Msvm_ImageManagementService.GetVirtualHardDiskSettingData -> Msvm_VirtualHardDiskSettingData
    # (Format 2 VHD / 3 VHDX, Type 2 Fixed / 3 Dynamic / 4 Differencing, MaxInternalSize, BlockSize,
    # LogicalSectorSize, ParentPath, VirtualDiskId) [HV2:getvirtualharddisksettingdata-msvm-imagemanagementservice,
    # HV2:msvm-virtualharddisksettingdata].
    param([string]$Path)
    $ims = Get-CimInstance -Namespace $HvNamespace -ClassName Msvm_ImageManagementService
    $result = Invoke-CimMethod -InputObject $ims -MethodName GetVirtualHardDiskSettingData -Arguments @{ Path = $Path }
    Wait-HvJob -Result $result -Method 'GetVirtualHardDiskSettingData' -Category 'not_found' | Out-Null
    $data = ConvertFrom-HvEmbedded -Text ([string]$result.SettingData)
    $chain = New-Object System.Collections.ArrayList
    $parent = $data['ParentPath']
    while ($parent -and $chain.Count -lt 256) {
        [void]$chain.Add($parent)
        $next = Invoke-CimMethod -InputObject $ims -MethodName GetVirtualHardDiskSettingData -Arguments @{ Path = $parent }
        Wait-HvJob -Result $next -Method 'GetVirtualHardDiskSettingData' -Category 'not_found' | Out-Null
        $parent = (ConvertFrom-HvEmbedded -Text ([string]$next.SettingData))['ParentPath']
    }
    $format = @{ '2' = 'vhd'; '3' = 'vhdx'; '4' = 'vhds' }[[string]$data['Format']]
    $type = @{ '2' = 'fixed'; '3' = 'dynamic'; '4' = 'differencing' }[[string]$data['Type']]
    return [ordered]@{
        path = $Path; format = $format; type = $type
        virtual_size = [long]$data['MaxInternalSize']; block_size = [long]$data['BlockSize']
        logical_sector_size = [long]$data['LogicalSectorSize']; disk_id = [string]$data['VirtualDiskId']
        parent_chain = @($chain)
    }
}

function Get-HvDrive {
    # The drive that holds a (possibly frozen) disk: the live drive whose path is the file, or whose
    # parent chain holds it (after a checkpoint the VM writes to a new .avhdx whose parent is the frozen
    # file, reference 2.4). Drives from Get-VMHardDiskDrive [PSDOC:Get-VMHardDiskDrive].
    param($Drives, $Disk)
    foreach ($drive in $Drives) {
        if ($drive.Path -eq $Disk.path) { return $drive }
        $live = Get-HvDiskInfo -Path $drive.Path
        if ($live.parent_chain -contains $Disk.path) { return $drive }
    }
    return $null
}

function Add-HvDriveInfo {
    param($Disk, $Drive)
    if ($Drive) {
        $Disk['controller_type'] = [string]$Drive.ControllerType
        $Disk['controller_number'] = [int]$Drive.ControllerNumber
        $Disk['controller_location'] = [int]$Drive.ControllerLocation
    } else {
        $Disk['controller_type'] = $null; $Disk['controller_number'] = $null; $Disk['controller_location'] = $null
    }
    return $Disk
}

function Get-HvRecoveryPoint {
    # A checkpoint (Msvm_VirtualSystemSettingData) of the VM by InstanceID, via Msvm_SnapshotOfVirtualSystem
    # [HV2:msvm-snapshotofvirtualsystem; HV2:msvm-virtualsystemsettingdata; XHVB].
    param($Vm, [string]$Id)
    $snapshot = @(Get-CimAssociatedInstance -InputObject $Vm -Association Msvm_SnapshotOfVirtualSystem -ResultClassName Msvm_VirtualSystemSettingData |
        Where-Object { $_.InstanceID -eq $Id }) | Select-Object -First 1
    if (-not $snapshot) {
        throw (New-HvError -Category 'not_found' -Message ('VM ' + $Vm.ElementName + ' has no checkpoint ' + $Id) `
            -Hint 'List recovery points with get_recovery_points.')
    }
    return $snapshot
}

function Get-HvRctIds {
    # {disk_id: rct_id} of a reference point. VirtualDiskIdentifiers are SASD InstanceIDs, parallel to
    # ResilientChangeTrackingIdentifiers; each SASD's HostResource[0] is opened to key the RCT id by the
    # disk's VirtualDiskId [HV2:msvm-virtualsystemreferencepoint; BAREOS analyze_ref_point]. Arrays of
    # different lengths mean not every disk is tracked: refused, as Bareos does.
    param($ReferencePoint)
    $diskIds = @($ReferencePoint.VirtualDiskIdentifiers)
    $rctIds = @($ReferencePoint.ResilientChangeTrackingIdentifiers)
    if ($diskIds.Count -ne $rctIds.Count) {
        throw (New-HvError -Category 'change_tracking' -Message 'reference point does not carry one RCT id per disk' -Hint 'Run a full backup.')
    }
    $out = [ordered]@{}
    if ($diskIds.Count -eq 0) { return $out }
    # Msvm_StorageAllocationSettingData by InstanceID, filtered here rather than in WQL [HV2:msvm-storageallocationsettingdata; BAREOS].
    $sasds = @(Get-CimInstance -Namespace $HvNamespace -ClassName Msvm_StorageAllocationSettingData)
    for ($i = 0; $i -lt $diskIds.Count; $i++) {
        $key = [string]$diskIds[$i]
        $sasd = @($sasds | Where-Object { $_.InstanceID -eq $diskIds[$i] }) | Select-Object -First 1
        if ($sasd -and $sasd.HostResource) {
            try { $key = (Get-HvDiskInfo -Path ([string]$sasd.HostResource[0])).disk_id } catch { $key = [string]$diskIds[$i] }
        }
        $out[$key] = [string]$rctIds[$i]
    }
    return $out
}

function Get-HvConfigurationFiles {
    # The .vmcx plus same-name siblings (.vmrs, .vmgs) of a VSSD: ConfigurationDataRoot + ConfigurationFile
    # [HV2:msvm-virtualsystemsettingdata; BAREOS get_config_files; APPROACHES].
    param($SettingData)
    $files = @()
    if (-not $SettingData.ConfigurationFile) { return $files }
    $vmcx = Join-Path -Path $SettingData.ConfigurationDataRoot -ChildPath $SettingData.ConfigurationFile
    $folder = Split-Path -Path $vmcx -Parent
    $base = [System.IO.Path]::GetFileNameWithoutExtension($vmcx)
    foreach ($file in Get-ChildItem -LiteralPath $folder -File) {
        if ([System.IO.Path]::GetFileNameWithoutExtension($file.Name) -eq $base) { $files += $file.FullName }
    }
    return $files
}
"""

EPILOGUE = r"""
function ConvertTo-HvErrorDocument {
    param($Record)
    $exception = $Record.Exception
    $category = [string]$exception.Data['hv_category']
    $windowsError = [string]$exception.Data['hv_windows_error']
    $hint = [string]$exception.Data['hv_hint']
    if (-not $category) {
        $category = 'failed'
        $windowsError = Format-HvCode -Code $exception.HResult
        if (Test-HvChangeTrackingError -Code $exception.HResult -Text $exception.Message) { $category = 'change_tracking' }
        elseif ([string]$Record.CategoryInfo.Category -eq 'ObjectNotFound') { $category = 'not_found' }
        elseif ([string]$Record.CategoryInfo.Category -eq 'PermissionDenied') {
            $hint = 'Connect as a local administrator (or a member of Hyper-V Administrators) on the host.'
        }
    }
    $message = $exception.Message
    if ($Record.InvocationInfo -and $Record.InvocationInfo.ScriptLineNumber) {
        $message = $message + ' (script line ' + $Record.InvocationInfo.ScriptLineNumber + ')'
    }
    if (-not $windowsError) { $windowsError = $null }
    if (-not $hint) { $hint = $null }
    return [ordered]@{ error = [ordered]@{ category = $category; message = $message; windows_error = $windowsError; hint = $hint } }
}

try {
    $HvResult = Invoke-HvOperation
    $HvJson = ConvertTo-Json -InputObject $HvResult -Depth 8 -Compress
} catch {
    $HvJson = ConvertTo-Json -InputObject (ConvertTo-HvErrorDocument -Record $_) -Depth 8 -Compress
}
Write-Output $HvJson
"""


def build_script(name, param_block, body, sources):
    """Assemble a Script: its param() block first (PowerShell requires it), then the prelude, body, epilogue."""
    text = "\n".join((param_block.strip(), PRELUDE, body.strip(), EPILOGUE))
    return Script(name, text, sources)

# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""PowerShell scripts for recovery checkpoints, reference points and RCT change lists (WMI, Windows Server 2016+).

Flow and names from the reference's sections 2.2-2.6 and 8 ([XHVB], [BAREOS], [NXM], [HV2:...]).
The create / list / remove recovery point scripts also carry the host-VSS path (method vss, any host
version) from ``powershell_vss``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.hyperv.backup.plugins.module_utils.host.powershell_common import build_script
from ansible_collections.hyperv.backup.plugins.module_utils.host.powershell_vss import VSS_FUNCTIONS, VSS_SOURCES

# Shared by the scripts that describe a recovery checkpoint (create / list).
_RECOVERY_POINT_FUNCTIONS = r"""
function ConvertTo-HvRecoveryPoint {
    param($Vm, $Snapshot, [string]$Method, [string]$Consistency)
    # Frozen disks: SASDs of the snapshot VSSD via Msvm_VirtualSystemSettingDataComponent, ResourceType 31,
    # ResourceSubType 'Microsoft:Hyper-V:Virtual Hard Disk', file = HostResource[0]
    # [HV2:msvm-storageallocationsettingdata; BAREOS get_disk_paths_of_snapshot; reference 2.4].
    $sasds = @(Get-CimAssociatedInstance -InputObject $Snapshot -Association Msvm_VirtualSystemSettingDataComponent `
        -ResultClassName Msvm_StorageAllocationSettingData |
        Where-Object { $_.ResourceType -eq 31 -and $_.ResourceSubType -eq 'Microsoft:Hyper-V:Virtual Hard Disk' })
    $drives = @(Get-VMHardDiskDrive -VM (Get-VM -Id $Vm.Name))   # [PSDOC:Get-VMHardDiskDrive]
    $disks = @()
    foreach ($sasd in $sasds) {
        $disk = Get-HvDiskInfo -Path ([string]$sasd.HostResource[0])
        $disks += (Add-HvDriveInfo -Disk $disk -Drive (Get-HvDrive -Drives $drives -Disk $disk))
    }
    return [ordered]@{
        id = [string]$Snapshot.InstanceID; vm_id = ([string]$Vm.Name).ToLowerInvariant(); vm_name = [string]$Vm.ElementName
        name = [string]$Snapshot.ElementName; method = $Method; consistency = $Consistency
        # CreationTime: "If this object represents the snapshot settings ..., the time at which the snapshot was taken"
        # [HV2:msvm-virtualsystemsettingdata].
        created = (ConvertTo-HvTime $Snapshot.CreationTime)
        ours = ([string]$Snapshot.ElementName).StartsWith($HvOursPrefix)
        disks = @($disks); configuration = [ordered]@{ files = @(Get-HvConfigurationFiles -SettingData $Snapshot) }
    }
}
"""

CREATE_RECOVERY_POINT = build_script("create_recovery_point", r"""
param([Parameter(Mandatory = $true)][string]$VmId, [Parameter(Mandatory = $true)][string]$Method,
      [Parameter(Mandatory = $true)][string]$Consistency, [Parameter(Mandatory = $true)][string]$Tag, [int]$HvTimeoutSeconds = 3600)
""", _RECOVERY_POINT_FUNCTIONS + VSS_FUNCTIONS + r"""
function New-HvRecoverySnapshot {
    param($Vm, [byte]$Level)
    # Msvm_VirtualSystemSnapshotService [HV2:msvm-virtualsystemsnapshotservice]
    $service = Get-CimInstance -Namespace $HvNamespace -ClassName Msvm_VirtualSystemSnapshotService
    # Msvm_VirtualSystemSnapshotSettingData: ConsistencyLevel 1 application / 2 crash, IgnoreNonSnapshottableDisks,
    # GuestBackupType 1 Full only on 1703+ (build 15063) [HV2:msvm-virtualsystemsnapshotsettingdata; reference 8].
    $properties = @{ ConsistencyLevel = $Level; IgnoreNonSnapshottableDisks = $true }
    if ([Environment]::OSVersion.Version.Build -ge 15063) { $properties['GuestBackupType'] = [byte]1 }
    $settings = Get-CimClass -Namespace $HvNamespace -ClassName Msvm_VirtualSystemSnapshotSettingData |
        New-CimInstance -ClientOnly -Property $properties
    # CreateSnapshot SnapshotType 32768 = recovery checkpoint [XHVB New-VmBackupCheckpoint; BAREOS; NXM;
    # HV2:createsnapshot-msvm-virtualsystemsnapshotservice documents only 2, 3 and vendor 32768..65535].
    $result = Invoke-CimMethod -InputObject $service -MethodName CreateSnapshot -Arguments @{
        AffectedSystem = $Vm; SnapshotSettings = (ConvertTo-HvEmbedded -Instance $settings); SnapshotType = [uint16]32768 }
    Wait-HvJob -Result $result -Method 'CreateSnapshot' -Category 'recovery_point' | Out-Null
    # The new snapshot via the job's affected element [XHVB]; the ResultingSnapshot out-parameter as fallback [BAREOS].
    $snapshot = $result.Job | Get-CimAssociatedInstance -ResultClassName Msvm_VirtualSystemSettingData | Select-Object -First 1
    if (-not $snapshot) { $snapshot = $result.ResultingSnapshot | Get-CimInstance }
    return $snapshot
}

function Invoke-HvOperation {
    $vm = Get-HvVm -VmId $VmId
    # Host VSS with the Hyper-V writer (diskshadow, reference section 4): any host, the only way before 2016.
    if ($Method -eq 'vss') { return (New-HvVssRecoveryPoint -Vm $vm -Consistency $Consistency -Tag $Tag) }
    if ($Method -ne 'rct') {
        throw (New-HvError -Category 'unsupported' -Message ('recovery point method ' + $Method + ' is not rct or vss') -Hint 'Use method rct or vss.')
    }
    # WS2016 = build 14393 is the minimum for recovery checkpoints and RCT [reference 2.8].
    if ([Environment]::OSVersion.Version.Build -lt 14393) {
        throw (New-HvError -Category 'unsupported' -Message 'recovery checkpoints need Windows Server 2016 (build 14393) or later' `
            -Hint 'Use method vss on this host.')
    }
    $fallback = $false
    $consistencyDone = 'application'
    try {
        $snapshot = New-HvRecoverySnapshot -Vm $vm -Level 1
    } catch {
        # App-consistent failed (backup integration service off or failing): retry crash-consistent only if allowed [NXM; reference 1.4].
        if ($Consistency -ne 'application_or_crash') { throw }
        $snapshot = New-HvRecoverySnapshot -Vm $vm -Level 2
        $fallback = $true
        $consistencyDone = 'crash'
    }
    # Name it with the tag (callers pass 'hyperv.backup:<run id>', which marks it as ours): ElementName +
    # ModifySystemSettings, as Bareos does [BAREOS rename()].
    $snapshot.ElementName = $Tag
    # Msvm_VirtualSystemManagementService [HV2:msvm-virtualsystemmanagementservice; reference 2.1]
    $vsms = Get-CimInstance -Namespace $HvNamespace -ClassName Msvm_VirtualSystemManagementService
    $r = Invoke-CimMethod -InputObject $vsms -MethodName ModifySystemSettings -Arguments @{ SystemSettings = (ConvertTo-HvEmbedded -Instance $snapshot) }
    Wait-HvJob -Result $r -Method 'ModifySystemSettings' -Category 'recovery_point' | Out-Null
    $snapshot = $snapshot | Get-CimInstance
    $out = ConvertTo-HvRecoveryPoint -Vm $vm -Snapshot $snapshot -Method 'rct' -Consistency $consistencyDone
    $out['consistency_fallback'] = $fallback
    return $out
}
""", ["HV2:msvm-virtualsystemsnapshotsettingdata", "HV2:createsnapshot-msvm-virtualsystemsnapshotservice", "XHVB", "BAREOS", "NXM",
      "HV2:msvm-storageallocationsettingdata", "PSDOC:Get-VMHardDiskDrive"] + VSS_SOURCES)

GET_RECOVERY_POINTS = build_script("get_recovery_points", r"""
param([Parameter(Mandatory = $true)][string]$VmId, [int]$HvTimeoutSeconds = 3600)
""", _RECOVERY_POINT_FUNCTIONS + VSS_FUNCTIONS + r"""
function Invoke-HvOperation {
    $vm = Get-HvVm -VmId $VmId
    # Host-VSS points first: their markers under %ProgramData%\hyperv.backup\vss (any host version).
    $out = @(Get-HvVssRecoveryPoints -VmGuid (ConvertTo-HvVssGuid -Value ([string]$vm.Name) -What 'VM id'))
    # Recovery checkpoints exist from Windows Server 2016 (build 14393) on [reference 2.8].
    if ([Environment]::OSVersion.Version.Build -lt 14393) { return , @($out) }
    # Recovery checkpoints: VirtualSystemType 'Microsoft:Hyper-V:Snapshot:Recovery' among Msvm_SnapshotOfVirtualSystem [XHVB Get-VmBackupCheckpoints].
    foreach ($s in @(Get-CimAssociatedInstance -InputObject $vm -Association Msvm_SnapshotOfVirtualSystem -ResultClassName Msvm_VirtualSystemSettingData |
            Where-Object { $_.VirtualSystemType -eq 'Microsoft:Hyper-V:Snapshot:Recovery' })) {
        # The checkpoint does not record the consistency reached (Msvm_VirtualSystemSettingData has no such property; the
        # ConsistencyLevel of Msvm_VirtualSystemSnapshotSettingData is an input of CreateSnapshot only
        # [HV2:msvm-virtualsystemsettingdata, msvm-virtualsystemsnapshotsettingdata]), so it is null here.
        $out += (ConvertTo-HvRecoveryPoint -Vm $vm -Snapshot $s -Method 'rct' -Consistency $null)
    }
    return , @($out)
}
""", ["XHVB", "HV2:msvm-snapshotofvirtualsystem", "HV2:msvm-virtualsystemsettingdata", "HV2:msvm-storageallocationsettingdata"] + VSS_SOURCES)

REMOVE_RECOVERY_POINT = build_script("remove_recovery_point", r"""
param([Parameter(Mandatory = $true)][string]$VmId, [Parameter(Mandatory = $true)][string]$Id, [int]$HvTimeoutSeconds = 3600)
""", VSS_FUNCTIONS + r"""
function Invoke-HvOperation {
    $vm = Get-HvVm -VmId $VmId
    # Host-VSS point (id 'vss:<work id>:<set id>'): delete the shadow copy set and our marker folder.
    if ($Id.StartsWith('vss:')) { return (Remove-HvVssRecoveryPoint -VmGuid (ConvertTo-HvVssGuid -Value ([string]$vm.Name) -What 'VM id') -Id $Id) }
    $snapshot = @(Get-CimAssociatedInstance -InputObject $vm -Association Msvm_SnapshotOfVirtualSystem -ResultClassName Msvm_VirtualSystemSettingData |
        Where-Object { $_.InstanceID -eq $Id }) | Select-Object -First 1
    if (-not $snapshot) { return [ordered]@{ id = $Id; removed = $false } }
    # DestroySnapshot(AffectedSnapshot) [HV2:msvm-virtualsystemsnapshotservice; BAREOS destroys its snapshot this way].
    # Msvm_VirtualSystemSnapshotService [HV2:msvm-virtualsystemsnapshotservice]
    $service = Get-CimInstance -Namespace $HvNamespace -ClassName Msvm_VirtualSystemSnapshotService
    $r = Invoke-CimMethod -InputObject $service -MethodName DestroySnapshot -Arguments @{ AffectedSnapshot = $snapshot }
    Wait-HvJob -Result $r -Method 'DestroySnapshot' -Category 'recovery_point' | Out-Null
    return [ordered]@{ id = $Id; removed = $true }
}
""", ["HV2:msvm-virtualsystemsnapshotservice", "BAREOS"] + VSS_SOURCES)

CONVERT_TO_REFERENCE_POINT = build_script("convert_to_reference_point", r"""
param([Parameter(Mandatory = $true)][string]$VmId, [Parameter(Mandatory = $true)][string]$Id, [int]$HvTimeoutSeconds = 3600)
""", r"""
function Invoke-HvOperation {
    $vm = Get-HvVm -VmId $VmId
    if ($Id.StartsWith('vss:')) {
        throw (New-HvError -Category 'unsupported' -Message ('recovery point ' + $Id + ' is a host VSS shadow copy, not an RCT checkpoint') `
            -Hint 'Remove it with remove_recovery_point instead.')
    }
    $snapshot = Get-HvRecoveryPoint -Vm $vm -Id $Id
    if ($snapshot.VirtualSystemType -ne 'Microsoft:Hyper-V:Snapshot:Recovery') {
        # "Only recovery snapshots can be converted to reference points." [HV2:msvm-virtualsystemsnapshotservice-converttoreferencepoint]
        throw (New-HvError -Category 'recovery_point' -Message ('checkpoint ' + $Id + ' is not a recovery checkpoint') `
            -Hint 'Convert only recovery points created by this collection.')
    }
    $created = ConvertTo-HvTime $snapshot.CreationTime
    # Msvm_VirtualSystemSnapshotService [HV2:msvm-virtualsystemsnapshotservice]
    $service = Get-CimInstance -Namespace $HvNamespace -ClassName Msvm_VirtualSystemSnapshotService
    $r = Invoke-CimMethod -InputObject $service -MethodName ConvertToReferencePoint -Arguments @{ AffectedSnapshot = $snapshot }
    Wait-HvJob -Result $r -Method 'ConvertToReferencePoint' -Category 'recovery_point' | Out-Null
    # The new Msvm_VirtualSystemReferencePoint via the job [XHVB; HV2:msvm-virtualsystemreferencepoint]; ResultingReferencePoint as fallback.
    $rp = $r.Job | Get-CimAssociatedInstance -ResultClassName Msvm_VirtualSystemReferencePoint | Select-Object -First 1
    if (-not $rp) { $rp = $r.ResultingReferencePoint | Get-CimInstance }
    $consistency = @{ 1 = 'application'; 2 = 'crash' }[[int]$rp.ConsistencyLevel]   # [HV2:msvm-virtualsystemreferencepoint]
    return [ordered]@{ id = [string]$rp.InstanceID; vm_id = ([string]$vm.Name).ToLowerInvariant(); created = $created
                       consistency = $consistency; rct_ids = (Get-HvRctIds -ReferencePoint $rp) }
}
""", ["HV2:msvm-virtualsystemsnapshotservice-converttoreferencepoint", "HV2:msvm-virtualsystemreferencepoint", "XHVB", "BAREOS"])

GET_REFERENCE_POINTS = build_script("get_reference_points", r"""
param([Parameter(Mandatory = $true)][string]$VmId, [int]$HvTimeoutSeconds = 3600)
""", r"""
function Invoke-HvOperation {
    $vm = Get-HvVm -VmId $VmId
    $out = @()
    # VM -> Msvm_ReferencePointOfVirtualSystem -> Msvm_VirtualSystemReferencePoint [XHVB Get-VmReferencePoints; HV2:msvm-referencepointofvirtualsystem].
    # The class has no creation time [HV2:msvm-virtualsystemreferencepoint MOF]: created is null. The order is WMI's:
    # oldest-first is UNCONFIRMED (searched: HV2 class and association pages, XHVB, BAREOS, NXM; none states an order).
    foreach ($rp in @(Get-CimAssociatedInstance -InputObject $vm -Association Msvm_ReferencePointOfVirtualSystem `
        -ResultClassName Msvm_VirtualSystemReferencePoint)) {
        $consistency = @{ 1 = 'application'; 2 = 'crash' }[[int]$rp.ConsistencyLevel]
        $out += [ordered]@{ id = [string]$rp.InstanceID; vm_id = ([string]$vm.Name).ToLowerInvariant(); created = $null
                            consistency = $consistency; rct_ids = (Get-HvRctIds -ReferencePoint $rp) }
    }
    return , @($out)
}
""", ["XHVB", "HV2:msvm-referencepointofvirtualsystem", "HV2:msvm-virtualsystemreferencepoint", "BAREOS"])

REMOVE_REFERENCE_POINT = build_script("remove_reference_point", r"""
param([Parameter(Mandatory = $true)][string]$VmId, [Parameter(Mandatory = $true)][string]$Id, [int]$HvTimeoutSeconds = 3600)
""", r"""
function Invoke-HvOperation {
    $vm = Get-HvVm -VmId $VmId
    # Msvm_VirtualSystemReferencePoint via Msvm_ReferencePointOfVirtualSystem [HV2:msvm-referencepointofvirtualsystem]
    $rp = @(Get-CimAssociatedInstance -InputObject $vm -Association Msvm_ReferencePointOfVirtualSystem -ResultClassName Msvm_VirtualSystemReferencePoint |
        Where-Object { $_.InstanceID -eq $Id }) | Select-Object -First 1
    if (-not $rp) { return [ordered]@{ id = $Id; removed = $false } }
    # DestroyReferencePoint(AffectedReferencePoint) [HV2:msvm-virtualsystemreferencepointservice-destroyreferencepoint]
    # Msvm_VirtualSystemReferencePointService [HV2:msvm-virtualsystemreferencepointservice]
    $service = Get-CimInstance -Namespace $HvNamespace -ClassName Msvm_VirtualSystemReferencePointService
    $r = Invoke-CimMethod -InputObject $service -MethodName DestroyReferencePoint -Arguments @{ AffectedReferencePoint = $rp }
    Wait-HvJob -Result $r -Method 'DestroyReferencePoint' -Category 'change_tracking' | Out-Null
    return [ordered]@{ id = $Id; removed = $true }
}
""", ["HV2:msvm-virtualsystemreferencepointservice-destroyreferencepoint", "HV2:msvm-referencepointofvirtualsystem"])

GET_DISK_CHANGES = build_script("get_disk_changes", r"""
param([Parameter(Mandatory = $true)][string]$Path, [Parameter(Mandatory = $true)][string]$LimitId,
      [Parameter(Mandatory = $true)][long]$ByteOffset, [Parameter(Mandatory = $true)][long]$ByteLength, [int]$HvTimeoutSeconds = 3600)
""", r"""
function Invoke-HvOperation {
    # Msvm_ImageManagementService [HV2:msvm-imagemanagementservice]
    $ims = Get-CimInstance -Namespace $HvNamespace -ClassName Msvm_ImageManagementService
    # GetVirtualDiskChanges(Path, LimitId, TargetSnapshotId, ByteOffset, ByteLength) -> ProcessedByteLength,
    # ChangedByteOffsets[], ChangedByteLengths[] [HV2:msvm-imagemanagementservice-getvirtualdiskchanges; GOWMI].
    # One page per call; the caller loops on processed_byte_length (reference 2.6).
    try {
        $r = Invoke-CimMethod -InputObject $ims -MethodName GetVirtualDiskChanges -Arguments @{
            Path = $Path; LimitId = $LimitId; ByteOffset = [uint64]$ByteOffset; ByteLength = [uint64]$ByteLength }
    } catch {
        $category = 'failed'
        if (Test-HvChangeTrackingError -Code $_.Exception.HResult -Text $_.Exception.Message) { $category = 'change_tracking' }
        throw (New-HvError -Category $category -Message ('GetVirtualDiskChanges failed: ' + $_.Exception.Message) `
            -WindowsError (Format-HvCode -Code $_.Exception.HResult) -Hint 'If the RCT id is no longer valid, run a full backup.')
    }
    # Which code an invalid RCT id gives is UNCONFIRMED (reference 2.9; searched: HV2 method page, GOWMI, NXM, BAREOS,
    # issues for 0xC03A0029): a generic failure (32768) or an invalid parameter (32773) on this call is treated as an
    # unusable change-tracking baseline; 32779 = file not found [HV2:msvm-imagemanagementservice-getvirtualdiskchanges].
    Wait-HvJob -Result $r -Method 'GetVirtualDiskChanges' -Category 'change_tracking' -CodeCategories @{ 32779 = 'not_found' } | Out-Null
    # Whether the out arrays are filled when the method ran as a job is UNCONFIRMED (the HV2 page is silent); nxmBackup waits
    # for the job and then reads them from the method's result [NXM], and so does this script.
    return [ordered]@{
        processed_byte_length = [long]$r.ProcessedByteLength
        changed_byte_offsets = @($r.ChangedByteOffsets | ForEach-Object { [long]$_ })
        changed_byte_lengths = @($r.ChangedByteLengths | ForEach-Object { [long]$_ })
    }
}
""", ["HV2:msvm-imagemanagementservice-getvirtualdiskchanges", "GOWMI", "NXM"])

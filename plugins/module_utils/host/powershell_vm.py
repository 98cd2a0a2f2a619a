# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""PowerShell scripts for host facts, services, VM inventory, integration services, configuration and import.

Each script follows ``powershell_common``: a param() block, the shared prelude, one function
``Invoke-HvOperation`` and the shared epilogue. Sources per name are in ``# [TAG]`` comments
(keys of the reference's section 0) and in docs/powershell.md.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.hyperv.backup.plugins.module_utils.host.powershell_common import build_script

GET_HOST_INFO = build_script("get_host_info", r"""
param([int]$HvTimeoutSeconds = 3600)
""", r"""
function Invoke-HvOperation {
    # Win32_OperatingSystem (CIMWin32): Caption, Version, BuildNumber.
    $os = Get-CimInstance -ClassName Win32_OperatingSystem
    $cluster = $null
    $csvs = @()
    # Failover cluster facts only where the FailoverClusters module exists [WSDOCS:failover-clustering/Cluster-Operating-System-Rolling-Upgrade.md].
    if (Get-Command -Name Get-Cluster -ErrorAction SilentlyContinue) {
        try {
            $c = Get-Cluster
            $cluster = [ordered]@{ name = [string]$c.Name; functional_level = [int]$c.ClusterFunctionalLevel }
            # Get-ClusterSharedVolume -> .SharedVolumeInfo[].FriendlyVolumeName (the C:\ClusterStorage\... path), as Microsoft's
            # own Hyper-V test scripts read it [microsoft/lis-test WS2012R2/lisa/setupscripts/CreateVMs.ps1, Shielded_DEP.ps1].
            foreach ($csv in @(Get-ClusterSharedVolume)) {
                foreach ($info in @($csv.SharedVolumeInfo)) { $csvs += [ordered]@{ name = [string]$csv.Name; path = [string]$info.FriendlyVolumeName } }
            }
        } catch { $cluster = $null }
    }
    # VSS providers: Win32_ShadowProvider ID, Name, Type (0 Unknown, 1 System, 2 Software, 3 Hardware)
    # [VSSWMI:win32-shadowprovider, learn.microsoft.com/previous-versions/windows/desktop/vsswmi/win32-shadowprovider].
    # The result knows 'software' | 'hardware': only Type 3 is hardware; the Microsoft provider is Type 1 System
    # ("Type: [1] VSS_PROV_SYSTEM" in [WSDOCS:administration/windows-commands/add-volume.md]), a software provider.
    $providers = @()
    foreach ($p in @(Get-CimInstance -ClassName Win32_ShadowProvider -ErrorAction SilentlyContinue)) {
        $kind = 'software'
        if ([int]$p.Type -eq 3) { $kind = 'hardware' }
        $providers += [ordered]@{ name = [string]$p.Name; id = [string]$p.ID; type = $kind }
    }
    # Hyper-V VSS writer: find its block in `vssadmin list writers` by the writer id (the text is localized,
    # so only the GUID and the bracketed state number are parsed) [MSB; SUPPORT:hyper-v-virtual-machine-backup-checkpoint-storage].
    $writerId = '66841cd4-6ded-4f4b-8f17-fd23f8ddc3de'
    $writer = [ordered]@{ name = 'Microsoft Hyper-V VSS Writer'; id = $writerId; state = $null; last_error = $null }
    $lines = @(& vssadmin.exe list writers)
    for ($i = 0; $i -lt $lines.Count; $i++) {
        if ($lines[$i] -match $writerId) {
            for ($j = $i + 1; $j -lt [Math]::Min($i + 5, $lines.Count); $j++) {
                if ($lines[$j] -match '\[(\d+)\]\s*(.*)$') {
                    # Kept as '[N] text' so that callers can judge the number on localized hosts.
                    $writer.state = '[' + $Matches[1] + '] ' + ([string]$Matches[2]).Trim()
                    if ($j + 1 -lt $lines.Count) { $writer.last_error = ([string]$lines[$j + 1] -replace '^[^:]*:\s*', '') }
                    break
                }
            }
            break
        }
    }
    return [ordered]@{
        computer_name = $env:COMPUTERNAME; os_name = [string]$os.Caption; os_version = [string]$os.Version
        os_build = [int]$os.BuildNumber; cluster = $cluster; csvs = @($csvs); vss_providers = @($providers)
        hyperv_vss_writer = $writer
    }
}
""", ["Win32_OperatingSystem", "WSDOCS:failover-clustering/Cluster-Operating-System-Rolling-Upgrade.md", "MSB",
      "SUPPORT:hyper-v-virtual-machine-backup-checkpoint-storage"])


_SERVICE_FUNCTIONS = r"""
function Get-HvService {
    # Get-Service / Start-Service; service short names vss, swprv, vmms [SUPPORT:hyper-v-virtual-machine-backup-checkpoint-storage].
    $service = Get-Service -Name $Name -ErrorAction SilentlyContinue
    if (-not $service) {
        throw (New-HvError -Category 'not_found' -Message ('no service named ' + $Name) -Hint 'Use the short name, for example vss, swprv or vmms.')
    }
    return $service
}
function ConvertTo-HvService {
    param($Service)
    return [ordered]@{ name = [string]$Service.Name; display_name = [string]$Service.DisplayName
                       status = [string]$Service.Status; start_type = [string]$Service.StartType }
}
"""

GET_SERVICE = build_script("get_service", r"""
param([Parameter(Mandatory = $true)][string]$Name, [int]$HvTimeoutSeconds = 3600)
""", _SERVICE_FUNCTIONS + r"""
function Invoke-HvOperation {
    return (ConvertTo-HvService -Service (Get-HvService))
}
""", ["SUPPORT:hyper-v-virtual-machine-backup-checkpoint-storage"])

START_SERVICE = build_script("start_service", r"""
param([Parameter(Mandatory = $true)][string]$Name, [int]$HvTimeoutSeconds = 3600)
""", _SERVICE_FUNCTIONS + r"""
function Invoke-HvOperation {
    $service = Get-HvService
    $previous = [string]$service.Status
    $changed = $false
    if ($previous -ne 'Running') {
        try {
            Start-Service -InputObject $service
            $service.WaitForStatus('Running', [TimeSpan]::FromSeconds([Math]::Min($HvTimeoutSeconds, 120)))
        } catch {
            throw (New-HvError -Category 'service' -Message ('service ' + $Name + ' did not start: ' + $_.Exception.Message) `
                -WindowsError (Format-HvCode -Code $_.Exception.HResult) `
                -Hint 'Check the System event log and that the service is not disabled (Get-Service, sc.exe qc).')
        }
        $service = Get-HvService
        $changed = $true
    }
    $out = ConvertTo-HvService -Service $service
    $out['previous_status'] = $previous
    $out['changed'] = $changed
    return $out
}
""", ["SUPPORT:hyper-v-virtual-machine-backup-checkpoint-storage"])


GET_VMS = build_script("get_vms", r"""
param([string[]]$Names, [string[]]$Ids, [int]$HvTimeoutSeconds = 3600)
""", r"""
function Get-HvIntegrationServices {
    param($VmObject, [string]$VmId)
    # Get-VMIntegrationService [PSDOC:Get-VMIntegrationService]. The backup one is 'VSS' (or a localized display
    # name, reference 1.3); its state comes from Msvm_VssComponent.OperationalStatus[0]: 2 OK, 3 Degraded,
    # 7 Non-Recoverable Error, 12 No Contact, 13 Lost Communication [HV2:msvm-vsscomponent].
    $vssNames = @('VSS', 'Backup (volume shadow copy)', 'Backup (volume checkpoint)')
    $vssStatus = @{ 2 = 'OK'; 3 = 'Degraded'; 7 = 'Error'; 12 = 'NoContact'; 13 = 'LostCommunication' }
    $component = Get-HvVssComponent -VmGuid $VmId
    $out = @()
    foreach ($ic in @(Get-VMIntegrationService -VM $VmObject)) {
        # PrimaryOperationalStatus ('Ok', ...) of Get-VMIntegrationService objects [microsoft/lis-test
        # WS2012R2/lisa/setupscripts/INST_LIS_TimeSyncServiceDisableEnable.ps1 compares it with "Ok"].
        $status = [string]$ic.PrimaryOperationalStatus
        if ($vssNames -contains [string]$ic.Name) {
            $status = 'NoContact'
            if ($component -and $component.OperationalStatus) { $status = $vssStatus[[int]$component.OperationalStatus[0]] }
        }
        if (-not $ic.Enabled) { $status = 'Disabled' }
        $out += [ordered]@{ name = [string]$ic.Name; enabled = [bool]$ic.Enabled; operational_status = $status }
    }
    return $out
}

function Get-HvCheckpoints {
    # Snapshots of a VM: association Msvm_SnapshotOfVirtualSystem [HV2:msvm-snapshotofvirtualsystem];
    # VirtualSystemType 'Microsoft:Hyper-V:Snapshot:Recovery' / ':Realized' [HV2:msvm-virtualsystemsettingdata].
    param($Vm)
    $out = @()
    foreach ($s in @(Get-CimAssociatedInstance -InputObject $Vm -Association Msvm_SnapshotOfVirtualSystem -ResultClassName Msvm_VirtualSystemSettingData)) {
        $type = 'Standard'
        if ($s.VirtualSystemType -eq 'Microsoft:Hyper-V:Snapshot:Recovery') { $type = 'Recovery' }
        $out += [ordered]@{ id = [string]$s.InstanceID; name = [string]$s.ElementName; type = $type
                            created = (ConvertTo-HvTime $s.CreationTime); ours = ([string]$s.ElementName).StartsWith($HvOursPrefix) }
    }
    return $out
}

function Get-HvReferencePointList {
    # Msvm_VirtualSystemReferencePoint via Msvm_ReferencePointOfVirtualSystem [HV2:msvm-referencepointofvirtualsystem]; RCT ids per disk from the parallel
    # arrays VirtualDiskIdentifiers / ResilientChangeTrackingIdentifiers [HV2:msvm-virtualsystemreferencepoint; BAREOS].
    # The class has no creation time (its MOF: InstanceID, ReferencePointType, ConsistencyLevel, VirtualSystemIdentifier,
    # HasAssociatedData, VirtualDiskIdentifiers, ResilientChangeTrackingIdentifiers [HV2:msvm-virtualsystemreferencepoint]),
    # so created is null here.
    param($Vm)
    $out = @()
    foreach ($rp in @(Get-CimAssociatedInstance -InputObject $Vm -Association Msvm_ReferencePointOfVirtualSystem `
        -ResultClassName Msvm_VirtualSystemReferencePoint)) {
        $out += [ordered]@{ id = [string]$rp.InstanceID; created = $null; type = 'RCT'; rct_ids = (Get-HvRctIds -ReferencePoint $rp) }
    }
    return $out
}

function Invoke-HvOperation {
    # Realized VMs: Msvm_VirtualSystemSettingData with VirtualSystemType 'Microsoft:Hyper-V:System:Realized';
    # VirtualSystemIdentifier = VM GUID [COLISEO; HV2:msvm-virtualsystemsettingdata].
    $all = @(Get-CimInstance -Namespace $HvNamespace -ClassName Msvm_VirtualSystemSettingData |
        Where-Object { $_.VirtualSystemType -eq 'Microsoft:Hyper-V:System:Realized' })
    $selected = $all
    if ($Names -or $Ids) {
        $selected = @()
        foreach ($n in @($Names)) {
            $hits = @($all | Where-Object { $_.ElementName -eq $n })
            if ($hits.Count -eq 0) { throw (New-HvError -Category 'not_found' -Message ('no VM named ' + $n) -Hint 'Check the name with Get-VM on the host.') }
            $selected += $hits
        }
        foreach ($i in @($Ids)) {
            $hits = @($all | Where-Object { ([string]$_.VirtualSystemIdentifier).Trim('{', '}') -eq ([string]$i).Trim('{', '}') })
            if ($hits.Count -eq 0) { throw (New-HvError -Category 'not_found' -Message ('no VM with id ' + $i) -Hint 'Check the id with Get-VM on the host.') }
            $selected += $hits
        }
    }
    # EnabledState v2: 2 Enabled (running), 3 Disabled (off), 6 Enabled but offline (saved), 9 Quiesce (paused)
    # [HV2:requeststatechange-msvm-computersystem]; v1 (2008 / 2008 R2): 32768 Paused, 32769 Suspended (saved)
    # [muggle201/AD-Troubleshooting TSSv2/psSDP/Diag/global/TS_HyperVInfo.ps1, Microsoft CSS, v1 namespace].
    $states = @{ 2 = 'Running'; 3 = 'Off'; 6 = 'Saved'; 32769 = 'Saved'; 9 = 'Paused'; 32768 = 'Paused' }
    $seen = @{}
    $vms = @()
    foreach ($vssd in $selected) {
        $id = ([string]$vssd.VirtualSystemIdentifier).ToLowerInvariant().Trim('{', '}')
        if ($seen.ContainsKey($id)) { continue }
        $seen[$id] = $true
        $vm = Get-HvVm -VmId $id
        $vmObject = Get-VM -Id $id   # [PSDOC:Get-VM]
        $drives = @(Get-VMHardDiskDrive -VM $vmObject)   # [PSDOC:Get-VMHardDiskDrive]
        $disks = @()
        foreach ($drive in $drives) {
            if (-not $drive.Path) { continue }   # pass-through disks have no file
            $disks += (Add-HvDriveInfo -Disk (Get-HvDiskInfo -Path $drive.Path) -Drive $drive)
        }
        $csvPath = $null
        foreach ($d in $disks) { if ($d.path -match '^([A-Za-z]:\\ClusterStorage\\[^\\]+)') { $csvPath = $Matches[1] } }
        # VirtualSystemSubType 'Microsoft:Hyper-V:SubType:1|2' = generation 1|2; not set before 2012 R2, which only has
        # generation 1 [HV2:msvm-virtualsystemsettingdata].
        $generation = 1
        if ([string]$vssd.VirtualSystemSubType -match 'SubType:2$') { $generation = 2 }
        $vms += [ordered]@{
            id = $id; name = [string]$vssd.ElementName; generation = $generation
            configuration_version = [string]$vssd.Version   # [HV2:msvm-virtualsystemsettingdata] "major.minor"
            state = $states[[int]$vm.EnabledState]; path = [string]$vssd.ConfigurationDataRoot
            clustered = [bool]$vmObject.IsClustered   # Get-VM .IsClustered [Checkmk/checkmk Hyper-V agent plugin Get-VMGeneralInfo; find_string id 21118745847]
            csv_path = $csvPath
            scsi_controllers = @(Get-VMScsiController -VM $vmObject).Count   # [PSDOC:Get-VMScsiController; microsoft/lis-test AddVhdxHardDisk.ps1]
            integration_services = @(Get-HvIntegrationServices -VmObject $vmObject -VmId $id)
            disks = @($disks); checkpoints = @(Get-HvCheckpoints -Vm $vm); reference_points = @(Get-HvReferencePointList -Vm $vm)
        }
    }
    return , @($vms)
}
""", ["COLISEO", "HV2:msvm-virtualsystemsettingdata", "HV2:requeststatechange-msvm-computersystem", "PSDOC:Get-VM",
      "PSDOC:Get-VMHardDiskDrive", "PSDOC:Get-VMIntegrationService", "HV2:msvm-vsscomponent", "HV2:msvm-snapshotofvirtualsystem",
      "HV2:msvm-referencepointofvirtualsystem", "HV2:msvm-virtualsystemreferencepoint", "BAREOS",
      "HV2:getvirtualharddisksettingdata-msvm-imagemanagementservice"])


ENABLE_INTEGRATION_SERVICE = build_script("enable_integration_service", r"""
param([Parameter(Mandatory = $true)][string]$VmId, [Parameter(Mandatory = $true)][string]$Name, [int]$HvTimeoutSeconds = 3600)
""", r"""
function Invoke-HvOperation {
    $vm = Get-HvVm -VmId $VmId
    $vmObject = Get-VM -Id $vm.Name   # [PSDOC:Get-VM]
    # 'VSS' is the name in every Microsoft example; localized display names are accepted too (reference 1.3).
    $aliases = @($Name)
    if ($Name -eq 'VSS') { $aliases += @('Backup (volume shadow copy)', 'Backup (volume checkpoint)') }
    $ic = @(Get-VMIntegrationService -VM $vmObject | Where-Object { $aliases -contains [string]$_.Name }) | Select-Object -First 1
    if (-not $ic) {
        throw (New-HvError -Category 'not_found' -Message ('VM ' + $vm.ElementName + ' has no integration service ' + $Name) `
            -Hint 'List them with Get-VMIntegrationService -VMName <vm> on the host.')
    }
    $changed = $false
    if (-not $ic.Enabled) {
        # Enable-VMIntegrationService [PSDOC:Enable-VMIntegrationService]
        Enable-VMIntegrationService -VM $vmObject -Name $ic.Name
        $changed = $true
        $ic = @(Get-VMIntegrationService -VM $vmObject -Name $ic.Name)[0]
    }
    return [ordered]@{ vm_id = [string]$vm.Name; name = [string]$ic.Name; enabled = [bool]$ic.Enabled
                       operational_status = [string]$ic.PrimaryOperationalStatus; changed = $changed }
}
""", ["PSDOC:Get-VM", "PSDOC:Get-VMIntegrationService", "PSDOC:Enable-VMIntegrationService"])


GET_VM_CONFIGURATION = build_script("get_vm_configuration", r"""
param([Parameter(Mandatory = $true)][string]$VmId, [string]$RecoveryPointId, [int]$HvTimeoutSeconds = 3600)
""", r"""
function Invoke-HvOperation {
    $vm = Get-HvVm -VmId $VmId
    if ($RecoveryPointId) {
        $vssd = Get-HvRecoveryPoint -Vm $vm -Id $RecoveryPointId
    } else {
        $vssd = Get-CimInstance -Namespace $HvNamespace -ClassName Msvm_VirtualSystemSettingData |
            Where-Object { $_.VirtualSystemType -eq 'Microsoft:Hyper-V:System:Realized' -and $_.VirtualSystemIdentifier -eq $vm.Name } |
            Select-Object -First 1
    }
    $vmObject = Get-VM -Id $vm.Name   # [PSDOC:Get-VM]
    # VirtualSystemSubType 'Microsoft:Hyper-V:SubType:2' = generation 2 [HV2:msvm-virtualsystemsettingdata].
    $generation = 1
    if ([string]$vssd.VirtualSystemSubType -match 'SubType:2$') { $generation = 2 }
    return [ordered]@{
        vm_id = [string]$vm.Name; name = [string]$vssd.ElementName; generation = $generation
        configuration_version = [string]$vssd.Version
        # Get-VM .MemoryStartup (bytes) and .ProcessorCount [microsoft/lis-test WS2008R2/lisa/setupscripts/DM_SaveRestore.ps1,
        # INST_LIS_TestVMShutdown.ps1; flipti/scripts Report_ambiente/script.ps1 divides MemoryStartup by 1GB].
        memory_bytes = [long]$vmObject.MemoryStartup; processor_count = [int]$vmObject.ProcessorCount
        files = @(Get-HvConfigurationFiles -SettingData $vssd)
        document = [ordered]@{
            instance_id = [string]$vssd.InstanceID; configuration_id = [string]$vssd.ConfigurationID
            configuration_data_root = [string]$vssd.ConfigurationDataRoot; configuration_file = [string]$vssd.ConfigurationFile
            virtual_system_type = [string]$vssd.VirtualSystemType; virtual_system_sub_type = [string]$vssd.VirtualSystemSubType
        }
    }
}
""", ["HV2:msvm-virtualsystemsettingdata", "BAREOS", "APPROACHES", "PSDOC:Get-VM"])


IMPORT_VM = build_script("import_vm", r"""
param([Parameter(Mandatory = $true)][object]$Configuration, [Parameter(Mandatory = $true)][string[]]$DiskPaths,
      [string]$NewName, [bool]$GenerateNewId = $true, [int]$HvTimeoutSeconds = 3600)
""", r"""
function Invoke-HvOperation {
    # Configuration arrives as a hashtable (PSRP) or a PSCustomObject (WinRM JSON); read 'files' from either.
    $files = @($Configuration.files)
    if ($Configuration -is [System.Collections.IDictionary]) { $files = @($Configuration['files']) }
    $vmcx = @($files | Where-Object { [string]$_ -match '\.vmcx$' }) | Select-Object -First 1
    if (-not $vmcx) {
        throw (New-HvError -Category 'not_found' -Message 'the configuration has no .vmcx file' `
            -Hint 'Pass the configuration captured with the backup (get_vm_configuration).')
    }
    # Msvm_VirtualSystemManagementService [HV2:msvm-virtualsystemmanagementservice; reference 2.1]
    $vsms = Get-CimInstance -Namespace $HvNamespace -ClassName Msvm_VirtualSystemManagementService
    # ImportSystemDefinition(SystemDefinitionFile, SnapshotFolder, GenerateNewSystemIdentifier) -> Msvm_PlannedComputerSystem
    # [HV2:importsystemdefinition-msvm-virtualsystemmanagementservice; BAREOS; NXM VMImporter]; 32779 = file in use.
    $result = Invoke-CimMethod -InputObject $vsms -MethodName ImportSystemDefinition -Arguments @{
        SystemDefinitionFile = [string]$vmcx; SnapshotFolder = ''; GenerateNewSystemIdentifier = [bool]$GenerateNewId }
    Wait-HvJob -Result $result -Method 'ImportSystemDefinition' -CodeCategories @{ 32779 = 'busy' } | Out-Null
    $planned = $result.ImportedSystem
    if (-not $planned) { $planned = $result.Job | Get-CimAssociatedInstance -ResultClassName Msvm_PlannedComputerSystem }
    $planned = $planned | Get-CimInstance
    try {
        # Planned VM -> its VSSD (Msvm_SettingsDefineState) -> SASDs (Msvm_VirtualSystemSettingDataComponent), ResourceType 31,
        # ResourceSubType 'Microsoft:Hyper-V:Virtual Hard Disk'; HostResource[0] is the file [HV2:msvm-storageallocationsettingdata; BAREOS].
        $vssd = Get-CimAssociatedInstance -InputObject $planned -Association Msvm_SettingsDefineState -ResultClassName Msvm_VirtualSystemSettingData
        $sasds = @(Get-CimAssociatedInstance -InputObject $vssd -Association Msvm_VirtualSystemSettingDataComponent `
            -ResultClassName Msvm_StorageAllocationSettingData |
            Where-Object { $_.ResourceType -eq 31 -and $_.ResourceSubType -eq 'Microsoft:Hyper-V:Virtual Hard Disk' })
        if ($sasds.Count -ne $DiskPaths.Count) {
            throw (New-HvError -Category 'failed' -Message ('the configuration has ' + $sasds.Count + ' disks but ' + `
                $DiskPaths.Count + ' disk paths were given') `
                -Hint 'Give one restored disk path per disk of the backup, in the order of the backup.')
        }
        for ($i = 0; $i -lt $sasds.Count; $i++) {
            $sasd = $sasds[$i]
            $sasd.HostResource = @([string]$DiskPaths[$i])
            # ModifyResourceSettings(ResourceSettings[]) [HV2:modifyresourcesettings-msvm-virtualsystemmanagementservice; BAREOS]
            $r = Invoke-CimMethod -InputObject $vsms -MethodName ModifyResourceSettings `
                -Arguments @{ ResourceSettings = @(ConvertTo-HvEmbedded -Instance $sasd) }
            Wait-HvJob -Result $r -Method 'ModifyResourceSettings' | Out-Null
        }
        if ($NewName) {
            $vssd.ElementName = $NewName
            # ModifySystemSettings(SystemSettings) renames [BAREOS rename()]
            $r = Invoke-CimMethod -InputObject $vsms -MethodName ModifySystemSettings -Arguments @{ SystemSettings = (ConvertTo-HvEmbedded -Instance $vssd) }
            Wait-HvJob -Result $r -Method 'ModifySystemSettings' | Out-Null
        }
        # ValidatePlannedSystem then RealizePlannedSystem [HV2; BAREOS end_restore_job; NXM VMImporter]
        $r = Invoke-CimMethod -InputObject $vsms -MethodName ValidatePlannedSystem -Arguments @{ PlannedSystem = $planned }
        Wait-HvJob -Result $r -Method 'ValidatePlannedSystem' | Out-Null
        $r = Invoke-CimMethod -InputObject $vsms -MethodName RealizePlannedSystem -Arguments @{ PlannedSystem = $planned }
        Wait-HvJob -Result $r -Method 'RealizePlannedSystem' | Out-Null
    } catch {
        # Leave nothing half-imported: DestroySystem on the planned VM [HV2; BAREOS].
        try { Invoke-CimMethod -InputObject $vsms -MethodName DestroySystem -Arguments @{ AffectedSystem = $planned } | Out-Null } catch { $null = $_ }
        throw
    }
    $vm = Get-HvVm -VmId ([string]$planned.Name)
    $states = @{ 2 = 'Running'; 3 = 'Off'; 6 = 'Saved'; 32769 = 'Saved'; 9 = 'Paused'; 32768 = 'Paused' }
    return [ordered]@{ vm_id = ([string]$vm.Name).ToLowerInvariant(); name = [string]$vm.ElementName; state = $states[[int]$vm.EnabledState] }
}
""", ["HV2:importsystemdefinition-msvm-virtualsystemmanagementservice", "HV2:msvm-storageallocationsettingdata",
      "HV2:modifyresourcesettings-msvm-virtualsystemmanagementservice", "BAREOS", "NXM"])

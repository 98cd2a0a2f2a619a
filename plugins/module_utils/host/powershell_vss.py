# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""PowerShell functions of the host-VSS recovery point path (method ``vss``): diskshadow with the Hyper-V VSS writer.

Used by the create / list / remove recovery point scripts of ``powershell_rct``. Flow from the reference's
section 4 ([MSB], [COLISEO]) and the diskshadow command pages ([WSDOCS:administration/windows-commands/...]).
A recovery point is one persistent shadow copy set of the volumes that hold the VM's files, exposed at
mount folders under ``%ProgramData%\\hyperv.backup\\vss\\<work id>``; a ``marker.json`` there records the set,
the mounts, the tag and the frozen disks so that listing and removal need no diskshadow output.
Recovery point id: ``vss:<work id>:<shadow set id>`` (set id empty if creation died before it was known).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

VSS_SOURCES = [
    "MSB", "COLISEO", "SUPPORT:back-up-hyper-v-vm-from-parent-partition",
    "WSDOCS:administration/windows-commands/diskshadow.md", "WSDOCS:administration/windows-commands/set-context.md",
    "WSDOCS:administration/windows-commands/set-metadata.md", "WSDOCS:administration/windows-commands/writer.md",
    "WSDOCS:administration/windows-commands/add-volume.md", "WSDOCS:administration/windows-commands/expose.md",
    "WSDOCS:administration/windows-commands/end-backup.md", "WSDOCS:administration/windows-commands/delete-shadows.md",
    "VSSWMI:win32-shadowcopy", "HV2:msvm-vsscomponent", "PSDOC:Get-VMHardDiskDrive",
]

# Function names the scripts call; kept here so tests can find the generator and its validation.
DISKSHADOW_GENERATOR = "New-HvDiskShadowCreateText"
GUID_VALIDATOR = "ConvertTo-HvVssGuid"

VSS_FUNCTIONS = r"""
# Microsoft Hyper-V VSS Writer id [MSB; COLISEO EnableWriterClasses].
$HvVssWriterId = '66841cd4-6ded-4f4b-8f17-fd23f8ddc3de'
$HvVssRoot = Join-Path -Path $env:ProgramData -ChildPath 'hyperv.backup\vss'

function ConvertTo-HvVssGuid {
    # Ids are parsed as GUIDs and written back in canonical form (hex digits and dashes only), so an id that
    # reaches a diskshadow script can hold no line break (a new command), no % (an alias/variable) and no quote.
    param([string]$Value, [string]$What)
    $guid = [guid]::Empty
    if (-not [guid]::TryParse($Value, [ref]$guid)) {
        throw (New-HvError -Category 'failed' -Message ($What + ' is not a GUID: ' + $Value) -Hint 'Pass the id as returned by get_vms / get_recovery_points.')
    }
    return $guid.ToString()
}

function ConvertTo-HvVssPathText {
    # A path for a diskshadow script line: absolute local (X:\...), no line break, no quote, no % -- so it stays one
    # argument of one command. Paths with spaces are quoted: diskshadow's quoting of paths is UNCONFIRMED (searched:
    # the diskshadow, add-volume, expose, set-metadata and writer pages [WSDOCS:administration/windows-commands/...],
    # whose examples only use paths without spaces; public diskshadow scripts found with find_string use none either).
    param([string]$Value, [string]$What)
    if ($Value -notmatch '^[A-Za-z]:(\\|$)' -or $Value -match '["%\r\n]') {
        throw (New-HvError -Category 'unsupported' -Message ($What + ' cannot be written into a diskshadow script: ' + $Value) `
            -Hint 'Keep the VM files on local volumes or mount folders whose paths have no quote, % or line break.')
    }
    if ($Value.Contains(' ')) { return '"' + $Value + '"' }
    return $Value
}

function New-HvDiskShadowCreateText {
    # The diskshadow script of one recovery point [WSDOCS:administration/windows-commands/diskshadow.md example]:
    #   set context persistent   -- shadow copies survive diskshadow's exit; NOT 'nowriters', which excludes every
    #                               writer [WSDOCS:.../set-context.md; reference section 4]
    #   set metadata <cab>       -- writer/backup metadata file [WSDOCS:.../set-metadata.md]
    #   begin backup             -- full backup session, not the default copy backup [WSDOCS:.../begin-backup.md]
    #   writer verify {66841cd4-...} -- the backup fails if the Hyper-V writer is not included [WSDOCS:.../writer.md];
    #                               the page allows '<component>' too but gives no component syntax: one-VM
    #                               verify stays UNCONFIRMED (reference 9.6) and is not used
    #   add volume <v> alias <a> [WSDOCS:.../add-volume.md]; create [WSDOCS:.../create.md]
    #   expose %a% <mount folder> [WSDOCS:.../expose.md]
    #   end backup               -- BackupComplete to the writers [WSDOCS:.../end-backup.md]. It must be in this
    #                               script: a backup session lives only as long as this diskshadow process, so a
    #                               later process (remove_recovery_point) cannot end it. The persistent shadow
    #                               copies stay until remove_recovery_point deletes them.
    # Every value is validated here, right before it is written: VM id as GUID, paths by ConvertTo-HvVssPathText.
    # Aliases are our own (hvb0, hvb1, ...); the tag never goes into the script (only into marker.json via ConvertTo-Json).
    param([string]$VmId, [string[]]$Volumes, [string[]]$Mounts, [string]$CabPath)
    $vmGuid = ConvertTo-HvVssGuid -Value $VmId -What 'VM id'
    if ($Volumes.Count -lt 1 -or $Volumes.Count -ne $Mounts.Count) {
        throw (New-HvError -Category 'failed' -Message 'diskshadow script needs one mount folder per volume' -Hint 'Report this as a bug.')
    }
    $lines = New-Object System.Collections.ArrayList
    [void]$lines.Add('# hyperv.backup recovery point of VM ' + $vmGuid)
    [void]$lines.Add('set context persistent')
    [void]$lines.Add('set metadata ' + (ConvertTo-HvVssPathText -Value $CabPath -What 'metadata file'))
    [void]$lines.Add('set verbose on')
    [void]$lines.Add('begin backup')
    [void]$lines.Add('writer verify {' + $HvVssWriterId + '}')
    for ($i = 0; $i -lt $Volumes.Count; $i++) {
        [void]$lines.Add('add volume ' + (ConvertTo-HvVssPathText -Value $Volumes[$i] -What 'volume') + ' alias hvb' + $i)
    }
    [void]$lines.Add('create')
    for ($i = 0; $i -lt $Mounts.Count; $i++) {
        [void]$lines.Add('expose ' + [char]37 + 'hvb' + $i + [char]37 + ' ' + (ConvertTo-HvVssPathText -Value $Mounts[$i] -What 'mount folder'))
    }
    [void]$lines.Add('end backup')
    return ($lines -join "`r`n") + "`r`n"
}

function New-HvDiskShadowDeleteText {
    # delete shadows set <setID> | exposed <mountpoint> [WSDOCS:administration/windows-commands/delete-shadows.md].
    param([string]$SetId, [string[]]$Mounts)
    $lines = New-Object System.Collections.ArrayList
    if ($SetId) {
        [void]$lines.Add('delete shadows set {' + (ConvertTo-HvVssGuid -Value $SetId -What 'shadow copy set id') + '}')
    } else {
        foreach ($m in @($Mounts)) { [void]$lines.Add('delete shadows exposed ' + (ConvertTo-HvVssPathText -Value $m -What 'mount folder')) }
    }
    return ($lines -join "`r`n") + "`r`n"
}

function Invoke-HvDiskShadow {
    # diskshadow /s <script file> [WSDOCS:administration/windows-commands/diskshadow.md]; output kept for errors.
    # Its exit codes are UNCONFIRMED (no diskshadow page documents them; searched diskshadow.md and the command pages),
    # so callers check the result through Win32_ShadowCopy.
    param([string]$Text, [string]$Folder, [string]$Name)
    $scriptFile = Join-Path -Path $Folder -ChildPath ($Name + '.dsh')
    $outFile = Join-Path -Path $Folder -ChildPath ($Name + '.log')
    [System.IO.File]::WriteAllText($scriptFile, $Text, [System.Text.Encoding]::ASCII)
    $process = Start-Process -FilePath 'diskshadow.exe' -ArgumentList @('/s', ('"' + $scriptFile + '"')) -NoNewWindow -PassThru `
        -RedirectStandardOutput $outFile
    $null = $process.Handle   # keep the process handle so ExitCode is readable after WaitForExit (.NET Process behaviour)
    if (-not $process.WaitForExit([int]([Math]::Max(1, $HvTimeoutSeconds)) * 1000)) {
        $process.Kill()
        throw (New-HvError -Category 'failed' -Message ('diskshadow still running after ' + $HvTimeoutSeconds + ' s') `
            -Hint 'Raise operation_timeout; check vssadmin list writers on the host.')
    }
    $output = ''
    if (Test-Path -LiteralPath $outFile) { $output = [System.IO.File]::ReadAllText($outFile) }
    return [ordered]@{ exit_code = $process.ExitCode; output = $output }
}

function Get-HvShadowCopies {
    # Win32_ShadowCopy: ID, SetID, VolumeName, DeviceObject, ExposedName, InstallDate, Persistent [VSSWMI:win32-shadowcopy].
    return @(Get-CimInstance -ClassName Win32_ShadowCopy -ErrorAction SilentlyContinue)
}

function Get-HvVolumeOf {
    # The volume (drive root or mount folder) holding a path: longest Win32_Volume.Name prefix; else the drive root.
    # That Name holds 'X:\' or the mount folder path is UNCONFIRMED (Win32_Volume is not in the reference; searched the
    # docs corpus for its Name property without a hit); the trailing \ is added here either way.
    param([string]$Path, $VolumeNames)
    $best = $null
    foreach ($name in $VolumeNames) {
        if ($name -and $Path.StartsWith($name, [StringComparison]::OrdinalIgnoreCase) -and (-not $best -or $name.Length -gt $best.Length)) { $best = $name }
    }
    if (-not $best) { $best = [System.IO.Path]::GetPathRoot($Path) }
    if (-not $best.EndsWith('\')) { $best += '\' }
    return $best
}

function ConvertTo-HvShadowPath {
    # A host path -> the same file under the exposed shadow copy of its volume (paths off the set stay as they are).
    param([string]$Path, $Mounts)
    if (-not $Path) { return $Path }
    foreach ($m in @($Mounts | Sort-Object -Property { ([string]$_.volume).Length } -Descending)) {
        if ($Path.StartsWith([string]$m.volume, [StringComparison]::OrdinalIgnoreCase)) {
            return (Join-Path -Path ([string]$m.mount) -ChildPath $Path.Substring(([string]$m.volume).Length))
        }
    }
    return $Path
}

function Get-HvVssDisks {
    # The VM's virtual disks before the shadow copy. 6.2+: Get-VMHardDiskDrive [PSDOC:Get-VMHardDiskDrive] + Get-HvDiskInfo
    # (Msvm_ImageManagementService, v2) [HV2:getvirtualharddisksettingdata-msvm-imagemanagementservice].
    # 6.0/6.1 (v1, no Hyper-V module): VM -> its non-snapshot Msvm_VirtualSystemSettingData (v1 snapshots have
    # SettingType 5) -> Msvm_ResourceAllocationSettingData with ResourceType 21 and ResourceSubType
    # 'Microsoft Virtual Hard Disk', file = Connection[0] [duplicati/duplicati
    # Duplicati/Library/Snapshots/Windows/HyperVUtility.cs GetVMVhdPathsWMI / GetVMConfigPathsWMI, v1 branch];
    # size/type/parent from v1 Msvm_ImageManagementService.GetVirtualHardDiskInfo(Path) -> out Info, an embedded
    # instance with MaxInternalSize, Type, ParentPath [same file; PSHyperV Get-VHDInfo, find_string id 10787191480].
    # disk_id = a GUID made from the path (ours, stable).
    param($Vm, [string]$VmGuid)
    $disks = @()
    if ($HvNamespace -ne 'root\virtualization') {
        foreach ($drive in @(Get-VMHardDiskDrive -VM (Get-VM -Id $VmGuid))) {
            if (-not $drive.Path) { continue }   # pass-through disks: never backed up by the writer [MSB]
            $disks += (Add-HvDriveInfo -Disk (Get-HvDiskInfo -Path $drive.Path) -Drive $drive)
        }
        return $disks
    }
    $rasds = @()
    foreach ($settings in @(Get-CimAssociatedInstance -InputObject $Vm -ResultClassName Msvm_VirtualSystemSettingData |
            Where-Object { [int]$_.SettingType -ne 5 })) {
        $rasds += @(Get-CimAssociatedInstance -InputObject $settings -ResultClassName Msvm_ResourceAllocationSettingData |
            Where-Object { [int]$_.ResourceType -eq 21 -and $_.ResourceSubType -eq 'Microsoft Virtual Hard Disk' })
    }
    # Msvm_ImageManagementService (v1) GetVirtualHardDiskInfo(Path, out Info) [duplicati/duplicati HyperVUtility.cs; PSHyperV].
    $ims = Get-CimInstance -Namespace $HvNamespace -ClassName Msvm_ImageManagementService
    $md5 = [System.Security.Cryptography.MD5]::Create()
    foreach ($rasd in $rasds) {
        $path = [string]@($rasd.Connection)[0]
        if (-not $path) { continue }
        $info = @{}
        try {
            $r = Invoke-CimMethod -InputObject $ims -MethodName GetVirtualHardDiskInfo -Arguments @{ Path = $path }
            Wait-HvJob -Result $r -Method 'GetVirtualHardDiskInfo' -Category 'not_found' | Out-Null
            $info = ConvertFrom-HvEmbedded -Text ([string]$r.Info)
        } catch { $info = @{} }
        $type = @{ '2' = 'fixed'; '3' = 'dynamic'; '4' = 'differencing' }[[string]$info['Type']]
        $chain = @()
        if ($info['ParentPath']) { $chain = @([string]$info['ParentPath']) }
        $id = New-Object -TypeName System.Guid -ArgumentList (, $md5.ComputeHash([System.Text.Encoding]::UTF8.GetBytes($path.ToLowerInvariant())))
        $disk = [ordered]@{ path = $path; format = 'vhd'; type = $type; virtual_size = [long]$info['MaxInternalSize']; block_size = $null
                            logical_sector_size = 512; disk_id = $id.ToString(); parent_chain = $chain }
        $disks += (Add-HvDriveInfo -Disk $disk -Drive $null)
    }
    return $disks
}

function Get-HvVssMode {
    # How the Hyper-V writer will take this VM [MSB; reference 1.4]: off/saved VMs are copied at rest ('offline');
    # a running VM with the backup integration service OK gets "Child VM Snapshot" (VSS in the guest: application-
    # consistent); otherwise 2008/2008 R2/2012 put it in saved state and 2012 R2 takes a checkpoint without the guest
    # (Ben Armstrong, reference 1.4); 2012 R2 also needs a SCSI controller for online backup (event 10103).
    # Backup IC state: Msvm_VssComponent.OperationalStatus[0] 2 = OK [HV2:msvm-vsscomponent], found by Get-HvVssComponent
    # (DeviceID / SystemName = VM GUID, see there). On v1 (2008 / 2008 R2) the state is not read: unknown.
    param($Vm, [string]$VmGuid)
    if ([int]$Vm.EnabledState -ne 2) { return [ordered]@{ mode = 'offline'; guest_ok = $true; problem = $null } }
    $fallbackMode = 'saved_state'
    if ($HvOsVersion.Major -eq 6 -and $HvOsVersion.Minor -eq 3) { $fallbackMode = 'checkpoint' }
    if ($HvNamespace -eq 'root\virtualization') {
        return [ordered]@{ mode = 'unknown'; guest_ok = $null; fallback = $fallbackMode
                           problem = 'the backup integration service state cannot be read on Windows Server 2008 / 2008 R2' }
    }
    $component = Get-HvVssComponent -VmGuid $VmGuid
    $problem = $null
    if (-not $component -or -not $component.OperationalStatus) { $problem = 'the backup integration service (VSS) does not answer' }
    elseif ([int]@($component.OperationalStatus)[0] -ne 2) {
        $problem = 'the backup integration service (VSS) reports status ' + @($component.OperationalStatus)[0]
    }
    elseif ($HvOsVersion.Major -eq 6 -and $HvOsVersion.Minor -eq 3 -and @(Get-VMScsiController -VM (Get-VM -Id $VmGuid)).Count -eq 0) {
        # Get-VMScsiController -VM [PSDOC:Get-VMScsiController; microsoft/lis-test WS2008R2/lisa/setupscripts/AddVhdxHardDisk.ps1]
        $problem = 'the VM has no SCSI controller, so Windows Server 2012 R2 cannot hot back it up (event 10103)'
    }
    if ($problem) { return [ordered]@{ mode = $fallbackMode; guest_ok = $false; problem = $problem } }
    return [ordered]@{ mode = 'child_vm_snapshot'; guest_ok = $true; problem = $null }
}

function Read-HvVssMarker {
    param([string]$Folder)
    $file = Join-Path -Path $Folder -ChildPath 'marker.json'
    if (-not (Test-Path -LiteralPath $file)) { return $null }
    # A marker that does not parse (e.g. a run killed while writing it) is skipped rather than failing every listing.
    try { return ([System.IO.File]::ReadAllText($file) | ConvertFrom-Json) } catch { return $null }
}

function Write-HvVssMarker {
    param([string]$Folder, $Marker)
    $text = ConvertTo-Json -InputObject $Marker -Depth 8
    [System.IO.File]::WriteAllText((Join-Path -Path $Folder -ChildPath 'marker.json'), $text, [System.Text.Encoding]::UTF8)
}

function ConvertTo-HvVssRecoveryPoint {
    # RECOVERY_POINT_SHAPE from a marker; disks were recorded with their shadow paths at creation.
    param($Marker)
    $present = $false
    if ($Marker.set_id) { $present = @(Get-HvShadowCopies | Where-Object { ([string]$_.SetID).Trim('{', '}') -eq $Marker.set_id }).Count -gt 0 }
    return [ordered]@{
        id = ('vss:' + $Marker.work_id + ':' + [string]$Marker.set_id); vm_id = [string]$Marker.vm_id; vm_name = [string]$Marker.vm_name
        name = [string]$Marker.tag; method = 'vss'; consistency = $Marker.consistency; created = (ConvertTo-HvTime $Marker.created)
        ours = ([string]$Marker.tag).StartsWith($HvOursPrefix)
        vss_backup_type = $Marker.vss_backup_type; shadow_set_id = $Marker.set_id; shadow_present = $present
        disks = @($Marker.disks); configuration = [ordered]@{ files = @($Marker.configuration_files) }
    }
}

function Get-HvVssRecoveryPoints {
    param([string]$VmGuid)
    $out = @()
    if (-not (Test-Path -LiteralPath $HvVssRoot)) { return $out }
    foreach ($dir in @(Get-ChildItem -LiteralPath $HvVssRoot -Directory)) {
        $marker = Read-HvVssMarker -Folder $dir.FullName
        if ($marker -and [string]$marker.vm_id -eq $VmGuid) { $out += (ConvertTo-HvVssRecoveryPoint -Marker $marker) }
    }
    return $out
}

function Find-HvCreatedShadows {
    # Our shadow copies: Win32_ShadowCopy.ExposedName = our mount folder [VSSWMI:win32-shadowcopy]. VSS does not fix
    # the trailing \: "There is no requirement that the path end with a backslash ... It is up to applications that
    # retrieve this information to check" (IVssBackupComponents::ExposeSnapshot, learn.microsoft.com/windows/win32/api/
    # vsbackup/nf-vsbackup-ivssbackupcomponents-exposesnapshot), so both forms are compared. Else the GUID on the
    # diskshadow line "Alias hvb0 for shadow ID {<guid>} set as environment variable." (real diskshadow transcripts,
    # find_string ids 55472127403, 40232976584; English only, hence the fallback role).
    param($Mounts, [string]$Output)
    $copies = Get-HvShadowCopies
    foreach ($m in $Mounts) {
        $want = ([string]$m.mount).TrimEnd('\')
        $hit = @($copies | Where-Object { ([string]$_.ExposedName).TrimEnd('\') -eq $want }) | Select-Object -First 1
        if (-not $hit) {
            foreach ($line in ($Output -split "`n")) {
                if ($line -match ('\b' + $m.alias + '\b') -and $line -match '([0-9a-fA-F]+-[0-9a-fA-F]+-[0-9a-fA-F]+-[0-9a-fA-F]+-[0-9a-fA-F]+)') {
                    $sid = $Matches[1]
                    $hit = @($copies | Where-Object { ([string]$_.ID).Trim('{', '}') -eq $sid }) | Select-Object -First 1
                    if ($hit) { break }
                }
            }
        }
        if ($hit) {
            $m['shadow_id'] = ([string]$hit.ID).Trim('{', '}').ToLowerInvariant()
            $m['set_id'] = ([string]$hit.SetID).Trim('{', '}').ToLowerInvariant()
            $m['device_object'] = [string]$hit.DeviceObject
        }
    }
}

function Remove-HvVssWork {
    # Deletes the shadow set (or each exposed mount), then our files and the emptied mount folders, never recursively
    # (a mount folder still holding a shadow copy is left alone and reported).
    param($Marker, [string]$Folder, [string]$SetId)
    $mounts = @($Marker.mounts | ForEach-Object { [string]$_.mount })
    $text = New-HvDiskShadowDeleteText -SetId $SetId -Mounts $mounts
    $run = Invoke-HvDiskShadow -Text $text -Folder $Folder -Name 'delete'
    if ($SetId -and @(Get-HvShadowCopies | Where-Object { ([string]$_.SetID).Trim('{', '}') -eq $SetId }).Count -gt 0) {
        $text = 'shadow copy set ' + $SetId + ' is still there after delete shadows (exit ' + $run.exit_code + '): ' + $run.output
        throw (New-HvError -Category 'recovery_point' -Message $text `
            -Hint 'Delete it with diskshadow (delete shadows set <set id>) or vssadmin delete shadows on the host.')
    }
    $exposed = @(Get-HvShadowCopies | ForEach-Object { ([string]$_.ExposedName).TrimEnd('\') })
    foreach ($m in $mounts) {
        if ($exposed -contains $m.TrimEnd('\')) {
            throw (New-HvError -Category 'recovery_point' -Message ('a shadow copy is still exposed at ' + $m + ' after delete shadows: ' + $run.output) `
                -Hint 'Delete it with diskshadow (delete shadows exposed <folder>) on the host, then remove the recovery point again.')
        }
        if (Test-Path -LiteralPath $m) { [System.IO.Directory]::Delete($m, $false) }
    }
    foreach ($f in @(Get-ChildItem -LiteralPath $Folder -File)) { Remove-Item -LiteralPath $f.FullName -Force }
    [System.IO.Directory]::Delete($Folder, $false)
}

function New-HvVssRecoveryPoint {
    param($Vm, [string]$Consistency, [string]$Tag)
    $vmGuid = ConvertTo-HvVssGuid -Value ([string]$Vm.Name) -What 'VM id'
    if (@('application', 'application_or_crash') -notcontains $Consistency) {
        throw (New-HvError -Category 'failed' -Message ('consistency ' + $Consistency + ' is not application or application_or_crash') `
            -Hint 'Use application or application_or_crash.')
    }
    $mode = Get-HvVssMode -Vm $Vm -VmGuid $vmGuid
    # Known bad guest state: refuse before any shadow copy exists. Unknown (2008 / 2008 R2): checked after creation.
    if ($Consistency -eq 'application' -and $mode.guest_ok -eq $false) {
        $text = 'cannot take an application-consistent VSS backup of VM ' + $Vm.ElementName + ': ' + $mode.problem
        throw (New-HvError -Category 'integration' -Message $text `
            -Hint 'Enable the VSS integration service and run the integration components in the guest, or ask for consistency application_or_crash.')
    }
    $disks = @(Get-HvVssDisks -Vm $Vm -VmGuid $vmGuid)
    $settings = $null
    if ($HvNamespace -ne 'root\virtualization') {
        # Realized VSSD: VirtualSystemIdentifier = VM GUID [COLISEO; HV2:msvm-virtualsystemsettingdata]
        $settings = @(Get-CimInstance -Namespace $HvNamespace -ClassName Msvm_VirtualSystemSettingData |
            Where-Object { $_.VirtualSystemType -eq 'Microsoft:Hyper-V:System:Realized' -and
                ([string]$_.VirtualSystemIdentifier).Trim('{', '}') -eq $vmGuid }) | Select-Object -First 1
    }
    $configFiles = @()
    if ($settings) { $configFiles = @(Get-HvConfigurationFiles -SettingData $settings) }
    # Volumes holding the VM's files: every disk, its parent chain and the configuration files.
    $files = @($configFiles)
    foreach ($d in $disks) { $files += [string]$d.path; $files += @($d.parent_chain) }
    $volumeNames = @(Get-CimInstance -ClassName Win32_Volume -ErrorAction SilentlyContinue | ForEach-Object { [string]$_.Name } |
        Where-Object { $_ -match '^[A-Za-z]:\\' })
    $volumes = @($files | Where-Object { $_ } | ForEach-Object { Get-HvVolumeOf -Path $_ -VolumeNames $volumeNames } | Sort-Object -Unique)
    if ($volumes.Count -eq 0) {
        throw (New-HvError -Category 'unsupported' -Message ('VM ' + $Vm.ElementName + ' has no file-backed disk or configuration to shadow-copy') `
            -Hint 'Pass-through disks are not backed up by the Hyper-V writer.')
    }
    $workId = [guid]::NewGuid().ToString()
    $folder = Join-Path -Path $HvVssRoot -ChildPath $workId
    New-Item -ItemType Directory -Path $folder -Force | Out-Null
    $mounts = @()
    for ($i = 0; $i -lt $volumes.Count; $i++) {
        $mount = Join-Path -Path $folder -ChildPath ('m' + $i)
        New-Item -ItemType Directory -Path $mount -Force | Out-Null   # expose needs an empty folder (NTFS mount folder)
        $mounts += [ordered]@{ alias = ('hvb' + $i); volume = $volumes[$i]; mount = $mount; shadow_id = $null; set_id = $null; device_object = $null }
    }
    $created = (Get-Date).ToUniversalTime().ToString('yyyy-MM-ddTHH:mm:ssZ')
    # The marker goes first, so a run that dies mid-way still leaves something get_recovery_points lists (ours) and
    # remove_recovery_point can delete (by exposed mount folder).
    $marker = [ordered]@{ work_id = $workId; set_id = $null; vm_id = $vmGuid; vm_name = [string]$Vm.ElementName; tag = $Tag; created = $created
                          consistency = $null; vss_backup_type = $mode.mode; mounts = $mounts; disks = @(); configuration_files = @() }
    Write-HvVssMarker -Folder $folder -Marker $marker
    # Drive roots go in as X: like the diskshadow examples; mount-folder volumes keep their trailing \.
    $volumeTexts = @($volumes | ForEach-Object { if ($_ -match '^[A-Za-z]:\\$') { $_.Substring(0, 2) } else { $_ } })
    $text = New-HvDiskShadowCreateText -VmId $vmGuid -Volumes $volumeTexts -Mounts @($mounts | ForEach-Object { $_.mount }) `
        -CabPath (Join-Path -Path $folder -ChildPath 'backup.cab')
    $run = Invoke-HvDiskShadow -Text $text -Folder $folder -Name 'create'
    Find-HvCreatedShadows -Mounts $mounts -Output $run.output
    $setIds = @($mounts | ForEach-Object { $_.set_id } | Where-Object { $_ } | Sort-Object -Unique)
    if ($setIds.Count -ne 1 -or @($mounts | Where-Object { -not $_.shadow_id }).Count -gt 0) {
        $tail = $run.output
        if ($tail.Length -gt 1500) { $tail = $tail.Substring($tail.Length - 1500) }
        try { Remove-HvVssWork -Marker $marker -Folder $folder -SetId ([string]@($setIds)[0]) }
        catch { $tail = $tail + ' (cleanup failed: ' + $_.Exception.Message + ')' }
        $text = 'diskshadow did not create the shadow copies of VM ' + $Vm.ElementName + ' (exit ' + $run.exit_code + '): ' + $tail
        throw (New-HvError -Category 'recovery_point' -Message $text `
            -Hint 'Check vssadmin list writers (Microsoft Hyper-V VSS Writer state) and the Application event log on the host.')
    }
    $marker['set_id'] = $setIds[0]
    # Cross-check with what the writer did: the Hyper-V writer's component captions are 'Backup Using Saved State\<VM>' /
    # 'Backup Using Child Partition Snapshot\<VM>' [reference 1.4; Cloudbase HyperVBackup README prints the caption
    # "Backup Using Saved State\server-one", ColiseoSoftware/hypervbackup HyperVBackup.Engine/BackupManager.cs maps
    # ComponentName (VM GUID) -> Caption]. Whether diskshadow's verbose 'create' output prints captions is UNCONFIRMED:
    # transcripts show "+ Adding component: \<logical path>\<component name>" lines (find_string id 40232976584), i.e.
    # probably the GUID, not the caption: both the VM name and its GUID are accepted after the prefix. A miss leaves the
    # mode from Get-HvVssMode, which is the safe side. $vmGuid is canonical (hex and dashes), safe inside a regex.
    $vssType = $mode.mode
    $vmPattern = '\\(' + [regex]::Escape([string]$Vm.ElementName) + '|\{?' + $vmGuid + '\}?)'
    if ($run.output -match ('Backup Using Saved State' + $vmPattern)) { $vssType = 'saved_state' }
    elseif ($vssType -eq 'unknown' -and $run.output -match ('Backup Using Child Partition Snapshot' + $vmPattern)) {
        $vssType = 'child_vm_snapshot'
    }
    $consistencyDone = 'application'
    $fallback = $false
    if (@('offline', 'child_vm_snapshot') -notcontains $vssType) {
        if ($Consistency -eq 'application') {
            # 'unknown' too: application consistency that cannot be confirmed is refused, not assumed.
            Remove-HvVssWork -Marker $marker -Folder $folder -SetId $setIds[0]
            $text = 'the Hyper-V writer backed up VM ' + $Vm.ElementName + ' without confirming the guest (' + $vssType + '); the shadow copy was deleted'
            throw (New-HvError -Category 'integration' -Message $text `
                -Hint 'Check the backup integration service in the guest, or ask for consistency application_or_crash.')
        }
        # The contract knows 'application' and 'crash': a saved-state or guest-less checkpoint image read without the
        # VM's memory state is what the guest's disks looked like at that instant, i.e. crash-consistent for the disks.
        $consistencyDone = 'crash'
        $fallback = $true
    }
    $shadowDisks = @()
    foreach ($d in $disks) {
        $copy = [ordered]@{}
        foreach ($k in $d.Keys) { $copy[$k] = $d[$k] }
        $copy['live_path'] = $d.path
        $copy['path'] = ConvertTo-HvShadowPath -Path $d.path -Mounts $mounts
        $copy['parent_chain'] = @(@($d.parent_chain) | ForEach-Object { ConvertTo-HvShadowPath -Path $_ -Mounts $mounts })
        $shadowDisks += $copy
    }
    $marker['consistency'] = $consistencyDone
    $marker['vss_backup_type'] = $vssType
    $marker['disks'] = @($shadowDisks)
    $marker['configuration_files'] = @($configFiles | ForEach-Object { ConvertTo-HvShadowPath -Path $_ -Mounts $mounts })
    Write-HvVssMarker -Folder $folder -Marker $marker
    $out = ConvertTo-HvVssRecoveryPoint -Marker (Read-HvVssMarker -Folder $folder)
    $out['consistency_fallback'] = $fallback
    return $out
}

function Remove-HvVssRecoveryPoint {
    # Id 'vss:<work id>:<set id>': both parts are parsed as GUIDs before any path or diskshadow line is built from them.
    param([string]$VmGuid, [string]$Id)
    $parts = $Id.Split(':')
    if ($parts.Count -ne 3 -or $parts[0] -ne 'vss') {
        throw (New-HvError -Category 'not_found' -Message ('not a VSS recovery point id: ' + $Id) -Hint 'Use an id from get_recovery_points.')
    }
    $workId = ConvertTo-HvVssGuid -Value $parts[1] -What 'recovery point work id'
    $setId = $null
    if ($parts[2]) { $setId = ConvertTo-HvVssGuid -Value $parts[2] -What 'shadow copy set id' }
    $folder = Join-Path -Path $HvVssRoot -ChildPath $workId
    $marker = Read-HvVssMarker -Folder $folder
    if (-not $marker) {
        if (-not $setId -or @(Get-HvShadowCopies | Where-Object { ([string]$_.SetID).Trim('{', '}') -eq $setId }).Count -eq 0) {
            return [ordered]@{ id = $Id; removed = $false }
        }
        New-Item -ItemType Directory -Path $folder -Force | Out-Null
        $marker = [ordered]@{ mounts = @() }
    } elseif ([string]$marker.vm_id -ne $VmGuid) {
        throw (New-HvError -Category 'not_found' -Message ('recovery point ' + $Id + ' belongs to VM ' + $marker.vm_id) `
            -Hint 'Pass the VM id the point was created for.')
    }
    if (-not $setId -and $marker.set_id) { $setId = ConvertTo-HvVssGuid -Value ([string]$marker.set_id) -What 'shadow copy set id' }
    Remove-HvVssWork -Marker $marker -Folder $folder -SetId $setId
    return [ordered]@{ id = $Id; removed = $true }
}
"""

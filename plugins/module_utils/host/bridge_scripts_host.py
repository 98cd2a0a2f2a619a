# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bodies of the host bridge scripts: service, vss_writers, diskshadow, files, host_environment.

PowerShell 2.0 only; the shared functions they call (``Read-HvSpec``, ``ConvertTo-HvInstance``,
``Invoke-HvProcess``, ...) are in ``bridge_scripts.PRELUDE``, which ``bridge_scripts`` puts before each body.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

SERVICE = r"""
function Invoke-HvBridge {
    # ServiceController (System.ServiceProcess, .NET 2.0; what Get-Service returns): Status and DisplayName. Its
    # StartType property is newer than .NET 2.0 (4.6.1 by our reading; UNCONFIRMED), so the start type comes from
    # Win32_Service.StartMode (Boot, System, Auto, Manual, Disabled), present on every version either way.
    if ($Name -notmatch '^[A-Za-z0-9_.$-]+\z') { throw (New-HvError -Code 'bad_request' -Message ('not a service name: ' + $Name)) }
    Add-Type -AssemblyName System.ServiceProcess
    $controller = New-Object -TypeName System.ServiceProcess.ServiceController -ArgumentList $Name
    $status = [string]$controller.Status     # a missing service throws here: Win32 1060, 0x80070424
    $previous = $status
    if ($Start -and $status -ne 'Running') {
        try {
            if ($status -ne 'StartPending') { $controller.Start() }
            $controller.WaitForStatus([System.ServiceProcess.ServiceControllerStatus]::Running, [TimeSpan]::FromSeconds($HvTimeoutSeconds))
        } catch {
            $info = Get-HvErrorInfo -Exception $_.Exception
            throw (New-HvError -Code $info.code -Category 'service' -Message ('service ' + $Name + ' did not start: ' + $info.message))
        }
        $controller.Refresh()
        $status = [string]$controller.Status
    }
    $startType = $null
    $wmiService = @(Get-WmiObject -Namespace 'root\cimv2' -Class Win32_Service -Filter ("Name='" + $Name + "'"))
    if ($wmiService.Count -gt 0) {
        $startType = [string]$wmiService[0].psbase.GetPropertyValue('StartMode')
        if ($startType -eq 'Auto') { $startType = 'Automatic' }
    }
    return @{ name = $controller.ServiceName; display_name = $controller.DisplayName; status = $status; start_type = $startType; previous_status = $previous }
}
"""

VSS_WRITERS = r"""
function Invoke-HvBridge {
    return (Invoke-HvProcess -FilePath 'vssadmin.exe' -ArgumentList @('list', 'writers'))
}
"""

DISKSHADOW = r"""
function Invoke-HvBridge {
    # diskshadow /s <script file>; the text is written in the ANSI code page (non-ASCII paths: UNCONFIRMED how
    # diskshadow reads them) to a temporary file that is removed afterwards.
    $file = Join-Path -Path ([System.IO.Path]::GetTempPath()) -ChildPath ('hvb-' + [guid]::NewGuid().ToString('N') + '.dsh')
    [System.IO.File]::WriteAllText($file, $Script, [System.Text.Encoding]::Default)
    try {
        return (Invoke-HvProcess -FilePath 'diskshadow.exe' -ArgumentList @('/s', ('"' + $file + '"')))
    } finally {
        Remove-Item -LiteralPath $file -Force -ErrorAction SilentlyContinue
    }
}
"""

READ_FILE = r"""
function Invoke-HvBridge {
    Assert-HvRooted -Path $Path
    if (-not [System.IO.File]::Exists($Path)) { return @{ exists = $false; data = $null; length = 0 } }
    $info = New-Object -TypeName System.IO.FileInfo -ArgumentList $Path
    if ($info.Length -gt $MaxBytes) {
        throw (New-HvError -Code 'too_large' -Message ($Path + ' holds ' + $info.Length + ' bytes, more than ' + $MaxBytes))
    }
    try {
        $bytes = [System.IO.File]::ReadAllBytes($Path)
    } catch {
        if (-not [System.IO.File]::Exists($Path)) { return @{ exists = $false; data = $null; length = 0 } }
        throw
    }
    return @{ exists = $true; data = [System.Convert]::ToBase64String($bytes); length = $bytes.Length }
}
"""

WRITE_FILE = r"""
function Invoke-HvBridge {
    # Atomic: the bytes go to a temporary file beside the target, which then takes its name. Exclusive
    # (lock files): File.Move fails when the target exists, so exactly one writer creates it. Otherwise an
    # existing file is swapped with File.Replace (ReplaceFile).
    Assert-HvRooted -Path $Path
    $bytes = [System.Convert]::FromBase64String($Data)
    [void][System.IO.Directory]::CreateDirectory([System.IO.Path]::GetDirectoryName($Path))
    $temporary = $Path + '.' + [guid]::NewGuid().ToString('N') + '.tmp'
    [System.IO.File]::WriteAllBytes($temporary, $bytes)
    try {
        if ($Exclusive) {
            try {
                [System.IO.File]::Move($temporary, $Path)
            } catch {
                if ([System.IO.File]::Exists($Path)) { throw (New-HvError -Code 'exists' -Message ('file exists: ' + $Path)) }
                throw
            }
        } elseif ([System.IO.File]::Exists($Path)) {
            [System.IO.File]::Replace($temporary, $Path, $null)
        } else {
            try {
                [System.IO.File]::Move($temporary, $Path)
            } catch {
                if (-not [System.IO.File]::Exists($Path)) { throw }
                [System.IO.File]::Replace($temporary, $Path, $null)
            }
        }
    } finally {
        if ([System.IO.File]::Exists($temporary)) { [System.IO.File]::Delete($temporary) }
    }
    $info = New-Object -TypeName System.IO.FileInfo -ArgumentList $Path
    return @{ modified = (ConvertTo-HvDmtf -Time $info.LastWriteTimeUtc); now = (ConvertTo-HvDmtf -Time ([DateTime]::UtcNow)) }
}
"""

REMOVE_FILE = r"""
function Invoke-HvBridge {
    Assert-HvRooted -Path $Path
    if (-not [System.IO.File]::Exists($Path)) { return $false }
    [System.IO.File]::Delete($Path)
    return $true
}
"""

LIST_DIRECTORY = r"""
function Invoke-HvBridge {
    # Entries with LastWriteTimeUtc, and the host's clock (leases compare times of one clock). Directories
    # have length 0.
    Assert-HvRooted -Path $Path
    $entries = New-Object System.Collections.ArrayList
    if ([System.IO.Directory]::Exists($Path)) {
        $directory = New-Object -TypeName System.IO.DirectoryInfo -ArgumentList $Path
        foreach ($item in $directory.GetFileSystemInfos()) {
            $isDirectory = $item -is [System.IO.DirectoryInfo]
            $length = 0
            if (-not $isDirectory) { $length = $item.Length }
            [void]$entries.Add(@{ name = $item.Name; directory = $isDirectory; length = $length; modified = (ConvertTo-HvDmtf -Time $item.LastWriteTimeUtc) })
        }
    }
    return @{ now = (ConvertTo-HvDmtf -Time ([DateTime]::UtcNow)); entries = $entries }
}
"""

HOST_ENVIRONMENT = r"""
function Invoke-HvBridge {
    $programData = [string]$env:ProgramData
    if (-not $programData) { $programData = [Environment]::GetFolderPath('CommonApplicationData') }
    return @{
        ps_version = $PSVersionTable.PSVersion.ToString(); clr_version = $PSVersionTable.CLRVersion.ToString()
        program_data = $programData; computer_name = [string]$env:COMPUTERNAME; now = (ConvertTo-HvDmtf -Time ([DateTime]::UtcNow))
    }
}
"""

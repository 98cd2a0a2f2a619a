"""Write the guest-visible bytes of a lab VM's disk (a local file, or a Windows path the host reports) to a raw file.

Used by ``playbook_helpers.snapshot_task`` between two backups of one playbook: the backup result names
the disk by its Windows path (``C:\\Hyper-V\\<vm id>\\...``), which only the lab host can map to its file;
the chain (AVHDX over VHDX) is read through, so the raw file is what the guest saw right after the backup.

    python snapshot_disk.py <lab directory> <host> <windows path> <destination>
"""
import os
import sys


def main(lab_directory, host, windows_path, destination):
    from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_host import LabTransport
    from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import open_disk

    # hyperv_backup reports the file it read (lab transport: the local file); a host's Windows path is mapped
    local = windows_path if os.path.exists(windows_path) else LabTransport(lab_directory, host).local(windows_path)
    if not local:
        sys.exit("the lab host %s maps no file to %s" % (host, windows_path))
    with open_disk(local) as disk:
        data = disk.read(0, disk.virtual_size)
    with open(destination, "wb") as handle:
        handle.write(data)


if __name__ == "__main__":
    main(*sys.argv[1:5])

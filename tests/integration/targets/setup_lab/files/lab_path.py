"""Test helper: print the lab file behind a Windows path that a lab host reported.

Usage: python lab_path.py WINDOWS_PATH HOST -- the lab directory comes from $HYPERV_LAB_DIRECTORY (set by the
integration harness). Lab hosts report Windows paths (C:\\Hyper-V\\<vm id>\\...), as real hosts do; tests that
look at the file behind one map it to the lab's file with this.
"""
import os
import sys

from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_host import LabTransport

if __name__ == "__main__":
    print(LabTransport(os.environ["HYPERV_LAB_DIRECTORY"], sys.argv[2]).local(sys.argv[1]))

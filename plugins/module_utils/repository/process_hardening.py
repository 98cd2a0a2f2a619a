# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Keep the secrets of a module process out of core dumps and out of the processes it starts (issue 13, point 9).

A module that opens the repository holds the passphrase and the unwrapped data and id keys in memory. A crash would
write them into a core file; on Linux another process of the same user could also read them through /proc/<pid>/mem
or ptrace. ``harden_process`` sets RLIMIT_CORE to 0 (soft and hard: children inherit it and cannot raise it) and, on
Linux, PR_SET_DUMPABLE to 0 (no core, no ptrace or /proc/<pid>/mem by other unprivileged processes). Each step is
best effort: where the platform refuses, the module still runs.

It also removes the passphrase's environment variable from ``os.environ``. Call it after ``AnsibleModule(...)``:
the option's env fallback has copied the value into the module's params by then, and every process started
afterwards inherits ``os.environ`` without it (the modules start none themselves today; libraries may, e.g. an AWS
profile's credential_process or a Kerberos helper).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import sys

# Environment variables that carry a repository secret (the fallback of repository_passphrase; doc_fragments/repository.py).
SECRET_ENVIRONMENT = ("HYPERV_BACKUP_REPOSITORY_PASSPHRASE",)
PR_SET_DUMPABLE = 4


def _set_core_limit():
    import resource                      # Unix only: an ImportError elsewhere is caught by the caller
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _set_not_dumpable():
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return True


def harden_process(environment=SECRET_ENVIRONMENT):
    """Disable core dumps, make the process non-dumpable (Linux) and drop the secret variables from the environment.

    Returns what was done: ``{"core_dumps_off", "not_dumpable", "environment_removed"}``; never raises."""
    done = {"core_dumps_off": False, "not_dumpable": False, "environment_removed": []}
    try:
        _set_core_limit()
        done["core_dumps_off"] = True
    except (ImportError, AttributeError, ValueError, OSError):
        pass
    try:
        done["not_dumpable"] = bool(_set_not_dumpable())
    except (ImportError, AttributeError, ValueError, OSError):
        pass
    for name in environment:
        if os.environ.pop(name, None) is not None:
            done["environment_removed"].append(name)
    return done

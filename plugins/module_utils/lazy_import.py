# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Import a library on first use, for the heavy optional ones (boto3, smbclient).

Every module run is a fresh Python process, and importing boto3 and smbclient costs ~0.13 s of a run
that, for an RCT incremental, takes well under a second; most runs use neither (local repository,
local disk paths). ``is_installed`` answers "could it be imported?" without importing it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import importlib
import importlib.util
import traceback


def is_installed(name):
    """True if ``name`` (a top-level package) can be imported, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


class LazyModule:
    """Stands for module ``name``; the first attribute access imports it.

    ``import_error`` holds the traceback if that import failed (the access then raises ImportError again).
    """

    def __init__(self, name):
        self._name = name
        self._module = None
        self.import_error = None

    def __getattr__(self, attribute):
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        if self._module is None:
            try:
                self._module = importlib.import_module(self._name)
            except ImportError:
                self.import_error = traceback.format_exc()
                raise
        return getattr(self._module, attribute)

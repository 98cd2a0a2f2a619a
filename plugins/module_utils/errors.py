# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Exceptions every layer raises, each carrying what a person needs to act.

Modules turn any of these into ``fail_json(msg=str(err), **err.details())``: ``msg`` says what
failed, where, why and what to do; the details carry the structured facts.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class HyperVBackupError(Exception):
    """Base class: a message for people plus structured details."""

    def __init__(self, message, hint=None, **details):
        super(HyperVBackupError, self).__init__(message)
        self.message = message
        self.hint = hint
        self.extra = details

    def __str__(self):
        if self.hint:
            return "%s %s" % (self.message.rstrip(), self.hint)
        return self.message

    def details(self):
        """Structured facts for fail_json (never secrets)."""
        out = dict(self.extra)
        out["error_type"] = type(self).__name__
        if self.hint:
            out["hint"] = self.hint
        return out


class HostOperationError(HyperVBackupError):
    """A host operation failed: which host, which operation, what Windows said, what to check."""

    def __init__(self, host, operation, category, message, hint=None, windows_error=None, **details):
        self.host = host
        self.operation = operation
        self.category = category
        self.windows_error = windows_error
        self.problem = message
        text = "Host %s, operation %s: %s" % (host, operation, message)
        super(HostOperationError, self).__init__(text, hint=hint, host=host, operation=operation,
                                                 category=category, windows_error=windows_error, **details)


class VirtualDiskError(HyperVBackupError):
    """A virtual disk file is unreadable, corrupt or unsupported; names the file and the problem."""

    def __init__(self, path, problem, hint=None, **details):
        self.path = path
        self.problem = problem
        super(VirtualDiskError, self).__init__("%s: %s" % (path, problem), hint=hint, path=str(path), **details)


class RepositoryError(HyperVBackupError):
    """The backup repository is missing, locked, corrupt, full or refused access."""

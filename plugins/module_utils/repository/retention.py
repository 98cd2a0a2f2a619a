# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The retention policy (grandfather-father-son), as a pure function: which backups of one VM to keep.

Rules (the same as restic's ``forget --keep-*``): backups are taken newest first. ``keep_last`` keeps
the N newest. ``keep_daily`` keeps the newest backup of each of the N most recent days that have a
backup; ``keep_weekly`` (ISO weeks), ``keep_monthly`` and ``keep_yearly`` likewise. A backup kept by
several rules is kept once, with every reason listed. Days, weeks, months and years are taken in UTC.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


RULES = ("last", "daily", "weekly", "monthly", "yearly")


def _period(rule, created):
    if rule == "daily":
        return created.date()
    if rule == "weekly":
        return tuple(created.isocalendar())[:2]
    if rule == "monthly":
        return (created.year, created.month)
    if rule == "yearly":
        return created.year
    raise ValueError("unknown retention rule %r" % rule)


class RetentionPolicy:
    """How many backups to keep per rule; refuses a policy that would keep nothing."""

    def __init__(self, keep_last=0, keep_daily=0, keep_weekly=0, keep_monthly=0, keep_yearly=0):
        self.counts = {"last": keep_last or 0, "daily": keep_daily or 0, "weekly": keep_weekly or 0,
                       "monthly": keep_monthly or 0, "yearly": keep_yearly or 0}
        bad = sorted(rule for rule, count in self.counts.items() if not isinstance(count, int) or count < 0)
        if bad:
            raise ValueError("retention counts must be whole numbers >= 0; wrong: %s" % ", ".join("keep_" + b for b in bad))
        if not any(self.counts.values()):
            raise ValueError("the retention policy keeps nothing; set at least one of keep_last, keep_daily, "
                             "keep_weekly, keep_monthly, keep_yearly")

    @classmethod
    def from_dict(cls, values):
        values = dict(values or {})
        unknown = sorted(set(values) - set("keep_" + r for r in RULES))
        if unknown:
            raise ValueError("unknown retention option(s): %s; known: %s" % (", ".join(unknown), ", ".join("keep_" + r for r in RULES)))
        return cls(**dict((k, v) for k, v in values.items() if v is not None))

    def as_dict(self):
        return dict(("keep_" + rule, count) for rule, count in self.counts.items())

    def apply(self, backups):
        """``backups``: iterable of (backup_id, created datetime, UTC) of ONE VM.

        Returns (keep, remove): ``keep`` maps backup_id -> list of reasons ("last 1", "daily 2026-11-25", ...),
        ``remove`` lists the others, newest first.
        """
        ordered = sorted(backups, key=lambda item: (item[1], item[0]), reverse=True)
        keep = {}
        for position, (backup_id, _created) in enumerate(ordered):
            if position < self.counts["last"]:
                keep.setdefault(backup_id, []).append("last %d" % (position + 1))
        for rule in RULES[1:]:
            wanted = self.counts[rule]
            seen = set()
            for backup_id, created in ordered:
                if len(seen) >= wanted:
                    break
                period = _period(rule, created)
                if period in seen:
                    continue
                seen.add(period)
                keep.setdefault(backup_id, []).append("%s %s" % (rule, _period_text(rule, period)))
        remove = [backup_id for backup_id, _created in ordered if backup_id not in keep]
        return keep, remove


def _period_text(rule, period):
    if rule == "daily":
        return period.isoformat()
    if rule == "weekly":
        return "%04d-W%02d" % period
    if rule == "monthly":
        return "%04d-%02d" % period
    return "%04d" % period

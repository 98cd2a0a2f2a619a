# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The retention policy (grandfather-father-son), as a pure function: which backups of one VM to keep.

Rules (the same as restic's ``forget --keep-*``): backups are taken newest first. ``keep_last`` keeps
the N newest. ``keep_daily`` keeps the newest backup of each of the N most recent days that have a
backup; ``keep_weekly`` (ISO weeks), ``keep_monthly`` and ``keep_yearly`` likewise. A backup kept by
several rules is kept once, with every reason listed. Days, weeks, months and years are taken in UTC.

"Newest" is the repository's commit order (BackupRecord.order_key), not a clock: a clock stepped back must not
make a new backup look old (issue 12, point 6). The day, week, month or year a backup belongs to is that of its
recovery point (when its data was captured); the N most recent periods are the N latest by that time.
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
        """``backups``: iterable of ONE VM's (backup_id, order, point time) - or (backup_id, time), which is both.

        ``order`` sorts oldest first (the commit sequence); the point time (an aware UTC datetime) places the backup in
        its day, week, month and year. Returns (keep, remove): ``keep`` maps backup_id -> list of reasons ("last 1",
        "daily 2026-11-25", ...), ``remove`` lists the others, newest first.
        """
        items = [(item[0], item[1], item[-1]) for item in backups]
        ordered = sorted(items, key=lambda item: (item[1], item[0]), reverse=True)
        keep = {}
        for position, (backup_id, _order, _when) in enumerate(ordered):
            if position < self.counts["last"]:
                keep.setdefault(backup_id, []).append("last %d" % (position + 1))
        for rule in RULES[1:]:
            newest = {}         # period -> its newest backup (first in commit order, newest first)
            for backup_id, _order, when in ordered:
                newest.setdefault(_period(rule, when), backup_id)
            for period in sorted(newest, reverse=True)[:self.counts[rule]]:
                keep.setdefault(newest[period], []).append("%s %s" % (rule, _period_text(rule, period)))
        remove = [backup_id for backup_id, _order, _when in ordered if backup_id not in keep]
        return keep, remove


def _period_text(rule, period):
    if rule == "daily":
        return period.isoformat()
    if rule == "weekly":
        return "%04d-W%02d" % period
    if rule == "monthly":
        return "%04d-%02d" % period
    return "%04d" % period

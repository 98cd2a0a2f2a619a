"""The GFS retention policy: exact expectations on a known calendar, and hypothesis properties."""
import datetime

import pytest
from hypothesis import given, settings, strategies as st

from ansible_collections.hyperv.backup.plugins.module_utils.repository.retention import RetentionPolicy

UTC = datetime.timezone.utc


def at(text):
    return datetime.datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_known_calendar():
    # Two backups a day from 2026-01-01 to 2026-03-31 (newest: 2026-03-31 18:00).
    backups = []
    day = at("2026-01-01T06:00:00")
    while day < at("2026-04-01T00:00:00"):
        for hour in (6, 18):
            moment = day.replace(hour=hour)
            backups.append((moment.strftime("b%Y%m%d%H"), moment))
        day += datetime.timedelta(days=1)
    keep, remove = RetentionPolicy(keep_last=3, keep_daily=7, keep_weekly=4, keep_monthly=3).apply(backups)
    expected_last = {"b2026033118", "b2026033106", "b2026033018"}
    expected_daily = {"b202603%02d18" % d for d in range(25, 32)}
    # ISO weeks: newest backup of W14 (Mar 30-31), W13, W12, W11 -> Sundays 18:00 plus Mar 31.
    expected_weekly = {"b2026033118", "b2026032918", "b2026032218", "b2026031518"}
    expected_monthly = {"b2026033118", "b2026022818", "b2026013118"}
    assert set(keep) == expected_last | expected_daily | expected_weekly | expected_monthly
    assert keep["b2026033118"] == ["last 1", "daily 2026-03-31", "weekly 2026-W14", "monthly 2026-03"]
    assert keep["b2026022818"] == ["monthly 2026-02"]
    assert len(remove) == len(backups) - len(keep)


def test_policy_that_keeps_nothing_is_refused():
    with pytest.raises(ValueError, match="keeps nothing"):
        RetentionPolicy()
    with pytest.raises(ValueError, match="keep_daily"):
        RetentionPolicy(keep_last=1, keep_daily=-1)
    with pytest.raises(ValueError, match="unknown retention option"):
        RetentionPolicy.from_dict({"keep_hourly": 3})


def oracle(backups, counts):
    """Independent restatement of the rules: newest backup of each of the N newest periods.

    ``backups``: (id, time) - ordered by time - or (id, commit order, point time)."""
    ordered = sorted(backups, key=lambda b: (b[1], b[0]), reverse=True)
    kept = set(b[0] for b in ordered[:counts["keep_last"]])
    ordered = [(b[0], b[-1]) for b in ordered]
    periods = {
        "keep_daily": lambda t: t.date(),
        "keep_weekly": lambda t: t.isocalendar()[:2],
        "keep_monthly": lambda t: (t.year, t.month),
        "keep_yearly": lambda t: t.year,
    }
    for rule, period_of in periods.items():
        newest = {}
        for backup_id, created in ordered:
            newest.setdefault(period_of(created), backup_id)
        for period in sorted(newest, reverse=True)[:counts[rule]]:
            kept.add(newest[period])
    return kept


times = st.datetimes(min_value=datetime.datetime(2020, 1, 1), max_value=datetime.datetime(2027, 12, 31),
                     timezones=st.just(UTC))
backup_lists = st.lists(times, min_size=0, max_size=60, unique=True).map(
    lambda ts: [("id%03d" % i, t) for i, t in enumerate(ts)])
count = st.integers(min_value=0, max_value=8)
policies = st.fixed_dictionaries({"keep_last": count, "keep_daily": count, "keep_weekly": count,
                                  "keep_monthly": count, "keep_yearly": count}).filter(lambda d: any(d.values()))


@settings(max_examples=300, deadline=None)
@given(backup_lists, policies)
def test_policy_keeps_exactly_what_the_rules_say(backups, counts):
    keep, remove = RetentionPolicy.from_dict(counts).apply(backups)
    ids = set(b[0] for b in backups)
    assert set(keep) | set(remove) == ids and not set(keep) & set(remove)
    assert set(keep) == oracle(backups, counts)
    assert len(keep) <= sum(counts.values())
    if backups:
        newest = max(backups, key=lambda b: (b[1], b[0]))[0]
        assert newest in keep                       # any non-empty policy keeps the newest backup
    assert all(reasons for reasons in keep.values())


@settings(max_examples=200, deadline=None)
@given(backup_lists, policies, st.sampled_from(["keep_last", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly"]))
def test_raising_a_count_never_removes_more(backups, counts, rule):
    keep, _remove = RetentionPolicy.from_dict(counts).apply(backups)
    more = dict(counts)
    more[rule] += 1
    keep_more, _removed = RetentionPolicy.from_dict(more).apply(backups)
    assert set(keep) <= set(keep_more)

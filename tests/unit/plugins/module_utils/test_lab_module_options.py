"""hyperv_lab options of issue 11: eras 2012 and 2025, locale, clock_offset_seconds, quirks."""
import json
import os

import pytest

from test_lab_helpers import MiB
from test_lab_module import run_module


def host_json(tmp_path, host):
    with open(os.path.join(str(tmp_path), host, "host.json")) as handle:
        return json.load(handle)


def test_locale_clock_and_quirks_are_kept_idempotent_and_replaced(tmp_path, monkeypatch):
    spec = {"name": "app25", "configuration_version": "12.0", "disks": [{"size": 8 * MiB}]}
    args = {"lab_directory": str(tmp_path), "host": "hv25", "era": "2025", "locale": "de-DE", "clock_offset_seconds": 90,
            "quirks": ["slow_shadow_create_seconds:1.5"], "vms": [spec]}
    assert run_module(monkeypatch, args, check_mode=True)["changed"] is True and not (tmp_path / "hv25").exists()
    first = run_module(monkeypatch, args)
    assert first["changed"] is True and first["host"]["os_build"] == 26100
    assert [vm["configuration_version"] for vm in first["vms"]] == ["12.0"]
    doc = host_json(tmp_path, "hv25")
    assert (doc["era"], doc["locale"], doc["clock_offset_seconds"], doc["quirks"]) == ("2025", "de-DE", 90, ["slow_shadow_create_seconds:1.5"])
    assert run_module(monkeypatch, args)["changed"] is False
    kept = run_module(monkeypatch, {"lab_directory": str(tmp_path), "host": "hv25"})
    assert kept["changed"] is False and host_json(tmp_path, "hv25")["locale"] == "de-DE"   # omitted options keep their value
    changed = run_module(monkeypatch, {"lab_directory": str(tmp_path), "host": "hv25", "locale": "en-US", "quirks": [],
                                       "clock_offset_seconds": -30})
    doc = host_json(tmp_path, "hv25")
    assert changed["changed"] is True and (doc["locale"], doc["clock_offset_seconds"], doc["quirks"]) == ("en-US", -30, [])


def test_new_hosts_default_to_en_us_real_clock_and_no_quirks(tmp_path, monkeypatch):
    result = run_module(monkeypatch, {"lab_directory": str(tmp_path), "host": "hv12", "era": "2012"})
    assert result["changed"] is True and result["host"]["os_version"] == "6.2.9200"
    doc = host_json(tmp_path, "hv12")
    assert (doc["locale"], doc["clock_offset_seconds"], doc["quirks"]) == ("en-US", 0, [])


@pytest.mark.parametrize("args,text", [
    ({"quirks": ["turbo"]}, "unknown or malformed lab host quirk"),
    ({"quirks": ["slow_shadow_create_seconds:soon"]}, "unknown or malformed lab host quirk"),
    ({"locale": "fr-FR"}, "value of locale must be one of"),
    ({"era": "2012", "vms": [{"name": "x", "configuration_version": "8.0"}]}, "newer than a 2012 host supports"),
    ({"era": "2022", "vms": [{"name": "x", "configuration_version": "11.0"}]}, "newer than a 2022 host supports"),
])
def test_bad_options_fail_clearly(tmp_path, monkeypatch, args, text):
    result = run_module(monkeypatch, dict(args, lab_directory=str(tmp_path), host="hv01"))
    assert result.get("failed") and text in result["msg"]


def test_every_documented_quirk_is_accepted(tmp_path, monkeypatch):
    result = run_module(monkeypatch, {"lab_directory": str(tmp_path), "host": "hv01",
                                      "quirks": ["byte_length_strict", "slow_shadow_create_seconds:0.5"]})
    assert result["changed"] is True
    assert host_json(tmp_path, "hv01")["quirks"] == ["byte_length_strict", "slow_shadow_create_seconds:0.5"]

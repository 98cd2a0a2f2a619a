"""RCT eligibility rules, the method decision and the 2008 R2 serialisation keys."""
import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError
from ansible_collections.hyperv.backup.plugins.module_utils.hyperv.method_choice import (
    Eligibility, choose_method, parallel_safety, rct_eligibility, release_name, version_tuple)


def host(build, cluster_level=None, providers=("software",), name="hv01"):
    return {"computer_name": name, "os_build": build,
            "cluster": {"name": "clu", "functional_level": cluster_level} if cluster_level is not None else None,
            "vss_providers": [{"name": p, "id": p, "type": p} for p in providers]}


def vm(config="9.0", clustered=False, formats=("vhdx",), csv_path=None, vm_id="id1", name="web01"):
    return {"id": vm_id, "name": name, "configuration_version": config, "clustered": clustered, "csv_path": csv_path,
            "disks": [{"path": "C:\\d%d.%s" % (i, f), "format": f} for i, f in enumerate(formats)]}


def test_release_names():
    assert release_name(9600) == "Windows Server 2012 R2"
    assert release_name(14393) == "Windows Server 2016"
    assert release_name(7601) == "Windows Server 2008 R2"
    assert release_name(20348) == "Windows Server 2022"


def test_versions_compare_numerically():
    assert version_tuple("10.0") > version_tuple("6.2")
    assert version_tuple("6.2") > version_tuple("5.0")
    with pytest.raises(HyperVBackupError, match="not a dotted number"):
        version_tuple("latest")


def test_2016_host_with_modern_vm_is_eligible():
    result = rct_eligibility(host(14393), vm("8.0"))
    assert result.eligible and result.reasons == []


def test_2012r2_host_reason_names_both_releases():
    result = rct_eligibility(host(9600), vm("5.0"))
    assert not result.eligible
    assert "host build 9600 (Windows Server 2012 R2) is older than 14393 (Windows Server 2016)" in result.reasons[0]
    # the configuration version fails too: every failing rule gives its own reason
    assert len(result.reasons) == 2 and "configuration version 5.0" in result.reasons[1]


def test_config_version_10_is_newer_than_6_2():
    assert rct_eligibility(host(20348), vm("10.0")).eligible
    assert rct_eligibility(host(20348), vm("6.2")).eligible
    result = rct_eligibility(host(14393), vm("5.0"))
    assert not result.eligible and result.reasons == [result.reasons[0]]
    assert "older than 6.2" in result.reasons[0]


@pytest.mark.parametrize("level,eligible", [(8, False), (9, True), (11, True)])
def test_cluster_functional_level(level, eligible):
    result = rct_eligibility(host(14393, cluster_level=level), vm("8.0", clustered=True))
    assert result.eligible is eligible
    if not eligible:
        assert "functional level 8 (Windows Server 2012 R2)" in result.reasons[0]
        assert "Update-ClusterFunctionalLevel" in result.reasons[0]


def test_cluster_level_ignored_for_unclustered_vm():
    assert rct_eligibility(host(14393, cluster_level=8), vm("8.0", clustered=False)).eligible


def test_clustered_vm_without_cluster_facts_is_not_eligible():
    result = rct_eligibility(host(14393), vm("8.0", clustered=True))
    assert not result.eligible and "no cluster functional level" in result.reasons[0]


def test_vhd_disk_blocks_rct():
    result = rct_eligibility(host(17763), vm("9.0", formats=("vhdx", "vhd")))
    assert not result.eligible
    assert "C:\\d1.vhd" in result.reasons[0] and "C:\\d0.vhdx" not in result.reasons[0]


ELIGIBLE = Eligibility(True, [])
INELIGIBLE = Eligibility(False, ["host build 9600 (Windows Server 2012 R2) is older than 14393 (Windows Server 2016)"])


def test_first_backup_from_eligible_host_is_full_rct():
    decision = choose_method(ELIGIBLE)
    assert (decision.method, decision.full_required) == ("rct", True)
    assert "first backup" in decision.reason


def test_rct_history_allows_incremental():
    decision = choose_method(ELIGIBLE, previous_method="rct")
    assert (decision.method, decision.full_required) == ("rct", False)


def test_vss_history_keeps_vss_under_auto():
    decision = choose_method(ELIGIBLE, previous_method="vss")
    assert decision.method == "vss"
    assert "came from VSS" in decision.reason and "method: rct" in decision.reason


def test_switch_from_vss_to_rct_requires_full():
    decision = choose_method(ELIGIBLE, requested="rct", previous_method="vss")
    assert (decision.method, decision.full_required) == ("rct", True)
    assert "full RCT backup" in decision.reason


def test_rct_on_ineligible_host_is_an_error_with_reasons():
    with pytest.raises(HyperVBackupError) as caught:
        choose_method(INELIGIBLE, requested="rct")
    assert "Windows Server 2012 R2" in str(caught.value)
    assert caught.value.details()["reasons"] == INELIGIBLE.reasons


def test_auto_on_ineligible_host_uses_vss_and_says_why():
    decision = choose_method(INELIGIBLE)
    assert decision.method == "vss" and "Windows Server 2012 R2" in decision.reason and decision.full_required


def test_rct_history_on_now_ineligible_vm_falls_back_to_full_vss():
    decision = choose_method(INELIGIBLE, previous_method="rct")
    assert decision.method == "vss" and decision.full_required and "no longer possible" in decision.reason


def test_vss_allowed_everywhere_vss_exists():
    assert choose_method(ELIGIBLE, requested="vss").method == "vss"
    assert choose_method(INELIGIBLE, requested="vss").method == "vss"
    with pytest.raises(HyperVBackupError, match="VSS cannot be used"):
        choose_method(ELIGIBLE, requested="vss", vss_available=False)


@pytest.mark.parametrize("kwargs", [{"requested": "fast"}, {"previous_method": "hyper"}])
def test_bad_choices_are_refused(kwargs):
    with pytest.raises(HyperVBackupError):
        choose_method(ELIGIBLE, **kwargs)


def test_2008r2_csv_vms_share_one_key_per_csv():
    vms = [vm(vm_id="a", csv_path="C:\\ClusterStorage\\Volume1"), vm(vm_id="b", csv_path="C:\\ClusterStorage\\Volume1"),
           vm(vm_id="c", csv_path="C:\\ClusterStorage\\Volume2")]
    result = parallel_safety(host(7601), vms)
    assert result["a"]["serialization_key"] == result["b"]["serialization_key"] == "hv01:csv:C:\\ClusterStorage\\Volume1"
    assert result["c"]["serialization_key"] == "hv01:csv:C:\\ClusterStorage\\Volume2"
    assert "one at a time" in result["a"]["reason"]
    hardware = parallel_safety(host(7601, providers=("software", "hardware")), vms)
    assert [hardware[v]["serialization_key"] for v in "abc"] == [None, None, None]


def test_2008r2_local_vms_need_hardware_provider_for_parallel():
    software_only = parallel_safety(host(7601), [vm(vm_id="a")])
    assert software_only["a"]["serialization_key"] == "hv01:host"
    assert "hardware VSS provider" in software_only["a"]["reason"]
    hardware = parallel_safety(host(7601, providers=("software", "hardware")), [vm(vm_id="a")])
    assert hardware["a"]["serialization_key"] is None


def test_later_hosts_are_parallel_safe_even_on_csv():
    result = parallel_safety(host(14393), [vm(vm_id="a", csv_path="C:\\ClusterStorage\\Volume1")])
    assert result["a"]["serialization_key"] is None and "safe" in result["a"]["reason"]

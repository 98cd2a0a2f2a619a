"""The lab host's services, vssadmin and diskshadow (lab_vss / lab_diskshadow / lab_shadow)."""
import multiprocessing
import os
import re
import threading
import time

import pytest

from ansible_collections.hyperv.backup.plugins.module_utils.host import disk_access
from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import BridgeError
from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_admin, lab_files, lab_vss
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_disks import churn_data
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import LabLayout
from ansible_collections.hyperv.backup.plugins.module_utils.vdisk.vdisk import open_disk

MiB = 1024 * 1024
HV_WRITER = "66841cd4-6ded-4f4b-8f17-fd23f8ddc3de"
ROOT = "C:\\ProgramData\\hyperv.backup\\vss"
SET_IN_PROGRESS = 0x80042316
GUID = r"\{([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\}"


def build(tmp_path, host="hv01", vss="Stopped", size=16 * MiB, **host_options):
    layout = LabLayout(str(tmp_path), host)
    host_options.setdefault("era", "2022")
    lab_admin.ensure_host(layout, services={"vss": vss}, **host_options)
    _changed, vm = lab_admin.ensure_vm(layout, {"name": "web01", "disks": [{"size": size, "fill": {"seed": 1, "percent": 10}}]})
    return layout, vm


def create_script(work, volumes=("C:",), expose=True):
    lines = ["# hyperv.backup recovery point", "set context persistent", "set metadata %s\\%s\\backup.cab" % (ROOT, work),
             "set verbose on", "begin backup", "writer verify {%s}" % HV_WRITER]
    lines += ["add volume %s alias hvb%d" % (volume, index) for index, volume in enumerate(volumes)]
    lines.append("create")
    if expose:
        lines += ["expose %%hvb%d%% %s\\%s\\m%d" % (index, ROOT, work, index) for index in range(len(volumes))]
    lines.append("end backup")
    return "\r\n".join(lines) + "\r\n"


def prepare_mounts(layout, work, count=1):
    for index in range(count):
        lab_files.write_file(layout, "%s\\%s\\m%d\\.keep" % (ROOT, work, index), b"")
        lab_files.remove_file(layout, "%s\\%s\\m%d\\.keep" % (ROOT, work, index))


def shadow_ids(output):
    """{alias: shadow id} and the set id, read the way a caller must: GUIDs and %alias% tokens, never words."""
    aliases = dict((alias, guid) for guid, alias in re.findall(GUID + r"\s+%(hvb\d+)%", output))
    sets = set(re.findall(GUID + r"\s+%VSS_SHADOW_SET%", output))
    return aliases, sets


def read_all(path):
    with open_disk(path) as disk:
        return disk.read(0, disk.virtual_size)


def hyperv_writer_state(output):
    """The state number of the Hyper-V writer, by position: the [N] on the second line after its id."""
    lines = output.splitlines()
    index = [i for i, line in enumerate(lines) if HV_WRITER in line][0]
    return int(re.search(r"\[(\d+)\]", lines[index + 2]).group(1)), lines[index - 1], lines[index + 3]


# --- services and writers ------------------------------------------------------------------------

def test_service_start_rules_and_localised_display_names(tmp_path):
    layout, _vm = build(tmp_path, locale="de-DE", faults=["service_wont_start:swprv"])
    stopped = lab_vss.service(layout, "VSS")
    assert stopped == {"name": "vss", "display_name": "Volumeschattenkopie", "status": "Stopped", "start_type": "Manual",
                       "previous_status": "Stopped"}
    started = lab_vss.service(layout, "vss", start=True)
    assert (started["status"], started["previous_status"]) == ("Running", "Stopped")
    assert lab_vss.service(layout, "vss", start=True)["previous_status"] == "Running"
    with pytest.raises(BridgeError) as info:
        lab_vss.service(layout, "swprv", start=True)
    assert info.value.code == 0x8007041D and info.value.category == "service"
    assert lab_vss.service(layout, "swprv")["status"] == "Stopped"
    with pytest.raises(BridgeError) as info:
        lab_vss.service(layout, "spooler")
    assert info.value.code == 0x80070424 and info.value.category == "not_found"
    lab_admin.ensure_host(layout, locale="en-US", services={"vmms": {"status": "Stopped", "start_type": "Disabled"}})
    assert lab_vss.service(layout, "vmms")["display_name"] == "Hyper-V Virtual Machine Management"
    with pytest.raises(BridgeError) as info:
        lab_vss.service(layout, "vmms", start=True)
    assert info.value.code == 0x80070422


@pytest.mark.parametrize("locale,label,quote,stable", [("en-US", "Writer name", "'", "Stable"), ("de-DE", "Verfassername", '"', "Stabil")])
def test_vssadmin_lists_writers_in_the_host_language_and_demand_starts_vss(tmp_path, locale, label, quote, stable):
    layout, _vm = build(tmp_path, locale=locale)
    listed = lab_vss.vss_writers(layout)
    assert listed["exit_code"] == 0
    state, name_line, _error_line = hyperv_writer_state(listed["output"])
    assert state == 1 and name_line == "%s: %sMicrosoft Hyper-V VSS Writer%s" % (label, quote, quote)
    assert "[1] %s" % stable in listed["output"]
    ids = re.findall(r"\{([0-9a-f-]{36})\}", listed["output"])
    assert ids.index(HV_WRITER) > 0                       # not the first writer: parsers must find it by id
    assert lab_vss.service(layout, "vss")["status"] == "Running"   # vssadmin activates the demand-start service
    lab_admin.ensure_host(layout, faults=["vss_writer_failed"])
    state, _name, error_line = hyperv_writer_state(lab_vss.vss_writers(layout)["output"])
    assert state == 8 and ("Retryable error" if locale == "en-US" else "Wiederholbarer Fehler") in error_line
    lab_admin.ensure_host(layout, services={"vmms": "Stopped"})
    assert HV_WRITER not in lab_vss.vss_writers(layout)["output"]   # the writer lives in vmms


def test_vssadmin_fails_when_vss_cannot_start(tmp_path):
    layout, _vm = build(tmp_path)
    lab_admin.ensure_host(layout, services={"vss": {"status": "Stopped", "start_type": "Disabled"}})
    listed = lab_vss.vss_writers(layout)
    assert listed["exit_code"] != 0 and "0x80070422" in listed["output"] and HV_WRITER not in listed["output"]


# --- diskshadow ----------------------------------------------------------------------------------

def test_create_expose_delete_gives_a_frozen_sparse_copy_while_the_guest_keeps_writing(tmp_path):
    layout, vm = build(tmp_path, size=32 * MiB)
    disk = layout.read_vm(vm["id"])["disks"][0]["current"]
    states = [read_all(disk)]
    stop = threading.Event()

    def guest():
        seed = 100
        while not stop.is_set():
            lab_admin.churn(layout, "web01", seed=seed, writes=4, write_size=64 * 1024)
            states.append(read_all(disk))
            seed += 1

    def wait_for_states(count):
        # Progress of the guest, not wall time: a loaded machine must not turn this into a race.
        deadline = time.monotonic() + 60
        while len(states) < count and time.monotonic() < deadline:
            time.sleep(0.01)

    writer = threading.Thread(target=guest)
    writer.start()
    try:
        wait_for_states(3)
        prepare_mounts(layout, "w1")
        run = lab_vss.diskshadow(layout, create_script("w1"))
        written_before = len(states)
        wait_for_states(written_before + 2)
    finally:
        stop.set()
        writer.join()
    assert run["exit_code"] == 0, run["output"]
    aliases, sets = shadow_ids(run["output"])
    assert len(sets) == 1 and set(aliases) == {"hvb0"}
    assert "-> %%hvb0%% = {%s}" % aliases["hvb0"] in run["output"]
    exposed = "%s\\w1\\m0\\Hyper-V\\%s\\Virtual Hard Disks\\%s" % (ROOT, vm["id"], os.path.basename(disk))
    frozen_path = lab_files.to_local(layout, exposed)
    frozen = read_all(frozen_path)
    assert len(states) > 3 and frozen in states   # exactly one moment of the guest's writes, never a torn mix
    assert read_all(disk) != frozen              # the guest went on writing after the shadow copy
    assert os.stat(frozen_path).st_blocks * 512 < os.stat(frozen_path).st_size // 2   # zeros not materialised
    assert lab_files.to_windows(layout, frozen_path) == exposed          # the exposed name maps both ways
    real = os.path.realpath(frozen_path)
    copies = lab_vss.shadow_copies(layout)
    device_path = lab_files.to_windows(layout, real)                      # the unexposed name: the device object
    assert device_path.startswith(copies[0]["DeviceObject"] + "\\") and lab_files.to_local(layout, device_path) == real
    assert disk_access.map_path(device_path, lab_files.path_map(layout)) == real
    assert [(c["ID"].lower(), c["SetID"].lower(), c["ExposedName"], c["Persistent"]) for c in copies] == [
        ("{%s}" % aliases["hvb0"], "{%s}" % sets.pop(), "%s\\w1\\m0\\" % ROOT, True)]
    assert lab_files.read_file(layout, "%s\\w1\\backup.cab" % ROOT, 1 << 20) is not None
    with pytest.raises(BridgeError):
        lab_files.write_file(layout, exposed, b"shadow copies are read-only")
    deleted = lab_vss.diskshadow(layout, "delete shadows set %s\r\n" % copies[0]["SetID"])
    assert deleted["exit_code"] == 0 and deleted["output"].splitlines()[-1].endswith(": 1")
    assert lab_vss.shadow_copies(layout) == [] and not os.path.exists(frozen_path)
    assert lab_files.list_directory(layout, "%s\\w1\\m0" % ROOT)["entries"] == []   # the mount folder is empty again
    assert lab_files.remove_file(layout, "%s\\w1\\m0" % ROOT) is True


def _slow_create(lab_dir, host, work, queue):
    layout = LabLayout(lab_dir, host)
    queue.put(lab_vss.diskshadow(layout, create_script(work, expose=False)))


@pytest.mark.parametrize("hardware", [False, True])
def test_two_concurrent_creates_one_gets_snapshot_set_in_progress_and_many_sets_coexist(tmp_path, hardware):
    # The rule is VSS's own, so a hardware provider does not lift it.
    layout, _vm = build(tmp_path, quirks=["slow_shadow_create_seconds:2"], hardware_vss_provider=hardware)
    queue = multiprocessing.get_context("fork").Queue()
    first = multiprocessing.get_context("fork").Process(target=_slow_create, args=(str(tmp_path), "hv01", "w1", queue))
    first.start()
    marker = os.path.join(lab_files.vss_dir(layout), "creating.json")
    deadline = time.time() + 10
    while not os.path.exists(marker) and time.time() < deadline:
        time.sleep(0.02)
    second = lab_vss.diskshadow(layout, create_script("w2", expose=False))
    first.join(30)
    winner = queue.get(timeout=5)
    assert winner["exit_code"] == 0, winner["output"]
    assert second["exit_code"] & 0xFFFFFFFF == SET_IN_PROGRESS and second["exit_code"] < 0   # Int32, as .NET reports it
    assert "0x80042316" in second["output"] and "VSS_E_SNAPSHOT_SET_IN_PROGRESS" in second["output"]
    assert len(lab_vss.shadow_copies(layout)) == 1 and not os.path.exists(marker)
    lab_admin.ensure_host(layout, quirks=[])
    for work in ("w3", "w4"):                 # once the window is closed, more sets may be created and coexist
        assert lab_vss.diskshadow(layout, create_script(work, expose=False))["exit_code"] == 0
    copies = lab_vss.shadow_copies(layout)
    assert len(set(copy["SetID"] for copy in copies)) == 3
    listed = lab_vss.diskshadow(layout, "list shadows all\r\n")
    assert listed["exit_code"] == 0 and len(re.findall(r"\* Shadow copy ID = " + GUID, listed["output"])) == 3


def test_a_failed_writer_fails_create_and_leaves_nothing(tmp_path):
    layout, _vm = build(tmp_path, faults=["vss_writer_failed"])
    run = lab_vss.diskshadow(layout, create_script("w1", expose=False))
    assert run["exit_code"] & 0xFFFFFFFF == 0x800423F3 and "0x800423F3" in run["output"]
    assert lab_vss.shadow_copies(layout) == []
    lab_admin.ensure_host(layout, faults=[])
    assert lab_vss.diskshadow(layout, create_script("w2", expose=False))["exit_code"] == 0   # the window was released


def test_vss_is_demand_started_but_a_disabled_vss_fails_diskshadow(tmp_path):
    layout, _vm = build(tmp_path)
    assert lab_vss.diskshadow(layout, create_script("w1", expose=False))["exit_code"] == 0
    assert lab_vss.service(layout, "vss")["status"] == "Running" and lab_vss.service(layout, "swprv")["status"] == "Running"
    lab_admin.ensure_host(layout, services={"vss": {"status": "Stopped", "start_type": "Disabled"}})
    run = lab_vss.diskshadow(layout, create_script("w2", expose=False))
    assert run["exit_code"] & 0xFFFFFFFF == 0x80070422 and len(lab_vss.shadow_copies(layout)) == 1


def test_volatile_sets_die_with_diskshadow_and_unknown_volumes_are_refused(tmp_path):
    layout, _vm = build(tmp_path)
    run = lab_vss.diskshadow(layout, "set context volatile\r\nadd volume C: alias v\r\ncreate\r\n")
    assert run["exit_code"] == 0 and lab_vss.shadow_copies(layout) == []
    bad = lab_vss.diskshadow(layout, "set context persistent\r\nadd volume E: alias e\r\ncreate\r\n")
    assert bad["exit_code"] & 0xFFFFFFFF == 0x80042308
    missing = lab_vss.diskshadow(layout, "delete shadows set {6b1a7d8e-0000-4000-8000-000000000000}\r\n")
    assert missing["exit_code"] != 0


def test_german_host_localises_words_but_not_guids_and_aliases(tmp_path):
    layout, _vm = build(tmp_path, locale="de-DE")
    prepare_mounts(layout, "w1")
    run = lab_vss.diskshadow(layout, create_script("w1"))
    assert run["exit_code"] == 0
    assert "Shadow copy ID" not in run["output"] and "Schattenkopie-ID" in run["output"]
    aliases, sets = shadow_ids(run["output"])
    assert set(aliases) == {"hvb0"} and len(sets) == 1
    assert [copy["ID"].lower() for copy in lab_vss.shadow_copies(layout)] == ["{%s}" % aliases["hvb0"]]


def test_csv_volume_is_one_at_a_time_on_a_2008r2_cluster_unless_a_hardware_provider_is_installed(tmp_path):
    csv = "C:\\ClusterStorage\\Volume1"
    layouts = []
    for host in ("node1", "node2"):
        layout = LabLayout(str(tmp_path), host)
        lab_admin.ensure_host(layout, era="2008r2", cluster={"name": "OLD"}, csvs=[csv])
        lab_admin.ensure_vm(layout, {"name": "vm-" + host, "csv": csv, "disks": [{"size": 4 * MiB}]})
        layouts.append(layout)
    assert lab_vss.diskshadow(layouts[0], create_script("w1", volumes=(csv,), expose=False))["exit_code"] == 0
    copy = lab_vss.shadow_copies(layouts[0])[0]
    frozen_root = lab_files.to_local(layouts[0], copy["DeviceObject"])
    node1_vm = layouts[0].vm_ids()[0]
    assert os.listdir(frozen_root) == [node1_vm]          # the CSV volume's root holds the VM folder
    busy = lab_vss.diskshadow(layouts[1], create_script("w2", volumes=(csv,), expose=False))
    assert busy["exit_code"] & 0xFFFFFFFF == SET_IN_PROGRESS and "Volume1" in busy["output"]
    lab_admin.ensure_host(layouts[1], hardware_vss_provider=True)
    assert lab_vss.diskshadow(layouts[1], create_script("w3", volumes=(csv,), expose=False))["exit_code"] == 0
    hardware = lab_vss.shadow_copies(layouts[1])[0]
    assert hardware["HardwareAssisted"] is True and hardware["ProviderID"] == "{781C006A-5829-4A25-81E3-D5E43BD005AB}"


def test_churn_data_helper_is_what_the_guest_wrote(tmp_path):
    """The frozen copy holds the guest's bytes (not only equal to some state): check one write before the freeze."""
    layout, vm = build(tmp_path)
    written = lab_admin.churn(layout, "web01", seed=9, writes=1, write_size=64 * 1024, offsets=[MiB])
    prepare_mounts(layout, "w1")
    assert lab_vss.diskshadow(layout, create_script("w1"))["exit_code"] == 0
    disk = os.path.basename(written["path"])
    exposed = "%s\\w1\\m0\\Hyper-V\\%s\\Virtual Hard Disks\\%s" % (ROOT, vm["id"], disk)
    with open_disk(lab_files.to_local(layout, exposed)) as frozen:
        assert frozen.read(MiB, 64 * 1024) == churn_data(9, 0, 64 * 1024)


def test_expose_at_a_drive_letter_and_delete_by_exposed_folder(tmp_path):
    layout, vm = build(tmp_path)
    run = lab_vss.diskshadow(layout, "set context persistent\r\nadd volume C: alias a\r\ncreate\r\nexpose %a% V:\r\n")
    assert run["exit_code"] == 0 and "successfully exposed as V:\\." in run["output"]
    disk_file = "V:\\Hyper-V\\%s\\Virtual Hard Disks\\web01_disk0.vhdx" % vm["id"]
    assert os.path.isfile(lab_files.to_local(layout, disk_file))
    taken = lab_vss.diskshadow(layout, "set context persistent\r\nadd volume C: alias b\r\ncreate\r\nexpose %b% v:\r\n")
    assert taken["exit_code"] != 0 and "drive letter v: is in use" in taken["output"]
    prepare_mounts(layout, "w9")
    second_id = [c["ID"] for c in lab_vss.shadow_copies(layout) if not c["ExposedName"]][0]
    assert lab_vss.diskshadow(layout, "expose %s %s\\w9\\m0\r\n" % (second_id, ROOT))["exit_code"] == 0
    listed = lab_vss.diskshadow(layout, "list shadows id %s\r\n" % second_id)
    assert listed["output"].count("* Shadow copy ID") == 1 and "%s\\w9\\m0\\" % ROOT in listed["output"]
    gone = lab_vss.diskshadow(layout, "delete shadows exposed %s\\w9\\m0\r\n" % ROOT)
    assert gone["exit_code"] == 0 and [c["ExposedName"] for c in lab_vss.shadow_copies(layout)] == ["V:\\"]
    assert lab_vss.diskshadow(layout, "delete shadows exposed V:\r\n")["exit_code"] == 0
    assert lab_vss.shadow_copies(layout) == []
    with pytest.raises(BridgeError):
        lab_files.to_local(layout, disk_file)


def test_a_checkpoint_child_in_a_shadow_copy_finds_its_parent_inside_the_shadow_copy(tmp_path):
    layout = LabLayout(str(tmp_path), "hv01")
    lab_admin.ensure_host(layout, era="2022")
    _changed, vm = lab_admin.ensure_vm(layout, {"name": "web01", "checkpoints": ["before"],
                                                "disks": [{"size": 16 * MiB, "fill": {"seed": 1, "percent": 10}}]})
    lab_admin.churn(layout, "web01", seed=3, writes=4)
    current = layout.read_vm(vm["id"])["disks"][0]["current"]
    assert current.endswith(".avhdx")
    assert lab_vss.diskshadow(layout, "set context persistent\r\nadd volume C: alias a\r\ncreate\r\nexpose %a% V:\r\n")["exit_code"] == 0
    frozen = lab_files.to_local(layout, "V:\\" + lab_files.to_windows(layout, current)[3:])
    root = lab_files.to_local(layout, "V:\\")
    with open_disk(frozen) as disk:
        assert len(disk.chain) == 2 and all(path.startswith(root + os.sep) for path in disk.chain)
    assert read_all(frozen) == read_all(current)

# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""``root\\cimv2`` and ``root\\MSCluster`` of a lab host.

- Win32_OperatingSystem: Version / BuildNumber of the era, Caption (lab_locale "os.caption"). The schema
  lists only these three properties (related_not_detailed), so CSName is not emulated: the computer name
  comes from ``host_environment()``.
- Win32_ShadowProvider: the software provider, plus the hardware one on hosts with ``hardware_vss_provider``.
- Win32_ShadowCopy: the host's shadow copies (``lab_vss.shadow_copies``, helper H3).
- MSCluster_Cluster / MSCluster_ClusterSharedVolume: only on clustered hosts (no cluster: the classes
  return nothing, as on a node whose cluster service is not configured; UNCONFIRMED: Windows may instead
  refuse the namespace). ClusterFunctionalLevel exists from 2016 (schema "since"), so 2008 R2 .. 2012 R2
  clusters show no level.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import NAMESPACE_CIMV2, NAMESPACE_CLUSTER
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import (
    ERAS, HARDWARE_VSS_PROVIDER, SOFTWARE_VSS_PROVIDER, cluster_fact)
from ansible_collections.hyperv.backup.plugins.module_utils.lab.wmi_classes import ERA_BUILDS

SOFTWARE_PROVIDER_CLSID = "{65EE1DBA-8FF4-4A58-AC1C-3470EE2F376A}"   # UNCONFIRMED (the lab's value)
HARDWARE_PROVIDER_CLSID = "{781C006A-5829-4A25-81E3-D5E43BD005AB}"


def operating_system(world):
    version, build = ERA_BUILDS[world.era]
    caption = ERAS.get(world.era, {}).get("os_name", "Microsoft Windows Server")
    try:
        from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_locale
        caption = lab_locale.text(world.locale, "os.caption", os_name=caption)
    except (ImportError, KeyError, ValueError):
        pass
    return [{"Version": version, "BuildNumber": str(build), "Caption": caption}]


def shadow_providers(world):
    rows = [{"ID": SOFTWARE_VSS_PROVIDER["id"], "Name": SOFTWARE_VSS_PROVIDER["name"], "CLSID": SOFTWARE_PROVIDER_CLSID,
             "Type": 1, "Version": "1.0.0.7", "VersionID": "{00000001-0000-0000-0007-000000000000}"}]
    if world.host_doc.get("hardware_vss_provider"):
        rows.append({"ID": HARDWARE_VSS_PROVIDER["id"], "Name": HARDWARE_VSS_PROVIDER["name"], "CLSID": HARDWARE_PROVIDER_CLSID,
                     "Type": 3, "Version": "1.0", "VersionID": "{00000001-0000-0000-0000-000000000000}"})
    return rows


def shadow_copies(world):
    try:
        from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_vss
    except ImportError:
        return []
    return lab_vss.shadow_copies(world.layout)


def clusters(world):
    fact = cluster_fact(world.host_doc)
    if not fact:
        return []
    return [{"Name": fact["name"], "Fqdn": "%s.lab.local" % fact["name"].lower(), "ClusterFunctionalLevel": fact["functional_level"],
             "EnableSharedVolumes": 1, "SharedVolumesRoot": "C:\\ClusterStorage"}]


def shared_volumes(world):
    if not world.host_doc.get("cluster"):
        return []
    return [{"Name": "Cluster Disk %d" % (index + 1), "Caption": "Cluster Disk %d" % (index + 1), "Description": None,
             "Status": "OK", "VolumeName": path, "FaultState": 0, "BackupState": 0}
            for index, path in enumerate(world.host_doc.get("csvs", []))]


PROVIDERS = {
    (NAMESPACE_CIMV2, "Win32_OperatingSystem"): operating_system,
    (NAMESPACE_CIMV2, "Win32_ShadowProvider"): shadow_providers,
    (NAMESPACE_CIMV2, "Win32_ShadowCopy"): shadow_copies,
    (NAMESPACE_CLUSTER, "MSCluster_Cluster"): clusters,
    (NAMESPACE_CLUSTER, "MSCluster_ClusterSharedVolume"): shared_volumes,
}

# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The classes, properties, methods and associations the lab's emulated WMI exposes, per namespace and era.

Every name here is taken from ``hyperv_wmi_schema.json`` (the shared reference; the v1 part for
``root\\virtualization``), so that the emulator can never answer with a name Windows does not have
(``test_lab_wmi_schema.py`` checks this against the schema file). A class entry is
``(since, keys, "Prop Prop@since ...")``: ``since`` is the first lab era that has the class or
property ("" = every era that has the namespace). Keys are the ones real object paths carry (the
schema's "keys", not the class pages' Key qualifiers).

Eras: 2008r2, 2012, 2012r2, 2016, 2019, 2022, 2025. Windows Server 2019 contains every change of
1703..1803; 2025 is the 2022 model (UNCONFIRMED beyond configuration versions 11.0/12.0).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import (
    NAMESPACE_CIMV2, NAMESPACE_CLUSTER, NAMESPACE_V1, NAMESPACE_V2)

ERA_ORDER = ("2008r2", "2012", "2012r2", "2016", "2019", "2022", "2025")
# (os version, build) per era; Win32_OperatingSystem.Version / BuildNumber.
ERA_BUILDS = {"2008r2": ("6.1.7601", 7601), "2012": ("6.2.9200", 9200), "2012r2": ("6.3.9600", 9600),
              "2016": ("10.0.14393", 14393), "2019": ("10.0.17763", 17763), "2022": ("10.0.20348", 20348),
              "2025": ("10.0.26100", 26100)}
# Which namespaces each era has: v1 on 2008 R2 and 2012 (removed in 2012 R2), v2 from 2012.
NAMESPACE_ERAS = {NAMESPACE_V1: ("2008r2", "2012"), NAMESPACE_V2: ERA_ORDER[1:], NAMESPACE_CIMV2: ERA_ORDER,
                  NAMESPACE_CLUSTER: ERA_ORDER}


def era_index(era):
    return ERA_ORDER.index(era)


def available(since, era, until=None):
    """True when something that appeared in ``since`` ("" = always) exists in ``era``."""
    if since and era_index(era) < era_index(since):
        return False
    return not (until and era_index(era) >= era_index(until))


V2_CLASSES = {
    "Msvm_ComputerSystem": ('', ('CreationClassName', 'Name'),
                            "AvailableRequestedStates Caption CommunicationStatus CreationClassName Dedicated Description "
                            "DetailedStatus ElementName EnabledDefault EnabledState EnhancedSessionModeState@2012r2 "
                            "FailedOverReplicationType HealthState IdentifyingDescriptions InstallDate InstanceID "
                            "LastApplicationConsistentReplicationTime LastReplicationTime LastReplicationType "
                            "LastSuccessfulBackupTime Name NameFormat NumberOfNumaNodes OnTimeInMilliseconds OperatingStatus "
                            "OperationalStatus OtherDedicatedDescriptions OtherEnabledState OtherIdentifyingInfo "
                            "PowerManagementCapabilities PrimaryOwnerContact PrimaryOwnerName PrimaryStatus ProcessID "
                            "ReplicationHealth ReplicationMode ReplicationState RequestedState ResetCapability Roles Status "
                            "StatusDescriptions TimeOfLastConfigurationChange TimeOfLastStateChange TransitioningToState"),
    "Msvm_PlannedComputerSystem": ('', ('CreationClassName', 'Name'),
                                   "Name ElementName CreationClassName InstanceID EnabledState Caption Description"),
    "Msvm_VirtualSystemSettingData": ('', ('InstanceID',),
                                      "AdditionalRecoveryInformation AllowFullSCSICommandSet AllowReducedFcRedundancy Architecture@2019 "
                                      "AutomaticCriticalErrorAction@2016 AutomaticCriticalErrorActionTimeout@2016 AutomaticRecoveryAction "
                                      "AutomaticShutdownAction AutomaticSnapshotsEnabled@2019 AutomaticStartupAction "
                                      "AutomaticStartupActionDelay AutomaticStartupActionSequenceNumber BaseBoardSerialNumber BIOSGUID "
                                      "BIOSNumLock BIOSSerialNumber BootOrder BootSourceOrder@2012r2 Caption ChassisAssetTag "
                                      "ChassisSerialNumber ConfigurationDataRoot ConfigurationFile ConfigurationID ConsoleMode@2016 "
                                      "CreationTime DebugChannelId DebugPort DebugPortEnabled Description ElementName "
                                      "EnhancedSessionTransportType@2019 GuestControlledCacheTypes@2016 GuestStateDataRoot@2019 "
                                      "GuestStateFile@2019 HighMmioGapSize@2019 IncrementalBackupEnabled InstanceID "
                                      "IsAutomaticSnapshot@2019 IsSaved LockOnDisconnect@2016 LogDataRoot LowMmioGapSize@2012r2 "
                                      "NetworkBootPreferredProtocol@2012r2 Notes Parent PauseAfterBootFailure@2012r2 RecoveryFile "
                                      "SecureBootEnabled@2012r2 SecureBootTemplateId@2016 SnapshotDataRoot SuspendDataRoot SwapFileDataRoot "
                                      "UserSnapshotType@2016 Version VirtualNumaEnabled VirtualSystemIdentifier VirtualSystemSubType@2012r2 "
                                      "VirtualSystemType EnableHibernation HighMmioGapBase TurnOffOnGuestRestart"),
    "Msvm_VirtualSystemManagementService": ('', ('CreationClassName', 'Name', 'SystemCreationClassName', 'SystemName'),
                                            "AvailableRequestedStates Caption CommunicationStatus CreationClassName Description DetailedStatus "
                                            "ElementName EnabledDefault EnabledState HealthState InstallDate InstanceID Name OperatingStatus "
                                            "OperationalStatus OtherEnabledState PrimaryOwnerContact PrimaryOwnerName PrimaryStatus "
                                            "RequestedState Started StartMode Status StatusDescriptions SystemCreationClassName SystemName "
                                            "TimeOfLastStateChange TransitioningToState"),
    "Msvm_VirtualSystemManagementServiceSettingData": ('', ('InstanceID',),
                                                       "BiosLockString Caption CurrentWWNNAddress DefaultExternalDataRoot "
                                                       "DefaultVirtualHardDiskCachingMode@2016 DefaultVirtualHardDiskPath Description ElementName "
                                                       "EnhancedSessionModeEnabled@2012r2 HbaLunTimeout HypervisorRootSchedulerEnabled@2019 InstanceID "
                                                       "MaximumMacAddress MaximumWWPNAddress MinimumMacAddress MinimumWWPNAddress NumaSpanningEnabled "
                                                       "PrimaryOwnerContact PrimaryOwnerName"),
    "Msvm_VirtualSystemSnapshotService": ('', ('CreationClassName', 'Name', 'SystemCreationClassName', 'SystemName'),
                                          "AvailableRequestedStates Caption CommunicationStatus CreationClassName Description DetailedStatus "
                                          "ElementName EnabledDefault EnabledState HealthState InstallDate InstanceID Name OperatingStatus "
                                          "OperationalStatus OtherEnabledState PrimaryOwnerContact PrimaryOwnerName PrimaryStatus "
                                          "RequestedState Started StartMode Status StatusDescriptions SystemCreationClassName SystemName "
                                          "TimeOfLastStateChange TransitioningToState"),
    "Msvm_VirtualSystemSnapshotSettingData": ('2016', ('InstanceID',),
                                              "ConsistencyLevel GuestBackupType@2019 IgnoreNonSnapshottableDisks InstanceID Caption Description "
                                              "ElementName"),
    "Msvm_VirtualSystemReferencePoint": ('2016', ('InstanceID', 'VirtualSystemIdentifier'),
                                         "ConsistencyLevel HasAssociatedData InstanceID ReferencePointType ResilientChangeTrackingIdentifiers "
                                         "VirtualDiskIdentifiers VirtualSystemIdentifier Caption Description ElementName"),
    # The schema documents no properties of its own (CIM_Service); only its path keys are exposed.
    "Msvm_VirtualSystemReferencePointService": ('2016', ('CreationClassName', 'Name', 'SystemCreationClassName', 'SystemName'),
                                                "CreationClassName Name SystemCreationClassName SystemName"),
    "Msvm_StorageAllocationSettingData": ('', ('InstanceID',),
                                          "Access Address AddressOnParent AllocationUnits AutomaticAllocation AutomaticDeallocation "
                                          "CachingMode@2016 Caption Connection ConsumerVisibility Description ElementName HostExtentName "
                                          "HostExtentNameFormat HostExtentNameNamespace HostExtentStartingAddress HostResource "
                                          "HostResourceBlockSize IgnoreFlushes@2016 InstanceID IOPSAllocationUnits@2012r2 IOPSLimit@2012r2 "
                                          "IOPSReservation@2012r2 Limit MappingBehavior OtherHostExtentNameFormat OtherHostExtentNameNamespace "
                                          "OtherResourceType Parent PersistentReservationsSupported@2012r2 PoolID Reservation ResourceSubType "
                                          "ResourceType SnapshotId@2016 StorageQoSPolicyID@2016 VirtualQuantity VirtualQuantityUnits "
                                          "VirtualResourceBlockSize Weight WriteHardeningMethod@2019"),
    "Msvm_ResourceAllocationSettingData": ('', ('InstanceID',),
                                           "Address AddressOnParent AllocationUnits AutomaticAllocation AutomaticDeallocation Caption Connection "
                                           "ConsumerVisibility Description ElementName HostResource InstanceID Limit MappingBehavior "
                                           "OtherResourceType Parent PoolID Reservation ResourceSubType ResourceType VirtualQuantity "
                                           "VirtualQuantityUnits VirtualSystemIdentifiers Weight"),
    "Msvm_ImageManagementService": ('', ('CreationClassName', 'Name', 'SystemCreationClassName', 'SystemName'),
                                    "AvailableRequestedStates Caption CommunicationStatus CreationClassName Description DetailedStatus "
                                    "ElementName EnabledDefault EnabledState HealthState InstallDate InstanceID Name OperatingStatus "
                                    "OperationalStatus OtherEnabledState PrimaryOwnerContact PrimaryOwnerName PrimaryStatus "
                                    "RequestedState Started StartMode Status StatusDescriptions SystemCreationClassName SystemName "
                                    "TimeOfLastStateChange TransitioningToState"),
    "Msvm_VirtualHardDiskSettingData": ('', ('InstanceID',),
                                        "BlockSize Caption DataAlignment@2019 Description ElementName Format InstanceID IsPmemCompatible@2019 "
                                        "LogicalSectorSize MaxInternalSize ParentIdentifier@2016 ParentPath ParentTimestamp@2016 Path "
                                        "PhysicalSectorSize PmemAddressAbstractionType@2019 Type VirtualDiskId@2012r2"),
    "Msvm_ConcreteJob": ('', ('InstanceID',),
                         "Cancellable Caption CommunicationStatus DeleteOnCompletion Description DetailedStatus ElapsedTime "
                         "ElementName ErrorCode ErrorDescription ErrorSummaryDescription HealthState InstallDate InstanceID "
                         "JobRunTimes JobState JobStatus JobType LocalOrUtcTime Name Notify OperatingStatus OperationalStatus "
                         "OtherRecoveryAction Owner PercentComplete PrimaryStatus Priority RecoveryAction RunDay RunDayOfWeek "
                         "RunMonth RunStartInterval ScheduledStartTime StartTime Status StatusDescriptions TimeBeforeRemoval "
                         "TimeOfLastStateChange TimeSubmitted UntilTime"),
    "Msvm_VssComponent": ('', ('CreationClassName', 'DeviceID', 'SystemCreationClassName', 'SystemName'),
                          "AdditionalAvailability Availability AvailableRequestedStates Caption CommunicationStatus "
                          "CreationClassName Description DetailedStatus DeviceID ElementName EnabledDefault EnabledState "
                          "ErrorCleared ErrorDescription HealthState IdentifyingDescriptions InstallDate InstanceID "
                          "LastErrorCode MaxQuiesceTime Name OperatingStatus OperationalStatus OtherEnabledState "
                          "OtherIdentifyingInfo PowerManagementCapabilities PowerManagementSupported PowerOnHours PrimaryStatus "
                          "RequestedState Status StatusDescriptions StatusInfo SystemCreationClassName SystemName "
                          "TimeOfLastStateChange TotalPowerOnHours TransitioningToState"),
    "Msvm_VssComponentSettingData": ('', ('InstanceID',),
                                     "Address AddressOnParent AllocationUnits AutomaticAllocation AutomaticDeallocation Caption Connection "
                                     "ConsumerVisibility Description ElementName EnabledState HostResource InstanceID Limit "
                                     "MappingBehavior OtherResourceType Parent PoolID Reservation ResourceSubType ResourceType "
                                     "VirtualQuantity VirtualQuantityUnits Weight"),

}

# v1 (root\\virtualization). The schema's v1 part lists properties for VSSD, the global settings and
# Msvm_VirtualHardDiskInfo; for the other v1 classes it gives keys/notes only, and the lab exposes a
# few properties that the v2 class of the same name (same CIM parent) has; see test_lab_wmi_schema.py.
V1_CLASSES = {
    "Msvm_ComputerSystem": ("", ("CreationClassName", "Name"),
                            "Caption CreationClassName Description ElementName EnabledState HealthState InstallDate Name "
                            "OperationalStatus"),
    "Msvm_VirtualSystemSettingData": ("", ("InstanceID",),
                                      "InstanceID SystemName SettingType VirtualSystemType ElementName CreationTime Notes "
                                      "Parent BIOSGUID BootOrder"),
    "Msvm_VirtualSystemGlobalSettingData": ("", ("InstanceID",),
                                            "InstanceID SystemName ElementName VirtualSystemType SettingType CreationTime "
                                            "ExternalDataRoot SnapshotDataRoot AutomaticStartupAction AutomaticShutdownAction "
                                            "AutomaticRecoveryAction Version"),
    "Msvm_ResourceAllocationSettingData": ("", ("InstanceID",),
                                           "Address AddressOnParent Caption Connection Description ElementName HostResource "
                                           "InstanceID Parent ResourceSubType ResourceType"),
    "Msvm_VirtualSystemManagementService": ("", ("CreationClassName", "Name", "SystemCreationClassName", "SystemName"),
                                            "Caption CreationClassName Description ElementName EnabledState HealthState Name "
                                            "Started StartMode Status SystemCreationClassName SystemName"),
    "Msvm_ImageManagementService": ("", ("CreationClassName", "Name", "SystemCreationClassName", "SystemName"),
                                    "Caption CreationClassName Description ElementName EnabledState HealthState Name "
                                    "Started StartMode Status SystemCreationClassName SystemName"),
    "Msvm_ConcreteJob": ("", ("InstanceID",),
                         "Caption Description ElementName ErrorCode ErrorDescription ErrorSummaryDescription InstanceID "
                         "JobState JobStatus JobType PercentComplete StartTime TimeBeforeRemoval TimeSubmitted"),
}

CIMV2_CLASSES = {
    # Win32_OperatingSystem is in the schema's related_not_detailed part with these properties only.
    "Win32_OperatingSystem": ("", (), "Version BuildNumber Caption"),
    "Win32_ShadowProvider": ("", ("ID",), "ID Name CLSID Type Version VersionID"),
    "Win32_ShadowCopy": ("", ("ID",),
                         "Caption Description ID Name SetID ProviderID Status DeviceObject VolumeName OriginatingMachine "
                         "ServiceMachine ExposedName InstallDate Count State Persistent ClientAccessible NoAutoRelease "
                         "NoWriters Transportable NotSurfaced HardwareAssisted Differential Plex Imported ExposedRemotely "
                         "ExposedLocally ExposedPath"),
}

CLUSTER_CLASSES = {
    "MSCluster_Cluster": ("", ("Name",), "Name Fqdn ClusterFunctionalLevel@2016 EnableSharedVolumes SharedVolumesRoot"),
    "MSCluster_ClusterSharedVolume": ("", ("Name",), "Name Caption Description Status VolumeName FaultState BackupState"),
}

# Embedded-only classes (never enumerated; they travel as CIM-XML or as Embedded arguments).
EMBEDDED_ONLY = {
    NAMESPACE_V2: ("Msvm_VirtualSystemSnapshotSettingData", "Msvm_VirtualHardDiskSettingData"),
    NAMESPACE_V1: ("Msvm_VirtualHardDiskInfo", "Msvm_VirtualSystemImportSettingData"),
}
V1_EMBEDDED = {
    "Msvm_VirtualHardDiskInfo": ("", (), "Type FileSize MaxInternalSize InSavedState InUse ParentPath"),
    # NOT in the schema: the v1 import (2008 R2) as Microsoft's Hyper-V blog "Hyper-V R2 Import/Export - Part 2"
    # (MicrosoftDocs/Virtualization-Documentation) dumps it; UNCONFIRMED beyond that dump.
    "Msvm_VirtualSystemImportSettingData": ("", (),
                                            "Caption CreateCopy CurrentResourcePaths Description ElementName GenerateNewId "
                                            "InstanceID Name SecurityScope SourceNetworkConnections SourceResourcePaths "
                                            "SourceSnapshotDataRoot SourceVhdDataRoot SourceVmDataRoot TargetNetworkConnections "
                                            "TargetResourcePaths TargetSnapshotDataRoot TargetVhdDataRoot TargetVmDataRoot"),
}

CLASSES = {NAMESPACE_V2: V2_CLASSES, NAMESPACE_V1: dict(V1_CLASSES, **V1_EMBEDDED), NAMESPACE_CIMV2: CIMV2_CLASSES,
           NAMESPACE_CLUSTER: CLUSTER_CLASSES}

# Methods the lab implements: {namespace: {class: {method: since}}}. A method the schema lists but the
# lab does not implement raises WBEM_E_METHOD_NOT_IMPLEMENTED with a message that says so.
METHODS = {
    NAMESPACE_V2: {
        "Msvm_VirtualSystemManagementService": {"ModifySystemSettings": "", "ModifyResourceSettings": "", "DestroySystem": "",
                                                "ImportSystemDefinition": "", "ValidatePlannedSystem": "",
                                                "RealizePlannedSystem": ""},
        "Msvm_VirtualSystemSnapshotService": {"CreateSnapshot": "", "DestroySnapshot": "", "ConvertToReferencePoint": "2016",
                                              "ApplySnapshot": ""},
        "Msvm_VirtualSystemReferencePointService": {"DestroyReferencePoint": ""},
        "Msvm_ImageManagementService": {"GetVirtualHardDiskSettingData": "", "GetVirtualDiskChanges": "2016"},
    },
    NAMESPACE_V1: {
        # GetVirtualSystemImportSettingData / ImportVirtualSystemEx are NOT in the schema: parameters from the
        # 2008 R2 class reference (learn.microsoft.com previous-versions/.../virtual/...importvirtualsystemex).
        "Msvm_VirtualSystemManagementService": {"CreateVirtualSystemSnapshot": "", "RemoveVirtualSystemSnapshot": "",
                                                "GetVirtualSystemImportSettingData": "", "ImportVirtualSystemEx": ""},
        "Msvm_ImageManagementService": {"GetVirtualHardDiskInfo": ""},
    },
}

# Associations: {namespace: {association: since}}. v1 has Msvm_SettingsDefineState (schema v1 notes);
# Msvm_VirtualSystemSettingDataComponent and Msvm_AffectedJobElement in v1 are UNCONFIRMED (os-win's v1
# code walked VSSD -> RASD and job -> snapshot with associators without naming the association).
ASSOCIATIONS = {
    NAMESPACE_V2: {"Msvm_SettingsDefineState": "", "Msvm_SnapshotOfVirtualSystem": "", "Msvm_MostCurrentSnapshotInBranch": "",
                   "Msvm_ReferencePointOfVirtualSystem": "2016", "Msvm_VirtualSystemSettingDataComponent": "",
                   "Msvm_AffectedJobElement": "", "Msvm_SystemDevice": "", "Msvm_ElementSettingData": ""},
    NAMESPACE_V1: {"Msvm_SettingsDefineState": "", "Msvm_VirtualSystemSettingDataComponent": "", "Msvm_AffectedJobElement": ""},
}


# class_table per (namespace, era): the tables are constants, and the lab answers every bridge call (one per 1 GiB page
# of an RCT change list: 65536 for a 64 TiB disk) through them, so they are built once per process, not per call.
_CLASS_TABLES = {}


def class_table(namespace, era):
    """{class: (keys, (properties))} of the classes ``era`` has in ``namespace`` (None: no such namespace). Shared: do not modify."""
    if era not in NAMESPACE_ERAS.get(namespace, ()):
        return None
    cached = _CLASS_TABLES.get((namespace, era))
    if cached is not None:
        return cached
    out = {}
    for name, (since, keys, text) in CLASSES[namespace].items():
        if not available(since, era):
            continue
        props = []
        for word in text.split():
            prop, _sep, prop_since = word.partition("@")
            if available(prop_since, era):
                props.append(prop)
        out[name] = (keys, tuple(props))
    _CLASS_TABLES[(namespace, era)] = out
    return out


def methods_of(namespace, class_name, era):
    if class_name not in (class_table(namespace, era) or {}):
        return []
    return [name for name, since in METHODS.get(namespace, {}).get(class_name, {}).items() if available(since, era)]


def associations_of(namespace, era):
    return [name for name, since in ASSOCIATIONS.get(namespace, {}).items() if available(since, era)]


# Methods the schema lists for a class that the lab does not implement: calling one raises
# WBEM_E_METHOD_NOT_IMPLEMENTED (the lab's limit, said in the message), not WBEM_E_INVALID_METHOD.
NOT_EMULATED = {
    NAMESPACE_V2: {
        "Msvm_VirtualSystemManagementService": ("DefineSystem", "ImportSnapshotDefinitions", "ExportSystemDefinition",
                                                "GetSummaryInformation", "UpgradeSystemVersion", "DefinePlannedSystem"),
        "Msvm_VirtualSystemSnapshotService": ("DestroySnapshotTree", "ApplySnapshot", "ClearSnapshotState", "RequestStateChange"),
        "Msvm_VirtualSystemReferencePointService": ("CreateReferencePoint", "ExportReferencePoint", "ImportReferencePointMetadata",
                                                    "RemoveAssociatedData"),
        "Msvm_ImageManagementService": ("GetVirtualHardDiskState", "SetVirtualHardDiskSettingData", "ValidateVirtualHardDisk",
                                        "MergeVirtualHardDisk", "CreateVirtualHardDisk", "ResizeVirtualHardDisk",
                                        "SetParentVirtualHardDisk", "AttachVirtualHardDisk"),
        "Msvm_ConcreteJob": ("GetError", "GetErrorEx", "RequestStateChange", "KillJob"),
        "Msvm_ComputerSystem": ("RequestStateChange", "InjectNonMaskableInterrupt", "SetPowerState"),
        "Msvm_VssComponent": ("RequestStateChange", "Reset"),
        "Msvm_PlannedComputerSystem": ("RequestStateChange",),
    },
    NAMESPACE_V1: {
        "Msvm_VirtualSystemManagementService": ("RemoveVirtualSystemSnapshotTree", "DefineVirtualSystem", "ModifyVirtualSystem",
                                                "DestroyVirtualSystem"),
        "Msvm_ComputerSystem": ("RequestStateChange",),
    },
}


_ALL_PROPERTIES = {}


def all_properties(namespace, class_name):
    """Every property name of the class in any era (what a provider may set; the era filters), as a frozenset."""
    cached = _ALL_PROPERTIES.get((namespace, class_name))
    if cached is None:
        cached = _ALL_PROPERTIES[(namespace, class_name)] = frozenset(word.partition("@")[0] for word in CLASSES[namespace][class_name][2].split())
    return cached


def era_properties(namespace, class_name, era):
    return [word.partition("@")[0] for word in CLASSES[namespace][class_name][2].split()
            if available(word.partition("@")[2], era)]

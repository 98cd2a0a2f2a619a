# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""diskshadow on the lab host: the command subset a VSS recovery point script uses, printed as diskshadow prints it.

Commands (case-insensitive; ``#`` lines are comments)::

    set context persistent|volatile|clientaccessible [nowriters]    set verbose on|off
    set metadata <file.cab>          begin backup        end backup        writer verify {writer id}
    add volume <X:|X:\\|mount folder> [alias <name>] [provider {id}]        create
    expose %<alias>%|{shadow id} <X:|empty folder>
    delete shadows set {id} | id {id} | exposed <X:|folder> | all
    list shadows all | set {id} | id {id}                          exit

Output follows real transcripts of diskshadow 1.0 (public write-ups quoted in powershell_vss.py and found
with find_string, e.g. ids 2452318187, 33296213591): the banner, ``-> <command>`` echoes, ``-> %a% = {id}``
when an alias is expanded, "Alias a for shadow ID {..} set as environment variable.", "Querying all shadow
copies with the shadow copy set ID {..}", the ``* Shadow copy ID = {..}  %a%`` blocks, "The shadow copy was
successfully exposed as X:\\." and "The command script failed." UNCONFIRMED and what the lab does: the
wording of error and delete messages (written as best known), the exposed line of a listing, the exit code
(the HRESULT of the failure as the Int32 .NET's Process.ExitCode reports, 0 on success; so
``exit_code & 0xFFFFFFFF == 0x80042316`` for a set in progress), and the language: on a de-DE host the
lab localises the words (not the ``->`` echoes, GUIDs or ``%alias%`` tokens), so a caller must read
GUIDs and aliases, never English words.

Semantics: ``add volume`` opens the host's shadow copy creation window (StartSnapshotSet) and ``create``
closes it after DoSnapshotSet; a second script meeting an open window fails with
VSS_E_SNAPSHOT_SET_IN_PROGRESS (0x80042316). With writers (no ``nowriters``) ``create`` needs every
``writer verify`` writer listed and healthy (fault ``vss_writer_failed``: VSS_E_WRITERERROR_RETRYABLE).
A ``volatile`` set is released when the script ends; a ``persistent`` one stays until deleted. On 2008 R2
with only the software provider, a CSV holding a shadow copy (on any node of the cluster) cannot be added
again (the CSV is in backup state; the lab reports 0x80042316 as the old lab did, UNCONFIRMED).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import re
import time
import uuid

from ansible_collections.hyperv.backup.plugins.module_utils.host.bridge import BridgeError
from ansible_collections.hyperv.backup.plugins.module_utils.lab import lab_files, lab_shadow, lab_vss
from ansible_collections.hyperv.backup.plugins.module_utils.lab.lab_state import SOFTWARE_VSS_PROVIDER, quirk_value

VSS_E_OBJECT_NOT_FOUND = 0x80042308
VSS_E_VOLUME_NOT_SUPPORTED = 0x8004230C
VSS_E_PROVIDER_NOT_REGISTERED = 0x80042304
VSS_E_SNAPSHOT_SET_IN_PROGRESS = 0x80042316
VSS_E_WRITER_NOT_RESPONDING = 0x80042319
VSS_E_BAD_STATE = 0x80042301
VSS_E_WRITERERROR_RETRYABLE = 0x800423F3
E_INVALIDARG = 0x80070057
_ERROR_NAMES = {VSS_E_OBJECT_NOT_FOUND: "VSS_E_OBJECT_NOT_FOUND", VSS_E_VOLUME_NOT_SUPPORTED: "VSS_E_VOLUME_NOT_SUPPORTED",
                VSS_E_PROVIDER_NOT_REGISTERED: "VSS_E_PROVIDER_NOT_REGISTERED",
                VSS_E_SNAPSHOT_SET_IN_PROGRESS: "VSS_E_SNAPSHOT_SET_IN_PROGRESS",
                VSS_E_WRITER_NOT_RESPONDING: "VSS_E_WRITER_NOT_RESPONDING", VSS_E_BAD_STATE: "VSS_E_BAD_STATE",
                VSS_E_WRITERERROR_RETRYABLE: "VSS_E_WRITERERROR_RETRYABLE", E_INVALIDARG: "E_INVALIDARG"}
_GUID = re.compile(r"^\{?([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\}?$")

_WORDS = {
    "en-US": {"alias": "Alias %s for shadow ID {%s} set as environment variable.",
              "alias_set": "Alias VSS_SHADOW_SET for shadow set ID {%s} set as environment variable.",
              "querying_set": "Querying all shadow copies with the shadow copy set ID {%s}",
              "querying_all": "Querying all shadow copies on the computer ...",
              "shadow_id": "* Shadow copy ID = {%s}", "set": "- Shadow copy set: {%s}",
              "count": "- Original count of shadow copies = %d", "volume": "- Original volume name: %s [%s]",
              "created": "- Creation time: %s", "device": "- Shadow copy device name: %s",
              "origin": "- Originating machine: %s", "service": "- Service machine: %s", "not_exposed": "- Not exposed",
              "exposed": "- Exposed locally as: %s", "provider": "- Provider ID: %s", "attributes": "- Attributes:  %s",
              "listed": "Number of shadow copies listed: %d", "exposed_ok": "The shadow copy was successfully exposed as %s.",
              "deleting": "Deleting shadow copy {%s} on volume %s from provider %s [Attributes: 0x%08x]...",
              "deleted": "Number of shadow copies deleted: %d", "overwrite": "The existing file will be overwritten.",
              "cab": "Inserted file %s into .cab file %s", "failed": "The command script failed.",
              "error": "COM call \"%s\" failed with %s (%s): %s"},
    "de-DE": {"alias": "Der Alias %s f\u00fcr die Schattenkopie-ID {%s} wurde als Umgebungsvariable festgelegt.",
              "alias_set": "Der Alias VSS_SHADOW_SET f\u00fcr die Schattenkopiesatz-ID {%s} wurde als Umgebungsvariable festgelegt.",
              "querying_set": "Alle Schattenkopien mit der Schattenkopiesatz-ID {%s} werden abgefragt",
              "querying_all": "Alle Schattenkopien auf dem Computer werden abgefragt ...",
              "shadow_id": "* Schattenkopie-ID = {%s}", "set": "- Schattenkopiesatz: {%s}",
              "count": "- Urspr\u00fcngliche Anzahl von Schattenkopien = %d", "volume": "- Urspr\u00fcnglicher Volumename: %s [%s]",
              "created": "- Erstellungszeit: %s", "device": "- Ger\u00e4tename der Schattenkopie: %s",
              "origin": "- Urspr\u00fcnglicher Computer: %s", "service": "- Dienstcomputer: %s", "not_exposed": "- Nicht verf\u00fcgbar gemacht",
              "exposed": "- Lokal verf\u00fcgbar gemacht als: %s", "provider": "- Anbieter-ID: %s", "attributes": "- Attribute:  %s",
              "listed": "Anzahl aufgelisteter Schattenkopien: %d",
              "exposed_ok": "Die Schattenkopie wurde erfolgreich als %s verf\u00fcgbar gemacht.",
              "deleting": "Schattenkopie {%s} auf Volume %s von Anbieter %s wird gel\u00f6scht [Attribute: 0x%08x]...",
              "deleted": "Anzahl gel\u00f6schter Schattenkopien: %d", "overwrite": "Die vorhandene Datei wird \u00fcberschrieben.",
              "cab": "Die Datei %s wurde in die CAB-Datei %s eingef\u00fcgt.", "failed": "Fehler beim Befehlsskript.",
              "error": "Fehler beim COM-Aufruf \"%s\": %s (%s): %s"},
}


class ScriptFailed(Exception):
    """A command failed: diskshadow prints the error and stops the script."""

    def __init__(self, hresult, call, message):
        super(ScriptFailed, self).__init__(message)
        self.hresult = hresult
        self.call = call


def _signed(hresult):
    return hresult - (1 << 32) if hresult >= (1 << 31) else hresult


def _guid(text):
    match = _GUID.match(text.strip())
    if not match:
        raise ScriptFailed(E_INVALIDARG, "CLSIDFromString", "%s is not a GUID" % text)
    return match.group(1).lower()


def _split(line):
    """Words of a command line: whitespace-separated, a double-quoted part is one word (no escapes: paths keep their backslashes)."""
    return [quoted if quoted or bare == "" else bare for quoted, bare in re.findall(r'"([^"]*)"|(\S+)', line)]


def _clock_text(locale, seconds):
    stamp = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    if locale == "de-DE":
        return stamp.strftime("%d.%m.%Y %H:%M:%S")
    return "%d/%d/%d %d:%02d:%02d %s" % (stamp.month, stamp.day, stamp.year, (stamp.hour % 12) or 12, stamp.minute,
                                         stamp.second, "AM" if stamp.hour < 12 else "PM")


class Session:
    """One diskshadow process: its settings, its shadow copy set in the making and its output."""

    def __init__(self, layout):
        self.layout = layout
        self.host_doc = layout.read_host()
        self.locale = self.host_doc.get("locale") or "en-US"
        self.words = _WORDS.get(self.locale, _WORDS["en-US"])
        self.out = []
        self.persistent = False
        self.no_writers = False
        self.client_accessible = False
        self.metadata = None
        self.backup = False
        self.verify = []
        self.added = []            # [(volume, alias or None, provider)]
        self.aliases = {}
        self.window = lab_shadow.CreationWindow(layout)
        self.set_id = None
        self.created = []          # shadow ids of this session's set (volatile ones die with the session)

    def say(self, key, *values):
        self.out.append(self.words[key] % values if values else self.words[key])

    # --- commands ------------------------------------------------------------------------------

    def run_line(self, line):
        expanded, used = self.expand(line)
        self.out.append("-> %s" % line)
        for alias in used:
            self.out.append("-> %%%s%% = %s" % (alias, self.aliases[alias]))
        words = _split(expanded)
        if not words or expanded.count('"') % 2:
            raise ScriptFailed(E_INVALIDARG, "parse", "cannot parse the command: %s" % line)
        verb = [word.lower() for word in words]
        if verb[:2] == ["set", "context"]:
            return self.set_context(verb[2:])
        if verb[:2] == ["set", "verbose"] and len(verb) == 3 and verb[2] in ("on", "off"):
            return None
        if verb[:2] == ["set", "metadata"] and len(words) == 3:
            return self.set_metadata(words[2])
        if verb == ["begin", "backup"]:
            self.backup = True
            return None
        if verb == ["end", "backup"]:
            if not self.backup:
                raise ScriptFailed(VSS_E_BAD_STATE, "m_pVssBackup->BackupComplete", "no backup was begun")
            self.backup = False
            return None
        if verb[:2] == ["writer", "verify"] and len(words) == 3:
            self.verify.append(_guid(words[2]))
            return None
        if verb[:2] == ["add", "volume"] and len(words) >= 3:
            return self.add_volume(words[2], words[3:])
        if verb == ["create"]:
            return self.create()
        if verb[0] == "expose" and len(words) == 3:
            return self.expose(words[1], words[2])
        if verb[:2] == ["delete", "shadows"] and len(words) >= 3:
            return self.delete(verb[2], words[3:])
        if verb[:2] == ["list", "shadows"] and len(words) >= 3:
            return self.list_shadows(verb[2], words[3:])
        raise ScriptFailed(E_INVALIDARG, "parse", "the lab host's diskshadow does not know the command: %s" % line)

    def expand(self, line):
        used = []

        def replace(match):
            name = match.group(1)
            if name not in self.aliases:
                return match.group(0)
            used.append(name)
            return self.aliases[name]
        return re.sub(r"%([A-Za-z0-9_]+)%", replace, line), used

    def set_context(self, words):
        if not words or words[0] not in ("persistent", "volatile", "clientaccessible") or words[1:] not in ([], ["nowriters"]):
            raise ScriptFailed(E_INVALIDARG, "set context", "unknown context: %s" % " ".join(words))
        self.persistent = words[0] in ("persistent", "clientaccessible")
        self.client_accessible = words[0] == "clientaccessible"
        self.no_writers = words[1:] == ["nowriters"]

    def set_metadata(self, path):
        try:
            if lab_files.read_file(self.layout, path, 1 << 30) is not None:
                self.say("overwrite")
        except BridgeError as exc:
            raise ScriptFailed(exc.code if isinstance(exc.code, int) else E_INVALIDARG, "set metadata", str(exc))
        self.metadata = path

    def add_volume(self, volume, rest):
        options = [word.lower() for word in rest]
        alias = rest[options.index("alias") + 1] if "alias" in options and options.index("alias") + 1 < len(rest) else None
        wanted_provider = rest[options.index("provider") + 1] if "provider" in options and options.index("provider") + 1 < len(rest) else None
        name = lab_shadow.volume_of(self.host_doc, volume if len(volume.rstrip("\\")) > 2 else volume.rstrip("\\") + "\\")
        if name is None or name.lower().rstrip("\\") != volume.lower().rstrip("\\"):
            raise ScriptFailed(VSS_E_OBJECT_NOT_FOUND, "m_pVssBackup->AddToSnapshotSet", "the volume %s is not a volume of this host" % volume)
        provider = lab_shadow.provider_for(self.host_doc, _guid(wanted_provider) if wanted_provider else None)
        if provider is None:
            raise ScriptFailed(VSS_E_PROVIDER_NOT_REGISTERED, "m_pVssBackup->AddToSnapshotSet", "provider %s is not registered" % wanted_provider)
        self.check_csv_backup_state(name, provider)
        self.ensure_services(provider)
        if not self.window.is_open:
            self.set_id = str(uuid.uuid4())
            try:
                self.window.open(self.set_id)
            except lab_shadow.SetInProgress as exc:
                raise ScriptFailed(VSS_E_SNAPSHOT_SET_IN_PROGRESS, "m_pVssBackup->StartSnapshotSet",
                                   "Another shadow copy creation is already in progress (%s). Please wait a few moments and try again." % exc)
        self.added.append((name, alias, provider))

    def check_csv_backup_state(self, volume, provider):
        if self.host_doc["era"] != "2008r2" or volume == "C:\\" or provider["type"] == "hardware":
            return
        records = lab_files.read_shadows(self.layout)["shadows"] + lab_shadow.other_cluster_shadows(self.layout, self.host_doc)
        for record in records:
            if record["volume"].lower() == volume.lower():
                raise ScriptFailed(VSS_E_SNAPSHOT_SET_IN_PROGRESS, "m_pVssBackup->AddToSnapshotSet",
                                   "the Cluster Shared Volume %s is in backup (shadow copy {%s} on %s); with the software provider "
                                   "Windows Server 2008 R2 backs up one CSV at a time" % (volume, record["id"], record.get("host", self.layout.host)))

    def ensure_services(self, provider):
        names = ("vss", "swprv") if provider["type"] == "software" else ("vss",)
        try:
            self.host_doc = lab_vss.demand_start(self.layout, names)
        except BridgeError as exc:
            raise ScriptFailed(exc.code, "CoCreateInstance", str(exc))

    def create(self):
        if not self.added:
            raise ScriptFailed(VSS_E_BAD_STATE, "m_pVssBackup->DoSnapshotSet", "no volume was added to the shadow copy set")
        if not self.no_writers:
            listed = dict((writer["id"], writer) for writer in lab_vss.writers(self.host_doc))
            for writer_id in self.verify:
                if writer_id not in listed:
                    raise ScriptFailed(VSS_E_WRITER_NOT_RESPONDING, "m_pVssBackup->GatherWriterMetadata",
                                       "the writer {%s} that writer verify names is not on this host" % writer_id)
                if listed[writer_id]["state"] != 1:
                    raise ScriptFailed(VSS_E_WRITERERROR_RETRYABLE, "m_pVssBackup->DoSnapshotSet",
                                       "the writer \"%s\" {%s} is in state [%d] and failed with a retryable error"
                                       % (listed[writer_id]["name"], writer_id, listed[writer_id]["state"]))
        delay = quirk_value(self.host_doc, "slow_shadow_create_seconds")
        if delay:
            time.sleep(float(delay))
        ids = dict((volume, str(uuid.uuid4())) for volume, _alias, _provider in self.added)
        lab_shadow.freeze_volumes(self.layout, self.host_doc, ids)
        stamp = lab_files.host_time(self.layout, self.host_doc)
        with lab_shadow.registry(self.layout) as document:
            for volume, alias, provider in self.added:
                document["shadows"].append({
                    "id": ids[volume], "set_id": self.set_id, "volume": volume,
                    "volume_name": lab_shadow.volume_guid_name(self.host_doc["name"], volume),
                    "device_object": "%s%d" % (lab_files.SHADOW_DEVICE_PREFIX, document["next_device"]),
                    "exposed_name": None, "install_date": lab_files.dmtf(stamp), "install_seconds": stamp, "count": len(self.added),
                    "persistent": self.persistent, "client_accessible": self.client_accessible, "no_writers": self.no_writers,
                    "provider_id": provider["id"], "alias": alias})
                document["next_device"] += 1
        self.created.extend(ids.values())
        self.window.close()
        if self.metadata and not self.no_writers:
            lab_files.write_file(self.layout, self.metadata, b"MSCF lab stand-in: writer metadata of shadow copy set {%s}\r\n"
                                 % self.set_id.encode("ascii"))
            self.say("cab", "Manifest.xml", self.metadata.rsplit("\\", 1)[-1])
        for volume, alias, _provider in self.added:
            if alias:
                self.aliases[alias] = "{%s}" % ids[volume]
                self.say("alias", alias, ids[volume])
        self.aliases["VSS_SHADOW_SET"] = "{%s}" % self.set_id
        self.say("alias_set", self.set_id)
        self.out.append("")
        self.say("querying_set", self.set_id)
        self.out.append("")
        self.print_records([record for record in lab_files.read_shadows(self.layout)["shadows"] if record["set_id"] == self.set_id])
        self.added = []

    def print_records(self, records):
        for record in records:
            alias = ("               %%%s%%" % record["alias"]) if record.get("alias") and record["id"] in self.created else ""
            attributes = ["No_Auto_Release", "Persistent"] if record.get("persistent") else ["Auto_Release"]
            if record.get("no_writers"):
                attributes.append("No_Writers")
            software = record["provider_id"].lower() == SOFTWARE_VSS_PROVIDER["id"].lower()
            attributes.append("Differential" if software else "Plex")
            set_alias = "       %VSS_SHADOW_SET%" if record["set_id"] == self.set_id else ""
            machine = self.host_doc["name"].upper()
            lines = [self.words["shadow_id"] % record["id"] + alias, self.words["set"] % record["set_id"] + set_alias,
                     self.words["count"] % record["count"], self.words["volume"] % (record["volume_name"], record["volume"]),
                     self.words["created"] % _clock_text(self.locale, record["install_seconds"]),
                     self.words["device"] % record["device_object"], self.words["origin"] % machine,
                     self.words["service"] % machine,
                     self.words["exposed"] % record["exposed_name"] if record.get("exposed_name") else self.words["not_exposed"],
                     self.words["provider"] % record["provider_id"], self.words["attributes"] % " ".join(attributes)]
            self.out.append("        " + lines[0])
            self.out.extend("                " + line for line in lines[1:])
            self.out.append("")
        self.say("listed", len(records))

    def expose(self, which, target):
        shadow_id = _guid(which)
        with lab_shadow.registry(self.layout) as document:
            found = [record for record in document["shadows"] if record["id"] == shadow_id]
            if not found:
                raise ScriptFailed(VSS_E_OBJECT_NOT_FOUND, "m_pVssBackup->ExposeSnapshot", "no shadow copy {%s}" % shadow_id)
            record = found[0]
            if not record.get("persistent"):
                raise ScriptFailed(E_INVALIDARG, "m_pVssBackup->ExposeSnapshot", "only persistent shadow copies can be exposed")
            if record.get("exposed_name"):
                raise ScriptFailed(E_INVALIDARG, "m_pVssBackup->ExposeSnapshot", "the shadow copy is already exposed as %s" % record["exposed_name"])
            bare = target.rstrip("\\")
            try:
                if len(bare) == 2 and bare[1] == ":":
                    taken = [item.get("exposed_name") for item in document["shadows"]]
                    if bare.upper() == "C:" or (bare.upper() + "\\") in [(name or "").upper() for name in taken]:
                        raise ValueError("the drive letter %s is in use" % bare)
                    record["exposed_name"] = bare.upper() + "\\"
                else:
                    lab_shadow.expose_at_folder(self.layout, record, bare)
                    record["exposed_name"] = bare + "\\"
            except (ValueError, BridgeError) as exc:
                raise ScriptFailed(E_INVALIDARG, "m_pVssBackup->ExposeSnapshot", str(exc))
        self.say("exposed_ok", record["exposed_name"])

    def delete(self, how, rest):
        with lab_shadow.registry(self.layout) as document:
            if how == "all":
                doomed = list(document["shadows"])
            elif how in ("set", "id") and len(rest) == 1:
                wanted = _guid(rest[0])
                doomed = [record for record in document["shadows"] if record["set_id" if how == "set" else "id"] == wanted]
            elif how == "exposed" and len(rest) == 1:
                wanted = rest[0].rstrip("\\").lower()
                doomed = [record for record in document["shadows"] if (record.get("exposed_name") or "").rstrip("\\").lower() == wanted]
            else:
                raise ScriptFailed(E_INVALIDARG, "delete shadows", "unknown form: delete shadows %s %s" % (how, " ".join(rest)))
            if not doomed and how != "all":
                raise ScriptFailed(VSS_E_OBJECT_NOT_FOUND, "m_pVssBackup->DeleteSnapshots", "no shadow copy matches %s %s" % (how, " ".join(rest)))
            for record in doomed:
                self.say("deleting", record["id"], record["volume_name"], record["provider_id"], 0x00420009 if record.get("persistent") else 0x00420000)
                lab_shadow.discard(self.layout, record)
            document["shadows"] = [record for record in document["shadows"] if record not in doomed]
        self.out.append("")
        self.say("deleted", len(doomed))

    def list_shadows(self, how, rest):
        records = lab_files.read_shadows(self.layout)["shadows"]
        if how in ("set", "id") and len(rest) == 1:
            wanted = _guid(rest[0])
            records = [record for record in records if record["set_id" if how == "set" else "id"] == wanted]
            if how == "set":
                self.say("querying_set", wanted)
            else:
                self.say("querying_all")
        elif how == "all":
            self.say("querying_all")
        else:
            raise ScriptFailed(E_INVALIDARG, "list shadows", "unknown form: list shadows %s" % how)
        self.out.append("")
        self.print_records(records)

    def finish(self):
        """End of the process: an unfinished set is abandoned, volatile shadow copies are released."""
        self.window.close()
        volatile = []
        if self.created:
            with lab_shadow.registry(self.layout) as document:
                volatile = [record for record in document["shadows"] if record["id"] in self.created and not record.get("persistent")]
                for record in volatile:
                    lab_shadow.discard(self.layout, record)
                document["shadows"] = [record for record in document["shadows"] if record not in volatile]


def _banner(layout, host_doc, locale):
    years = {"2008r2": "2007", "2012": "2012"}.get(host_doc["era"], "2013")   # UNCONFIRMED for 2008 R2 and 2012
    return ["Microsoft DiskShadow version 1.0", "Copyright (C) %s Microsoft Corporation" % years,
            "On computer:  %s,  %s" % (host_doc["name"].upper(), _clock_text(locale, lab_files.host_time(layout, host_doc))), ""]


def run(layout, script):
    """Interpret a diskshadow script; {"exit_code", "output"}."""
    session = Session(layout)
    session.out.extend(_banner(layout, session.host_doc, session.locale))
    exit_code = 0
    try:
        for raw in str(script or "").splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.lower() == "exit":
                break
            session.run_line(line)
    except ScriptFailed as exc:
        session.out.append(session.words["error"] % (exc.call, "0x%08X" % exc.hresult, _ERROR_NAMES.get(exc.hresult, "HRESULT"), exc))
        session.say("failed")
        exit_code = _signed(exc.hresult)
    finally:
        session.finish()
    return {"exit_code": exit_code, "output": "\r\n".join(session.out) + "\r\n"}

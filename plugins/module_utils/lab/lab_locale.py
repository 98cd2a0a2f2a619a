# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a lab host says in its language: integration service names, service display names, vssadmin words.

A real host localises these, so the Python Hyper-V logic never matches them (it matches GUIDs, service
names and state numbers); the lab speaks en-US or de-DE so that tests catch code that would.

Sources and confidence, per text:

- Integration service names by GUID (``Msvm_*Component.ElementName`` / ``Get-VMIntegrationService`` Name):
  the en-US and de-DE lists are observed output of ``Get-VMIntegrationService`` quoted side by side in a
  public DSC configuration (find_string id 13013815998: "Gastdienstschnittstelle", "Takt", "Austausch von
  Schluesselwertepaaren", "Herunterfahren", "Zeitsynchronisierung", "VSS"); German scripts that enable
  "Gastdienstschnittstelle" by name confirm that one (ids 45194187376, 18144560332). Note the backup one is
  "VSS" in both languages there. UNCONFIRMED whether Msvm_VssComponent.ElementName equals that PowerShell Name
  on every era (the lab uses the same text for both).
- Service display names: "Hyper-V-Verwaltung fuer virtuelle Computer" is observed (ids 14375613660, 27612523199);
  "Volumeschattenkopie" and "Microsoft-Software-Schattenkopieanbieter" are UNCONFIRMED (written as best known).
- vssadmin labels "Verfassername", "Verfasserkennung", "Verfasserinstanzkennung", "Status", "Letzter Fehler",
  "Kein Fehler" are observed in a public parser switching on de-DE (id 23104820884); "Stabil",
  "Fehlgeschlagen", "Wiederholbarer Fehler", the double quotes around writer names and the German banner line
  are UNCONFIRMED. Parsers must read by position and state number only, which is what the lab exercises.
- Win32_OperatingSystem.Caption: product names are not translated (the lab uses the English caption on
  both locales; UNCONFIRMED for every edition).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

LOCALES = ("en-US", "de-DE")
DEFAULT_LOCALE = "en-US"

# GUID suffixes of the integration components (hyperv_wmi_schema.json "integration_service_ids").
INTEGRATION_SERVICE_IDS = {
    "VSS": "5CED1297-4598-4915-A5FC-AD21BB4D02A4",
    "Heartbeat": "84EAAE65-2F2E-45F5-9BB5-0E857DC8EB47",
    "Key-Value Pair Exchange": "2A34B1C2-FD73-4043-8A5B-DD2159BC743F",
    "Shutdown": "9F8233AC-BE49-4C79-8EE3-E7E1985B2077",
    "Time Synchronization": "2497F4DE-E9FA-4204-80E4-4B75C46419C0",
    "Guest Service Interface": "6C09BB55-D683-4DA0-8931-C9BF705F6480",
}

_INTEGRATION_NAMES = {
    "en-US": dict((guid, name) for name, guid in INTEGRATION_SERVICE_IDS.items()),
    "de-DE": {
        "5CED1297-4598-4915-A5FC-AD21BB4D02A4": "VSS",
        "84EAAE65-2F2E-45F5-9BB5-0E857DC8EB47": "Takt",
        "2A34B1C2-FD73-4043-8A5B-DD2159BC743F": u"Austausch von Schl\u00fcsselwertepaaren",
        "9F8233AC-BE49-4C79-8EE3-E7E1985B2077": "Herunterfahren",
        "2497F4DE-E9FA-4204-80E4-4B75C46419C0": "Zeitsynchronisierung",
        "6C09BB55-D683-4DA0-8931-C9BF705F6480": "Gastdienstschnittstelle",
    },
}

_TEXTS = {
    "en-US": {
        "service.vss": "Volume Shadow Copy",
        "service.swprv": "Microsoft Software Shadow Copy Provider",
        "service.vmms": "Hyper-V Virtual Machine Management",
        "vssadmin.banner": "vssadmin 1.1 - Volume Shadow Copy Service administrative command-line tool",
        "vssadmin.copyright": "(C) Copyright 2001-2013 Microsoft Corp.",
        "vssadmin.writer_name": "Writer name",
        "vssadmin.writer_id": "Writer Id",
        "vssadmin.writer_instance_id": "Writer Instance Id",
        "vssadmin.state": "State",
        "vssadmin.last_error": "Last error",
        "vssadmin.quote": "'",
        "vssadmin.state.1": "Stable",
        "vssadmin.state.5": "Waiting for completion",
        "vssadmin.state.8": "Failed",
        "vssadmin.error.none": "No error",
        "vssadmin.error.retryable": "Retryable error",
        "vssadmin.service_error": "Error: A Volume Shadow Copy Service component encountered an unexpected error.",
        "os.caption": "{os_name}",
    },
    "de-DE": {
        "service.vss": "Volumeschattenkopie",
        "service.swprv": "Microsoft-Software-Schattenkopieanbieter",
        "service.vmms": u"Hyper-V-Verwaltung f\u00fcr virtuelle Computer",
        "vssadmin.banner": "vssadmin 1.1 - Verwaltungsbefehlszeilenprogramm des Volumeschattenkopie-Dienstes",
        "vssadmin.copyright": "(C) Copyright 2001-2013 Microsoft Corp.",
        "vssadmin.writer_name": "Verfassername",
        "vssadmin.writer_id": "Verfasserkennung",
        "vssadmin.writer_instance_id": "Verfasserinstanzkennung",
        "vssadmin.state": "Status",
        "vssadmin.last_error": "Letzter Fehler",
        "vssadmin.quote": '"',
        "vssadmin.state.1": "Stabil",
        "vssadmin.state.5": "Warten auf Abschluss",
        "vssadmin.state.8": "Fehlgeschlagen",
        "vssadmin.error.none": "Kein Fehler",
        "vssadmin.error.retryable": "Wiederholbarer Fehler",
        "vssadmin.service_error": "Fehler: Bei einer Komponente des Volumeschattenkopie-Dienstes ist ein unerwarteter Fehler aufgetreten.",
        "os.caption": "{os_name}",
    },
}


def check_locale(locale):
    """Return ``locale`` if the lab speaks it, else raise ValueError naming the ones it does."""
    if locale not in LOCALES:
        raise ValueError("unknown lab host locale %r; choose one of %s" % (locale, ", ".join(LOCALES)))
    return locale


def text(locale, key, **values):
    """The text ``key`` in ``locale`` (``{name}`` placeholders filled from ``values``); KeyError if unknown."""
    template = _TEXTS[check_locale(locale or DEFAULT_LOCALE)][key]
    return template.format(**values) if values else template


def integration_service_name(locale, guid):
    """The localised ElementName of the integration component with this GUID suffix (any case)."""
    return _INTEGRATION_NAMES[check_locale(locale or DEFAULT_LOCALE)][str(guid).strip("{}").upper()]


def integration_service_guid(english_name):
    """The GUID suffix of an integration service given by the English name the lab's vm.json stores."""
    return INTEGRATION_SERVICE_IDS[english_name]


def service_display_name(locale, name):
    """Display name of a host service (vss, swprv, vmms) in ``locale``; None for a service the lab does not know."""
    try:
        return text(locale, "service.%s" % str(name).lower())
    except KeyError:
        return None

# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Start, find and stop NBD exports of a backup's disk (hyperv_backup_export): nbdkit with its Python plugin.

One export is one nbdkit process listening on one address and port, serving one disk of one backup read-only. Its
files live in a directory of its own under ``state_dir`` (default ``<repository memory root>/exports``, see
repository_memory.state_root): ``state.json`` (what it serves, the pid and the pid's start time, so that a reused pid
is never taken for ours), the bootstrap script nbdkit loads, nbdkit's log, and ``lib/``, a private copy of the
collection's module_utils. The copy is needed because the module's own code lives in a temporary AnsiballZ payload
that Ansible removes when the module returns, while nbdkit keeps running; it also keeps a running export on the code
that started it when the collection is upgraded.

nbdkit's Python plugin embeds the Python it was built against (Debian: /usr/bin/python3), not the module's
interpreter. The bootstrap adds the module interpreter's site-packages (blake3, xxhash, zstandard, cryptography, boto3) to
its path when both are the same minor version (nbd_plugin.add_python_paths); ``check_nbdkit`` reads the plugin's
version with ``nbdkit python --dump-plugin`` first and says what to install when they differ.

Secrets (passphrase, S3 keys) go to nbdkit in a 0600 settings file that the plugin reads and removes while it starts
(nbd_plugin.read_settings); the command line names only the file. State files whose process is gone are removed
whenever the module runs.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile

from ansible_collections.hyperv.backup.plugins.module_utils.backup.restore_engine import resolve_disk_names, select_backup
from ansible_collections.hyperv.backup.plugins.module_utils.errors import HyperVBackupError
from ansible_collections.hyperv.backup.plugins.module_utils.export import nbd_plugin
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_memory import state_root
from ansible_collections.hyperv.backup.plugins.module_utils.repository.repository_options import s3_options_from_params

DEFAULT_PORT = 10809                # IANA's NBD port
START_TIMEOUT = 120                 # seconds for nbdkit to open the repository (S3, scrypt) and bind its port
STOP_TIMEOUT = 15                   # seconds after SIGTERM before SIGKILL
STATE_FILE = "state.json"
SCRIPT_FILE = "export_plugin.py"
SETTINGS_FILE = "settings.json"
LOG_FILE = "nbdkit.log"
PID_FILE = "nbdkit.pid"
PACKAGE = "ansible_collections/hyperv/backup/plugins/module_utils"
# nbdkit's embedded Python finds its standard library from the first `python3` on PATH: a virtualenv's (the module's
# interpreter) would give it another build's standard library. System directories only, and no Python variables.
NBDKIT_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
PYTHON_ENVIRONMENT = ("PYTHONHOME", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONSTARTUP", "PYTHONUSERBASE", "PYTHONNOUSERSITE")
_NAME_SAFE = re.compile(r"[^A-Za-z0-9.-]")
_EXPORT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,254}$")

BOOTSTRAP = '''# hyperv_backup_export: the nbdkit python plugin of one export (generated; no secrets here).
import sys
sys.path.insert(0, %(lib)r)
if not getattr(sys, "argv", None):
    sys.argv = ["nbdkit"]
from ansible_collections.hyperv.backup.plugins.module_utils.export import nbd_plugin as _plugin
globals().update(_plugin.callbacks())
'''


# --- where exports live -----------------------------------------------------------------------------------

def default_state_dir():
    return os.path.join(state_root(), "exports")


def export_dir(state_dir, address, port):
    """The directory of the export on ``address``:``port`` (one export per address and port)."""
    return os.path.join(state_dir, "%s_%d" % (_NAME_SAFE.sub("-", address), int(port)))


def nbd_url(address, port, export_name, tls=False):
    host = "[%s]" % address if ":" in address else address
    return "%s://%s:%d/%s" % ("nbds" if tls else "nbd", host, int(port), export_name)


def read_state(directory):
    """The export's state dict, or None when the directory holds none (or an unreadable one)."""
    try:
        with open(os.path.join(directory, STATE_FILE)) as handle:
            state = json.load(handle)
        return state if isinstance(state, dict) and isinstance(state.get("pid"), int) else None
    except (OSError, ValueError):
        return None


def _write_private(path, text):
    """Create ``path`` 0600 (never through an existing file or link) with ``text``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


# --- processes ------------------------------------------------------------------------------------------

def process_start_time(pid):
    """The start time of ``pid`` (clock ticks since boot, /proc/<pid>/stat field 22); None if it is gone or a zombie."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            stat = handle.read().decode("ascii", "replace")
    except (OSError, ValueError):
        return None
    fields = stat[stat.rfind(")") + 2:].split()      # the command name in (...) may contain spaces
    if not fields or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def process_cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return [part.decode("utf-8", "replace") for part in handle.read().split(b"\0") if part]
    except OSError:
        return []


def is_running(state):
    """Whether the nbdkit the state describes is still running: same pid, same start time, running our script."""
    pid = state.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    started = process_start_time(pid)
    if started is None or started != state.get("start_time"):
        return False
    return state.get("script") in process_cmdline(pid)


def _reap(pid):
    """Collect ``pid`` if it is our child (when the module_utils run in a long-lived process such as a test)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        pass


def stop_process(state, timeout=STOP_TIMEOUT):
    """SIGTERM the export's nbdkit, SIGKILL it after ``timeout``; True if it was running."""
    if not is_running(state):
        return False
    pid = state["pid"]
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        try:
            os.kill(pid, sig)
        except OSError:
            pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap(pid)
            if not is_running(state):
                return True
            time.sleep(0.05)
    raise HyperVBackupError("nbdkit (pid %d) of the export on port %s did not stop." % (pid, state.get("port")),
                            hint="Stop it by hand (kill -9 %d) and run the task again." % pid)


def remove_export_dir(directory):
    shutil.rmtree(directory, ignore_errors=True)


def sweep_stale(state_dir):
    """Remove the directories of exports whose process is gone; returns their names."""
    removed = []
    try:
        names = sorted(os.listdir(state_dir))
    except OSError:
        return removed
    for name in names:
        directory = os.path.join(state_dir, name)
        state = read_state(directory)
        if os.path.isdir(directory) and (state is None or not is_running(state)) and not _starting(directory):
            remove_export_dir(directory)
            removed.append(name)
    return removed


def _starting(directory):
    """An export directory without a state yet, made in the last minutes: another run is starting it right now."""
    if os.path.exists(os.path.join(directory, STATE_FILE)):
        return False
    try:
        return time.time() - os.stat(directory).st_mtime < START_TIMEOUT + 30
    except OSError:
        return False


# --- nbdkit ---------------------------------------------------------------------------------------------

def check_nbdkit(nbdkit):
    """nbdkit's Python plugin facts (``python_version`` ...); HyperVBackupError when it is not installed."""
    try:
        proc = subprocess.run([nbdkit, "python", "--dump-plugin"], stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=60, check=False, env=nbdkit_environment())
    except OSError as err:
        raise HyperVBackupError("nbdkit cannot be run (%s): %s." % (nbdkit, err.strerror or err),
                                hint="Install the Debian packages nbdkit and nbdkit-plugin-python (bindep.txt) on this machine.")
    facts = dict(line.split("=", 1) for line in proc.stdout.decode("utf-8", "replace").splitlines() if "=" in line)
    if proc.returncode != 0 or "python_version" not in facts:
        raise HyperVBackupError("nbdkit has no Python plugin: %s" % proc.stderr.decode("utf-8", "replace").strip()[-300:],
                                hint="Install the Debian package nbdkit-plugin-python.")
    return facts


def python_mismatch_hint(facts):
    """A hint when nbdkit's Python is another minor version than the module's (its packages will not load), else None."""
    theirs = tuple(int(p) for p in re.findall(r"\d+", facts.get("python_version", ""))[:2])
    if theirs and theirs != tuple(sys.version_info[:2]):
        return ("nbdkit's Python plugin runs Python %s, the module runs %d.%d: the repository's Python packages must be "
                "installed for nbdkit's Python too (Debian: python3-xxhash python3-zstandard python3-cryptography python3-boto3, and pip "
                "install blake3), or run the module with ansible_python_interpreter=/usr/bin/python3."
                % (facts.get("python_version"), sys.version_info[0], sys.version_info[1]))
    return None


def copy_module_utils(lib):
    """Copy the collection's module_utils (from the AnsiballZ zip or from disk) under ``lib``; returns ``lib``."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))       # .../module_utils
    target = os.path.join(lib, *PACKAGE.split("/"))
    archive = _zip_containing(here)
    if archive:
        with zipfile.ZipFile(archive) as payload:
            for name in payload.namelist():
                if name.startswith(PACKAGE + "/") and name.endswith(".py") and ".." not in name.split("/"):
                    path = os.path.join(lib, *name.split("/"))
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    with open(path, "wb") as handle:
                        handle.write(payload.read(name))
    else:
        shutil.copytree(here, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # regular packages all the way down: an `ansible_collections` package elsewhere on the path must not win
    package = lib
    for part in PACKAGE.split("/"):
        package = os.path.join(package, part)
        init = os.path.join(package, "__init__.py")
        if not os.path.exists(init):
            open(init, "w").close()
    return lib


def _zip_containing(path):
    """The zip file ``path`` lies inside (AnsiballZ payload), or None."""
    candidate = path
    while candidate and candidate != os.path.dirname(candidate):
        if os.path.isfile(candidate):
            return candidate if zipfile.is_zipfile(candidate) else None
        candidate = os.path.dirname(candidate)
    return None


def python_paths():
    """The module interpreter's package directories, for nbdkit's Python (nbd_plugin.add_python_paths)."""
    return [p for p in sys.path if os.path.isdir(p) and os.path.basename(p.rstrip("/")) in ("site-packages", "dist-packages")]


def nbdkit_command(nbdkit, directory, address, port, tls=None):
    """The nbdkit command line: only paths and the listening address, never a secret."""
    # no --foreground: nbdkit then sets PR_SET_PDEATHSIG and would die with the module; it daemonizes itself instead
    command = [nbdkit, "--readonly", "--log=stderr", "--pidfile", os.path.join(directory, PID_FILE),
               "--ipaddr", address, "--port", str(int(port))]
    if tls:
        command.append("--tls=require")
        if tls.get("psk_file"):
            command.append("--tls-psk=%s" % tls["psk_file"])
        if tls.get("certificates"):
            command.append("--tls-certificates=%s" % tls["certificates"])
    command += ["python", os.path.join(directory, SCRIPT_FILE), "%s=%s" % (nbd_plugin.SETTINGS_KEY, os.path.join(directory, SETTINGS_FILE))]
    return command


def nbdkit_environment(environ=None):
    """The environment nbdkit runs in: ours (AWS profile, proxies, HOME) with a system PATH and no Python variables."""
    env = dict(os.environ if environ is None else environ)
    for name in PYTHON_ENVIRONMENT:
        env.pop(name, None)
    env["PATH"] = NBDKIT_PATH
    return env


def _log_tail(directory, limit=1500):
    try:
        with open(os.path.join(directory, LOG_FILE), "rb") as handle:
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return text.strip()[-limit:]


def start_process(nbdkit, directory, settings, address, port, tls=None, timeout=START_TIMEOUT):
    """Start nbdkit for ``settings`` in ``directory`` and wait until it listens; returns (pid, start_time, script)."""
    lib = copy_module_utils(os.path.join(directory, "lib"))
    script = os.path.join(directory, SCRIPT_FILE)
    _write_private(script, BOOTSTRAP % {"lib": lib})
    settings_path = os.path.join(directory, SETTINGS_FILE)
    _write_private(settings_path, json.dumps(settings))
    pidfile = os.path.join(directory, PID_FILE)
    try:
        with open(os.path.join(directory, LOG_FILE), "ab") as log:
            # nbdkit opens the backup and binds the port, then forks into the background (new session) and the
            # process we started exits: 0 when it serves, else the error is in the log
            proc = subprocess.Popen(nbdkit_command(nbdkit, directory, address, port, tls), stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, close_fds=True, start_new_session=True,
                                    cwd=directory, env=nbdkit_environment())
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise HyperVBackupError("nbdkit did not start serving on %s:%d within %d seconds: %s" % (
                address, port, timeout, _log_tail(directory) or "no output"),
                hint="Check that the repository is reachable from this machine.")
        if code != 0:
            raise HyperVBackupError("nbdkit could not start the export on %s:%d (exit code %d): %s" % (
                address, port, code, _log_tail(directory) or "no output"),
                hint="Check that the port is free, the repository options and the backup; nbdkit's log is above.")
        deadline = time.monotonic() + 10
        pid = _pidfile_pid(pidfile)
        while not pid:                  # the background process writes it right after the fork
            if time.monotonic() > deadline:
                raise HyperVBackupError("nbdkit started on %s:%d but wrote no pid file %s." % (address, port, pidfile),
                                        hint="Look for a stray nbdkit process on that port and stop it.")
            time.sleep(0.02)
            pid = _pidfile_pid(pidfile)
    finally:
        if os.path.exists(settings_path):        # the plugin removes it as it starts; never leave secrets behind
            os.unlink(settings_path)
    return pid, process_start_time(pid), script


def _pidfile_pid(path):
    try:
        with open(path) as handle:
            return int(handle.read().strip() or 0)
    except (OSError, ValueError):
        return None


# --- what the module does --------------------------------------------------------------------------------

def select_disk(record, disk=None):
    """The disk_key of the backup's disk that ``disk`` names (as hyperv_restore's disk_names keys); the only disk if unset."""
    if disk:
        return list(resolve_disk_names(record, {disk: disk}))[0]
    if len(record.disks) == 1:
        return record.disks[0]["disk_key"]
    raise HyperVBackupError("Backup %s has %d disks; say which one to export with disk." % (record.backup_id, len(record.disks)),
                            hint="Its disks: %s (name one by controller slot, e.g. scsi0-0, or file name)."
                            % ", ".join(d["disk_key"] for d in record.disks))


def check_export_name(name):
    if not _EXPORT_NAME.match(name):
        raise HyperVBackupError("The export name %r is not allowed." % name,
                                hint="Use letters, digits and . _ : - (up to 255 characters, starting with a letter or digit).")
    return name


def _tls_settings(params):
    if not params.get("tls"):
        return None
    tls = {"psk_file": params.get("tls_psk_file"), "certificates": params.get("tls_certificates")}
    if not tls["psk_file"] and not tls["certificates"]:
        raise HyperVBackupError("tls needs tls_certificates (a directory with ca-cert.pem, server-cert.pem, server-key.pem) "
                                "or tls_psk_file.", hint="See nbdkit-tls(1) for how to make them.")
    for path in (tls["psk_file"], tls["certificates"]):
        if path and not os.path.exists(path):
            raise HyperVBackupError("TLS file or directory %s does not exist." % path, hint="Give an existing path.")
    return tls


def _result(state, changed, **extra):
    out = {"changed": changed}
    for key in ("url", "pid", "export_name", "address", "port", "backup_id", "vm", "vm_id", "disk_key", "virtual_size", "tls"):
        out[key] = state.get(key)
    out.update(extra)
    return out


def present(repo, params, nbdkit, check_mode=False):
    """Make an export of the chosen backup disk run on address:port; the module's result."""
    state_dir = params.get("state_dir") or default_state_dir()
    address, port = params.get("address") or "127.0.0.1", int(params.get("port") or DEFAULT_PORT)
    record = select_backup(repo, vm=params.get("vm"), backup_id=params.get("backup_id"),
                           point_in_time=params.get("point_in_time"), source_host=params.get("source_host"))
    disk_key = select_disk(record, params.get("disk"))
    export_name = check_export_name(params.get("export_name") or "%s-%s" % (record.backup_id, disk_key))
    tls = _tls_settings(params)
    stale = [] if check_mode else sweep_stale(state_dir)
    directory = export_dir(state_dir, address, port)
    wanted = {"backup_id": record.backup_id, "disk_key": disk_key, "export_name": export_name, "address": address,
              "port": port, "tls": bool(tls)}
    state = read_state(directory)
    if state is not None and is_running(state):
        if all(state.get(key) == value for key, value in wanted.items()):
            return _result(state, False, state_file=os.path.join(directory, STATE_FILE), stale_removed=stale)
        raise HyperVBackupError("Port %s:%d already serves backup %s disk %s as %r." % (
            address, port, state.get("backup_id"), state.get("disk_key"), state.get("export_name")),
            hint="Stop it first (state: absent, port %d) or use another port." % port)
    disk = next(d for d in record.disks if d["disk_key"] == disk_key)
    state = dict(wanted, url=nbd_url(address, port, export_name, bool(tls)), vm=record.vm_name, vm_id=record.vm_id,
                 virtual_size=disk.get("virtual_size"), repository=repo.location, pid=None)
    if check_mode:
        return _result(state, True, state_file=os.path.join(directory, STATE_FILE), stale_removed=stale)
    nbdkit = shutil.which(nbdkit) or nbdkit        # nbdkit runs with a PATH of its own (nbdkit_environment)
    facts = check_nbdkit(nbdkit)
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    remove_export_dir(directory)        # a directory without a running process: left by a failed start
    os.makedirs(directory, mode=0o700)
    settings = {"repository": params["repository"], "passphrase": params.get("repository_passphrase"),
                "s3_options": s3_options_from_params(params), "backup_id": record.backup_id, "disk_key": disk_key,
                "export_name": export_name, "python_version": list(sys.version_info[:2]), "python_paths": python_paths()}
    try:
        pid, started, script = start_process(nbdkit, directory, settings, address, port, tls)
    except HyperVBackupError as err:
        remove_export_dir(directory)
        hint = python_mismatch_hint(facts)
        if hint and "No module named" in str(err):
            err.hint = hint
        raise
    state.update(pid=pid, start_time=started, script=script, started=time.time())
    _write_private(os.path.join(directory, STATE_FILE), json.dumps(state, indent=1, sort_keys=True))
    return _result(state, True, state_file=os.path.join(directory, STATE_FILE), log_file=os.path.join(directory, LOG_FILE),
                   stale_removed=stale)


def absent(params, check_mode=False):
    """Stop the export on address:port (and remove its files); the module's result."""
    state_dir = params.get("state_dir") or default_state_dir()
    address, port = params.get("address") or "127.0.0.1", int(params.get("port") or DEFAULT_PORT)
    directory = export_dir(state_dir, address, port)
    state = read_state(directory)
    exists = os.path.isdir(directory)
    if check_mode:
        return _result(state or {"address": address, "port": port}, exists, stopped=bool(state and is_running(state)),
                       stale_removed=[])
    if not exists:
        return _result({"address": address, "port": port}, False, stopped=False, stale_removed=sweep_stale(state_dir))
    stopped = stop_process(state) if state else False
    remove_export_dir(directory)
    stale = sweep_stale(state_dir)
    return _result(state or {"address": address, "port": port}, True, stopped=stopped, stale_removed=stale)

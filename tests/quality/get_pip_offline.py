"""Stand-in for the get-pip.py bootstrap script that ansible-test downloads before its sanity tests.

ansible-test fetches get-pip.py from a CI file host that this project's machines cannot reach, and
accepts a copy in ~/.ansible/test/cache/get_pip_<version>.py instead. scripts/setup.sh puts this
file there, in the home directory that scripts/ansible-test.sh gives ansible-test (.build/home),
not in the user's. It does what get-pip.py does with the same arguments: put pip into the running Python
(from the interpreter's own bundled wheel, via ensurepip), then `pip install` the requested packages
from the package index.
"""
import ensurepip
import os
import subprocess
import sys

GET_PIP_ONLY_OPTIONS = ("--no-setuptools", "--no-wheel")

ensurepip.bootstrap(upgrade=True)
# ensurepip points PIP_CONFIG_FILE at os.devnull for itself; the real install must see the
# machine's pip configuration (index, certificates) again.
env = dict((k, v) for k, v in os.environ.items() if k != "PIP_CONFIG_FILE")
pip_args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY_OPTIONS]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install"] + pip_args, env=env))

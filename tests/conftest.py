"""What the whole suite shares before any test module loads: its own cache folder (the empty MLflow database that
new results folders copy), never the user's; child processes inherit it through `tests._support.processes.ENV`."""

import atexit
import os
import shutil
import tempfile

from ablations.paths import CACHE_ENV

_CACHE = tempfile.mkdtemp(prefix="senet-ablate-cache-")
os.environ[CACHE_ENV] = _CACHE
atexit.register(shutil.rmtree, _CACHE, True)

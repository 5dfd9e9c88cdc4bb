"""The command line applies Ray's environment before anything imports Ray.

Ray reads switches such as ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once, at import;
imported too early, it resolves 127.0.0.1 to the machine's address and every
``agora`` command that connects (down, status) hangs on the loopback-only head.
"""

import os
import subprocess
import sys

PROBE = """
import importlib.abc, os, sys

class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "ray" and "seen" not in globals():
            globals()["seen"] = os.environ.get("RAY_AUTH_MODE")
        return None

sys.meta_path.insert(0, Watch())
import cluster.cli
print("ray imported with RAY_AUTH_MODE =", globals().get("seen"))
"""


def test_importing_the_cli_sets_rays_environment_before_ray_is_imported():
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ray imported with RAY_AUTH_MODE = token" in out.stdout, out.stdout

"""Debian tools the tests and the local stack need beyond Python (Chromium, promtool), installed on
first use so that `./pants test ::` needs no setup step on a fresh machine."""

from __future__ import annotations

import os
import shutil
import subprocess

from ragcore_dev.servers import unavailable


def debian_tool(binary: str, package: str) -> str:
    """The path of `binary`, installing Debian's `package` first when it is missing (as root, with
    apt-get); otherwise the test fails under CI or skips, saying why."""
    found = shutil.which(binary)
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        unavailable(f"{binary} (Debian package {package}; needs root and apt-get to install)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        subprocess.run(install, env=env, capture_output=True)
    return shutil.which(binary) or unavailable(f"{binary} (apt-get install {package} failed)")

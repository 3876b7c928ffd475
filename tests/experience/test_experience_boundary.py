"""The experience manager is framework-free: importing it loads no verl, Ray or torch."""

import subprocess
import sys


def test_importing_the_package_loads_no_framework():
    probe = "import sys, exgrpo_verl.experience; print(sorted({'torch', 'verl', 'ray'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"

"""`swimnode.testing.fuzz` on an install without the `[test]` extra."""

from __future__ import annotations

import subprocess
import sys

MESSAGE = "ImportError: swimnode.testing.fuzz needs hypothesis: pip install 'swimnode[test]'"


def test_fuzz_without_hypothesis_names_the_extra() -> None:
    # In a fresh interpreter, since this one has hypothesis loaded (pytest's plugin). A
    # None entry in sys.modules makes `import hypothesis` fail as if it were not installed.
    code = "\n".join(
        [
            "import sys",
            "sys.modules['hypothesis'] = None",
            "import swimnode.testing, swimnode.testing.processes",
            "import swimnode.testing.fuzz",
        ]
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == MESSAGE
    assert done.stderr.count("Traceback") == 1  # no chained ModuleNotFoundError

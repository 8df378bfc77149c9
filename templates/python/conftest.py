"""Makes the WIT bindings importable in unit tests: componentize-py (the tool `fnmill build`
uses) generates them into bindings/ the first time."""

import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).parent
BINDINGS = ROOT / "bindings"

if not (BINDINGS / "wit_world").is_dir():
    tool = shutil.which("componentize-py")
    if tool is None:
        raise RuntimeError(
            "componentize-py not found: pip install componentize-py==0.25.1 "
            "(it generates the bindings the tests import)"
        )
    subprocess.run(
        [tool, "-d", str(ROOT / "wit"), "-w", "event-function", "bindings", str(BINDINGS)],
        check=True,
    )
sys.path.insert(0, str(BINDINGS))

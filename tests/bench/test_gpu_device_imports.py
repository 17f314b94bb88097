"""bench/gpu/device_imports.py: the dry run's guard hides what the GPU device lacks, exactly as a missing module."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import importlib.util, json
found = {name: importlib.util.find_spec(name) is not None for name in ("sqlalchemy", "numpy", "carried", "buildsys")}
try:
    import sqlalchemy
    imported = "imported"
except ModuleNotFoundError as error:
    imported = str(error)
print(json.dumps({"found": found, "import": imported}))
"""


def test_modules_off_the_device_are_missing_and_logged(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "carried").mkdir(parents=True)
    (site / "carried" / "__init__.py").write_text("")
    guard = tmp_path / "guard"
    script = REPO / "bench" / "gpu" / "device_imports.py"
    subprocess.run([sys.executable, str(script), "--write-guard", str(guard), "--site", str(site)], check=True)

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(guard), str(site), str(REPO)]))
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)

    # SQLAlchemy is installed here but not on the device image: hidden, the way a missing module is.
    assert result.stdout.strip() == (
        '{"found": {"sqlalchemy": false, "numpy": true, "carried": true, "buildsys": true}, '
        '"import": "No module named \'sqlalchemy\'"}'
    )
    assert (guard / "hidden.txt").read_text().split() == ["sqlalchemy", "sqlalchemy"]

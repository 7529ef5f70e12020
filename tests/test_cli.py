"""The command line answers at once: ``hepdask --help`` and every subcommand's ``--help`` import
no heavy package (Dask, awkward, uproot, scikit-learn, ...), which took 6-9 s before."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("dask", "distributed", "awkward", "uproot", "numpy", "pandas", "sklearn", "scipy",
         "xgboost", "torch", "tensorflow", "fastapi")
COMMANDS = ("run", "specs", "predict", "export", "serve", "service", "submit", "jobs", "logs",
            "fetch", "upload", "cancel", "resume", "data", "convert-mlaas4hep", "higgsml",
            "higgsml submission", "higgsml check")


@pytest.mark.parametrize("command", [(), *(tuple(c.split()) for c in COMMANDS)],
                         ids=lambda c: " ".join(c) or "hepdask")
def test_help_imports_no_heavy_package(command):
    probe = (
        "import sys\nfrom hepdask.cli import main\ntry:\n"
        f"    main([*{list(command)!r}, '--help'])\nexcept SystemExit:\n    pass\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "usage: hepdask" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_the_public_api_is_still_one_import_away():
    import hepdask

    assert hepdask.Pipeline.__name__ == "Pipeline" and callable(hepdask.load_config)
    with pytest.raises(AttributeError, match="no attribute 'Pipline'"):
        hepdask.Pipline  # noqa: B018

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
SHARED_DATA = next((p for p in (ROOT.parent / "shared" / "data", Path("/work/shared/data")) if p.is_dir()),
                   ROOT.parent / "shared" / "data")


@pytest.fixture()
def benchmark_data() -> Path:
    """The benchmark files' directory. They sit beside the repository on the project's machines, not
    in it (licences): elsewhere the few tests that read them skip, saying why. A fixture, not an
    import: `from conftest import` in a full run may resolve to another directory's conftest."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"benchmark data not found at {SHARED_DATA} (README: Data and licences)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def gsm8k_train():
    """`rows(n)`: the first n GSM8K-train problems (what the pipeline's bootstrap reads); tests that
    need them skip where the benchmark data is missing, like `benchmark_data`."""
    from training.bootstrap import GSM8K_TRAIN
    if not GSM8K_TRAIN.is_file():
        pytest.skip(f"GSM8K train not found at {GSM8K_TRAIN} (README: Data and licences)")

    def rows(n: int) -> list[dict]:
        with open(GSM8K_TRAIN) as f:
            return [json.loads(line) for _, line in zip(range(n), f)]
    return rows

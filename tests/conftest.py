import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
SHARED_DATA = next((p for p in (ROOT.parent / "shared" / "data", Path("/work/shared/data")) if p.is_dir()),
                   ROOT.parent / "shared" / "data")
# The benchmark files sit beside the repository on the project's machines, not in it (licences):
# elsewhere the few tests that read them skip, saying why.
needs_benchmark_data = pytest.mark.skipif(not SHARED_DATA.is_dir(),
                                          reason=f"benchmark data not found at {SHARED_DATA} (README: Data and licences)")

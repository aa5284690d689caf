import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from converters.convert import ConvertConfig, convert  # noqa: E402


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
    """A small converted synthetic dataset with both formats (shared, read-only)."""
    out = tmp_path_factory.mktemp("data") / "synthetic"
    convert(ConvertConfig(source="synthetic", out=out, limit=600, quiet=True))
    return out


def device_under_test() -> str:
    return os.environ.get("NORMFAST_TEST_DEVICE", "cpu")

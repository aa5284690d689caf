import loader_checks
import numpy as np
import pytest

from converters.convert import ConvertConfig, convert


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
    """A small converted synthetic dataset with both formats (shared, read-only)."""
    out = tmp_path_factory.mktemp("data") / "synthetic"
    convert(ConvertConfig(source="synthetic", out=out, limit=600, quiet=True,
                          formats=loader_checks.convert_formats()))
    return out


@pytest.fixture(scope="session")
def edge(tmp_path_factory):
    """60 edge-case images in 9 tar shards and one .beton (see loader_checks.edge_images)."""
    out = tmp_path_factory.mktemp("loaders") / "edge"
    shards = loader_checks.write_dataset(out, loader_checks.edge_images(), np.arange(loader_checks.EDGE_N), 7)
    assert len(shards) == 9
    return out


@pytest.fixture(scope="session")
def indexed(tmp_path_factory):
    """2500 tiny images whose pixels spell their stored index (more than DALI's default
    shuffle buffer of 1024)."""
    out = tmp_path_factory.mktemp("loaders") / "indexed"
    k = np.arange(2500)
    images = np.zeros((2500, 2, 2, 3), np.uint8)
    images[..., 0] = (k // 256)[:, None, None]
    images[..., 1] = (k % 256)[:, None, None]
    loader_checks.write_dataset(out, images, k % 256, 1000)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """40 synthetic train images (+8 test): the training tests' dataset."""
    out = tmp_path_factory.mktemp("tiny") / "synthetic"
    convert(ConvertConfig("synthetic", out, limit=40, quiet=True))
    return out


@pytest.fixture
def no_bench(monkeypatch):
    """The checks must come before the benchmark runs: running it fails the test."""
    import normfast.bench

    def ran(*a, **k):
        raise AssertionError("the benchmark ran before its options were checked")
    monkeypatch.setattr(normfast.bench, "bench_loaders", ran)
    monkeypatch.setattr(normfast.bench, "bench_train", ran)

"""Every benchmark JSON and run config records where its numbers came from."""
from normfast.provenance import provenance, source_digest


def test_source_digest_follows_the_code(tmp_path):
    for pkg in ("normfast", "converters"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "normfast" / "a.py").write_text("x = 1\n")
    first = source_digest(tmp_path)
    assert len(first) == 12 and source_digest(tmp_path) == first
    (tmp_path / "normfast" / "a.py").write_text("x = 2\n")
    assert source_digest(tmp_path) != first
    (tmp_path / "normfast" / "a.py").write_text("x = 1\n")
    assert source_digest(tmp_path) == first
    (tmp_path / "README.md").write_text("not code")            # only the packages' code counts
    assert source_digest(tmp_path) == first
    assert source_digest(tmp_path / "nothing") is None


def test_provenance_records_the_running_code():
    info = provenance()
    assert info["source"] == source_digest() and len(info["source"]) == 12
    assert {"torch", "torchvision", "numpy", "dali", "ffcv", "gpu", "cpu", "command", "commit"} <= set(info)

"""normfast.atomic.write_atomic, the one writer of whole files: it never replaces what is not a
regular file (issue 18 §6: `bench loaders --json /dev/full` replaced the device node)."""
import os
import socket
import stat

import pytest
from click.testing import CliRunner

from normfast.atomic import write_atomic, write_json
from normfast.cli import main
from normfast.errors import NormfastError


def device_node(tmp_path):
    """A character device like /dev/full (major 1, minor 7), made in a temporary folder."""
    path = tmp_path / "full"
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 7))
    except PermissionError:
        pytest.skip("mknod needs root")
    return path


def fifo(tmp_path):
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return path


def directory(tmp_path):
    path = tmp_path / "dir"
    path.mkdir()
    return path


def unix_socket(tmp_path):
    path = tmp_path / "sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()
    return path


@pytest.mark.parametrize("make, kind, test", [
    (device_node, "a character device", stat.S_ISCHR), (fifo, "a FIFO", stat.S_ISFIFO),
    (directory, "a directory", stat.S_ISDIR), (unix_socket, "a socket", stat.S_ISSOCK)])
def test_a_target_that_is_not_a_regular_file_is_refused_and_kept(tmp_path, make, kind, test):
    path = make(tmp_path)
    for write in (lambda: write_atomic(path, b"{}"), lambda: write_json(path, {"a": 1})):
        with pytest.raises(NormfastError, match=f"{path.name}: is {kind}, not a regular file"):
            write()
        assert test(os.lstat(path).st_mode)                      # still what it was
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]   # no temporary left


def test_a_link_to_a_device_is_refused_a_link_to_a_file_is_written(tmp_path):
    node = device_node(tmp_path)
    (tmp_path / "to-node").symlink_to(node)
    with pytest.raises(NormfastError, match="is a character device"):
        write_atomic(tmp_path / "to-node", "x")
    assert stat.S_ISCHR(os.stat(node).st_mode)
    (tmp_path / "f").write_text("old")
    (tmp_path / "to-file").symlink_to(tmp_path / "f")
    assert write_atomic(tmp_path / "to-file", "new") == tmp_path / "to-file"
    assert (tmp_path / "to-file").read_text() == "new"


def test_bench_json_on_a_device_node_is_one_line_and_keeps_the_node(tmp_path):
    node = device_node(tmp_path)
    r = CliRunner().invoke(main, ["bench", "loaders", "--data", str(tmp_path / "nodata"), "--json", str(node)])
    assert r.exit_code == 1, r.output
    assert r.output.startswith("error: ") and r.output.strip().count("\n") == 0, r.output
    assert f"{node}: is a character device, not a regular file" in r.output
    assert stat.S_ISCHR(os.lstat(node).st_mode)


def test_every_whole_file_goes_through_the_one_writer():
    """Issue 15 §2: no second atomic writer (rundir, manifest, report/common each had one):
    nothing in normfast/ or benchmarks/ renames a temporary into place or writes a whole file
    itself, except normfast/atomic.py. (converters/output.py swaps whole directories; the sweep's
    claims move a stale claim aside to take it over, which is no write.)"""
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    own = re.compile(r"os\.replace\(|os\.rename\(|\.write_text\(|\.write_bytes\(|json\.dump\(|open\([^)]*[\"']w")
    exempt = {"atomic.py", "claims.py"}
    files = [p for folder in ("normfast", "benchmarks") for p in (root / folder).rglob("*.py") if p.name not in exempt]
    found = [f"{p.relative_to(root)}:{i}" for p in files
             for i, line in enumerate(p.read_text().splitlines(), 1) if own.search(line)]
    assert found == []
    import normfast.manifest
    import normfast.report.common
    import normfast.rundir
    assert not hasattr(normfast.manifest, "write_json_atomic") and not hasattr(normfast.report.common, "write_atomic")
    assert normfast.rundir.write_atomic is write_atomic

"""verify checks the manifest's own contents against the data; manifests are type-checked on
load; every mistake is one error line (normfast issue 11)."""

import pytest
from click.testing import CliRunner

from converters.convert import ConvertConfig, convert
from normfast.cli import main
from normfast.errors import NormfastError
from normfast.manifest import load_manifest
from normfast.verify import verify
from fixtures import edit_manifest, the_error_line


@pytest.fixture
def data(tmp_path):
    out = tmp_path / "d"
    convert(ConvertConfig("synthetic", out, limit=50, formats=("dali",), quiet=True))
    return out


edit = edit_manifest


def one_line_error(args, *expected):
    return the_error_line(CliRunner().invoke(main, args), *expected)      # output holds stdout and stderr


def test_verify_passes_a_fresh_conversion_and_says_what_it_checked(data):
    lines = list(verify(data, 10))
    assert lines[1].startswith("manifest: counts, class counts and labels of train, test and the train mean/std")


def test_verify_catches_an_edited_mean(data):
    edit(data, lambda m: m["stats"]["mean"].__setitem__(1, m["stats"]["mean"][1] + 1e-4))
    with pytest.raises(NormfastError, match=r"stats.mean is \(.*\), the train split's stored pixels give"):
        list(verify(data))


def test_verify_catches_edited_class_counts_with_the_same_total(data):
    def swap(m):
        c = m["splits"]["test"]["class_counts"]
        c[0], c[1] = c[0] + 1, c[1] - 1
    edit(data, swap)
    with pytest.raises(NormfastError,
                       match=r"splits.test.class_counts\[0\] \(hstripes\) is \d+, the stored labels give"):
        list(verify(data))


def test_five_classes_with_labels_up_to_nine(data):
    edit(data, lambda m: m.__setitem__("classes", m["classes"][:5]) or m.pop("num_classes"))
    with pytest.raises(NormfastError, match=r"class_counts has 10 entries \(labels up to 9\) but classes lists 5"):
        load_manifest(data)                  # what train, stats and every loader call
    def trim(m):
        for s in m["splits"].values():
            s["class_counts"] = s["class_counts"][:5]
    edit(data, trim)                         # the dropped classes' samples are still counted
    with pytest.raises(NormfastError, match=r"splits.train.count is \d+ but its class_counts add up to \d+"):
        list(verify(data))


def test_verify_reports_extra_files_at_the_root(data):
    (data / "notes.txt").write_text("x")
    with pytest.raises(NormfastError, match=r"notes.txt: not listed in the manifest"):
        list(verify(data))


@pytest.mark.parametrize("command", ["verify", "stats"])
def test_a_null_manifest_is_one_line(data, command):
    (data / "manifest.json").write_text("null")
    one_line_error([command, str(data)], "manifest.json: the manifest is null (null), expected a JSON object")


@pytest.mark.parametrize("command", ["verify", "stats"])
def test_a_manifest_without_a_test_count_is_one_line(data, command):
    edit(data, lambda m: m["splits"]["test"].pop("count"))
    one_line_error([command, str(data)], "missing key 'splits.test.count'")
    edit(data, lambda m: m["splits"].pop("test"))
    one_line_error([command, str(data)], "missing key 'splits.test'")


def test_a_count_given_as_a_string_is_named(data):
    edit(data, lambda m: m["splits"]["train"].__setitem__("count", "50"))
    one_line_error(["verify", str(data)], 'splits.train.count is "50" (str), expected a whole number')


@pytest.mark.parametrize("n", ["0", "-3"])
def test_verify_samples_must_be_positive(data, n):
    line = one_line_error(["verify", str(data), "--samples", n], f"--samples {n}: must be at least 1")
    assert "has shape" not in line

"""verify, download without a network, and the loader errors a user can meet."""
import builtins
import shutil

import pytest
from click.testing import CliRunner

from converters.convert import ConvertConfig, convert
from normfast.cli import main
from normfast.errors import NormfastError
from normfast.loaders import build_loader
from normfast.verify import verify


@pytest.fixture
def copy(synthetic_dir, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(synthetic_dir, out)
    return out


def test_verify_passes_and_reads_back_through_both(synthetic_dir):
    r = CliRunner().invoke(main, ["verify", str(synthetic_dir), "--samples", "64"])
    assert r.exit_code == 0, r.output
    assert "train: 600 samples; first 64 read back through dali, plain, ffcv identical" in r.output
    assert r.output.strip().endswith("ok")


def test_verify_catches_a_changed_byte(copy):
    shard = copy / "dali" / "train-00000.tar"
    data = bytearray(shard.read_bytes())
    data[5000] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(NormfastError, match="train-00000.tar: sha256 differs"):
        list(verify(copy))


def test_verify_catches_missing_and_extra_files(copy):
    (copy / "ffcv" / "test.beton").rename(copy / "ffcv" / "other.beton")
    with pytest.raises(NormfastError, match="test.beton: listed in the manifest but missing"):
        list(verify(copy))
    (copy / "ffcv" / "other.beton").rename(copy / "ffcv" / "test.beton")
    (copy / "dali" / "stray.tar").write_bytes(b"x")
    with pytest.raises(NormfastError, match="stray.tar: not listed in the manifest"):
        list(verify(copy))


def test_download_without_network_is_one_clear_line(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tvc
    import torchvision.datasets.utils as tvu

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    # the same failure urllib raises without a network, without touching the network
    monkeypatch.setattr(tvu, "download_and_extract_archive", offline)
    monkeypatch.setattr(tvc, "download_and_extract_archive", offline)
    for source in ("cifar10", "tiny-imagenet-200"):
        r = CliRunner().invoke(main, ["convert", source, "--download", "--src", str(tmp_path / source),
                                      "--out", str(tmp_path / "out")])
        assert r.exit_code == 1, r.output
        assert f"downloading {source} failed" in r.output and "place the files in --src" in r.output
        assert r.output.strip().count("\n") == 0
        assert not (tmp_path / "out").exists() and not (tmp_path / source).exists()


def test_missing_format_names_the_convert_to_run(tmp_path):
    out = tmp_path / "daliOnly"
    convert(ConvertConfig("synthetic", out, limit=20, formats=("dali",), quiet=True))
    with pytest.raises(NormfastError, match=r"has no ffcv files; run `normfast convert synthetic .* --format ffcv"):
        build_loader(out, "train", "ffcv", 8, "minmax", False, device="cpu")


def test_missing_package_names_it_and_how_to_install(synthetic_dir, monkeypatch):
    real_import = builtins.__import__

    def no_dali(name, *args, **kwargs):
        if name.startswith("nvidia.dali") or name == "nvidia":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    import sys
    for mod in [m for m in sys.modules if m.startswith("nvidia")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(builtins, "__import__", no_dali)
    with pytest.raises(NormfastError, match="backend 'dali' needs the nvidia.dali package; install it with: "
                                            "pip install nvidia-dali-cuda120"):
        build_loader(synthetic_dir, "train", "dali", 8, "minmax", False, device="cpu")


def test_unknown_names_list_the_valid_ones(synthetic_dir):
    with pytest.raises(NormfastError, match="unknown backend 'fast'; valid: dali, ffcv, resident, torch"):
        build_loader(synthetic_dir, "train", "fast", 8, "minmax", False, device="cpu")
    with pytest.raises(NormfastError,
                       match="unknown normalization setting 'zca'; valid: finetune, pretrain, instance, minmax"):
        build_loader(synthetic_dir, "train", "resident", 8, "zca", False, device="cpu")

"""`normfast convert --download`: fetch a source into --src in the layout its reader expects.

CIFAR10/100 and SVHN come through torchvision's downloaders (checksummed); Tiny
ImageNet-200 is the zip its authors distribute. Without a network the error says so.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from normfast.errors import NormfastError

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_IMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"


def _move_contents(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for p in src.iterdir():
        shutil.move(str(p), dst / p.name)


def download(source: str, dest: Path) -> None:
    if dest.is_dir() and any(dest.iterdir()):
        return  # already there: the reader checks its layout
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import download_and_extract_archive
    try:
        with tempfile.TemporaryDirectory(dir=dest.parent if dest.parent.exists() else None) as tmp:
            tmp = Path(tmp)
            if source == "cifar10":
                tvd.CIFAR10(tmp, download=True)
                _move_contents(tmp / "cifar-10-batches-py", dest)
            elif source == "cifar100":
                tvd.CIFAR100(tmp, download=True)
                _move_contents(tmp / "cifar-100-python", dest)
            elif source == "svhn":
                for split in ("train", "test"):
                    tvd.SVHN(tmp, split=split, download=True)
                _move_contents(tmp, dest)
            elif source == "tiny-imagenet-200":
                download_and_extract_archive(TINY_IMAGENET_URL, str(tmp), md5=TINY_IMAGENET_MD5)
                _move_contents(tmp / "tiny-imagenet-200", dest)
            else:
                raise NormfastError(f"source {source!r} cannot be downloaded; "
                                    "valid for --download: cifar10, cifar100, svhn, tiny-imagenet-200")
    except NormfastError:
        raise
    except (OSError, RuntimeError, ValueError) as e:
        shutil.rmtree(dest, ignore_errors=True)
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise NormfastError(f"downloading {source} failed ({reason}); without a network, "
                            f"place the files in --src yourself") from None

from setuptools import find_packages, setup

setup(
    name="normfast",
    version="0.1.0",
    description="Which input normalization should I use when fine-tuning an ImageNet CNN? "
    "Answered fast, with FFCV/DALI GPU pipelines and throughput beside accuracy.",
    packages=find_packages(include=["normfast", "normfast.*", "converters", "converters.*"]),
    package_data={"normfast.data": ["*.csv"]},   # the seed's published results
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "numpy",
        "click>=8",
        "pyyaml",
        "tqdm",
        "scipy",           # SVHN's .mat files
        "pillow",
        "matplotlib",      # figure1.png in `normfast report`
        "nvidia-dali-cuda120",
        "ffcv",
        "psutil",          # peak memory in benchmarks
    ],
    extras_require={
        "test": ["pytest", "ruff", "webdataset"],   # .ci/run: ruff, then pytest (webdataset: test_formats)
        "timm": ["timm>=1.0"],               # --pretrained timm: the seed's weights
        "tensorboard": ["tensorboard"],      # --log tensorboard
        "wandb": ["wandb"],                  # --log wandb
    },
    entry_points={"console_scripts": ["normfast=normfast.cli:main"]},
)

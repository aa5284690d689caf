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
        # .ci/run: ruff, then pytest; submitit for sweep --executor local, webdataset for test_formats
        "test": ["pytest", "ruff", "submitit>=1.5", "webdataset"],
        "timm": ["timm>=1.0"],               # --pretrained timm: the seed's weights
        "tensorboard": ["tensorboard"],      # --log tensorboard
        "wandb": ["wandb"],                  # --log wandb
        "slurm": ["submitit>=1.5"],          # sweep --executor slurm: job arrays, requeue on preemption
    },
    entry_points={"console_scripts": ["normfast=normfast.cli:main"]},
)

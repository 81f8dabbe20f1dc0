from setuptools import find_packages, setup

setup(
    name="vmae2",
    version="0.1.0",
    description="VideoMAE V2 pre-training: DALI data engine and a lean PyTorch trainer",
    python_requires=">=3.10",
    packages=find_packages(include=["vmae2*", "dali_pipes*", "shard_tools*", "bench*"]),
    install_requires=[
        "torch>=2.4",
        "timm>=1.0",
        "numpy>=1.24",
        "click>=8.0",
        "webdataset>=0.2",
        "nvidia-dali-cuda130>=2.0",
        "av>=12",
        "tqdm>=4.60",
        "pillow>=9",
        "tensorboard>=2.10",
    ],
    extras_require={
        # apex is not on PyPI: build it from source for its fused optimizers; vmae2 works without it.
        "test": ["pytest>=7", "matplotlib>=3.7"],
        "bench": ["matplotlib>=3.7"],
    },
    entry_points={
        "console_scripts": [
            "vmae2-shard=shard_tools.cli:main",
            "vmae2-train=vmae2.cli:main",
        ]
    },
)

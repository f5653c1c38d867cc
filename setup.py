"""Installable package: a Model Garden extension reproducing
"Training EfficientNets at Supercomputer Scale" (arXiv 2011.00071)."""
import setuptools

setuptools.setup(
    name="effnet-supercomputer",
    version="0.1.0",
    description=("Model Garden experiment registry reproducing 'Training "
                 "EfficientNets at Supercomputer Scale'"),
    python_requires=">=3.10,<3.13",
    packages=setuptools.find_packages(
        include=["official_ext", "official_ext.*", "experiments",
                 "experiments.*", "launch", "launch.*"]),
    py_modules=["train"],
    package_data={"": ["*.gin"]},
    install_requires=[
        # Orbit ships inside tf-models-official; never the unrelated `orbit`.
        "tf-models-official==2.20.0",
        "tensorflow>=2.20,<2.21",
        "tf-keras>=2.20,<2.21",
        "tensorflow-text>=2.20,<2.21",
        "tensorboard>=2.20,<2.21",  # HParams and event reading.
        "tensorflow-datasets>=4.9",
        "gin-config>=0.5",
        "absl-py>=1.0",
        "numpy>=1.26",
        "pyyaml>=6.0",
        "scikit-learn>=1.3",    # the digits demo data
        "matplotlib>=3.7",      # run comparison plots
        "pillow>=10.0",         # image checks in tools and tests
    ],
    extras_require={
        "test": ["pytest>=8.0", "pytest-timeout>=2.2"],
    },
)

"""Installs the `lt4rec` package and its `lt4rec` command.

The repository keeps the TFX template layout (`pipeline/`, `components/`, `models/`,
`serving/`, `logs/` at the top), and installs those folders as subpackages of `lt4rec`
(`lt4rec.models`, ...), so that generic names like `models` never clash with other
installed packages. Exact versions come from `constraints.txt`:

    pip install -c constraints.txt -e '.[test]'
"""

from setuptools import find_packages, setup

SUBPACKAGES = ("pipeline", "components", "models", "serving", "logs")


def _packages() -> tuple[list[str], dict[str, str]]:
    packages = ["lt4rec", *(f"lt4rec.{nested}" for nested in find_packages(where="lt4rec"))]  # lt4rec.testing
    package_dir = {"lt4rec": "lt4rec"}
    for folder in SUBPACKAGES:
        name = f"lt4rec.{folder}"
        packages.append(name)
        package_dir[name] = folder
        for nested in find_packages(where=folder):
            packages.append(f"{name}.{nested}")
            package_dir[f"{name}.{nested}"] = f"{folder}/{nested.replace('.', '/')}"
    return packages, package_dir


packages, package_dir = _packages()

setup(
    name="lt4rec",
    version="0.1.0",
    description=(
        "A TFX pipeline that learns CTR and CVR together by sparse sharing (LT4REC) "
        "and exports two small, fast SavedModels for TF Serving."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.12",
    packages=packages,
    package_dir=package_dir,
    package_data={"lt4rec.pipeline": ["schema/*.pbtxt"]},
    install_requires=[
        # The verified stack (see constraints.txt for every exact version).
        "tfx==1.16.0",
        "ml-pipelines-sdk==1.16.0",
        "tensorflow==2.16.2",
        "tf-keras==2.16.0",
        "tensorflow-model-optimization==0.8.0",
        "tensorflow-transform==1.16.0",
        "tensorflow-data-validation==1.16.1",
        "tensorflow-model-analysis==0.47.1",
        "apache-beam[gcp]==2.59.0",
        "tensorflow-serving-api==2.16.1",
        # kfp >= 2.6 needs protobuf 4, which tensorflow-metadata 1.16 forbids on Python < 3.11.
        "kfp==2.7.0; python_version >= '3.11'",
        "kfp==2.5.0; python_version < '3.11'",
        "click>=8.1",
        "matplotlib>=3.8",
        "numpy>=1.26,<2",
        "google-crc32c>=1.5",
        "isal>=1.6",  # ISA-L's DEFLATE: `lt4rec generate` compresses logs 4x faster than zlib
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.6",  # `make test` runs the suite on one worker per core
            "ruff==0.8.4",  # formatter and linter: `make lint`, run by `make test`
            # Property-based tests; 6.168.5 is the last release for Python 3.10.
            "hypothesis==6.170.17; python_version >= '3.11'",
            "hypothesis==6.168.5; python_version < '3.11'",
        ]
    },
    entry_points={"console_scripts": ["lt4rec=lt4rec.cli:main"]},
)

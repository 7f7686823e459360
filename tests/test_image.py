"""The pipeline image: what Dataflow's Python 3.11 workers need to run the project's code."""

from __future__ import annotations

import os
import re
import sys
from importlib import metadata

from packaging.markers import Marker
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from tests.helpers import REPO


def _pins() -> dict[str, str]:
    pins = {}
    with open(os.path.join(REPO, "constraints.txt")) as handle:
        for line in handle:
            match = re.match(r"^([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)\s*(?:;\s*(.*))?$", line.strip())
            if match and (not match.group(3) or Marker(match.group(3)).evaluate()):
                pins[re.sub(r"\[.*\]", "", match.group(1)).lower()] = match.group(2)
    return pins


def _base_image() -> str:
    with open(os.path.join(REPO, "Dockerfile")) as handle:
        (base,) = [line.split()[1] for line in handle if line.startswith("FROM ")]
    return base


def test_pins_that_refuse_this_python_are_installed_in_a_beam_sdk_image_the_readme_uses():
    """Dataflow workers pip-install a --setup_file package: a pin refusing their Python stops them."""
    python = Version(f"{sys.version_info[0]}.{sys.version_info[1]}.{sys.version_info[2]}")
    refusing = []
    for name, version in _pins().items():
        try:
            requires = metadata.metadata(name).get("Requires-Python")
        except metadata.PackageNotFoundError:
            continue
        if requires and python not in SpecifierSet(requires):
            refusing.append(f"{name}=={version} (Requires-Python {requires})")
    assert refusing, "every pin admits this Python: --setup_file would work, revisit the image's design"
    beam = _pins()["apache-beam"]
    assert _base_image() == f"apache/beam_python{sys.version_info[0]}.{sys.version_info[1]}_sdk:{beam}", refusing
    with open(os.path.join(REPO, "README.md")) as handle:
        readme = handle.read()
    dataflow_commands = [block for block in re.findall(r"```sh\n(.*?)```", readme, re.S) if "DataflowRunner" in block]
    assert dataflow_commands
    assert "--setup_file" not in readme.replace("`--setup_file`", "")  # mentioned only to say why not
    assert "--sdk_container_image" in readme


def test_the_image_keeps_the_beam_harness_entrypoint():
    """Dataflow starts workers through the SDK image's entrypoint; pipeline tasks give their own command."""
    with open(os.path.join(REPO, "Dockerfile")) as handle:
        instructions = [
            line.split()[0] for line in handle if line.strip() and not line.startswith("#") and line[0].isupper()
        ]
    assert "ENTRYPOINT" not in instructions and "CMD" not in instructions

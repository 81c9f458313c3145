"""The Dockerfile, .dockerignore and kind-config.yaml are consistent with the repository.

No Docker engine runs here, so these checks read the files instead of building the image.
"""

from __future__ import annotations

import fnmatch
import re

import yaml

from chart_helpers import REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()


def instructions() -> list[tuple[str, str]]:
    """Return the Dockerfile's instructions as (keyword, arguments), continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            result.append((keyword.upper(), arguments.strip()))
    return result


def test_every_stage_uses_python_slim_base() -> None:
    bases = [arguments.split()[0] for keyword, arguments in instructions() if keyword == "FROM"]
    assert bases
    assert all(base == "python:3.11-slim" for base in bases), bases


def test_project_installs_with_lock_constraints() -> None:
    runs = [arguments for keyword, arguments in instructions() if keyword == "RUN"]
    assert "pip install -c requirements.lock ." in runs


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(index for index, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def test_final_stage_runs_as_non_root() -> None:
    users = [arguments for keyword, arguments in final_stage() if keyword == "USER"]
    assert users, "the final stage sets no USER, so the image runs as root"
    assert users[-1].split(":")[0] not in {"0", "root"}


def test_final_stage_entrypoint_is_mailpipe() -> None:
    assert ("ENTRYPOINT", '["mailpipe"]') in final_stage()


def test_copied_sources_exist_and_are_not_ignored() -> None:
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    patterns = [pattern for pattern in patterns if pattern and not pattern.startswith("#")]
    for keyword, arguments in instructions():
        if keyword != "COPY" or arguments.startswith("--from"):
            continue
        for source in arguments.split()[:-1]:
            assert (REPO / source).exists(), f"the Dockerfile copies {source}, which the repository lacks"
            # As in Docker, the last matching pattern decides, and a leading `!` includes again.
            included = True
            for pattern in patterns:
                negated = pattern.startswith("!")
                bare = pattern.lstrip("!").rstrip("/")
                if fnmatch.fnmatch(source, bare) or fnmatch.fnmatch(source.rstrip("/"), bare):
                    included = negated
            assert included, f".dockerignore leaves out {source}, which the Dockerfile copies"


def test_kind_config_has_control_plane_and_two_workers() -> None:
    config = yaml.safe_load((REPO / "kind-config.yaml").read_text())
    assert config["kind"] == "Cluster"
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    roles = sorted(node["role"] for node in config["nodes"])
    assert roles == ["control-plane", "worker", "worker"]


def test_kind_cluster_name_matches_makefile() -> None:
    config = yaml.safe_load((REPO / "kind-config.yaml").read_text())
    makefile = (REPO / "Makefile").read_text()
    assert f"--name {config['name']}" in makefile

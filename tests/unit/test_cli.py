"""The command line: options on either side of the command, and errors with exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mailpipe.cli import build_parser

EXAMPLE = str(Path(__file__).parents[2] / "services" / "config.example.yaml")


def test_config_after_command_is_accepted() -> None:
    arguments = build_parser().parse_args(["consume", "news", "--config", EXAMPLE])
    assert arguments.config == EXAMPLE
    assert arguments.group == "news"


def test_config_before_command_is_kept() -> None:
    arguments = build_parser().parse_args(["--config", EXAMPLE, "publish", "--group", "news"])
    assert arguments.config == EXAMPLE


def _run(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailpipe.cli", *arguments], capture_output=True, text=True, timeout=60)


def test_unknown_group_exits_with_2() -> None:
    result = _run("consume", "newsletters", "--config", EXAMPLE)
    assert result.returncode == 2
    assert "unknown email group 'newsletters'" in result.stderr


def test_unknown_key_exits_with_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("publish:\n  chunkSise: 10\n", encoding="utf-8")
    result = _run("--config", str(path), "publish")
    assert result.returncode == 2
    assert "publish.chunkSise: unknown key" in result.stderr

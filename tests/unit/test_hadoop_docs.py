"""docs/hadoop.md shows the files the tests run, and names every setting the
dask-gateway configuration translation treats specially (flotilla_common.compat).

The guide's configuration file runs in tests/e2e/test_hadoop_guide.py, with its
proxy-user properties and kadmin steps against the real YARN and KDC."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from flotilla_common import compat
from helpers import apt_install

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "hadoop.md"
UNIT = ROOT / "deploy" / "systemd" / "flotilla.service"


def blocks(language: str) -> list[str]:
    """The guide's fenced code blocks in ``language``."""
    return re.findall(rf"^```{language}\n(.*?)^```$", GUIDE.read_text(), re.S | re.M)


def test_the_guides_configuration_is_the_example_the_tests_run() -> None:
    example = ROOT / "docs" / "examples" / "dask_gateway_config_yarn.py"
    assert blocks("python")[0] == example.read_text()


def test_the_guides_unit_is_the_shipped_one_and_systemd_accepts_it(tmp_path: Path) -> None:
    [shown] = blocks("ini")
    assert shown == UNIT.read_text()
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(shown)
    service = unit["Service"]
    assert service["User"] == "flotilla"
    assert service["ExecStart"].split()[1:] == ["--config", "/etc/flotilla/dask_gateway_config.py"]
    if shutil.which("systemd-analyze") is None:
        failed = apt_install(("systemd",))
        if failed:
            pytest.fail(f"cannot install systemd-analyze: {failed}")
    # The unit as this checkout would install it: its flotilla-embedded, a config file.
    config = tmp_path / "dask_gateway_config.py"
    config.touch()
    local = shown.replace("/opt/flotilla/.venv/bin", str(Path(sys.executable).parent))
    local = local.replace("/etc/flotilla/dask_gateway_config.py", str(config))
    path = tmp_path / "flotilla.service"
    path.write_text(local)
    done = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    # Bad keys and values are reported (exit status 0) with the file's name.
    problems = [x for x in (done.stdout + done.stderr).splitlines() if "flotilla.service" in x]
    assert done.returncode == 0 and not problems, done.stdout + done.stderr


def test_the_proxy_user_properties_parse() -> None:
    [xml] = blocks("xml")
    names = {p.findtext("name") for p in ET.fromstring(f"<c>{xml}</c>").iter("property")}
    assert names == {"hadoop.proxyuser.flotilla.hosts", "hadoop.proxyuser.flotilla.groups"}


def test_every_translated_setting_is_listed() -> None:
    text = GUIDE.read_text()
    table = {**compat.RENAMED, **compat.IGNORED, **compat.REFUSED}
    missing = sorted({key for _, key in table if f"`{key}`" not in text and f".{key}`" not in text})
    assert not missing, f"docs/hadoop.md does not name: {missing}"

"""The dependency review: this machine's bill of materials against docs/security.md, and the check
itself failing where it must. The images' own bills are checked in tests/test_docker.py."""

from __future__ import annotations

import copy
import re

import pytest

from serving.build import sbom
from serving.run.paths import ROOT


@pytest.fixture(scope="module")
def local_bill(tmp_path_factory) -> dict:
    import json
    import sys

    cyclonedx = ROOT / ".venv-sbom" / "bin" / "cyclonedx-py"
    if not cyclonedx.exists():
        pytest.fail("cyclonedx-bom is missing: `make test` installs it into .venv-sbom")
    out = tmp_path_factory.mktemp("sbom") / "local.cdx.json"
    assert sbom.main(["--cyclonedx", str(cyclonedx), "--python", sys.executable,
                      "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_this_machines_bill_is_as_reviewed(local_bill):
    review = sbom.reviewed()
    assert sbom.check(local_bill, review, complete=False) == []
    names = {sbom.component_name(c) for c in local_bill["components"]}
    # What the serving image runs is all reviewed: its pins, and TorchServe's Java side.
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==", (ROOT / "requirements-serve.txt").read_text(), re.M)
    assert {p.lower().replace("_", "-") for p in pins} <= set(review)
    java = {n for n in names if "/" in n} | {"java-runtime"}
    assert {"io.netty/netty-codec-http", "io.grpc/grpc-netty-shaded", "java-runtime"} <= java
    assert java <= set(review), java - set(review)


def test_the_check_fails_on_an_upgrade_and_on_an_unreviewed_component(local_bill):
    review = sbom.reviewed()
    upgraded = copy.deepcopy(local_bill)
    for component in upgraded["components"]:
        if component["name"].lower() == "pillow":
            component["version"] = "99.0.0"
        if component.get("group") == "io.netty" and component["name"] == "netty-codec-http":
            component["version"] = "4.1.128.Final"
    problems = sbom.check(upgraded, review, complete=False)
    assert len(problems) == 2 and any(p.startswith("pillow 99.0.0") for p in problems)
    assert any(p.startswith("io.netty/netty-codec-http 4.1.128.Final") for p in problems)
    extra = copy.deepcopy(local_bill)
    extra["components"].append({"type": "library", "name": "left-pad", "version": "1.0"})
    assert sbom.check(extra, review, complete=False) == []
    assert sbom.check(extra, review, complete=True)[-1].startswith("left-pad 1.0: not in the review")
    # A release line (Debian's packages): its updates pass, another line does not.
    line = {"nginx": "1.22.1-9*"}
    assert sbom.check({"components": [{"name": "nginx", "version": "1.22.1-9+deb12u9"}]}, line, True) == []
    assert sbom.check({"components": [{"name": "nginx", "version": "1.24.0-2"}]}, line, True)

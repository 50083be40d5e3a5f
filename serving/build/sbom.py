"""python -m serving.build.sbom: the serving image's bill of materials (CycloneDX JSON), and its check
against the versions docs/security.md reviewed.

    python -m serving.build.sbom --out run/sbom/serve.cdx.json   # this Python environment, TorchServe's
                                                          # Java frontend and what it bundles, Java
    python -m serving.build.sbom --check run/sbom/serve.cdx.json [--complete]

The Python packages come from cyclonedx-bom (`cyclonedx-py environment`, offline: it reads the
installed distributions), run from an environment of its own so that it is not in the bill. The
Java side is what pip cannot see: TorchServe's frontend is one jar with Netty, gRPC, Log4j, ...
inside it. The jar names the versions of Netty, gRPC, Log4j and Groovy itself; the rest are
TorchServe's build settings for that release (frontend/gradle.properties at its tag).

The image build runs this (docker/Dockerfile); the front door image writes its own from its
Debian packages (docker/nginx.Dockerfile). `--check` fails when a component the review lists has
another version than the one reviewed (`--complete`: also when a component is not listed at all),
so that an upgrade cannot land without a new review. Standard library and `serving.run.paths` only:
the image runs it before anything else of the project is installed.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from serving.run.paths import ROOT

REVIEW = ROOT / "docs" / "security.md"
JAR = Path(sysconfig.get_paths()["purelib"]) / "ts" / "frontend" / "model-server.jar"

# What TorchServe's frontend was built with, for what its jar does not name itself
# (pytorch/serve, frontend/gradle.properties at the tag; protobuf-java is grpc-protobuf 1.50.0's
# dependency, 3.21.7, whose classes in the jar carry that release's date, 2022-09-29).
FRONTEND_BUILD = {
    "0.12.0": {"com.google.code.gson/gson": "2.9.0", "org.yaml/snakeyaml": "2.1",
               "io.prometheus/simpleclient": "0.9.0", "commons-cli/commons-cli": "1.3.1",
               "com.lmax/disruptor": "3.4.4", "com.google.protobuf/protobuf-java": "3.21.7",
               "org.slf4j/slf4j-api": "1.7.32"},
}


def java_components(jar: Path, torchserve: str) -> list[dict]:
    """The Java libraries inside TorchServe's frontend jar, as maven components."""
    found: dict[str, str] = {}
    with zipfile.ZipFile(jar) as archive:
        netty = archive.read("META-INF/io.netty.versions.properties").decode()
        versions = dict(re.findall(r"^netty-([\w-]+)\.version=(\S+)$", netty, re.M))
        for module in ("codec-http", "codec-http2", "handler", "common", "buffer", "transport"):
            found[f"io.netty/netty-{module}"] = versions[module]
        # gRPC's version is a string constant of GrpcUtil (its user agent).
        grpc = re.search(rb"\b(1\.\d+\.\d+)\b", archive.read("io/grpc/internal/GrpcUtil.class"))
        found["io.grpc/grpc-netty-shaded"] = grpc.group(1).decode()
        dependencies = archive.read("META-INF/DEPENDENCIES").decode()
        for artifact, version in re.findall(r"org\.apache\.logging\.log4j:([\w-]+):jar:([\w.-]+)",
                                            dependencies):
            found[f"org.apache.logging.log4j/{artifact}"] = version
        groovy = archive.read("META-INF/groovy-release-info.properties").decode()
        found["org.codehaus.groovy/groovy"] = re.search(r"ImplementationVersion=(\S+)",
                                                         groovy).group(1)
    found.update(FRONTEND_BUILD.get(torchserve, {}))
    return [{"type": "library", "name": name.split("/")[1], "group": name.split("/")[0],
             "version": version, "bom-ref": f"pkg:maven/{name}@{version}",
             "purl": f"pkg:maven/{name}@{version}",
             "properties": [{"name": "serving:inside", "value": f"torchserve {torchserve} "
                             "frontend jar (model-server.jar)"}]}
            for name, version in sorted(found.items())]


def java_runtime() -> dict:
    """The Java runtime TorchServe's frontend runs on (`java -XshowSettings:properties`)."""
    java = shutil.which("java") or "java"
    shown = subprocess.run([java, "-XshowSettings:properties", "-version"], capture_output=True,
                           text=True, check=True).stderr
    version = re.search(r"java\.runtime\.version = (\S+)", shown).group(1)
    vendor = re.search(r"java\.vendor = (.+)", shown).group(1).strip()
    return {"type": "platform", "name": "java-runtime", "version": version,
            "bom-ref": f"java-runtime@{version}",
            "properties": [{"name": "serving:vendor", "value": vendor}]}


def build(cyclonedx: str, python: str) -> dict:
    done = subprocess.run([cyclonedx, "environment", python, "--output-reproducible",
                           "--of", "JSON"], capture_output=True, text=True, check=True)
    bom = json.loads(done.stdout)
    names = {c["name"].lower(): c["version"] for c in bom["components"]}
    torchserve = names.get("torchserve")
    if torchserve and JAR.exists():
        bom["components"] += java_components(JAR, torchserve)
        bom["components"].append(java_runtime())
    bom["components"].append({"type": "platform", "name": "cpython",
                              "version": ".".join(map(str, sys.version_info[:3])),
                              "bom-ref": "cpython"})
    bom["metadata"]["component"] = {"type": "application", "name": "model-serving",
                                    "bom-ref": "model-serving"}
    return bom


# -- the review --------------------------------------------------------------------------------

def reviewed(path: Path = REVIEW) -> dict[str, str]:
    """name -> version from the table under "## Reviewed versions" in docs/security.md: rows of
    `| name | version | ... |`. A version ending in `*` is a release line (Debian's packages:
    their security updates keep the line and add to its revision)."""
    text = path.read_text()
    section = text.split("## Reviewed versions", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0] and not set(cells[0]) <= set("-: ") \
                and cells[0] != "component":
            rows[cells[0].lower().replace("_", "-")] = cells[1]
    return rows


def component_name(component: dict) -> str:
    """group/name, lowercase, `_` as `-` (Python distributions are named either way)."""
    group = component.get("group")
    name = f"{group}/{component['name']}" if group else component["name"]
    return name.lower().replace("_", "-")


def check(bom: dict, review: dict[str, str], complete: bool) -> list[str]:
    """What in `bom` differs from the review: one line each."""
    problems = []
    for component in bom["components"]:
        name, version = component_name(component), component.get("version", "")
        wanted = review.get(name)
        if wanted is None:
            if complete:
                problems.append(f"{name} {version}: not in the review (docs/security.md)")
        elif wanted.endswith("*") and not version.startswith(wanted[:-1]):
            problems.append(f"{name} {version}: the review covers {wanted}")
        elif not wanted.endswith("*") and version != wanted:
            problems.append(f"{name} {version}: the review covers {wanted}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.build.sbom", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="write this environment's bill of materials here")
    parser.add_argument("--cyclonedx", default=shutil.which("cyclonedx-py") or
                        str(ROOT / ".venv-sbom" / "bin" / "cyclonedx-py"))
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--check", metavar="BOM", help="compare a bill with the review")
    parser.add_argument("--complete", action="store_true",
                        help="with --check: every component must be in the review")
    args = parser.parse_args(argv)
    if args.out:
        bom = build(args.cyclonedx, args.python)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(bom, indent=1) + "\n")
        print(f"{args.out}: {len(bom['components'])} components")
    if args.check:
        bom = json.loads(Path(args.check).read_text())
        problems = check(bom, reviewed(), args.complete)
        for line in problems:
            print(line)
        print(f"{args.check}: {len(bom['components'])} components, "
              f"{'all as reviewed' if not problems else f'{len(problems)} not as reviewed'}")
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

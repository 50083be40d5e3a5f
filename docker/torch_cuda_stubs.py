"""Stub libraries that let PyPI's aarch64 torch wheel (a CUDA build) import and run on CPU
without the CUDA libraries it links against: the arm64 (Graviton) image's torch, lean.

PyPI serves torch 2.13.0 for aarch64 only as a CUDA build: libtorch_cpu.so itself needs
libcudart.so.13 and libcupti.so.13, libtorch_python.so needs cuDNN, NCCL and cuFile, and the
wheel's CUDA dependencies are several GB (on this project's package index some do not resolve for
aarch64 at all: torch pins nvidia-nccl-cu13==2.29.7, which has no aarch64 wheel there). This
writes, for each CUDA library the wheel's shared objects need and do not ship, a small library of
the same soname and symbol versions whose functions all answer "no device" (error 100, which is
cudaErrorNoDevice and CUDA_ERROR_NO_DEVICE), except the kernel-registration calls CUDA code makes
while loading, which succeed and do nothing. torch then imports, reports no CUDA device
(torch.cuda.is_available() is False) and runs on the CPU; nothing CUDA can be called.

    python docker/torch_cuda_stubs.py --needs-stubs     exit 0 when the installed torch lists
                                                        CUDA libraries as requirements
    python docker/torch_cuda_stubs.py --install [--cc cc]   stubs into torch/lib, and the CUDA
                                                        requirements dropped from torch's metadata

--install writes the stubs beside torch's own libraries (on their RUNPATH) and removes the CUDA
packages from the installed torch's Requires-Dist, so that pip neither installs them later nor
reports them missing: the image says what it left out, once. Needs readelf and a C compiler for
torch's architecture. The Dockerfile's deps stage runs it (docker/install-torch.sh) for CPU images
whose torch resolved to a CUDA build, as PyPI's aarch64 torch does.

Under qemu-user on an x86 host, torch's CPU detection (cpuinfo) dereferences NULL when
/sys/devices/system/cpu/cpu*/regs/identification/midr_el1 is missing, as it is on x86 hosts:
docker/compose.sh (ARCH=arm64) writes a stand-in that docker/compose.emulated-arm64.yml binds
over /sys/devices/system/cpu. A real Graviton host has those files.
"""

from __future__ import annotations

import argparse
import collections
import importlib.metadata
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

# Libraries every Linux system has: never stubbed.
SYSTEM = re.compile(r"^(libc|libm|libstdc\+\+|libgcc_s|libpthread|libdl|librt|ld-linux-[\w-]+|"
                    r"libutil|libz)\.so")
# Libraries whose symbols are not versioned: which one a symbol belongs to, by its prefix.
UNVERSIONED = (("cuFile", "libcufile.so.0"), ("cusparseLt", "libcusparseLt.so.0"),
               ("nccl", "libnccl.so.2"), ("cu", "libcuda.so.1"))
NO_DEVICE = 100
# The requirements a CUDA build of torch lists that a CPU image leaves out.
CUDA_PACKAGES = re.compile(r"^(nvidia-|cuda-|triton\b)", re.IGNORECASE)


def readelf(*args: str) -> str:
    return subprocess.run(["readelf", *args], capture_output=True, text=True, check=True).stdout


def needs(torch_dir: Path) -> dict[str, dict[str, set[str]]]:
    """soname -> symbol version ("" for none) -> function names, for the libraries the wheel's
    shared objects need and neither ship nor find on any Linux system."""
    objects = sorted({*torch_dir.glob("lib/*.so*"), *torch_dir.glob("**/*.so")})
    shipped = {o.name for o in objects}
    needed: set[str] = set()
    version_file: dict[str, str] = {}
    defined: set[str] = set()
    versioned: dict[str, set[str]] = collections.defaultdict(set)
    unversioned: set[str] = set()
    for path in objects:
        needed |= set(re.findall(r"\(NEEDED\).*\[(.+?)\]", readelf("-dW", str(path))))
        current = None
        for line in readelf("-VW", str(path)).splitlines():
            if m := re.search(r"File: (\S+)", line):
                current = m.group(1)
            elif (m := re.search(r"Name: (\S+)", line)) and current:
                version_file[m.group(1)] = current
        for line in readelf("--dyn-syms", "-W", str(path)).splitlines():
            fields = line.split()
            if len(fields) < 8:
                continue
            if fields[6] != "UND":
                defined.add(fields[7].split("@")[0])
            elif fields[4] != "WEAK" and fields[3] == "FUNC":
                name, _, version = fields[7].partition("@")
                if version:
                    versioned[version.lstrip("@").split()[0]].add(name)
                else:
                    unversioned.add(name)
    missing = sorted(n for n in needed if n not in shipped and not SYSTEM.match(n))
    found: dict[str, dict[str, set[str]]] = {name: collections.defaultdict(set) for name in missing}
    for version, names in versioned.items():
        if version_file.get(version) in found:
            found[version_file[version]][version] |= names
    for name in sorted(unversioned - defined):
        soname = next((s for prefix, s in UNVERSIONED if name.startswith(prefix)), None)
        if soname in found:
            found[soname][""].add(name)
    return found


def source(functions: set[str]) -> str:
    lines = ["/* Generated by docker/torch_cuda_stubs.py: no CUDA device here. */",
             'static const char no_device[] = "no CUDA device (a CPU-only image)";',
             "static void *fat_binary_handle[8];"]
    for name in sorted(functions):
        if name == "__cudaRegisterFatBinary":  # a handle the registration calls pass back
            lines.append(f"void **{name}(void *binary) {{ return fat_binary_handle; }}")
        elif name.startswith("__cuda"):  # kernel registration while loading: nothing to do
            lines.append(f"int {name}(void) {{ return 0; }}")
        elif name.endswith(("GetErrorString", "GetErrorName")) or name == "ncclGetLastError":
            lines.append(f"const char *{name}(void) {{ return no_device; }}")
        else:
            lines.append(f"int {name}(void) {{ return {NO_DEVICE}; }}")
    return "\n".join(lines) + "\n"


def version_script(versions: dict[str, set[str]]) -> str:
    nodes = [f"{v} {{ global: {'; '.join(sorted(n))}; }};" for v, n in versions.items() if v]
    plain = versions.get("")
    if plain or not nodes:
        exported = f"global: {'; '.join(sorted(plain))}; " if plain else ""
        nodes.insert(0, f"{{ {exported}local: *; }};")
    return "\n".join(nodes) + "\n"


def cuda_requirements() -> list[str]:
    return [r for r in importlib.metadata.requires("torch") or [] if CUDA_PACKAGES.match(r)]


def drop_cuda_requirements() -> list[str]:
    """Removes the CUDA packages from the installed torch's METADATA; returns what it removed."""
    metadata = Path(importlib.metadata.distribution("torch")._path) / "METADATA"
    lines = metadata.read_text().splitlines(keepends=True)
    dropped = [line for line in lines
               if line.startswith("Requires-Dist:") and CUDA_PACKAGES.match(line.split(":", 1)[1].strip())]
    metadata.write_text("".join(line for line in lines if line not in dropped))
    return [line.split(":", 1)[1].strip() for line in dropped]


def write_stubs(torch_dir: Path, out: Path, cc: str) -> list[Path]:
    written = []
    for soname, versions in needs(torch_dir).items():
        c_file, map_file = out / f"{soname}.c", out / f"{soname}.map"
        c_file.write_text(source(set().union(*versions.values()) if versions else set()))
        map_file.write_text(version_script(versions))
        subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(out / soname),
                        f"-Wl,-soname,{soname}", f"-Wl,--version-script={map_file}", str(c_file)],
                       check=True)
        print(f"stub {soname}: {sum(len(n) for n in versions.values())} functions")
        written.append(out / soname)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--needs-stubs", action="store_true",
                      help="exit 0 when the installed torch lists CUDA packages as requirements")
    mode.add_argument("--install", action="store_true",
                      help="stubs into torch/lib; CUDA requirements dropped from torch's metadata")
    mode.add_argument("--out", type=Path, help="only write the stubs (and their sources) here")
    parser.add_argument("--cc", default="cc", help="a C compiler for torch's architecture")
    args = parser.parse_args()
    if args.needs_stubs:
        return 0 if cuda_requirements() else 1
    torch_dir = Path(importlib.metadata.distribution("torch").locate_file("torch"))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        write_stubs(torch_dir, args.out, args.cc)
        return 0
    with tempfile.TemporaryDirectory() as out:
        for stub in write_stubs(torch_dir, Path(out), args.cc):
            shutil.copy2(stub, torch_dir / "lib" / stub.name)
    dropped = drop_cuda_requirements()
    print(f"torch {importlib.metadata.version('torch')} without its CUDA packages: {', '.join(dropped)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

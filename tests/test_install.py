"""Installing ftkit where the platform already has torch: Google Colab's GPU runtime, as its published package list
says (tests/fixtures/colab-pip-freeze.gpu.txt). pip's own resolver plans the README's Colab cell against that
list: torch stays Colab's build, nothing Colab ships is downgraded; and after an install the kernel says in one
line whether it must restart."""
import json
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
COLAB = Path(__file__).parent / "fixtures" / "colab-pip-freeze.gpu.txt"
README = (ROOT / "README.md").read_text(encoding="utf-8")
PLATFORM = {"python_version": "3.12", "python_full_version": "3.12.12", "sys_platform": "linux",
            "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
            "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}


def colab_packages() -> dict[str, str]:
    out = {}
    for line in COLAB.read_text().splitlines():
        if line and not line.startswith("#") and " @ " not in line:
            name, version = line.split("==")
            out[canonicalize_name(name)] = version
    return out


def installed_as_is(folder: Path, name: str, version: str) -> Path:
    """A wheel holding only the metadata of a package Colab has installed (torch 2.11.0+cu128, from PyTorch's own
    index): pip keeps an installed torch whose version satisfies, whatever torch needs itself (Colab's business)."""
    info = f"{name}-{version}.dist-info"
    files = {f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: ftkit-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{p},,\n" for p in [*files, f"{info}/RECORD"])
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return wheel


def pip_plan(tmp: Path, requirements: list[str], constraints: list[str]) -> dict[str, str]:
    """What `pip install` would install on Colab (Python 3.12, x86-64 Linux, wheels only): name -> version."""
    (tmp / "constraints.txt").write_text("\n".join(constraints) + "\n")
    platforms = [a for v in range(35, 16, -1) for a in ("--platform", f"manylinux_2_{v}_x86_64")]
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                          "--report", str(tmp / "report.json"), "--target", str(tmp / "target"), "--python-version",
                          "3.12", "--only-binary=:all:", *platforms, "--platform", "manylinux2014_x86_64",
                          "--find-links", str(tmp), "-c", str(tmp / "constraints.txt"), *requirements],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp / "report.json").read_text())
    return {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in report["install"]}, report


def colab_cell_requirement() -> str:
    """The requirement the README's Colab cell installs (its `!pip install` line)."""
    cell = re.search(r"^!pip install -q (\S+)$", README, re.M)
    assert cell, "the README has a Colab cell: !pip install -q <ftkit>"
    return cell.group(1).strip("\"'")


@pytest.mark.slow
def test_the_colab_cell_keeps_colabs_torch_and_downgrades_nothing(tmp_path):
    colab = colab_packages()
    requirement = colab_cell_requirement()
    extras = set(re.findall(r"\[(.*)\]", requirement)[0].split(",")) if "[" in requirement else set()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + [r for e in extras for r in project["optional-dependencies"][e]]
    torch = colab["torch"]  # 2.11.0+cu128
    installed_as_is(tmp_path, "torch", torch)
    # first: every version of what ftkit needs may float up from Colab's (no downgrade, torch as installed)
    floating = [f"{n}>={v.split('+')[0]}" for n, v in colab.items() if n != "torch"] + [f"torch=={torch}"]
    plan, report = pip_plan(tmp_path, wanted, floating)
    # then as pip decides on Colab (upgrade only if needed): Colab's own version of each package it has, unless a
    # requirement in the plan excludes it
    needs = {}
    for item in report["install"]:
        for text in item["metadata"].get("requires_dist", []):
            r = Requirement(text)
            if (not r.marker or r.marker.evaluate(PLATFORM)) and canonicalize_name(r.name) in plan:
                needs.setdefault(canonicalize_name(r.name), []).append(r.specifier)
    for text in wanted:
        r = Requirement(text)
        needs.setdefault(canonicalize_name(r.name), []).append(r.specifier)
    kept = [f"{n}=={colab[n]}" for n in plan if n in colab and n != "torch"
            and all(s.contains(colab[n].split("+")[0], prereleases=True) for s in needs.get(n, []))]
    plan, _ = pip_plan(tmp_path, wanted, kept + [f"{n}>={colab[n]}" for n in plan if n in colab and n != "torch"
                                                 and f"{n}=={colab[n]}" not in kept] + [f"torch=={torch}"])
    assert plan["torch"] == torch  # Colab's CUDA build, untouched
    downgraded = {n: (colab[n], v) for n, v in plan.items() if n in colab and Version(v) < Version(colab[n])}
    assert not downgraded
    upgraded = {n: (colab[n], v) for n, v in plan.items() if n in colab and Version(v) > Version(colab[n])}
    new = sorted(n for n in plan if n not in colab)
    # ftkit's floor over Colab's transformers/peft/accelerate is the one upgrade; its notebook layer runs on the
    # IPython and ipywidgets Colab ships, so the cell leaves them (and everything a kernel loads at start) alone
    assert {"transformers", "peft", "accelerate"} <= set(upgraded), upgraded
    assert not {"ipython", "ipywidgets", "ipykernel", "numpy", "jupyter-client", "tornado"} & set(upgraded), upgraded
    assert {"bitsandbytes", "gguf"} <= set(new)
    print("upgraded:", upgraded, "new:", new)


def test_torch_is_a_wide_requirement_and_the_cpu_pin_stays_out_of_the_package():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == "torch"][0]
    for version in ("2.3.0", "2.11.0", "2.13.0", "2.14.1"):  # 2.11: Colab's; 2.13.0: the CPU wheel here
        assert torch.specifier.contains(version), version
    everything = json.dumps(project)
    assert "2.13.0" not in everything
    assert "pip install torch==2.13.0" in README  # the CPU instructions carry the pin


def test_a_version_spelled_two_ways_is_one_release():
    """certifi's module says 2026.05.20 where its metadata says 2026.5.20 (seen in CI), and 2026.10.19 for
    2026.10.19.post1 (installed here): not a replaced package."""
    from ftkit.installing import same_release
    assert same_release("2026.05.20", "2026.5.20")
    assert same_release("2026.10.19", "2026.10.19.post1")
    assert not same_release("5.0.0rc1", "5.0.0")
    assert same_release("2.11.0+cu128", "2.11.0")
    assert not same_release("2026.05.20", "2026.5.21")
    assert not same_release("1.0", "2.0")
    assert same_release("weird-1", "weird-1") and not same_release("weird-1", "weird-2")


def test_restart_needed_says_so_from_what_the_kernel_loaded(tmp_path):
    """A package loaded, then replaced by pip with another version, as an install cell does."""
    site = tmp_path / "site"
    (site / "colabthing").mkdir(parents=True)
    (site / "colabthing" / "__init__.py").write_text("__version__ = '1.0'\n")
    info = site / "colabthing-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: colabthing\nVersion: 1.0\n")
    (info / "top_level.txt").write_text("colabthing\n")
    code = f"""
import sys, shutil, pathlib
sys.path.insert(0, {str(site)!r})
import colabthing, ftkit
print(ftkit.restart_needed())
site = pathlib.Path({str(site)!r})
shutil.move(site / "colabthing-1.0.dist-info", site / "colabthing-2.0.dist-info")
meta = site / "colabthing-2.0.dist-info" / "METADATA"
meta.write_text("Metadata-Version: 2.1\\nName: colabthing\\nVersion: 2.0\\n")
print(ftkit.restart_needed())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    first, second = out.stdout.strip().splitlines()
    assert first == "ftkit: no restart needed (no package this kernel has loaded was replaced)", out.stderr
    assert second.startswith("ftkit: restart the kernel") and "colabthing 1.0 before pip installed 2.0" in second

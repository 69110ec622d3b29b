#!/usr/bin/env python3
"""The offline wheel kit (.whl/) that the GPU machine installs with scripts/gpu_env.sh.

The lent GPU machine has no network. Its image already holds torch 2.11 (cu130),
transformers 5.17.0, accelerate, numpy, pandas, pyarrow, ... (IMAGE below, read off
KINDS.md's "Python packages already there", 2026-11-17). Everything else the train and
evaluate stages import travels as wheels for CPython 3.12 / manylinux x86_64 in .whl/.

  python3 scripts/check_gpu_kit.py           # check .whl/ (exit 1 on a problem)
  python3 scripts/check_gpu_kit.py --build   # download KIT into .whl/, strip, then check

The check: one wheel per KIT entry and nothing else, one version of each, and every
Requires-Dist (no extras, markers evaluated for Linux x86_64 / CPython 3.12) is met by the
kit or by the image; known image versions are checked against the specifiers. Requirements
that are declared but never imported on our path are listed in NOT_NEEDED and reported
apart. --build strips Unsloth's web UI (studio/) and every bitsandbytes library except
the CUDA 13.0 and CPU ones (torch there is +cu130): about 75 MB less.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import re
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

try:
    from packaging.markers import Marker
    from packaging.requirements import Requirement
    from packaging.version import Version
except ImportError:  # pip vendors it
    from pip._vendor.packaging.markers import Marker
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
KIT_DIR = ROOT / ".whl"

# What the GPU machine lacks (or has at another version: peft). Unsloth's set is the one
# checked on an H100; the dvc tree is what `from dvclive import Live`,
# Live(dvcyaml=False, save_dvc_exp=False) ... end() and transformers' DVCLiveCallback import,
# in a git+DVC repo and outside one.
KIT = """
trl==1.15.0 datasets==4.8.5 dill==0.4.1 multiprocess==0.70.19 peft==0.21.2 pycocotools==2.0.11
unsloth==2026.10.9 unsloth_zoo==2026.10.9 bitsandbytes==0.50.2 torchao==0.17.0
cut_cross_entropy==25.1.1 hf_transfer==0.1.9 diffusers==0.42.1 msgspec==0.22.0 tyro==1.0.17
docstring_parser==0.18.0 shtab==1.13.0 typeguard==4.6.1 json5==0.17.3 nest_asyncio==1.6.0
structlog==26.1.0 pydantic==2.14.4 pydantic_core==2.50.5 annotated_types==0.8.0
typing_inspection==0.4.5
dvclive==3.49.1 dvc==3.67.1 dvc_data==3.18.3 dvc_objects==5.2.0 dvc_http==2.32.0
dvc_render==1.0.2 dvc_studio_client==0.23.0 scmrepo==3.6.2 dulwich==1.2.21 funcy==2.1
flufl.lock==9.2.0 atpublic==9.0.0 ruamel.yaml==0.19.1 pygtrie==2.6.2 sqltrie==0.11.3
voluptuous==0.16.0 zc.lockfile==4.0 diskcache==5.6.3 dpath==2.2.0 flatten_dict==0.5.0
configobj==5.0.9 platformdirs==4.14.8 pygit2==1.21.0 cffi==2.1.1 pycparser==3.12
""".split()

# The GPU image's packages (KINDS.md, 2026-11-17) and the versions seen there.
IMAGE = set("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn
einops equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec
gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio
iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml
markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda
numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13
nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum
opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy
portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich
sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy
tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop
wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())
IMAGE_VERSIONS = {
    "torch": "2.11.0", "torchvision": "0.26.0", "transformers": "5.17.0", "accelerate": "1.15.0",
    "tokenizers": "0.23.2", "safetensors": "0.8.0", "numpy": "2.5.2", "huggingface-hub": "1.33.0",
    "sentencepiece": "0.2.2", "triton": "3.6.0",
}

# Declared but not imported on our path (dvc's CLI, queue, remotes, git backends; Unsloth's
# optional xformers). Leaving them out keeps the kit small; the import test in the report
# that built this kit ran without them.
NOT_NEEDED = {
    "celery": "dvc exp queue", "kombu": "dvc exp queue", "dvc-task": "dvc exp queue",
    "hydra-core": "dvc params composition", "omegaconf": "dvc params composition",
    "gto": "dvclive artifact registry (imported lazily)", "iterative-telemetry": "dvc analytics",
    "pydot": "dvc dag --dot", "grandalf": "dvc dag ascii", "shortuuid": "dvc experiment names",
    "distro": "dvc doctor", "tomlkit": "dvc toml params", "dictdiffer": "dvc-data diff",
    "orjson": "optional fast json (dvc-data, sqltrie fall back to json)",
    "aiohttp-retry": "dvc http remote", "gitpython": "scmrepo backend (dulwich used)",
    "pygit2": "scmrepo backend (dulwich used)", "asyncssh": "scmrepo ssh",
    "xformers": "optional in Unsloth (torch SDPA used)",
    "importlib-metadata": "diffusers imports it only on Python < 3.8",
}

# Files dropped from a wheel when the kit is built (path inside the wheel -> drop?).
STRIP = {
    "unsloth": lambda p: p.startswith("studio/"),
    "bitsandbytes": lambda p: re.fullmatch(
        r"bitsandbytes/libbitsandbytes_(?!cuda130\.so$|cpu\.so$).*\.so", p) is not None,
}

ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython",
       "extra": ""}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64",
             "manylinux_2_5_x86_64"]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def metadata(whl: Path):
    with zipfile.ZipFile(whl) as z:
        name = next(n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        return Parser().parsestr(z.read(name).decode("utf-8"))


def strip_wheel(whl: Path, drop) -> int:
    """Rewrite whl without the files that drop() names, RECORD rewritten; returns bytes saved."""
    with zipfile.ZipFile(whl) as z:
        infos = z.infolist()
        if not any(drop(i.filename) for i in infos):
            return 0
        before = whl.stat().st_size
        tmp = whl.with_suffix(".tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
            record_name, rows = None, []
            for i in infos:
                if drop(i.filename):
                    continue
                if re.fullmatch(r"[^/]+\.dist-info/RECORD", i.filename):
                    record_name = i.filename
                    continue
                data = z.read(i)
                out.writestr(i, data, compress_type=zipfile.ZIP_DEFLATED)
                digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
                rows.append(f"{i.filename},sha256={digest.decode()},{len(data)}")
            rows.append(f"{record_name},,")
            out.writestr(record_name, "\n".join(rows) + "\n")
    tmp.replace(whl)
    return before - whl.stat().st_size


def build() -> None:
    KIT_DIR.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.12", "--implementation", "cp", "-d", str(KIT_DIR)]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    subprocess.run(cmd + KIT, check=True)
    for whl in sorted(KIT_DIR.glob("*.whl")):
        drop = STRIP.get(norm(whl.name.split("-")[0]))
        if drop:
            saved = strip_wheel(whl, drop)
            if saved:
                print(f"stripped {whl.name}: {saved / 1e6:.1f} MB less")


def check() -> int:
    problems, skipped = [], []
    wanted = {norm(Requirement(s).name): str(next(iter(Requirement(s).specifier)).version)
              for s in KIT}
    have: dict[str, tuple[str, Path]] = {}
    for whl in sorted(KIT_DIR.glob("*.whl")):
        meta = metadata(whl)
        name, version = norm(meta["Name"]), meta["Version"]
        if name in have:
            problems.append(f"two versions of {name}: {have[name][1].name}, {whl.name}")
        have[name] = (version, whl)
        if name not in wanted:
            problems.append(f"{whl.name} is not in KIT (remove it or add it)")
        elif wanted[name] != version:
            problems.append(f"{whl.name}: KIT pins {name}=={wanted[name]}")
    for name in wanted.keys() - have.keys():
        problems.append(f"{name}=={wanted[name]} is missing from .whl/ (run --build)")
    for name, (version, whl) in sorted(have.items()):
        for line in metadata(whl).get_all("Requires-Dist") or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate(ENV):
                continue  # an extra, another platform or another Python
            dep = norm(req.name)
            if dep in have:
                found = have[dep][0]
            elif dep in IMAGE:
                found = IMAGE_VERSIONS.get(dep)
            elif dep in NOT_NEEDED:
                skipped.append(f"{name} -> {req}  ({NOT_NEEDED[dep]})")
                continue
            else:
                problems.append(f"{name} {version} needs {req}: in neither the kit nor the image")
                continue
            if found and req.specifier and not req.specifier.contains(
                    Version(found).public, prereleases=True):
                where = "kit" if dep in have else "image"
                problems.append(f"{name} {version} needs {req}; the {where} has {found}")
    total = sum(p.stat().st_size for _, p in have.values())
    for name, (version, whl) in sorted(have.items(), key=lambda kv: -kv[1][1].stat().st_size):
        print(f"{whl.stat().st_size / 1e6:8.2f} MB  {name} {version}")
    print(f"{total / 1e6:8.2f} MB  total, {len(have)} wheels")
    if skipped:
        print("declared but left out on purpose (not imported on our path):")
        print("\n".join("  " + s for s in skipped))
    if problems:
        print("PROBLEMS:")
        print("\n".join("  " + s for s in problems))
        return 1
    print("kit OK: every requirement is in the kit or the GPU image")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--build", action="store_true", help="download and strip the kit first")
    args = ap.parse_args()
    if args.build:
        build()
    if not KIT_DIR.is_dir():
        print(f"{KIT_DIR} does not exist: run with --build")
        return 1
    return check()


if __name__ == "__main__":
    sys.exit(main())

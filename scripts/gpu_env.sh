# Set up the Python environment on the lent GPU machine (no network) from the wheel kit.
#
# On the GPU machine, from the repo root, with `.whl` named in the run's carry:
#     . scripts/gpu_env.sh && python3 -m maskgate ...      (sourced: sets the environment)
#     eval "$(bash scripts/gpu_env.sh)"                     (run: prints export lines)
#
# It installs .whl/*.whl (no index, no deps) into $GPU_SITE (default /tmp/site) and puts the
# repo root (the maskgate package, like `pip install -e .`) and that folder in front of
# PYTHONPATH, ahead of the image's site-packages, so the kit's peft 0.21.2 wins over the
# image's; the kit's commands (dvc, trl, ...) go on PATH. `dvc repro` works with the kit (pygit2 included: DVC's autostage needs it),
# `dvc exp run` does not (it needs shortuuid, ... which are left out).
# Idempotent: a second call finds the stamp of the same kit and only sets the environment
# (about 3 s the first time, instant after). It also turns the Hugging Face hub offline.
# The kit is made here with `python3 scripts/check_gpu_kit.py --build`, which also checks
# it; see that file for what is in it and why.

_gpu_env_main() {
  local root site stamp want py
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd) || return 1
  site=${GPU_SITE:-/tmp/site}
  py=${PYTHON:-python3}
  if ! ls "$root"/.whl/*.whl >/dev/null 2>&1; then
    echo "gpu_env: no wheels in $root/.whl (name .whl in the run's carry; build it with" \
         "python3 scripts/check_gpu_kit.py --build)" >&2
    return 1
  fi
  want=$(cd "$root/.whl" && ls -l -- *.whl | awk '{print $5, $NF}' | sha256sum | cut -c1-16)
  stamp="$site/.gpu-kit-$want"
  if [ ! -e "$stamp" ]; then
    rm -rf "$site" && mkdir -p "$site" || return 1
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --disable-pip-version-check --target "$site" "$root"/.whl/*.whl >&2 || {
      echo "gpu_env: pip install of the kit failed" >&2; rm -rf "$site"; return 1; }
    touch "$stamp"
  fi
  GPU_ENV_PYTHONPATH="$root:$site${PYTHONPATH:+:$PYTHONPATH}"
  case ":${PYTHONPATH:-}:" in *":$site:"*) GPU_ENV_PYTHONPATH=$PYTHONPATH ;; esac
  GPU_ENV_PATH="$site/bin:$PATH"
  case ":$PATH:" in *":$site/bin:"*) GPU_ENV_PATH=$PATH ;; esac
}

if _gpu_env_main; then
  # No network there: fail fast instead of waiting on hub look-ups and telemetry.
  _gpu_env_exports="export PYTHONPATH='$GPU_ENV_PYTHONPATH' PATH='$GPU_ENV_PATH'
export HF_HUB_OFFLINE=\${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=\${HF_DATASETS_OFFLINE:-1}
export HF_HUB_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1 DVC_NO_ANALYTICS=1 PYTHONUNBUFFERED=1"
  if (return 0 2>/dev/null); then
    eval "$_gpu_env_exports"
  else
    echo "$_gpu_env_exports"
  fi
  unset _gpu_env_exports GPU_ENV_PYTHONPATH GPU_ENV_PATH
  unset -f _gpu_env_main
else
  unset -f _gpu_env_main
  (return 0 2>/dev/null) && return 1
  exit 1
fi

"""Stage train: a LoRA adapter for the verifier on the rendered train shards (resumes when re-run).

With train.gpus > 1 it relaunches itself under torchrun, one process per GPU (maskgate/model/launch.py);
started by torchrun or accelerate launch directly, it trains on the processes they started.
"""
import argparse
import sys

from maskgate.model import launch
from maskgate.config import load_params
from maskgate.model.train import (  # imports no ML library: unsloth must come first
    ParamsError, gradient_accumulation, resolve_backend, train_settings, world_size,
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--rendered", default="data/rendered")
    ap.add_argument("--out", default="models/verifier", help="adapter (+ tiny base) and verifier.json")
    ap.add_argument("--checkpoints", default="models/checkpoints", help="kept between runs for resume")
    ap.add_argument("--live", default="reports/train", help="DVCLive curves")
    ap.add_argument("--report", default="reports/train.json")
    args = ap.parse_args()
    params = load_params(args.params)
    try:
        cfg = train_settings(params)
        if not launch.launched() and cfg["gpus"] > 1:
            resolve_backend(params)  # refuses unsloth data-parallel here, before N processes start
            gradient_accumulation(cfg["batch_size"], cfg["micro_batch_size"], cfg["gpus"])  # fail here, not in N processes
            launch.check_gpus(cfg["gpus"])
            launch.relaunch(cfg["gpus"], __file__, sys.argv[1:])  # does not return
        if launch.launched() and launch.is_main_process() and world_size() != cfg["gpus"]:
            print(f"train: {world_size()} processes from the launcher (train.gpus {cfg['gpus']} not used)")
    except (ParamsError, ValueError) as e:
        print(f"train failed: {e}", file=sys.stderr)
        return 1
    try:
        backend = resolve_backend(params)  # imports unsloth here, before transformers, when it picks it
        from maskgate.utils.hub import HubError
        from maskgate.utils.tables import write_json
        from maskgate.model.train import train
        from maskgate.model.verifier import write_manifest

        try:
            summary = train(params, args.rendered, args.out, args.checkpoints, args.live, backend=backend)
        except HubError as e:
            raise ValueError(str(e)) from None
    except (ParamsError, OSError, ValueError) as e:  # OSError: missing shards or base model files
        print(f"train failed: {e}", file=sys.stderr)
        return 1
    if not launch.is_main_process():  # data-parallel: rank 0 writes the manifest and the report
        return 0
    write_manifest(args.out, summary, params)
    write_json(summary, args.report)
    base = summary["base_model"]
    at = f" at commit {base['revision']}" if base["revision"] else ""
    print(f"train: base {base['repo']}{at}{' (4-bit)' if base['load_in_4bit'] else ''}")
    print(f"train: {summary['global_step']} steps on {summary['backend']}, loss {summary['train_loss']:.4f}, "
          f"eval AUROC {summary['eval_auroc']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

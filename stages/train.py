"""Stage train: a LoRA adapter for the verifier on the rendered train shards (resumes when re-run).

With train.gpus > 1 it relaunches itself under torchrun, one process per GPU (maskgate/model/launch.py);
started by torchrun or accelerate launch directly, it trains on the processes they started.
"""
import argparse
import sys

from maskgate import config
from maskgate.model import launch
from maskgate.model.backend import resolve_backend, world_size  # imports no ML library: unsloth must come first


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--rendered", required=True, help="the render stage's shards (data/rendered)")
    ap.add_argument("--out", required=True, help="adapter (+ local base) and verifier.json (models/verifier)")
    ap.add_argument("--checkpoints", required=True, help="kept between runs for resume (models/checkpoints)")
    ap.add_argument("--live", required=True, help="DVCLive curves (reports/train)")
    ap.add_argument("--report", required=True, help="loss, AUROC and speed, DVC metrics (reports/train.json)")
    ap.add_argument("--summary", required=True, help="everything about the run (reports/train_summary.json)")
    args = ap.parse_args()
    try:
        p = config.load(args.params)
        cfg = p.train
        if not launch.launched() and cfg.gpus > 1:
            from maskgate.model.train import gradient_accumulation

            resolve_backend(cfg, p.model.preset)  # refuses unsloth data-parallel here, before N processes start
            # fail here, not in N processes (auto: known per process once the model loads; 1 must divide too)
            gradient_accumulation(cfg.batch_size, 1 if cfg.micro_batch_size == "auto" else cfg.micro_batch_size, cfg.gpus)
            launch.check_gpus(cfg.gpus)
            launch.relaunch(cfg.gpus, __file__, sys.argv[1:])  # does not return
        if launch.launched() and launch.is_main_process() and world_size() != cfg.gpus:
            print(f"train: {world_size()} processes from the launcher (train.gpus {cfg.gpus} not used)")
        backend = resolve_backend(cfg, p.model.preset)  # imports unsloth here, before transformers, when it picks it
        from maskgate.model.train import TrainJob, headline, train
        from maskgate.model.verifier import write_manifest
        from maskgate.utils.hub import HubError
        from maskgate.utils.tables import write_json

        try:
            summary = train(TrainJob.of(p), args.rendered, args.out, args.checkpoints, args.live, backend=backend)
        except HubError as e:
            raise ValueError(str(e)) from None
    except (OSError, ValueError) as e:  # OSError: missing shards or base model files; ParamsError is a ValueError
        print(f"train failed: {e}", file=sys.stderr)
        return 1
    if not launch.is_main_process():  # data-parallel: rank 0 writes the manifest and the report
        return 0
    write_manifest(args.out, summary, p.prompt, p.render)
    write_json(summary, args.summary)
    write_json(headline(summary), args.report)
    base = summary["base_model"]
    at = f" at commit {base['revision']}" if base["revision"] else ""
    print(f"train: base {base['repo']}{at}{' (4-bit)' if base['load_in_4bit'] else ''}")
    print(f"train: {summary['global_step']} steps on {summary['backend']}, loss {summary['train_loss']:.4f}, "
          f"eval AUROC {summary['eval_auroc']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Stage train: a LoRA adapter for the verifier on the rendered train shards (resumes when re-run)."""
import argparse
import sys

from maskgate.params import load_params
from maskgate.training import ParamsError, resolve_backend  # imports no ML library: unsloth must come first


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
        backend = resolve_backend(params)  # imports unsloth here, before transformers, when it picks it
        from maskgate.tables import write_json
        from maskgate.training import train
        from maskgate.verifier import write_manifest

        summary = train(params, args.rendered, args.out, args.checkpoints, args.live, backend=backend)
    except (ParamsError, ValueError) as e:
        print(f"train failed: {e}", file=sys.stderr)
        return 1
    write_manifest(args.out, summary["preset"], summary["base"], summary["backend"])
    write_json(summary, args.report)
    print(f"train: {summary['global_step']} steps on {summary['backend']}, loss {summary['train_loss']:.4f}, "
          f"eval AUROC {summary['eval_auroc']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

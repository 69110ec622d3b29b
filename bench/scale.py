"""The data stages at MaskGroups-HQ scale: time, rows/s, peak memory and disk of prepare, negatives and render.

Makes a local source (data.source: local) of --rows rows in the hub's row format (MaskGroups-HQ has
about 100k): copies of the real rows of samples/coco-groups, each copy under its own image names
(hardlinks to the sample photos, so the set costs no disk), which keeps the samples' rows per image and
groups per row. Then runs the stage scripts one after another as subprocesses, with params.yaml's
settings and that source, and prints per stage: wall time, rows/s, peak RSS (the stage's process tree,
polled), bytes written, and the bytes in the library caches (HF_HOME / HF_DATASETS_CACHE pointed into the
work folder). Last, train's data path (maskgate.model.train.load_split over the train shards, plus 200
overlays read at random) and the caches again: train reads the shards in place, so they stay empty.

--dvc runs the stages as a user does: `dvc repro -s STAGE` in a copy of the project (a fresh git repository
under --work/repo, as a clone has it, with the same params), so the DVC cache is the repository's own
(.dvc/config: hardlinks). Each stage's line then adds the bytes the DVC cache holds beyond the workspace
(only its folder listings when every output is linked, not copied), and the end prints the data's total on disk (source, data/,
the DVC cache and the library caches, each file once however many links it has) against inputs + shards.
Peak RSS is the stage's process and its workers either way, not DVC's own.

    python bench/scale.py --rows 10000 --work /tmp/scale       # add -S render.workers=1 to compare
    python bench/scale.py --rows 100000 --work /tmp/scale --dvc
    python bench/scale.py --rows 500 --work /tmp/scale --render-workers 1,2,4,8,16

--render-workers: after prepare and negatives, render their folders once per worker count (the render
stage's own `render()`, in this process, timed from the call to the last shard written: pool start,
reading the examples and writing the shards included), and print overlays/s, the speedup against the
first count and whether the shards are the same bytes as the first count's; then the single-process
render / floor time ratio of bench/render_bench.py on the first --floor-images images of those folders.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # --render-workers imports the project here (bench/ is on the path for render_bench)
SAMPLES = ROOT / "samples" / "coco-groups"


def make_source(folder: Path, rows: int) -> dict:
    """`rows` rows in MaskGroups row format under folder/ (rows.jsonl + images/); copies of the samples."""
    sample = [json.loads(line) for line in (SAMPLES / "maskgroups.jsonl").read_text().splitlines() if line.strip()]
    images = sorted({r["image"] for r in sample})
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "images").mkdir(parents=True)
    written, copy, names = 0, 0, set()
    with (folder / "rows.jsonl").open("w") as f:
        while written < rows:
            sub = folder / "images" / f"c{copy:05d}"
            sub.mkdir()
            for name in images:  # a hardlink: the photo's bytes once on disk, whatever the copies
                try:
                    os.link(SAMPLES / "images" / name, sub / name)
                except OSError:
                    shutil.copyfile(SAMPLES / "images" / name, sub / name)
            for r in sample:
                if written == rows:
                    break
                image = f"c{copy:05d}/{r['image']}"
                names.add(image)
                f.write(json.dumps({**r, "id": f"c{copy:05d}-{r['id']}", "image": image}) + "\n")
                written += 1
            copy += 1
    return {"rows": written, "images": len(names)}


def du(*paths: Path) -> int:
    """Bytes of the distinct files under the paths together (a file with several hardlinks once)."""
    seen = {}
    for path in paths:
        for p in path.rglob("*") if path.exists() else ():
            if p.is_file() and not p.is_symlink():
                st = p.stat()
                seen[(st.st_dev, st.st_ino)] = st.st_size
    return sum(seen.values())


def stage_tree(root: psutil.Process) -> list[psutil.Process]:
    """The stage script's process and its children (render's workers) under root: root itself when it is the
    stage, the `python stages/...` process below it when root is `dvc repro`."""
    tree = [root] + root.children(recursive=True)
    for p in tree:
        try:
            if any(a.startswith("stages/") or "/stages/" in a for a in p.cmdline()[1:3]):
                return [p] + p.children(recursive=True)
        except psutil.Error:
            pass
    return tree


def run_measured(cmd: list[str], env: dict, log: Path, cwd: Path = ROOT) -> tuple[float, int, int]:
    """(wall s, peak RSS of the stage's process tree in bytes, exit code); polled every 0.1 s."""
    t = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
        ps, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            try:
                peak = max(peak, sum(p.memory_info().rss for p in stage_tree(ps) if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.1)
    return time.perf_counter() - t, peak, proc.returncode


def gb(n: int) -> str:
    return f"{n / 1e9:7.3f} GB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--work", type=Path, required=True, help="a scratch folder (emptied)")
    ap.add_argument("-S", dest="sets", action="append", default=[], help="section.key=value over params.yaml")
    ap.add_argument("--stages", default="prepare,negatives,render,train_read")
    ap.add_argument("--render-workers", help="comma-separated render.workers counts, e.g. 1,2,4,8,16: run prepare "
                    "and negatives, then render their output once per count (see above)")
    ap.add_argument("--floor-images", type=int, default=120, help="--render-workers: images for the floor ratio")
    ap.add_argument("--floor-repeats", type=int, default=2, help="--render-workers: best of this many floor timings")
    ap.add_argument("--dvc", action="store_true", help="run the stages with `dvc repro -s STAGE` in a copy of the "
                    "project under --work/repo and measure the DVC cache and the total on disk (see above)")
    args = ap.parse_args()
    if args.dvc and args.render_workers:
        ap.error("--dvc and --render-workers measure different things: run them apart")
    worker_counts = [int(n) for n in args.render_workers.split(",")] if args.render_workers else []
    if worker_counts:
        args.stages = "prepare,negatives"
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    for old in ("prepared", "negatives", "rendered", "hf", "logs", "repo"):
        shutil.rmtree(work / old, ignore_errors=True)
    (work / "logs").mkdir()
    t = time.perf_counter()
    made = make_source(work / "source", args.rows)
    print(f"source: {made['rows']} rows on {made['images']} image names ({len(list(SAMPLES.glob('images/*')))} photos "
          f"reused), {gb(du(work / 'source'))} on disk, made in {time.perf_counter() - t:.1f} s")

    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["data"].update(source="local", path=str(work / "source"))
    for s in args.sets:
        key, value = s.split("=", 1)
        section, name = key.split(".", 1)
        p[section][name] = yaml.safe_load(value)
    params = work / "params.yaml"
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    hf = work / "hf"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), HF_HOME=str(hf), HF_DATASETS_CACHE=str(hf / "datasets"),
               HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    if args.dvc:
        return through_dvc(work, made, params, env, args.stages.split(","))
    print(f"params: params.yaml with data.source=local{''.join(' ' + s for s in args.sets)}; "
          f"render.size {p['render']['size']}, jpeg_quality {p['render']['jpeg_quality']}, workers {p['render']['workers']}; "
          f"{psutil.cpu_count()} CPUs")
    stage_cmds = {
        "prepare": (["stages/prepare.py", "--out", work / "prepared", "--report", work / "prepare.json"], "prepared"),
        "negatives": (["stages/negatives.py", "--prepared", work / "prepared", "--out", work / "negatives",
                       "--report", work / "negatives.json"], "negatives"),
        "render": (["stages/render.py", "--prepared", work / "prepared", "--negatives", work / "negatives",
                    "--out", work / "rendered", "--report", work / "render.json"], "rendered"),
        "train_read": (["-c", TRAIN_READ, work / "rendered"], None),
    }
    summary = {"rows": made["rows"], "images": made["images"], "stages": {}}
    print(f"{'stage':<11}{'wall s':>9}{'rows/s':>10}{'peak RSS':>12}{'written':>12}{'HF caches':>12}  counts")
    for name in args.stages.split(","):
        argv, out = stage_cmds[name]
        cmd = [sys.executable] + [str(a) for a in argv] + (["--params", str(params)] if out else [])
        wall, peak, rc = run_measured(cmd, env, work / "logs" / f"{name}.log")
        if rc:
            print(f"{name} failed (exit {rc}); see {work / 'logs' / (name + '.log')}")
            return 1
        written = du(work / out) if out else 0
        report = json.loads((work / f"{name}.json").read_text()) if out else {}
        counts = {"prepare": lambda r: r.get("kept"), "negatives": lambda r: r.get("examples"),
                  "render": lambda r: r.get("examples")}.get(name, lambda r: None)(report)
        if name == "train_read":
            counts = (work / "logs" / f"{name}.log").read_text().strip().splitlines()[-1]
        caches = du(hf)
        summary["stages"][name] = {"wall_s": round(wall, 1), "rows_per_s": round(made["rows"] / wall, 1),
                                   "peak_rss": peak, "written": written, "hf_caches": caches, "counts": counts}
        print(f"{name:<11}{wall:9.1f}{made['rows'] / wall:10.1f}{peak / 2**20:9.0f} MiB{written / 1e9:9.3f} GB"
              f"{caches / 1e6:9.1f} MB  {counts}")
    if (work / "rendered").exists():
        n = sum(v for v in json.loads((work / "render.json").read_text())["examples"].values())
        size = du(work / "rendered")
        summary["bytes_per_overlay"] = size / n
        print(f"rendered: {n} overlays, {size / n / 1e3:.1f} kB per overlay on disk (shards / overlays); "
              f"inputs (source) {gb(du(work / 'source'))}, prepared {gb(du(work / 'prepared'))}, "
              f"negatives {gb(du(work / 'negatives'))}, rendered {gb(size)}")
    if worker_counts:
        summary["render_workers"] = render_scaling(work, params, worker_counts, args.floor_images, args.floor_repeats)
    (work / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return 0


def through_dvc(work: Path, made: dict, params: Path, env: dict, stages: list[str]) -> int:
    """The stages by `dvc repro -s STAGE` in a fresh copy of the project (work/repo), with `params`."""
    from tests import project  # the DVC tests' and the rehearsal's copy: tracked and new files, one commit

    repo = project.project_copy(work / "repo", params.read_text())
    cache = repo / ".dvc" / "cache"
    env = dict(env, PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
    outs = {"prepare": "prepared", "negatives": "negatives", "render": "rendered"}
    summary = {"rows": made["rows"], "images": made["images"], "dvc": True, "stages": {}}
    print(f"through DVC: `dvc repro -s STAGE` in {repo} (a fresh git repository of the project, "
          f"cache.type {dvc_cache_type(repo)})")
    print(f"{'stage':<11}{'wall s':>9}{'rows/s':>10}{'peak RSS':>12}{'written':>12}{'DVC cache+':>12}"
          f"{'HF caches':>12}  counts")
    for name in stages:
        if name == "train_read":
            cmd, cwd = [sys.executable, "-c", TRAIN_READ, str(repo / "data" / "rendered")], ROOT
        else:
            cmd, cwd = ["dvc", "repro", "-s", name], repo
        wall, peak, rc = run_measured(cmd, env, work / "logs" / f"{name}.log", cwd)
        if rc:
            print(f"{name} failed (exit {rc}); see {work / 'logs' / (name + '.log')}")
            return 1
        data = repo / "data"
        beyond = du(data, cache) - du(data)  # what the cache holds that is not the workspace's own inode
        if name == "train_read":
            written, counts = 0, (work / "logs" / f"{name}.log").read_text().strip().splitlines()[-1]
        else:
            written = du(data / outs[name])
            report = json.loads((repo / "reports" / f"{name}.json").read_text())
            counts = report.get("kept") if name == "prepare" else report.get("examples")
        caches = du(work / "hf")
        summary["stages"][name] = {"wall_s": round(wall, 1), "rows_per_s": round(made["rows"] / wall, 1),
                                   "peak_rss": peak, "written": written, "dvc_cache_beyond": beyond,
                                   "hf_caches": caches, "counts": counts}
        print(f"{name:<11}{wall:9.1f}{made['rows'] / wall:10.1f}{peak / 2**20:9.0f} MiB{written / 1e9:9.3f} GB"
              f"{beyond / 1e9:9.3f} GB{caches / 1e6:9.1f} MB  {counts}")
    if (repo / "data" / "rendered").exists():
        source, rendered = du(work / "source"), du(repo / "data" / "rendered")
        total = du(work / "source", repo / "data", cache, work / "hf")
        summary["disk"] = {"source": source, "rendered": rendered, "total": total,
                           "ratio": round(total / (source + rendered), 3)}
        print(f"disk: inputs (source) {gb(source)} + rendered shards {gb(rendered)}; on disk in all (source, "
              f"data/, DVC cache, library caches; each file once) {gb(total)}: "
              f"{total / (source + rendered):.3f}x inputs + shards")
    (work / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return 0


def dvc_cache_type(repo: Path) -> str:
    out = subprocess.run(["dvc", "config", "cache.type"], cwd=repo, capture_output=True, text=True)
    return out.stdout.strip().strip("[]").replace("'", "") or "DVC's default"


def tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def render_scaling(work: Path, params: Path, counts: list[int], floor_images: int, repeats: int) -> dict:
    """Render work/prepared + work/negatives once per worker count; then the floor ratio on their images."""
    os.environ["TQDM_DISABLE"] = "1"
    import render_bench
    from maskgate import config
    from maskgate.render.overlay import Style
    from maskgate.render.shards import render, render_image

    p = config.load(params)
    out, results = {"runs": []}, []
    print(f"render.workers scaling ({psutil.cpu_count()} CPUs; speedup against {counts[0]} worker(s)):")
    print(f"{'workers':>8}{'wall s':>9}{'overlays/s':>12}{'speedup':>9}  same bytes")
    for n in counts:
        cfg = config.from_section(config.Render, {**dataclasses.asdict(p.render), "workers": n}, "--render-workers")
        folder = work / f"rendered-w{n}"
        t = time.perf_counter()
        report = render(work / "prepared", work / "negatives", folder, cfg, p.prompt)
        wall = time.perf_counter() - t
        overlays = sum(report["examples"].values())
        digest = tree_digest(folder)
        shutil.rmtree(folder)
        results.append((n, wall, overlays, digest))
        speedup = results[0][1] / wall
        same = "yes" if digest == results[0][3] else "NO"
        print(f"{n:>8}{wall:9.2f}{overlays / wall:12.1f}{speedup:9.2f}  {same}")
        out["runs"].append({"workers": n, "wall_s": round(wall, 2), "overlays": overlays,
                            "overlays_per_s": round(overlays / wall, 1), "speedup": round(speedup, 2),
                            "same_bytes": digest == results[0][3]})
    jobs = render_bench.jobs_from_folders(work / "prepared", work / "negatives", Style.of(p.render), floor_images)
    n = sum(len(j[1]) for j in jobs)
    t_floor = render_bench.timed(render_bench.floor, jobs, repeats)
    t_render = render_bench.timed(render_image, jobs, repeats)
    print(f"floor (bench/render_bench.py), 1 process, {len(jobs)} images, {n} overlays, best of {repeats}: "
          f"floor {n / t_floor:.1f} overlays/s, render {n / t_render:.1f} overlays/s, "
          f"render / floor {t_render / t_floor:.2f}x")
    out["floor"] = {"images": len(jobs), "overlays": n, "floor_per_s": round(n / t_floor, 1),
                    "render_per_s": round(n / t_render, 1), "ratio": round(t_render / t_floor, 3)}
    return out


# train's data path in its own process: the train split as the train stage reads it, every text row
# checked as check_prompt does, 200 overlays taken at random as the Trainer's sampler would.
TRAIN_READ = r"""
import random, sys, time
from pathlib import Path
from maskgate.model.train import load_split
t = time.perf_counter()
ds = load_split(Path(sys.argv[1]), "train")
n = sum(1 for _ in ds.select_columns(["example_id", "query", "label"]))
t1 = time.perf_counter()
idx = random.Random(0).sample(range(len(ds)), min(200, len(ds)))
for i in idx:
    ds[i]["overlay"]
t2 = time.perf_counter()
print(f"{len(ds)} train rows opened and text read in {t1 - t:.1f} s; one overlay at random {(t2 - t1) / len(idx) * 1e3:.1f} ms")
"""

if __name__ == "__main__":
    sys.exit(main())

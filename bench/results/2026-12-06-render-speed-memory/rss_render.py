"""Run a stage command; poll the RSS of its process and of its children apart every 0.1 s, and the sum of
their PSS (proportional set size, shared pages split between the processes) every 1 s; print the peaks.

    PYTHONPATH=. TQDM_DISABLE=1 python bench/results/2026-12-06-render-speed-memory/rss_render.py \
        python stages/render.py --prepared W/prepared --negatives W/negatives --out /tmp/r --report /tmp/r.json --params W/params.yaml
"""
import subprocess, sys, time, psutil
cmd = sys.argv[1:]
p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
ps = psutil.Process(p.pid)
peak_parent = peak_kids = peak_sum = peak_pss = 0
last_pss = 0
trace = []
t0 = time.time()
while p.poll() is None:
    try:
        a = ps.memory_info().rss
        kids = [c.memory_info().rss for c in ps.children(recursive=True)]
        peak_parent = max(peak_parent, a); peak_kids = max(peak_kids, max(kids, default=0)); peak_sum = max(peak_sum, a + sum(kids))
        trace.append((time.time() - t0, a, kids))
        if time.time() - last_pss > 1.0:
            last_pss = time.time()
            pss = ps.memory_full_info().pss + sum(c.memory_full_info().pss for c in ps.children(recursive=True))
            peak_pss = max(peak_pss, pss)
    except psutil.Error:
        pass
    time.sleep(0.1)
err = p.stderr.read().decode()[-500:]
print(f"rc {p.returncode} wall {time.time()-t0:.1f}s peak parent {peak_parent/2**20:.0f} MiB, peak one worker {peak_kids/2**20:.0f} MiB, peak sum {peak_sum/2**20:.0f} MiB; peak sum of PSS (polled each 1 s) {peak_pss/2**20:.0f} MiB")
for i in range(0, len(trace), max(1, len(trace)//12)):
    t, a, k = trace[i]
    print(f"  t={t:6.1f}s parent {a/2**20:6.0f} workers {[round(x/2**20) for x in k]}")
if p.returncode: print(err)

"""Continual alignment, unattended: rounds back to back on live traffic, each version measured
against the base.

One `dynalign serve` (the embedded 135M served and trained; --judge, default the offline 1.5B,
as the reward judge, the gate's judge and the scoreboard's judge, all loaded locally) with its
schedule firing every --interval-minutes (a round that would overlap the last one, or its
scoreboard, is skipped: so rounds run back to back), and bench/traffic.py's simulated users
chatting and rating through the real API the whole time. Each round starts from the active
adapter (learn.from_active), is gated, and when promoted is scoreboarded (eval.scoreboard: the
100 held-out prompts, version vs base, learner/scoreboard.py) before the next one starts.

After each finished round (promoted or rejected) a row goes to --out (bench/results/
continual.json) and the plot to continual.png beside it: win rate vs base with its interval,
IFEval, mean answer tokens, KL, the gate's decision, per round. Stopped (Ctrl-C, SIGTERM, a kill)
and started again with the same --root, it resumes after the last recorded round: the server
comes back on its state dir. The first and the latest promoted adapters are copied to
bench/results/continual/ (--adapters) so the result can be checked on any machine; from there a
fresh --root resumes too (the latest adapter is registered and activated first).

Usage: .venv/bin/python bench/continual.py [--rounds 6] [--root DIR] [--quick]
  --quick: 2 tiny rounds, the embedded model judging (mechanics only: it cannot tell)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from _results import preamble, write_results  # bench/ is the script's folder: first on sys.path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
COUNTED = ("promoted", "rejected")  # a round that ended on its own merits
MAX_FAILED = 3  # failed rounds in a row before the benchmark gives up


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, help="finished rounds wanted (default 6; quick 2)")
    p.add_argument("--root", help="server folder (default bench/results/continual-run)")
    p.add_argument("--out", help="results JSON (default bench/results/continual.json)")
    p.add_argument("--adapters", help="where the first and latest promoted adapters are kept "
                   "(default bench/results/continual)")
    p.add_argument("--judge", default="qwen2.5-coder-1.5b", help="the judge (name or folder)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--prompts-per-step", type=int, default=4)
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--completion-tokens", type=int, default=128)
    p.add_argument("--iterations", type=int, default=1, help="learn.iterations (TRL's mu)")
    p.add_argument("--lr", type=float, default=2e-4, help="as make bench-align's experiment (a)")
    p.add_argument("--interval-minutes", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="learn.threads: the learner and the scoreboard (niced: chats come first)")
    p.add_argument("--users", type=int, default=6, help="simulated users")
    p.add_argument("--rate", type=float, default=4.0, help="chats per minute, all users")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    a.rounds = a.rounds or (2 if a.quick else 6)
    name = "continual-quick" if a.quick else "continual"
    a.root = Path(a.root or RESULTS / f"{name}-run").resolve()
    a.out = Path(a.out or RESULTS / f"{name}.json").resolve()
    a.adapters = Path(a.adapters or RESULTS / name).resolve()
    if a.quick:
        a.steps, a.prompts_per_step, a.generations, a.completion_tokens = 1, 1, 2, 8
        a.interval_minutes, a.rate, a.users, a.threads = 0.1, 12.0, 3, 1
    return a


def settings(args, judge: str) -> str:
    """The [learn] and [eval] sections of the server's config (dynalign/launch.py writes the
    rest): the judge everywhere, rounds from the active adapter, the scoreboard on."""
    local = f'url = "local"\nmodel = "{judge}"\ntemperature = 0.0\nmax_tokens = 8\n'
    quick = args.quick
    gate = ("enabled = false\n" if quick else "prompts = 16\nlimit = 12\n")
    board = (f'scoreboard_tokens = 8\nifeval_limit = 1\nscoreboard_prompts = '
             f'"{quick_prompts(args.root)}"\n' if quick else
             f"scoreboard_tokens = {args.completion_tokens}\n")
    return (f'[learn]\nreward = "judge"\nprompts = {args.steps * args.prompts_per_step}\n'
            f"max_steps = {args.steps}\nprompts_per_step = {args.prompts_per_step}\n"
            f"num_generations = {args.generations}\n"
            f"max_completion_tokens = {args.completion_tokens}\nlearning_rate = {args.lr}\n"
            f"iterations = {args.iterations}\nconverge_window = {args.steps + 1}\n"
            f"from_active = true\nlogged_share = 0.5\nthreads = {args.threads}\n\n"
            f"[learn.judge]\n{local}\n"
            f"[learn.gate]\n{gate}\n[learn.schedule]\n"
            f"interval_hours = {args.interval_minutes / 60}\n\n"
            f"[eval]\nscoreboard = true\n{board}\n[eval.judge]\n{local}")


def quick_prompts(root: Path) -> Path:
    path = root / "quick-prompts.jsonl"
    if not path.exists():
        root.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in (
            "How can I help my neighbours this winter?", "Give me one tip for a job interview.")))
    return path


def load_results(args) -> dict:
    if args.out.exists():
        return json.loads(args.out.read_text())
    return {"benchmark": "continual", "command": " ".join([".venv/bin/python",
            "bench/continual.py", *sys.argv[1:]]), "started": time.strftime("%Y-%m-%d %H:%M"),
            "settings": {k: str(v) for k, v in vars(args).items()}, "rounds": [],
            "failed": [], "traffic": []}


def stop_leftover(root: Path) -> None:
    """What an earlier run of this benchmark left when it was killed (its pid files, if those
    processes are still its own): first its traffic, whose requests in flight get their grace to
    finish, then its server, stopped as Ctrl-C would; so a resumed run fails no request of the
    last one and two servers never share one state dir."""
    for name, grace in (("traffic", 240), ("serve", 90)):
        pid_file = root / f"{name}.pid"
        if not pid_file.exists():
            continue
        pid = int(pid_file.read_text())
        if _ours(pid, root):
            print(f"stopping the {name} process an earlier run left (pid {pid})", file=sys.stderr)
            _stop(pid, grace)
        pid_file.unlink()


def _ours(pid: int, root: Path) -> bool:
    cmdline = Path(f"/proc/{pid}/cmdline")
    try:
        return str(root) in cmdline.read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False


def _stop(pid: int, grace: float) -> None:
    from dynalign.procs import group_alive, signal_group

    signal_group(pid, signal.SIGINT)
    deadline = time.monotonic() + grace
    while group_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    signal_group(pid, signal.SIGKILL)


def start(args):
    """The server on --root (its state dir resumes), ready; the latest kept adapter registered
    and activated when the state dir is new but results exist (a resume on another machine)."""
    from serve import Server, model_path  # bench/serve.py: one way to start a server here

    from dynalign.model import prepare
    from dynalign.config import load_config

    judge = str(prepare(load_config(None), args.judge)) if not args.quick else \
        model_path(argparse.Namespace(model_path=None))
    fresh = not (args.root / "state" / "dynalign.db").exists()
    server = Server(args.root, model_path(argparse.Namespace(model_path=None)), "merged",
                    extra=settings(args, judge))
    (args.root / "serve.pid").write_text(str(server.launched.proc.pid))
    server.wait_ready()
    latest = args.adapters / "latest"
    if fresh and (latest / "adapter_model.safetensors").exists():
        print(f"a new state dir: resuming from {latest}", file=sys.stderr)
        server.admin("/adapters", {"path": str(latest), "activate": True,
                                   "note": "resumed from bench/results/continual/latest"})
    return server


def start_traffic(args, server) -> subprocess.Popen:
    """bench/traffic.py beside the server until we stop it (SIGINT), its summary to a file."""
    out = args.root / f"traffic-{int(time.time())}.json"
    command = [sys.executable, str(REPO / "bench" / "traffic.py"), "--config",
               str(server.launched.config), "--url", f"{server.gateway}/v1", "--users",
               str(args.users), "--rate", str(args.rate), "--max-tokens", "48", "--out", str(out),
               "--seed", str(int(time.time()))]  # a resumed run sends new conversations
    from dynalign.procs import die_with_parent

    with open(args.root / "traffic.log", "ab") as log:  # killed with us, it still ends cleanly
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=die_with_parent)
    (args.root / "traffic.pid").write_text(str(proc.pid))
    return proc


def stop_traffic(proc: subprocess.Popen) -> None:
    from dynalign.procs import stop_group

    stop_group(proc, signal.SIGINT, grace=240)


def traffic_summaries(root: Path) -> list[dict]:
    """Every traffic run's counts (one per start of this benchmark, a killed one's included),
    without the transcripts."""
    keep = ("ok", "wall_s", "requests", "latency_ms", "by_version", "conversations", "feedback",
            "failure_digest", "failures")
    return [{"file": path.name, **{k: v for k, v in json.loads(path.read_text()).items()
                                   if k in keep}}
            for path in sorted(root.glob("traffic-*.json"))]


def finished_rounds(server, after: int) -> list[dict]:
    """Rounds with an id above `after` that are over, including a promoted round's scoreboard
    (it runs after the promotion; the next round waits for it), oldest first."""
    import httpx

    r = httpx.get(f"{server.gateway}/admin/rounds", params={"limit": 50, "steps": "true"}, timeout=60,
                  headers=server.admin_headers)
    r.raise_for_status()
    done = []
    for row in sorted(r.json()["data"], key=lambda row: row["id"]):
        if row["id"] <= after or row["status"] not in (*COUNTED, "failed", "cancelled"):
            continue
        if row["status"] == "promoted" and "scoreboard" not in row["summary"]:
            break  # still being measured: it and the rounds after it wait
        done.append(row)
    return done


def record(args, server, results: dict, row: dict) -> None:
    """One finished round into the results (and the plot); kept adapters refreshed."""
    import httpx

    entry = {"round": row["id"], "status": row["status"], "version": row["adapter_version"],
             "parent": row["summary"].get("parent"), "error": row.get("error"),
             "finished": row.get("finished"), "gate": _gate(row["summary"].get("gate") or {}),
             "rewards": [s["reward"] for s in row.get("steps", []) if s.get("reward") is not None],
             "kl": [s.get("kl") for s in row.get("steps", [])],
             "seconds": row["summary"].get("seconds"), "selection": _selection(row["summary"])}
    if row["status"] == "promoted":
        r = httpx.get(f"{server.gateway}/admin/scoreboard", timeout=60,
                      params={"version": str(row["adapter_version"])},
                      headers=server.admin_headers)
        r.raise_for_status()
        boards = r.json()["data"]
        entry["scoreboard"] = boards[-1]["summary"] if boards else None
        entry["scoreboard_status"] = row["summary"]["scoreboard"]
        keep_adapter(args, server, row["adapter_version"])
    results["rounds" if row["status"] in COUNTED else "failed"].append(entry)
    write_results(results, str(args.out))
    plot(results, args.out.with_suffix(".png"))


def _selection(summary: dict) -> dict:
    chosen = summary.get("selection") or {}
    return {k: v for k, v in chosen.items() if isinstance(v, (int, float, str))}


def _gate(gate: dict) -> dict:
    pair = gate.get("pairwise") or {}
    return {"promote": gate.get("promote"), "reasons": gate.get("reasons"),
            "win_rate": pair.get("win_rate"), "balanced": (pair.get("balanced") or {}).get(
                "win_rate")}


def keep_adapter(args, server, version: int) -> None:
    """The first promoted adapter (once) and the latest one, copied out of the state dir."""
    import httpx

    r = httpx.get(f"{server.gateway}/admin/adapters/{version}", timeout=60,
                  headers=server.admin_headers)
    r.raise_for_status()
    source = Path(r.json()["path"])
    for name in (["first"] if not (args.adapters / "first").exists() else []) + ["latest"]:
        target = args.adapters / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.json.bak"))
        (target / "VERSION").write_text(f"dynalign-v{version} of {args.root}\n")


def plot(results: dict, path: Path) -> None:
    """Per finished round: win rate vs base with its interval (pointwise and balanced pairwise),
    IFEval, mean tokens, KL; rejected rounds marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["rounds"] if r.get("scoreboard")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    xs = [r["round"] for r in rows]
    for key, colour in (("pointwise", "C0"), ("balanced", "C1")):
        rates = [(r["scoreboard"].get(key) or {}) for r in rows]
        ys = [t.get("win_rate") for t in rates]
        lows = [(t.get("ci") or [None, None])[0] for t in rates]
        highs = [(t.get("ci") or [None, None])[1] for t in rates]
        axes[0].plot(xs, ys, "o-", color=colour, label=key)
        ok = [i for i, low in enumerate(lows) if low is not None]
        axes[0].fill_between([xs[i] for i in ok], [lows[i] for i in ok], [highs[i] for i in ok],
                             color=colour, alpha=0.15)
    for r in results["rounds"]:
        if r["status"] == "rejected":
            axes[0].axvline(r["round"], color="red", alpha=0.3)
    axes[0].axhline(0.5, color="grey", lw=0.8)
    axes[0].set(title="win rate vs base (95 % CI); red: rejected", xlabel="round", ylim=(0, 1))
    axes[0].legend()
    axes[1].plot(xs, [(r["scoreboard"].get("ifeval") or {}).get("version") for r in rows], "o-")
    axes[1].set(title="IFEval prompt-level strict", xlabel="round")
    axes[2].plot(xs, [r["scoreboard"]["tokens"]["version"] for r in rows], "o-", label="tokens")
    twin = axes[2].twinx()
    twin.plot(xs, [r["scoreboard"].get("kl") for r in rows], "s--", color="C3", label="KL")
    axes[2].set(title="mean answer tokens (o), KL to base (s)", xlabel="round")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run(args, results: dict) -> None:
    server = start(args)
    traffic = start_traffic(args, server)
    failed_in_a_row = 0
    try:
        while len(results["rounds"]) < args.rounds:
            seen = max([r["round"] for r in results["rounds"] + results["failed"]], default=0)
            for row in finished_rounds(server, seen):
                record(args, server, results, row)
                failed_in_a_row = 0 if row["status"] in COUNTED else failed_in_a_row + 1
                print(f"round {row['id']}: {row['status']} ({len(results['rounds'])} of "
                      f"{args.rounds})", file=sys.stderr)
            if failed_in_a_row >= MAX_FAILED:
                sys.exit(f"error: {MAX_FAILED} rounds failed in a row; see {args.root}/state")
            time.sleep(5)
    finally:
        stop_traffic(traffic)
        (args.root / "traffic.pid").unlink(missing_ok=True)
        results["traffic"] = traffic_summaries(args.root)
        write_results(results, str(args.out))
        server.stop()
        (args.root / "serve.pid").unlink(missing_ok=True)


def main(argv=None) -> None:
    preamble()
    args = parse_args(argv)
    args.root.mkdir(parents=True, exist_ok=True)
    stop_leftover(args.root)
    results = load_results(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # finally: blocks stop it all
    if len(results["rounds"]) < args.rounds:
        run(args, results)
    print(json.dumps({"rounds": [(r["round"], r["status"], (r.get("scoreboard") or {}).get(
        "pointwise")) for r in results["rounds"]], "traffic": [(t["file"], t["requests"]) for t in results["traffic"]]}, indent=1))


if __name__ == "__main__":
    main()

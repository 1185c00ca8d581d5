"""How much memory an over-limit chunked upload costs the gateway (issue 28).

Starts one real `dynalign serve --no-ui` (dynalign/launch.py, as bench/serve.py does) and sends
POST /v1/chat/completions bodies of each size with `Transfer-Encoding: chunked` (no
Content-Length), generated while they are sent (1 MiB pieces of one buffer: the client never holds
a body). For each, the gateway process's peak RSS during the request (Linux: VmHWM, reset before
each request through /proc/PID/clear_refs) minus its RSS before it, against the target: less than
2 x server.max_body_mb, whatever the body size. Each must be answered 413 request_too_large; a
chat is answered after them.

Usage: .venv/bin/python bench/body_limit.py [--sizes 64,1024] [--model-path PATH] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from _results import preamble, write_results  # bench/ is the script's folder: first on sys.path

MIB = 2**20


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="64,1024", help="body sizes in MiB, comma-separated")
    p.add_argument("--model-path", help="prepared base model (default: $DYNALIGN_TEST_MODEL, "
                   "else prepared into <repo>/state/model)")
    p.add_argument("--out", help="also write the results as JSON here")
    return p.parse_args()


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of `pid`, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def reset_peak(pid: int) -> None:
    """Set VmHWM back to the current RSS (Linux >= 4.0), so it shows this request's peak."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def body(size: int):
    """`size` bytes as they are sent: 1 MiB pieces of one buffer."""
    piece = b" " * MIB
    for _ in range(size // MIB):
        yield piece


def upload(url: str, pid: int, size: int) -> dict:
    """One chunked chat body of `size` bytes: the answer and the gateway's RSS growth."""
    import httpx

    before = memory(pid)["VmRSS"]
    reset_peak(pid)
    start = time.perf_counter()
    r = httpx.post(f"{url}/v1/chat/completions", content=body(size), timeout=1800,
                   headers={"Content-Type": "application/json"})
    seconds = time.perf_counter() - start
    after = memory(pid)
    assert r.request.headers.get("transfer-encoding") == "chunked", r.request.headers
    return {"mib": size // MIB, "status": r.status_code,
            "code": (r.json().get("error") or {}).get("code") if r.status_code >= 400 else None,
            "rss_before_mib": before / MIB, "peak_growth_mib": (after["VmHWM"] - before) / MIB,
            "rss_after_mib": after["VmRSS"] / MIB, "seconds": seconds,
            "mib_per_s": size / MIB / seconds}


def start_server(root: Path, model: str):
    from dynalign.launch import launch, wait_ready

    env = {k: v for k, v in os.environ.items() if k not in (
        "DYNALIGN_HOME", "DYNALIGN_API_KEY", "DYNALIGN_ADMIN_KEY", "VLLM_CPU_KVCACHE_SPACE")}
    env["DYNALIGN_ADMIN_KEY"] = f"bench-{os.urandom(16).hex()}"
    server = launch(root, model, "merged", env, kv_cache_gib=1)
    try:
        wait_ready(server)
    except BaseException:
        stop_server(server)
        raise
    return server


def stop_server(server) -> None:
    from dynalign.launch import stop

    stop(server, grace=60)


def run(server, sizes: list[int]) -> dict:
    """Every size in turn, then one real chat; the results with the limit and the target."""
    import httpx

    from dynalign.config import load_config

    limit_mib = load_config(server.config).server.max_body_mb
    pid = server.proc.pid  # the gateway runs in `dynalign serve`'s own process
    rows = []
    for mib in sizes:
        rows.append(upload(server.url, pid, mib * MIB))
        row = rows[-1]
        print(f"{row['mib']:6d} MiB chunked: {row['status']} {row['code']}, peak RSS growth "
              f"{row['peak_growth_mib']:7.1f} MiB (RSS {row['rss_before_mib']:.0f} -> "
              f"{row['rss_after_mib']:.0f} MiB), {row['seconds']:.1f} s, "
              f"{row['mib_per_s']:.0f} MiB/s", flush=True)
    chat = httpx.post(f"{server.url}/v1/chat/completions", timeout=300, json={
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    worst = max(r["peak_growth_mib"] for r in rows)
    return {"max_body_mb": limit_mib, "target_mib": 2 * limit_mib, "rows": rows,
            "worst_growth_mib": worst, "chat_after": chat.status_code,
            "ok": worst < 2 * limit_mib and chat.status_code == 200
            and all(r["status"] == 413 for r in rows)}


def main() -> int:
    args = parse_args()
    preamble()
    from serve import model_path  # bench/serve.py: $DYNALIGN_TEST_MODEL, else prepared

    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-body-limit-") as tmp:
        server = start_server(Path(tmp), model_path(args))
        try:
            out = run(server, sizes)
        finally:
            stop_server(server)
    print(f"worst peak growth {out['worst_growth_mib']:.1f} MiB; target < 2 x max_body_mb = "
          f"{out['target_mib']:g} MiB; a chat after: {out['chat_after']}; "
          f"{'PASS' if out['ok'] else 'FAIL'}")
    write_results(out, args.out)
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

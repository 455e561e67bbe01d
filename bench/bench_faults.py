"""Faults x stages on the shrunk quickstart: what the user sees, and what the rerun leaves (issue 29's table).

Run:  .venv/bin/python bench/bench_faults.py [--work /tmp/faults] [--stages generate,filter,train,evaluate,publish]
      [--faults disk_full,sigkill,sigterm,corrupt_input] [--json rows.json]

First the undisturbed reference: the quickstart, shrunk (real SmolLM2 teacher through vLLM, the real student, lm-eval
on the transformers backend), one `distillkit STAGE` process per stage. Then, for every stage x fault, a fresh run
folder holding copies of the reference's upstream stages, the fault, and the same command again once the fault is
fixed (space freed, the input put back):

  disk_full      the run folder on a tmpfs filled to leave half of what the stage writes, or nothing when half is
                 enough for it (needs root)
  sigkill        `kill -9` of the distillkit process once the stage has written something (a shard, a checkpoint,
                 one model's scores); what it leaves running is counted (orphans), then ended
  sigterm        `kill` (a scheduler's preemption) at the same moment
  corrupt_input  the stage's input cut to half its size (a generate/filter shard, the student's weights, results.json)

Each row: the message shown (last line of stderr), exit code, whether a Python traceback was printed, whether the
stage had finished before the fault hit, and after the rerun: exit code and records lost / duplicated / changed
against the reference (shard stages by record id and content; train by loss curve and saved weights; evaluate by
scores; publish by the files it wrote). Target: no traceback, nothing lost, duplicated or changed, in every cell.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["generate", "filter", "score", "train", "evaluate", "publish"]
SHRINK = ["generate.prompts.builtin_args.num=16", "generate.sampling.n=4", "generate.sampling.max_tokens=48",
          "generate.shard_size=4", "train.num_train_epochs=1", "train.save_steps=2", "evaluate.limit=6",
          "evaluate.num_samples=1", "evaluate.max_gen_toks=32", "evaluate.backend=hf"]
# `score` re-scores the kept traces with the teacher (its own stages list: the other stages' hashes stay as they are)
SCORE = ["stages=[generate,filter,score]", "score.teacher.model=builtin:smollm2-135m-instruct",
         "score.teacher.vllm.max_model_len=1024", "score.teacher.vllm.enforce_eager=true", "score.shard_size=8"]
INPUT = {"filter": "generate/shard-00001.parquet", "score": "filter/shard-00000.parquet", "train": "filter/shard-00000.parquet",
         "evaluate": "train/model/model.safetensors", "publish": "evaluate/results.json"}


def distillkit(args: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([str(ROOT / ".venv" / "bin" / "distillkit"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT, start_new_session=True)


def stage_args(stage: str, run: Path) -> list[str]:
    return [stage, "quickstart", f"output_dir={run}", *SHRINK, *(SCORE if stage == "score" else [])]


def finish(proc: subprocess.Popen, timeout: float = 1800) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def kill_group(proc: subprocess.Popen, grace_s: float = 15.0) -> list[int]:
    """What the killed process left running `grace_s` later (vLLM engine processes, training ranks), ended now;
    returns their pids (the orphans)."""
    deadline = time.time() + grace_s
    while True:
        try:
            pids = [int(p) for p in subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True,
                                                    text=True).stdout.split()]
        except (OSError, ValueError):
            pids = []
        if not pids or time.time() > deadline:
            break
        time.sleep(0.5)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def summary(stage: str, folder: Path) -> dict:
    """What a stage left, in a form two runs can be compared by."""
    from distillkit.records import list_shards, read_manifest, read_records

    manifest = read_manifest(folder)
    if stage in ("generate", "filter", "score"):
        rows = read_records(folder).to_list() if list_shards(folder) else []
        ids = [r["id"] for r in rows]
        return {"finished": manifest is not None, "ids": ids,
                "content": {r["id"]: hashlib.sha256(json.dumps([r.get("completion_ids") or r.get("completion"),
                                                                 r.get("topk_ids")], default=str).encode()).hexdigest()[:12]
                            for r in rows}}
    if stage == "train":
        curve = [round(p["loss"], 4) for p in (manifest.stats.get("loss_curve") or [])] if manifest else []
        weights = folder / "model" / "model.safetensors"
        return {"finished": manifest is not None, "curve": curve, "weights": weights.exists()}
    if stage == "evaluate":
        res = folder / "results.json"
        scores = {}
        if res.exists():
            data = json.loads(res.read_text())
            scores = {m: {t: v.get("pass_at_1") for t, v in d["tasks"].items()} for m, d in data["models"].items()}
        return {"finished": manifest is not None, "scores": scores}
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()
                   and p.name not in ("manifest.json", "state.json") and not p.name.startswith("."))
    return {"finished": manifest is not None, "files": files}


def compare(stage: str, ref: dict, got: dict) -> dict:
    if stage in ("generate", "filter", "score"):
        lost = len(set(ref["ids"]) - set(got["ids"]))
        dup = len(got["ids"]) - len(set(got["ids"]))
        changed = sum(ref["content"][i] != got["content"].get(i, ref["content"][i]) for i in ref["content"])
        return {"lost": lost, "duplicated": dup, "changed": changed}
    if stage == "train":
        same = len(ref["curve"]) == len(got["curve"]) and all(abs(a - b) <= 1e-3 for a, b in zip(ref["curve"],
                                                                                                 got["curve"]))
        return {"lost": int(not got["weights"]), "duplicated": 0, "changed": int(not same)}
    if stage == "evaluate":
        return {"lost": int(not got["scores"]), "duplicated": 0, "changed": int(got["scores"] != ref["scores"])}
    return {"lost": len(set(ref["files"]) - set(got["files"])), "duplicated": 0,
            "changed": int(set(got["files"]) != set(ref["files"]))}


def progress(folder: Path) -> bool:
    """The stage has written something beyond its state file (a shard, a checkpoint, one model's scores)."""
    return folder.exists() and any(p.is_file() and p.name != "state.json" and not p.name.startswith(".tmp-")
                                   for p in folder.rglob("*"))


def prepare(run: Path, ref: Path, stage: str) -> None:
    run.mkdir(parents=True, exist_ok=True)
    for upstream in STAGES[:STAGES.index(stage)]:
        shutil.copytree(ref / upstream, run / upstream, symlinks=True)


def mount_tmpfs(folder: Path, size_bytes: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes // 1024 + 1}k", "tmpfs", str(folder)], check=True)


def fill(folder: Path, leave_bytes: int) -> Path:
    st = os.statvfs(folder)
    filler = folder / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave_bytes))
    return filler


def cell(stage: str, fault: str, ref: Path, work: Path, ref_time: float, ref_summary: dict) -> dict:
    base = work / f"{stage}-{fault}"
    if base.exists():
        subprocess.run(["umount", "-l", str(base)], check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
    row = {"stage": stage, "fault": fault}
    filler = None
    if fault == "disk_full":
        upstream = sum(folder_bytes(ref / s) for s in STAGES[:STAGES.index(stage)])
        writes = folder_bytes(ref / stage)
        mount_tmpfs(base, upstream + writes + 64 * 1024 * 1024)
    run = base / "run"
    prepare(run, ref, stage)
    if fault == "disk_full":
        filler = fill(base, max(64 * 1024, folder_bytes(ref / stage) // 2))
    saved_input = None
    if fault == "corrupt_input":
        if stage not in INPUT:
            return {**row, "skipped": "no upstream input"}
        target = run / INPUT[stage]
        saved_input = target.read_bytes()
        target.unlink()  # copies may be hard links: write a new file
        target.write_bytes(saved_input[:len(saved_input) // 2])
    t0 = time.time()
    proc = distillkit(stage_args(stage, run))
    if fault in ("sigkill", "sigterm"):  # mid-run: once the stage has written something (a shard, a checkpoint)
        deadline = time.time() + 2 * ref_time
        while proc.poll() is None and not progress(run / stage) and time.time() < deadline:
            time.sleep(0.05)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL if fault == "sigkill" else signal.SIGTERM)
    code, out, err = finish(proc)
    if fault == "disk_full" and code == 0:  # half the room was enough: again with none
        shutil.rmtree(run / stage)
        filler.unlink()
        filler = fill(base, 0)
        row["room"] = 0
        code, out, err = finish(distillkit(stage_args(stage, run)))
    orphans = kill_group(proc) if fault == "sigkill" else []
    lines = err.strip().splitlines()
    said = next((i for i, line in enumerate(lines) if line.startswith(("error:", "internal error", "interrupted"))),
                len(lines) - 1)
    row.update(code=code, seconds=round(time.time() - t0, 1), traceback="Traceback" in out + err,
               message=" ".join(line.strip() for line in lines[said:said + 2])[:400] if code and lines else "",
               message_full=err.strip()[-1500:] if code else "", finished_before_fault=code == 0,
               orphans=len(orphans))
    # the fix the message asks for
    if filler is not None:
        filler.unlink()
    if saved_input is not None:
        (run / INPUT[stage]).write_bytes(saved_input)
    code2, out2, err2 = finish(distillkit(stage_args(stage, run)))
    row.update(rerun_code=code2, rerun_traceback="Traceback" in out2 + err2)
    if code2 != 0:
        row["rerun_message"] = err2.strip()[-1500:]
    row.update(compare(stage, ref_summary, summary(stage, run / stage)))
    if fault == "disk_full":
        subprocess.run(["umount", "-l", str(base)], check=False)
    shutil.rmtree(base, ignore_errors=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/distillkit-bench-faults"))
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--faults", default="disk_full,sigkill,sigterm,corrupt_input")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    ref = args.work / "reference"
    times = {}
    times_file = args.work / "reference-times.json"
    if times_file.exists():
        times = json.loads(times_file.read_text())
    for stage in STAGES:  # reused when already there
        if stage not in times:
            t0 = time.time()
            code, out, err = finish(distillkit(stage_args(stage, ref)))
            if code != 0:
                sys.exit(f"reference {stage} failed:\n{err[-3000:]}")
            times[stage] = time.time() - t0
            times_file.write_text(json.dumps(times))
    rows = []
    for stage in args.stages.split(","):
        ref_summary = summary(stage, ref / stage)
        for fault in args.faults.split(","):
            if fault == "disk_full" and os.geteuid() != 0:
                rows.append({"stage": stage, "fault": fault, "skipped": "needs root (tmpfs)"})
                continue
            row = cell(stage, fault, ref, args.work, times[stage], ref_summary)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "message_full"}), flush=True)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=1))
    print(f"\n{'stage':<9} {'fault':<13} {'exit':>4} {'tb':>3} {'rerun':>5} {'lost':>4} {'dup':>4} {'chg':>4} {'orp':>3}  message")
    for r in rows:
        if "skipped" in r:
            print(f"{r['stage']:<9} {r['fault']:<13} skipped: {r['skipped']}")
            continue
        print(f"{r['stage']:<9} {r['fault']:<13} {r['code']:>4} {'yes' if r['traceback'] else 'no':>3} "
              f"{r['rerun_code']:>5} {r['lost']:>4} {r['duplicated']:>4} {r['changed']:>4} {r['orphans']:>3}  "
              f"{r['message'][:150]}")


if __name__ == "__main__":
    main()

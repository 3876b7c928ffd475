"""Benchmark the experience buffer at paper scale (or smaller) and print a markdown table.

Paper scale: 128 questions x 8 rollouts a step, responses ~2k tokens, a pool grown to 200k
trajectories (3.2 GB of token ids + log-probs). Quick run:

    python scripts/bench_experience.py --trajectories 20000 --response-tokens 512

The steady-state steps also keep the experience log (exgrpo.experience_log: the step's buffer
calls appended to a file and fsynced), timed on its own.

Targets: collect < 20 ms a step, sample + select < 5 ms a step, resident memory within 10% of
the raw token + log-prob bytes, save and load each at >= 80% of the speed of a raw write of
the same data to the same disk (the "x raw write" ratios).

Timings are wall-clock with the process's CPU time beside them: on a shared machine the CPU
time shows the cost when the wall time is inflated by other work.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from exgrpo_verl.experience import ExperienceBuffer, ExperienceConfig, GroupResult
from exgrpo_verl.experience.journal import ExperienceLog

MB = 1e6


def rss_bytes(field: str = "VmRSS") -> int:
    """Resident (VmRSS) or peak resident (VmHWM) memory of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


class StepMaker:
    """Synthetic step results with unique responses of about L tokens.

    Fresh questions get K rollouts with k ~ U{1..K-1} correct. Experience questions get K-1
    fresh rollouts with k ~ U{0..K-1} plus their replayed member (replayed_correct=1), so k+1
    of K: bucket 1 for k = 0, retired for k = K-1.
    """

    def __init__(self, args, rng):
        self.args, self.rng = args, rng
        self.token_source = rng.integers(0, 150_000, size=1 << 22, dtype=np.int32)
        self.logp_source = -rng.exponential(0.5, size=1 << 22).astype(np.float32)
        self.entropy_source = rng.exponential(0.5, size=1 << 22).astype(np.float32)
        self.serial = 0
        self.next_question = 0

    def response(self, length):
        start = int(self.rng.integers(0, self.token_source.size - length))
        ids = self.token_source[start:start + length].copy()
        ids[0], self.serial = self.serial, self.serial + 1  # unique, so nothing is de-duplicated
        return ids, self.logp_source[start:start + length], self.entropy_source[start:start + length]

    def group(self, qid, n, k, replayed_correct=0):
        lengths = self.rng.integers(int(0.75 * self.args.response_tokens), int(1.25 * self.args.response_tokens) + 1,
                                    size=n)
        ids, logp, entropy = zip(*(self.response(int(length)) for length in lengths))
        return GroupResult(question_id=qid, response_ids=list(ids), log_probs=list(logp),
                           rewards=np.array([1.0] * k + [0.0] * (n - k)), ended_with_eos=np.ones(n, dtype=bool),
                           entropies=list(entropy), prompt_ids=ids[0][:256], payload={"row": qid},
                           replayed_correct=replayed_correct)

    def step(self, experience_qids=()):
        K = self.args.group_size
        groups = [self.group(qid, K - 1, int(self.rng.integers(0, K)), replayed_correct=1) for qid in experience_qids]
        for qid in range(self.next_question, self.next_question + self.args.questions_per_step - len(groups)):
            groups.append(self.group(qid, K, int(self.rng.integers(1, K))))
            self.next_question = qid + 1
        return groups


class Timer:
    """Wall-clock and CPU seconds of a block (CPU time shows the cost on a busy shared machine):
    of the whole process, and of the calling thread alone (without the arena's background work)."""

    def __enter__(self):
        self.wall, self.cpu, self.thread = time.perf_counter(), time.process_time(), time.thread_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        self.thread = time.thread_time() - self.thread


def time_replay_step(buf, rng, n):
    """The step's experience questions, and timers for sample_questions + select (with scores) +
    mark_replayed, and for candidates()."""
    with Timer() as bookkeeping:
        qids = buf.sample_questions(n)
    with Timer() as copies:
        candidates = [buf.candidates(q) for q in qids]
    scores = [rng.random(len(c)) for c in candidates]  # stand-in for the caller's forward pass
    with Timer() as picking:
        chosen = [buf.select(q, s) for q, s in zip(qids, scores)]
        buf.mark_replayed([t.id for t in chosen], buf.step)
    return qids, (bookkeeping.wall + picking.wall, bookkeeping.cpu + picking.cpu, copies.wall)


def raw_write_seconds(array, path):
    """The disk's own speed: one array written with tofile + fsync (np.zeros pages are not resident)."""
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        array.tofile(f)
        f.flush()
        os.fsync(f.fileno())
    seconds = time.perf_counter() - t0
    os.remove(path)
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trajectories", type=int, default=200_000, help="pool size to grow to")
    parser.add_argument("--response-tokens", type=int, default=2048, help="mean response length")
    parser.add_argument("--questions-per-step", type=int, default=128)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--sample", type=int, default=64, help="experience questions per step")
    parser.add_argument("--steady-steps", type=int, default=30, help="steps timed once the token cap binds")
    parser.add_argument("--dir", default=None, help="where to save (default: a temp dir)")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    maker = StepMaker(args, rng)
    token_cap = args.trajectories * args.response_tokens
    config = ExperienceConfig(group_size=args.group_size, max_total_tokens=token_cap,
                              max_trajectories_per_question=16, selection_metric="entropy", seed=0)
    rss_before = rss_bytes()
    buf = ExperienceBuffer(config)

    fill_times, step = [], 0
    while buf.metrics()["tokens"] < 0.98 * token_cap:
        groups = maker.step()
        step += 1
        with Timer() as timer:
            buf.update(step, groups)
        fill_times.append((timer.wall, timer.cpu, timer.thread))
    filled = buf.metrics()
    rss_growth = rss_bytes() - rss_before
    raw_bytes = filled["bytes"]  # 8 bytes a response token + 4 a prompt token

    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench_experience_"))
    log = ExperienceLog.start(root / "experience.log", base="bench", run_id="bench")
    buf.record_operations()
    steady_times, replay_times, log_times, log_bytes = [], [], [], []
    for _ in range(args.steady_steps):
        experience_qids, times = time_replay_step(buf, rng, args.sample)
        replay_times.append(times)
        groups = maker.step(experience_qids)
        step += 1
        with Timer() as timer:
            buf.update(step, groups)
        steady_times.append((timer.wall, timer.cpu, timer.thread))
        with Timer() as timer:
            log_bytes.append(log.append(step, buf.take_operations()))
        log_times.append((timer.wall, timer.cpu, timer.thread))
    os.remove(log.path)
    steady = buf.metrics()
    rss_steady = rss_bytes() - rss_before
    raw_steady = steady["bytes"]

    checkpoint = root / "experience"
    t0 = time.perf_counter()
    buf.save(checkpoint)
    save_seconds = time.perf_counter() - t0
    checkpoint_bytes = sum(f.stat().st_size for f in checkpoint.iterdir())
    disk_bytes = checkpoint_bytes // 2
    disk_seconds = raw_write_seconds(np.zeros(disk_bytes // 4, dtype=np.int32), root / "raw.bin")
    metrics_saved = buf.metrics()
    del buf
    t0 = time.perf_counter()
    loaded = ExperienceBuffer.load(checkpoint)
    load_seconds = time.perf_counter() - t0
    assert loaded.metrics() == metrics_saved
    shutil.rmtree(checkpoint if args.dir else root)

    disk_rate = disk_bytes / MB / disk_seconds

    def throughput(seconds):
        rate = checkpoint_bytes / MB / seconds
        return f"{seconds:.2f} s, {rate:.0f} MB/s = {rate / disk_rate:.2f} x raw write"

    def ms(seconds):
        return f"{1e3 * seconds:.1f} ms"

    def spread(times):
        wall, cpu, thread = np.array(times).T
        median, p99, most = np.median(wall), np.percentile(wall, 99), wall.max()
        cpu_medians = f"CPU median {ms(np.median(cpu))}, calling thread {ms(np.median(thread))}"
        return f"{ms(median)} / {ms(p99)} / {ms(most)} ({cpu_medians})"

    bookkeeping_wall, bookkeeping_cpu, copies = (np.median([t[i] for t in replay_times]) for i in range(3))
    rows = [
        ("scale", f"{int(filled['trajectories'])} trajectories, {filled['tokens'] / 1e6:.1f}M response tokens, "
                  f"{raw_bytes / MB:.0f} MB raw (with prompts), "
                  f"{args.questions_per_step}x{args.group_size} rollouts/step"),
        (f"collect one step while filling ({len(fill_times)} steps): median / p99 / max", spread(fill_times)),
        (f"collect one step, token cap binding ({len(steady_times)} steps): median / p99 / max", spread(steady_times)),
        (f"sample {args.sample} questions + select + mark_replayed (median)",
         f"{ms(bookkeeping_wall)} (CPU {ms(bookkeeping_cpu)})"),
        (f"candidates() array copies for {args.sample} questions (median)", ms(copies)),
        ("RSS growth after filling / raw bytes (token ids + log-probs + prompts)",
         f"{rss_growth / MB:.0f} MB / {raw_bytes / MB:.0f} MB = {rss_growth / raw_bytes:.3f}"),
        ("RSS growth in steady state / raw bytes",
         f"{rss_steady / MB:.0f} MB / {raw_steady / MB:.0f} MB = {rss_steady / raw_steady:.3f}"),
        (f"experience log: append + fsync one step ({len(log_times)} steps): median / p99 / max",
         f"{spread(log_times)}; {np.median(log_bytes) / MB:.1f} MB a step"),
        ("save", throughput(save_seconds)),
        ("load (incl. SHA-256 check)", throughput(load_seconds)),
        ("raw disk write (tofile + fsync, half the checkpoint size)", f"{disk_rate:.0f} MB/s"),
        ("evictions in the run (token_cap / question_cap / retired)",
         " / ".join(str(int(steady[f"evicted/{reason}"])) for reason in ("token_cap", "question_cap", "retired"))),
    ]
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()

"""Run a batch: skip finished clips, start a pool, and hand clips to idle workers until each is done
or out of tries (`dispatch`)."""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Sequence

from tqdm.auto import tqdm

from runtime.batch.manifest import Clip, chains
from runtime.batch.pools import LocalPool, Pool, RayPool, import_ray, local_devices
from runtime.batch.summary import Outcome, Summary
from runtime.batch.worker import Attempt, Died, Finished, LoadFailed, Ready
from runtime.errors import RemoverError
from runtime.io import remove_partial_output
from runtime.options import ModelOptions


def _say(line: str) -> None:
    tqdm.write(line, file=sys.stderr)


def run_batch(
    clips: Sequence[Clip],
    model: ModelOptions,
    *,
    workers: int | None = None,
    address: str | None = None,
    retries: int = 1,
    progress: bool = True,
    say: Callable[[str], None] = _say,
) -> Summary:
    """Run `clips` (from `read_manifest`) on workers that each load `model` once: local processes, or
    Ray actors with `address`. Clips whose output exists are skipped (unless their `encoding.overwrite`);
    a failed one is retried up to `retries` times, except for RemoverErrors (bad input: the same again).
    A worker load failure is a RemoverError; Ctrl-C ends the workers and leaves no partial output."""
    if address:
        import_ray()  # before anything, even when every clip is skipped
    start = time.perf_counter()
    outcomes: dict[int, Outcome] = {}
    for index, clip in enumerate(clips):
        if not clip.encoding.overwrite and clip.output.exists():
            outcomes[index] = Outcome(clip, "skipped")
            say(f"skipped line {clip.line}: {clip.output} exists (--overwrite redoes it)")
    todo = [i for i in range(len(clips)) if i not in outcomes]
    if todo:
        if address:
            pool: Pool = RayPool(model, address, workers, len(todo))
        else:
            pool = LocalPool(model, local_devices(model.device, workers)[: len(todo)])
        say(f"{len(clips)} clip(s), {len(outcomes)} skipped, {len(todo)} to run on {pool.where}")
        with tqdm(total=len(todo), unit="clip", desc="batch", disable=not progress, file=sys.stderr) as bar:
            outcomes.update(Dispatch(pool, clips, todo, retries, say, bar).run())
    else:
        say(f"{len(clips)} clip(s), all skipped: nothing to run")
    return Summary([outcomes[i] for i in range(len(clips))], time.perf_counter() - start)


class Dispatch:
    """Clips to idle workers until every clip is done or out of tries; then the workers are ended (and
    what a killed worker was writing removed), Ctrl-C or not."""

    def __init__(
        self,
        pool: Pool,
        clips: Sequence[Clip],
        todo: list[int],
        retries: int,
        say: Callable[[str], None],
        bar: tqdm,
    ) -> None:
        self.pool, self.clips, self.retries, self.say, self.bar = pool, clips, retries, say, bar
        self.queue = deque(todo)  # clip indices waiting for a worker
        self.attempts = dict.fromkeys(todo, 0)
        self.outcomes: dict[int, Outcome] = {}
        self.idle: list[int] = []  # worker slots with the model loaded and no clip
        self.busy: dict[int, tuple[int, float]] = {}  # slot -> (clip index, when it started)
        self.loading = set(range(len(pool.devices)))
        self.pids: dict[int, int] = {}  # slot -> its worker's pid (the partial outputs carry it)
        self.frames, self.start = 0, time.perf_counter()
        waiting = set(todo)  # a chained row waits for the rows it reads that run here (a skipped one has its file)
        self.needs = {i: {m: what for m, what in makers.items() if m in waiting} for i, makers in chains(clips).items()}

    def next_ready(self) -> int | None:
        """Take the first queued clip whose makers (`manifest.chains`) are done; one whose maker failed
        fails without running (one line saying why), and the rows waiting on it in turn. None while
        every queued clip still waits."""
        progressed = True
        while progressed:
            progressed = False
            for index in list(self.queue):
                makers = self.needs.get(index, {})
                failed = [m for m in makers if m in self.outcomes and self.outcomes[m].status == "failed"]
                if failed:
                    self.queue.remove(index)
                    self._not_run(index, failed[0], makers[failed[0]])
                    progressed = True
                elif all(m in self.outcomes for m in makers):
                    self.queue.remove(index)
                    return index
        return None

    def _not_run(self, index: int, maker: int, what: str) -> None:
        clip, made = self.clips[index], self.clips[maker]
        error = f"not run: its {what} {made.output} is line {made.line}'s output, which failed"
        self.outcomes[index] = Outcome(clip, "failed", 0, error=error)
        self.say(f"failed  line {clip.line} ({clip.video.name}): {error}")
        self.bar.update()

    def run(self) -> dict[int, Outcome]:
        """Every clip's outcome, by its index."""
        try:
            while self.queue or self.busy:
                while self.idle and (index := self.next_ready()) is not None:
                    slot = self.idle.pop()
                    self.attempts[index] += 1
                    self.busy[slot] = index, time.perf_counter()
                    self.pool.submit(slot, self.clips[index])
                if not self.busy and not self.queue:
                    break  # the last queued rows failed with their makers: nothing more will come
                self.handle(self.pool.next_event())
        finally:
            self.pool.close(self.idle)
            for slot, (index, _) in self.busy.items():
                if slot in self.pids:
                    remove_partial_output(self.clips[index].output, self.pids[slot])
        return self.outcomes

    def handle(self, event: Ready | LoadFailed | Finished | Died) -> None:
        """What a worker said, or its death."""
        slot = event.slot
        if isinstance(event, LoadFailed):
            raise RemoverError(event.message)
        if isinstance(event, Died) and slot in self.loading:  # a fresh worker would die again
            raise RemoverError(f"worker {slot + 1} on {self.pool.devices[slot]}: {event.how} while loading the model")
        if isinstance(event, Ready):
            if slot not in self.pids:
                self.say(f"worker {slot + 1}: {event.loaded}")
            self.pids[slot] = event.pid
            self.loading.discard(slot)
            self.idle.append(slot)
            return
        if slot not in self.busy:  # an idle worker died
            self.idle.remove(slot)
            self.loading.add(slot)
            self.pool.restart(slot)
            return
        index, started = self.busy.pop(slot)
        if isinstance(event, Died):
            remove_partial_output(self.clips[index].output, self.pids[slot])
            self.loading.add(slot)
            self.pool.restart(slot)
            self.record(index, Attempt(None, time.perf_counter() - started, event.how, retry=True))
        else:
            self.idle.append(slot)
            self.record(index, event.attempt)

    def record(self, index: int, attempt: Attempt) -> None:
        """A try at clip `index` ended: retry it, or note its outcome."""
        clip, tries = self.clips[index], self.attempts[index]
        if attempt.taken:
            self.outcomes[index] = Outcome(clip, "skipped", tries, error=attempt.taken)
            self.say(f"skipped line {clip.line}: {attempt.taken}")
            self.bar.update()
            return
        for message in attempt.warnings:
            self.say(f"warning: line {clip.line}: {message}")
        what = f"line {clip.line} ({clip.video.name})"
        if attempt.error and attempt.retry and tries <= self.retries:
            self.say(f"failed  {what}, attempt {tries} of {self.retries + 1}, retrying: {attempt.error}")
            self.queue.appendleft(index)
            return
        status = "failed" if attempt.error else "done"
        self.outcomes[index] = Outcome(clip, status, tries, attempt.seconds, attempt.frames, attempt.error)
        if attempt.error:
            self.say(f"failed  {what} after {tries} attempt(s): {attempt.error}")
        else:
            self.frames += attempt.frames
            rate = f"{attempt.frames} frames in {attempt.seconds:.1f} s ({attempt.frames / attempt.seconds:.2f}/s)"
            self.say(f"done    {what} -> {clip.output}: {rate}")
        self.bar.update()
        self.bar.set_postfix_str(f"{self.frames / (time.perf_counter() - self.start):.2f} frames/s")

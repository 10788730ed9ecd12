"""Answers already paid for, kept next to the output so a retried task does not ask again.

``<output>.checkpoint/<fingerprint>/part-00012.jsonl``, one part per chunk of batches, written atomically:
the time it was written (Unix seconds, so a resumed answer keeps its true age), then ``[status, carrier_id,
carrier_status, error, [e164, ...]]`` per distinct answer. The fingerprint hashes the run (dag, run, task,
map index), the ordered numbers and the batch plan: a retry of the same task instance resumes; another run,
audience, shard or plan never reads these parts. A part is trusted only if it holds exactly its numbers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence

from airflow.sdk import ObjectStoragePath

from airflow_provider_kaleyra.rcs.answers import Answer, shared
from airflow_provider_kaleyra.utils.storage import open_atomic

log = logging.getLogger(__name__)

FORMAT = b"kaleyra-rcs-checkpoint-v3"


def fingerprint(numbers: Sequence[int | str], sizes: Sequence[int], chunk_batches: int, run: str = "") -> str:
    """Hash of the run's identity, the ordered numbers, the batch sizes and the chunking."""
    digest = hashlib.sha256(FORMAT + b"|" + run.encode() + b"|")
    for start in range(0, len(numbers), 10_000):
        digest.update(",".join(map(str, numbers[start : start + 10_000])).encode() + b",")
    digest.update(b"|" + ",".join(map(str, sizes)).encode() + b"|" + str(chunk_batches).encode())
    return digest.hexdigest()[:24]


class Checkpoint:
    """The part files of one run (``key``: its :func:`fingerprint`) of one output."""

    def __init__(self, output: ObjectStoragePath, key: str) -> None:
        self.root = output.with_name(output.name + ".checkpoint")
        self.dir = self.root / key

    def part(self, index: int) -> ObjectStoragePath:
        return self.dir / f"part-{index:05d}.jsonl"

    def existing(self) -> set[int]:
        """Indexes of the parts written (a write in progress is a temporary ``.part-...`` file)."""
        return {int(path.stem[5:]) for path in self.dir.glob("part-*.jsonl") if path.stem[5:].isdigit()}

    def load(self, index: int, numbers: Sequence[str]) -> tuple[dict[str, Answer], float] | None:
        """``(answers, when they were saved)`` of part ``index``; ``None`` when it must be asked again."""
        answers: dict[str, Answer] = {}
        try:
            with self.part(index).open("r", encoding="utf-8") as handle:
                saved_at = float(handle.readline())
                if not math.isfinite(saved_at):
                    raise ValueError("no time it was written")
                for line in handle:
                    *fields, group = json.loads(line)
                    answers.update(dict.fromkeys(group, shared(Answer(*fields))))
        except (OSError, ValueError, TypeError) as exc:
            log.warning("Checkpoint part %s is unreadable (%s); asking again", index, exc)
            return None
        if len(answers) != len(numbers) or any(number not in answers for number in numbers):
            log.warning("Checkpoint part %s does not match its numbers; asking again", index)
            return None
        return answers, saved_at

    def save(self, index: int, answers: Iterable[tuple[str, Answer]]) -> None:
        groups: defaultdict[Answer, list[str]] = defaultdict(list)
        for e164, answer in answers:
            groups[answer].append(e164)
        lines = [json.dumps([*answer, group], separators=(",", ":")) for answer, group in groups.items()]
        with open_atomic(self.part(index)) as handle:
            # Rounded down: a resumed answer may look older than it is, never fresher.
            handle.write(f"{math.floor(time.time() * 1000) / 1000:.3f}\n" + "\n".join(lines) + "\n")

    def discard(self, indexes: Iterable[int]) -> None:
        """Forget some parts (e.g. those holding failures) so the next try asks for them again."""
        for index in indexes:
            self.part(index).unlink(missing_ok=True)

    def clear(self) -> None:
        """Remove every checkpoint of this output, this run's and any stale one."""
        with contextlib.suppress(FileNotFoundError):
            if self.root.exists():
                self.root.rmdir(recursive=True)

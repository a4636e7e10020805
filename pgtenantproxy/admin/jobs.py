"""Long admin actions (backfill, verification) run as jobs: started by a POST, followed by a GET.

``POST .../migrate-data`` answers ``202 Accepted`` with the job's id and URL at
once; ``GET .../jobs/{id}`` shows its state (``running``, ``done``,
``failed``), its latest progress, and, when finished, its result (the same
JSON the CLI's ``--json`` prints). A request with ``"wait": true`` waits for
the result instead. Jobs live in the proxy instance that started them (the
last :data:`KEEP` are kept); their effects (phases, checkpoints, audit rows)
live in the control schema, so a job cut short by a restart resumes with the
same request.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

KEEP = 50


@dataclass
class Job:
    id: int
    action: str
    actor: str
    request: dict[str, Any]
    started_at: float = field(default_factory=time.time)
    state: str = "running"
    finished_at: float | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: str | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "action": self.action, "actor": self.actor, "request": self.request,
                "state": self.state, "started_at": self.started_at, "finished_at": self.finished_at,
                "progress": self.progress, "result": self.result, "error": self.error}


Runner = Callable[[Job], Awaitable[dict[str, Any]]]


class JobBook:
    def __init__(self) -> None:
        self._jobs: OrderedDict[int, Job] = OrderedDict()
        self._ids = itertools.count(1)

    def start(self, action: str, actor: str, request: dict[str, Any], run: Runner) -> Job:
        job = Job(next(self._ids), action, actor, request)
        job.task = asyncio.get_running_loop().create_task(self._run(job, run), name=f"admin-job-{job.id}")
        self._jobs[job.id] = job
        while len(self._jobs) > KEEP:
            oldest = next(iter(self._jobs.values()))
            if oldest.state == "running":
                break
            self._jobs.popitem(last=False)
        return job

    async def _run(self, job: Job, run: Runner) -> None:
        try:
            job.result = await run(job)
            job.state = "done"
        except Exception as exc:
            job.error = f"{exc.__class__.__name__}: {exc}"
            job.state = "failed"
        finally:
            job.finished_at = time.time()

    def get(self, job_id: int) -> Job | None:
        return self._jobs.get(job_id)

    def all(self) -> list[Job]:
        return list(self._jobs.values())

    async def close(self) -> None:
        tasks = [j.task for j in self._jobs.values() if j.task is not None and not j.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

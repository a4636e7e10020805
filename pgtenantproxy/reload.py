"""Live configuration reload: SIGHUP or an edit of ``config.toml`` swaps in a new snapshot.

The file is watched by polling its (mtime, size, inode) once a second
(:data:`POLL_INTERVAL`; no inotify dependency, and an editor's
write-then-rename is seen too); SIGHUP reloads at once. A reload is
all-or-nothing, like PgBouncer's: :func:`~pgtenantproxy.config.load_config`
validates the whole file first; an invalid file changes nothing, is logged
with the key at fault (the ConfigError names it) and counted as a failed
reload, and the same broken file is not retried until it changes again or
SIGHUP asks. A valid one is handed whole to the ``apply`` callback (the app
swaps routing, pools, shadow, metrics settings: client connections stay).
Keys that only take effect after a restart (``listen`` addresses, TLS files,
``[[tenant_servers]]``...: :func:`~pgtenantproxy.config.restart_keys`) are
logged as such.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pgtenantproxy.config import Config, ConfigError, load_config, restart_keys

logger = logging.getLogger(__name__)

POLL_INTERVAL = 1.0
SETTLE = 0.05  # wait for a file being written to stop changing

Signature = tuple[int, int, int]


@dataclass
class ReloadStats:
    succeeded: int = 0
    failed: int = 0
    last_failed: bool = False
    last_error: str | None = None
    last_success_unix: float = field(default_factory=time.time)


def _signature(path: Path) -> Signature | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class ConfigReloader:
    def __init__(
        self,
        path: str | os.PathLike[str],
        current: Config,
        apply: Callable[[Config], None],
        *,
        interval: float = POLL_INTERVAL,
        stats: ReloadStats | None = None,
    ) -> None:
        self.path = Path(path)
        self.current = current
        self.apply = apply
        self.interval = interval
        self.stats = stats or ReloadStats()
        self._seen = _signature(self.path)
        self._task: asyncio.Task[None] | None = None
        self._now = asyncio.Event()
        self._why = "file changed"

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch(), name="config-watch")

    def trigger(self, why: str = "SIGHUP") -> None:
        """Reload at the next turn of the loop (safe to call from a signal handler set with the loop)."""
        self._why = why
        self._now.set()

    async def _watch(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._now.wait(), self.interval)
                forced = True
            except TimeoutError:
                forced = False
            self._now.clear()
            signature = _signature(self.path)
            if not forced and (signature is None or signature == self._seen):
                continue
            signature = await self._settled(signature)
            self._seen = signature
            self.reload(self._why if forced else "file changed")
            self._why = "file changed"

    async def _settled(self, signature: Signature | None) -> Signature | None:
        for _ in range(20):
            await asyncio.sleep(SETTLE)
            again = _signature(self.path)
            if again == signature:
                break
            signature = again
        return signature

    def reload(self, why: str = "requested") -> bool:
        """Load, validate and apply the file now; False (old config kept) when it is invalid."""
        try:
            new = load_config(self.path)
        except ConfigError as exc:
            return self._failed(why, str(exc))
        pending = restart_keys(self.current, new)
        try:
            self.apply(new)
        except Exception as exc:
            logger.exception("config reload (%s): applying %s failed; the old config stays", why, self.path)
            return self._failed(why, f"{exc.__class__.__name__}: {exc}")
        self.current = new
        self.stats.succeeded += 1
        self.stats.last_failed = False
        self.stats.last_error = None
        self.stats.last_success_unix = time.time()
        logger.info("config reloaded (%s) from %s", why, self.path)
        if pending:
            logger.warning("config reload: changed keys that need a restart to take effect: %s",
                           ", ".join(pending))
        return True

    def _failed(self, why: str, error: str) -> bool:
        # Logged before it is counted: whoever sees the count (a test, an operator) finds the reason.
        logger.error("config reload (%s) refused, the running config stays: %s", why, error)
        self.stats.last_error = error
        self.stats.last_failed = True
        self.stats.failed += 1
        return False

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

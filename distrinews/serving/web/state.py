"""What every route of one app sees: its config, and the service once it has loaded (or why it did not)."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Future

from ..service import ClassifierService, ServingConfig
from .errors import ApiError

log = logging.getLogger("distrinews.app")

LOADING = "the model is still loading; retry shortly"
# Why loading failed can name local paths, Hub answers or a library's internals: it goes to the log only.
LOAD_FAILED = "the model failed to load; the server's log says why"


class ServingState:
    """The config (read when the server starts, unless given), the service, and the error that stopped it (for the
    log: the public see ``unavailable()``)."""

    def __init__(self, config: ServingConfig | None = None, service: ClassifierService | None = None):
        self.given_config = config
        self.given_service = service
        self.config: ServingConfig | None = config or (service.config if service is not None else None)
        self.service: ClassifierService | None = None
        self.error: str | None = None

    @property
    def status(self) -> str:
        return "ready" if self.service is not None else "failed" if self.error else "loading"

    def unavailable(self) -> ApiError:
        """What a request gets while there is no model: 503, saying only whether it is loading or failed."""
        return ApiError(503, LOAD_FAILED if self.error else LOADING, {"Retry-After": "5"})

    def require_service(self) -> ClassifierService:
        if self.service is None:
            raise self.unavailable()
        return self.service

    async def load(self, loading: Future | None = None) -> None:
        """Take the given service, or the result of ``loading`` (a load started earlier), or load one; then start
        its batcher. A failure is logged and kept in ``error``; /api/ready and every request say only that it failed,
        and the process stays up."""
        config = self.config
        try:
            service = self.given_service
            if service is None:
                service = await (asyncio.wrap_future(loading) if loading is not None
                                 else asyncio.to_thread(ClassifierService.load, config))
            await service.start()
            self.service = service
        except Exception as err:  # noqa: BLE001 - reported, not raised: the port stays up for the health check
            log.exception("loading %s failed", config.model_id)
            self.error = f"model {config.model_id!r} failed to load: {err}"

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
        self.service = None

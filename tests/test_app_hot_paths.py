"""What keeps the served app quick under load: the GIL switch interval while it runs, and the
health check matched before every router."""

from __future__ import annotations

import sys

from agent_manager.service import Service
from agent_manager.settings import Settings
from agent_manager.web.app import GIL_SWITCH_INTERVAL_S, create_app


async def test_lifespan_shortens_the_gil_switch_interval_and_restores_it(settings: Settings) -> None:
    before = sys.getswitchinterval()
    assert before > GIL_SWITCH_INTERVAL_S
    app = create_app(settings, service=Service(settings), token="t" * 32)
    async with app.router.lifespan_context(app):
        assert sys.getswitchinterval() == GIL_SWITCH_INTERVAL_S
    assert sys.getswitchinterval() == before


def test_the_health_check_is_matched_before_any_router(settings: Settings) -> None:
    app = create_app(settings, service=Service(settings), token="t" * 32)
    paths = [getattr(route, "path", None) for route in app.routes]
    first_router = next(i for i, route in enumerate(app.routes) if getattr(route, "path", None) is None)
    assert paths.index("/api/health") < first_router, paths[:5]

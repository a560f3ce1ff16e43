"""The served app shortens the GIL switch interval while it runs, and gives it back."""

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

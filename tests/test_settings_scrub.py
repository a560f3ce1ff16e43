"""``Settings.scrub`` remembers which keys are secret, but always masks their current values."""

from __future__ import annotations

from agent_manager.settings import Settings


def test_scrub_masks_a_secret_changed_after_the_first_scrub() -> None:
    settings = Settings()
    secret_keys = [key for key in settings.setting_keys() if settings.is_secret(key)]
    assert secret_keys, "a backend section declares a secret (e.g. the Daytona API key)"
    key = secret_keys[0]
    settings.assign(key, "first-secret-value")
    assert settings.scrub("failed: first-secret-value!") == "failed: ********!"
    settings.assign(key, "second-secret-value")  # changed at run time (PUT /api/settings)
    assert settings.scrub("x second-secret-value first-secret-value") == "x ******** first-secret-value"
    assert settings.scrub("nothing secret here") == "nothing secret here"

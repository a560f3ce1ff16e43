"""``Settings.scrub`` remembers which keys are secret, masks their current values and the last few replaced ones."""

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
    # The old value too: a run started before the change still uses it, and may print it.
    assert settings.scrub("x second-secret-value first-secret-value") == "x ******** ********"
    for n in range(20):
        settings.assign(key, f"rotated-secret-{n:02d}")
    assert settings.scrub("rotated-secret-12") == "********"  # the last few are kept
    assert settings.scrub("first-secret-value") == "first-secret-value"  # bounded: old ones go
    assert settings.scrub("nothing secret here") == "nothing secret here"

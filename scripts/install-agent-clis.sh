#!/usr/bin/env bash
# Installs the pinned agent CLIs the real-CLI tests drive (tests/test_real_clis.py) into
# .cache/agent-clis/ when missing: the npm CLIs under node_modules/.bin, aider in its own venv.
# Each part is skipped when already at the pinned version; a failure leaves the others usable
# (the tests skip what is absent and say why).
set -uo pipefail
cd "$(dirname "$0")/.."
CACHE=${AGENT_CLIS_DIR:-.cache/agent-clis}
mkdir -p "$CACHE"
NPM_PINS=(@anthropic-ai/claude-code@2.1.197 @openai/codex@0.171.0 @google/gemini-cli@0.61.0 opencode-ai@1.18.33)
AIDER_PIN=aider-chat==0.86.2
stamp="$CACHE/.npm-pins"
if command -v npm >/dev/null; then
  if [ "$(cat "$stamp" 2>/dev/null)" != "${NPM_PINS[*]}" ]; then
    [ -f "$CACHE/package.json" ] || echo '{"name":"agent-clis","private":true}' >"$CACHE/package.json"
    if npm install --prefix "$CACHE" --no-audit --no-fund --loglevel=error "${NPM_PINS[@]}" >&2; then
      echo "${NPM_PINS[*]}" >"$stamp"
    else
      echo "warning: npm could not install the agent CLIs; their real-CLI tests will be skipped" >&2
    fi
  fi
else
  echo "warning: npm not found; the real-CLI tests of the npm CLIs will be skipped" >&2
fi
if [ "$(cat "$CACHE/.aider-pin" 2>/dev/null)" != "$AIDER_PIN" ]; then
  rm -rf "$CACHE/aider-venv"
  if python3 -m venv "$CACHE/aider-venv" && "$CACHE/aider-venv/bin/pip" install -q --disable-pip-version-check "$AIDER_PIN" >&2; then
    echo "$AIDER_PIN" >"$CACHE/.aider-pin"
  else
    echo "warning: aider-chat did not install; its real-CLI tests will be skipped" >&2
  fi
fi
# One directory with just the CLIs, for PATH (the aider venv's bin also holds a python).
mkdir -p "$CACHE/bin"
for cli in claude codex gemini opencode; do
  [ -e "$CACHE/node_modules/.bin/$cli" ] && ln -sfn "../node_modules/.bin/$cli" "$CACHE/bin/$cli"
done
[ -e "$CACHE/aider-venv/bin/aider" ] && ln -sfn ../aider-venv/bin/aider "$CACHE/bin/aider"
exit 0

"""The README's "Large payloads" section typed in as written, after the quick start's file
and migration (the blocks marked ``payloads``): the run's large input and result are stored
once, ``cairn history --json`` shows them and ``cairn db payloads`` counts them."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from support import TIMEOUT, clean_env
from support.readme import README, readme_blocks, readme_script, run_in_own_group

VENV = Path(sys.executable).parent.parent


@pytest.mark.timeout(300)  # CLI start-ups on a loaded machine (the script alone takes ~10 s)
def test_the_payload_store_section_works_as_typed(tmp_path, empty_db_url):
    home = tmp_path / "newcomer"
    home.mkdir()
    (home / ".venv").symlink_to(VENV)
    readme = README.read_text()
    flows = next(m for m in readme_blocks(readme, "quickstart") if m["path"] == "myapp/flows.py")
    script = "\n".join(["set -eo pipefail -x", ". .venv/bin/activate", "mkdir -p myapp",
                        f"cat > myapp/flows.py <<'EOF'\n{flows['body']}EOF", "cairn db migrate",
                        readme_script(readme, "payloads").removeprefix("set -eo pipefail -x\n")])
    env = clean_env(CAIRN_DATABASE_URL=empty_db_url, CAIRN_HOME=str(home / ".cairn-home"),
                    PATH=f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("VIRTUAL_ENV", None)
    ran = run_in_own_group(script, home, env, TIMEOUT * 2)
    assert ran.returncode == 0, f"exit {ran.returncode}\nstdout:\n{ran.stdout}\nstderr:\n{ran.stderr}"
    assert "Traceback" not in ran.stdout + ran.stderr, ran.stderr
    assert "receipt o-2 lorem ipsum" in ran.stdout
    history = json.loads((home / "order-o-2.json").read_text())
    started = json.dumps(history)
    assert "lorem ipsum " * 100 in started
    assert "$cairn.payload" not in started
    assert "2 payloads, " in ran.stdout
    whole = json.loads(ran.stdout[ran.stdout.rindex("{"):])
    assert whole["payloads"] == 2
    assert whole["json_bytes"] > 40_000 > whole["stored_bytes"]

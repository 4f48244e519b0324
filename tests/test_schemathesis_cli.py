"""schemathesis's command line against a real `authdb serve`, as CI runs it.

`schemathesis run http://.../openapi.json` with every check, all of its phases (coverage of
boundary and invalid values, random fuzzing, stateful sequences following inferred links),
deterministic generation and a fixed number of examples per operation. It logs in as a
superuser through `/token` and logs in again whenever an answer is 401 (after a fuzzed logout,
for instance). The server runs on a fresh SQLite database with generous rate limits, so the
run reaches past the limiter.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.cli import run_cli
from tests.conftest import PASSWORD
from tests.test_serve import serving

SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
# Per operation and phase; FUZZ_MAX_EXAMPLES=1000 runs a longer search locally.
MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "100"))
GENEROUS = "100000/minute"

SERVER_ENV = {
    "AUTHDB_SECRET_KEY": "schemathesis-run-secret-key-0123456789abcdef",
    "AUTHDB_RATE_LIMIT_LOGIN_FAILURES": GENEROUS,
    "AUTHDB_RATE_LIMIT_REGISTER": GENEROUS,
    "AUTHDB_RATE_LIMIT_EMAIL_REQUESTS": GENEROUS,
    "AUTHDB_RATE_LIMIT_EMAIL_REQUESTS_PER_ADDRESS": GENEROUS,
    # Fuzzed current-password checks count against the superuser's lockout (issue 9, item 12).
    "AUTHDB_LOGIN_MAX_FAILURES": "1000",
    # The document describes the JSON API; the HTML pages (GET /register, GET /verify...) are
    # left out of it, as FastAPI apps do with HTML, so its Allow check (ST205) would count
    # them as undocumented methods. The pages have their own suites (tests/test_pages*.py).
    "AUTHDB_PAGES_ENABLED": "false",
}

CONFIG = f"""
[generation]
max-examples = {MAX_EXAMPLES}
deterministic = true
database = "none"

# A request that fits the document can still break a rule it cannot express (a common
# password, a wrong current password, an expired token): 400 and 422 are right answers.
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "400", "401", "403", "404", "409", "422", "429"]

[auth.dynamic.openapi.OAuth2PasswordBearer]
path = "/token"
method = "post"
payload = {{ username = "root", password = "{PASSWORD}" }}
payload_content_type = "application/x-www-form-urlencoded"
extract_selector = "/access_token"
"""


def _provision(folder: Path) -> None:
    """Thirty ordinary users, then the superuser: generated ids hit id 1 far more than 31."""
    lines = [
        json.dumps({"username": f"user{n}", "email": f"user{n}@example.com", "password": PASSWORD})
        for n in range(1, 31)
    ]
    (folder / "users.jsonl").write_text("\n".join(lines) + "\n")
    migrated = run_cli(["migrate"], env=SERVER_ENV, cwd=folder)  # only serve/migrate create it
    assert migrated.returncode == 0, migrated.stderr
    imported = run_cli(["users", "import", "users.jsonl"], env=SERVER_ENV, cwd=folder)
    assert imported.returncode == 0, imported.stderr
    root = ["--username", "root", "--email", "root@example.com", "--superuser"]
    created = run_cli(
        ["createuser", *root, "--password-stdin"],
        env=SERVER_ENV,
        stdin=PASSWORD + "\n",
        cwd=folder,
    )
    assert created.returncode == 0, created.stderr


def test_schemathesis_run_against_the_served_openapi_document_passes(tmp_path: Path) -> None:
    _provision(tmp_path)
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    with serving(tmp_path, SERVER_ENV) as base:
        run = ["run", f"{base}/openapi.json", "--checks", "all", "--workers", "1"]
        result = subprocess.run(
            [SCHEMATHESIS, "--config-file", str(config), "--no-color", *run],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    # Every operation of the document was tested, none filtered out or skipped.
    selected = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", result.stdout)
    assert selected is not None, result.stdout
    assert selected[1] == selected[2] == selected[3], selected[0]

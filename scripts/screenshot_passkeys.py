"""Screenshot of the passkeys section of /account, for the docs: ``docs/passkeys.png``.

Starts ``authdb serve`` on a temporary SQLite file at http://localhost:PORT, registers a user,
signs in on /login and adds two passkeys on /account with Chromium's virtual authenticator
(Debian's /usr/bin/chromium through Playwright), then photographs the section.

    .venv/bin/python scripts/screenshot_passkeys.py [OUTPUT.png]
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "passkeys.png"
AUTHDB = str(Path(sys.executable).with_name("authdb"))
CHROMIUM = "/usr/bin/chromium"  # Debian's; never `playwright install`
USERNAME = "ada"
PASSWORD = "correct horse battery staple"
AUTHENTICATOR = {
    "protocol": "ctap2",
    "transport": "internal",
    "hasResidentKey": True,
    "hasUserVerification": True,
    "isUserVerified": True,
    "automaticPresenceSimulation": True,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(base: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"authdb serve exited with {process.returncode}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit("authdb serve did not become healthy")


def add_passkey(page: Page, name: str) -> None:
    """A new virtual authenticator in the page, "Add a passkey" on /account, and the
    authenticator taken away again (each passkey is another device)."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("WebAuthn.enable", {"enableUI": False})
    added = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": AUTHENTICATOR})
    page.goto("/account")
    page.locator("#passkey-name").fill(name)
    page.locator("#passkey-password").fill(PASSWORD)
    page.locator("#passkey-add").click()
    expect(page.get_by_text("Your passkey has been added.")).to_be_visible()
    cdp.send("WebAuthn.removeVirtualAuthenticator", {"authenticatorId": added["authenticatorId"]})
    cdp.detach()


def main() -> None:
    output = Path(sys.argv[1]) if len(sys.argv) > 1 else OUTPUT
    with tempfile.TemporaryDirectory(prefix="authdb-passkeys-") as workdir:
        port = free_port()
        base = f"http://localhost:{port}"  # passkeys need a domain name, not 127.0.0.1
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHDB_")}
        env.update(
            AUTHDB_DATABASE_URL=f"sqlite+aiosqlite:///{Path(workdir) / 'authdb.db'}",
            AUTHDB_SECRET_KEY="screenshot-secret-key-0123456789abcdefghijkl",
            AUTHDB_PUBLIC_URL=base,
            AUTHDB_SITE_NAME="Example Accounts",
        )
        with (Path(workdir) / "serve.log").open("w") as log:
            # Our own console script with fixed arguments.
            process = subprocess.Popen(  # noqa: S603
                [AUTHDB, "serve", "--port", str(port)],
                cwd=workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                wait_healthy(base, process)
                registered = httpx.post(
                    f"{base}/register",
                    json={"username": USERNAME, "email": "ada@example.com", "password": PASSWORD},
                    timeout=30,
                )
                registered.raise_for_status()
                shoot(base, output)
            finally:
                process.terminate()
                process.wait(timeout=15)
    print(output)


def shoot(base: str, output: Path) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            context = browser.new_context(
                base_url=base, viewport={"width": 900, "height": 900}, device_scale_factor=1
            )
            context.set_default_timeout(30_000)
            page = context.new_page()
            page.goto("/login")
            page.get_by_label("Username or email").fill(USERNAME)
            page.locator("#password").fill(PASSWORD)
            page.locator("#password").press("Enter")
            expect(page).to_have_url(f"{base}/account")
            add_passkey(page, "Work laptop")
            add_passkey(page, "Phone")
            page.goto("/account")
            section = page.locator("section").filter(has=page.locator("#passkeys-heading"))
            expect(section.locator("li.passkey")).to_have_count(2)
            output.parent.mkdir(parents=True, exist_ok=True)
            section.screenshot(path=output)
        finally:
            browser.close()


if __name__ == "__main__":
    main()

"""The studio in a real browser: Playwright driving Debian's chromium (never a downloaded
browser) against a gateway on 127.0.0.1. Creates a session, runs two turns, undoes, forks, and
checks what the page shows; a screenshot is saved under the test's tmp dir."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright, expect

from engine import Engine
from engine.serve import ServeOptions, create_app
from tests.conftest import CHROMIUM, EmulatorFactory, config_for

pytestmark = [pytest.mark.browser]

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            yield chromium
        finally:
            await chromium.close()


async def _gateway(
    make_emulator: EmulatorFactory, options: ServeOptions | None = None
) -> tuple[TestServer, Engine]:
    emu = await make_emulator(latency=0.2)
    engine = Engine(config_for(emu.base_url))
    await engine.start()
    server = TestServer(create_app(engine, options), host="127.0.0.1")
    await server.start_server()
    return server, engine


async def _page(browser: Browser, errors: list[str]) -> Page:
    page = await browser.new_page()

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return page


async def _send(page: Page, prompt: str, turns: int, images: int = 1) -> None:
    """Send a prompt and wait for the turn (`images`: input images shown + the answer's)."""
    await page.fill("#prompt", prompt)
    await page.click("#send")
    await expect(page.locator("#timeline > li")).to_have_count(turns, timeout=20_000)
    await expect(page.locator("#timeline > li").last.locator("img")).to_have_count(images)
    await expect(page.locator("#send")).to_be_enabled()


async def test_studio_session_turns_undo_fork(
    browser: Browser, make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """The studio creates a session, runs turns, undoes and forks in Chromium."""
    server, engine = await _gateway(make_emulator)
    errors: list[str] = []
    try:
        page = await _page(browser, errors)
        await page.goto(str(server.make_url("/")))
        await expect(page.locator("#status")).to_have_text("ready")
        # The model menu is the server's catalog (GET /v1/models), the default selected.
        models = await page.locator("#new-model option").all_inner_texts()
        assert {"gemini-nano-banana-2.1", "gemini-3-pro-image"} <= set(models)
        assert await page.input_value("#new-model") == "gemini-nano-banana-2.1"
        await page.fill("#new-title", "mug")
        await page.select_option("#new-ratio", "16:9")
        await page.click("#new-session button[type=submit]")
        await expect(page.locator("#session-title")).to_have_text("mug")
        await expect(page.locator("#redo")).to_be_disabled()  # nothing to redo (was a 409)
        await _send(page, "a ceramic mug on an oak table", 1)
        await _send(page, "add a eucalyptus sprig", 2)
        first = page.locator("#timeline > li").first
        await expect(first.locator(".prompt")).to_have_text("1. a ceramic mug on an oak table")
        assert "$0.0" in (await first.locator(".meta").inner_text())
        image = page.locator("#timeline > li").last.locator("img")
        width = await image.evaluate("img => img.naturalWidth")
        height = await image.evaluate("img => img.naturalHeight")
        assert width > height > 0  # a 16:9 image, really loaded from /v1/images
        await expect(page.locator("#session-cost")).to_contain_text("2 turns")
        # Undo: the timeline shows one turn; the branch tree still has both.
        await page.click("#undo")
        await expect(page.locator("#timeline > li")).to_have_count(1)
        await expect(page.locator("#redo")).to_be_enabled()
        await expect(page.locator("#tree button")).to_have_count(2)
        # Jump back to turn 2 through the tree, then compare turn 1 with turn 2.
        await page.click("#tree-panel summary")
        await page.locator("#tree button").nth(1).click()
        await expect(page.locator("#timeline > li")).to_have_count(2)
        await page.click("#compare-panel summary")
        await expect(page.locator("#compare-img-b")).to_have_attribute("src", _blob_url())
        # Fork: a second session in the list, open, with the same turns.
        await page.click("#fork")
        await expect(page.locator("#sessions li")).to_have_count(2)
        await expect(page.locator("#sessions button.current")).to_have_count(1)
        await expect(page.locator("#timeline > li")).to_have_count(2)
        await page.screenshot(path=str(tmp_path / "studio.png"), full_page=True)
        assert (tmp_path / "studio.png").stat().st_size > 10_000
        sessions = await engine.store.list()
        assert len(sessions) == 2 and {s.turns for s in sessions} == {2}
        assert errors == []
    finally:
        await server.close()
        await engine.aclose()


async def test_studio_asks_for_a_key_and_keeps_it(
    browser: Browser, make_emulator: EmulatorFactory
) -> None:
    """The studio asks for a tenant key, then keeps it across reloads."""
    server, engine = await _gateway(make_emulator, ServeOptions(keys={"t": ["studio-key-123"]}))
    errors: list[str] = []
    try:
        page = await _page(browser, errors)
        await page.goto(str(server.make_url("/")))
        await expect(page.locator("#key-panel")).to_be_visible()
        # The key screen alone: the app is not shown behind it, and asking is no error.
        await expect(page.locator("#app")).to_be_hidden()
        await expect(page.locator("#status")).to_have_text("this server needs an API key")
        await page.fill("#key-input", "wrong-key-456")
        await page.click("#key-form button")
        await expect(page.locator("#key-panel")).to_be_visible()
        await expect(page.locator("#status")).to_contain_text("Unauthorized")
        await expect(page.locator("#status")).to_have_class(re.compile("error"))
        await page.fill("#key-input", "studio-key-123")
        await page.click("#key-form button")
        await expect(page.locator("#status")).to_have_text("ready")
        await page.reload()  # the key was kept in local storage
        await expect(page.locator("#status")).to_have_text("ready")
        await page.click("#new-session button[type=submit]")
        await _send(page, "a mug", 1)
        stored: Any = await page.evaluate("localStorage.getItem('nanoedit.key')")
        assert stored == "studio-key-123"
        # Only the 401s of the wrong key may show in the console.
        assert all("401" in e for e in errors), errors
    finally:
        await server.close()
        await engine.aclose()


def _blob_url() -> re.Pattern[str]:
    return re.compile(r"^blob:")


@pytest.mark.parametrize("width", [390, 1280, 1920])
async def test_images_keep_their_aspect_ratio(
    browser: Browser, make_emulator: EmulatorFactory, tmp_path: Path, width: int
) -> None:
    """A 16:9 turn image is shown at 16:9 on a phone, a laptop and a wide screen (it was
    stretched to the column's width); at 390 px the sidebar stacks above the timeline, so the
    image gets most of the width. Screenshots are saved."""
    server, engine = await _gateway(make_emulator)
    errors: list[str] = []
    try:
        page = await _page(browser, errors)
        await page.set_viewport_size({"width": width, "height": 900})
        await page.goto(str(server.make_url("/")))
        await expect(page.locator("#status")).to_have_text("ready")
        await page.fill("#new-title", "ratio")
        await page.select_option("#new-ratio", "16:9")
        await page.click("#new-session button[type=submit]")
        await _send(page, "a ceramic mug on an oak table", 1)
        image = page.locator("#timeline > li").last.locator("img")
        box = await image.bounding_box()
        natural = await image.evaluate("img => img.naturalWidth / img.naturalHeight")
        assert box is not None and box["height"] > 0
        assert box["width"] / box["height"] == pytest.approx(natural, rel=0.02)
        assert box["width"] > 0.6 * min(width, 1000)  # not squeezed beside a sidebar
        await page.screenshot(path=str(tmp_path / f"studio-{width}.png"), full_page=True)
        assert errors == []
    finally:
        await server.close()
        await engine.aclose()


async def test_cancel_keeps_the_prompt_and_errors_are_red(
    browser: Browser, make_emulator: EmulatorFactory
) -> None:
    """A turn cancelled while it runs: the typed prompt is still there to send again, the
    progress line counted the seconds, and the status says so in red."""
    emu = await make_emulator(latency=3.0)
    engine = Engine(config_for(emu.base_url))
    await engine.start()
    server = TestServer(create_app(engine, None), host="127.0.0.1")
    await server.start_server()
    errors: list[str] = []
    try:
        page = await _page(browser, errors)
        await page.goto(str(server.make_url("/")))
        await expect(page.locator("#status")).to_have_text("ready")
        await page.click("#new-session button[type=submit]")
        await page.fill("#prompt", "a ceramic mug on an oak table")
        await page.click("#send")
        await expect(page.locator("#progress")).to_contain_text(" s")
        await expect(page.locator("#cancel")).to_be_visible()
        await page.click("#cancel")
        await expect(page.locator("#status")).to_have_text("turn cancelled")
        assert await page.input_value("#prompt") == "a ceramic mug on an oak table"
        color = await page.locator("#status").evaluate("e => getComputedStyle(e).color")
        assert color == "rgb(176, 0, 32)"
        await expect(page.locator("#timeline > li")).to_have_count(0)
    finally:
        await server.close()
        await engine.aclose()


async def test_paint_a_region_then_takes_and_the_tree(
    browser: Browser, make_emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Paint a stroke on the head image and send: through the API, every pixel away from the
    stroke (brush and seam) is unchanged. Then three takes: a grid of three, "Use this take"
    moves the head. The branch tree shows thumbnails with prompts. Screenshots saved."""
    import io

    import aiohttp
    from PIL import Image, ImageChops

    server, engine = await _gateway(make_emulator)
    errors: list[str] = []
    try:
        page = await _page(browser, errors)
        await page.set_viewport_size({"width": 1280, "height": 1000})
        await page.goto(str(server.make_url("/")))
        await expect(page.locator("#status")).to_have_text("ready")
        await page.click("#new-session button[type=submit]")
        await _send(page, "a ceramic mug on an oak table", 1)
        await page.click("#region-panel summary")
        canvas = page.locator("#region-canvas")
        await expect(canvas).to_be_visible()
        box = await canvas.bounding_box()
        assert box is not None
        y = box["y"] + 0.3 * box["height"]
        await page.mouse.move(box["x"] + 0.2 * box["width"], y)
        await page.mouse.down()
        await page.mouse.move(box["x"] + 0.5 * box["width"], y, steps=12)
        await page.mouse.up()
        await page.screenshot(path=str(tmp_path / "studio-region-painted.png"), full_page=True)
        await _send(page, "add a red circle", 2, images=2)  # the crop sent, and the result
        # The region is drawn on the result on demand.
        region_box = page.locator("#timeline > li").last.locator(".region-box")
        await expect(region_box).to_be_hidden()
        await page.locator("#timeline > li").last.locator(".toggle-region").click()
        await expect(region_box).to_be_visible()
        await page.screenshot(path=str(tmp_path / "studio-region-shown.png"), full_page=True)
        sessions = await engine.store.list()
        state = await engine.store.load(sessions[0].id)
        first, second = state.path()
        async with aiohttp.ClientSession() as http:
            pictures = []
            for turn in (first, second):
                sha = engine.store.blobs.digest(turn.model.images()[-1].data)
                async with http.get(str(server.make_url(f"/v1/images/{sha}"))) as resp:
                    pictures.append(Image.open(io.BytesIO(await resp.read())).convert("RGB"))
        width, height = pictures[0].size
        scale = width / box["width"]
        reach = 12 * scale + 2 + 8 + 2  # the brush's radius, the seam, rounding
        changed = ImageChops.difference(pictures[0], pictures[1]).getbbox()
        assert changed is not None  # the edit did something ...
        assert changed[0] >= 0.2 * width - reach and changed[2] <= 0.5 * width + reach  # ... only
        assert changed[1] >= 0.3 * height - reach and changed[3] <= 0.3 * height + reach
        # Three takes: a grid to choose from.
        await expect(page.locator("#estimate")).to_have_text("≈ $0.0336 ($0.0336 per 1K image)")
        await page.fill("#variants", "3")
        await expect(page.locator("#estimate")).to_contain_text("3 takes \u00d7 $0.0336")
        await page.fill("#prompt", "make the mug blue")
        await page.click("#send")
        await expect(page.locator("#takes figure")).to_have_count(3, timeout=20_000)
        before = (await engine.store.load(sessions[0].id)).record.head
        await page.locator("#takes button").first.click()
        await expect(page.locator("#status")).to_have_text("checkout done")
        after = (await engine.store.load(sessions[0].id)).record.head
        assert after != before
        await page.click("#tree-panel summary")
        await expect(page.locator("#tree button img").first).to_be_visible()
        assert "add a red circle" in await page.locator("#tree").inner_text()
        await page.screenshot(path=str(tmp_path / "studio-takes.png"), full_page=True)
        assert errors == []
    finally:
        await server.close()
        await engine.aclose()


async def test_references_live_updates_full_size_and_delete(
    browser: Browser, make_emulator: EmulatorFactory
) -> None:
    """Drag a past turn's image into the reference tray, give it a role and send (the stored
    turn carries the role's label); a turn run elsewhere appears while the page is open; an
    image opens full size; the session can be deleted."""
    server, engine = await _gateway(make_emulator)
    errors: list[str] = []
    try:
        page = await _page(browser, errors)
        page.on(
            "dialog",
            lambda dialog: asyncio.ensure_future(
                dialog.accept("teapots") if dialog.type == "prompt" else dialog.accept()
            ),
        )
        await page.goto(str(server.make_url("/")))
        await expect(page.locator("#status")).to_have_text("ready")
        await page.click("#new-session button[type=submit]")
        await _send(page, "a ceramic mug on an oak table", 1)
        await page.locator("#timeline img").first.drag_to(page.locator("#drop"))
        await expect(page.locator("#attachments figure")).to_have_count(1)
        await page.select_option("#attachments select", "style")
        await _send(page, "a teapot in this style", 2, images=2)
        sid = (await engine.store.list())[0].id
        state = await engine.store.load(sid)
        texts = [p.text or "" for p in state.path()[-1].user.parts]
        assert any("style reference" in t for t in texts)
        # A turn run elsewhere (here: straight through the engine) shows up by itself.
        session = await engine.open_session(sid)
        await session.send("make it blue")
        await expect(page.locator("#timeline > li")).to_have_count(3, timeout=15_000)
        # Full size, then close.
        await page.locator("#timeline img").last.click()
        await expect(page.locator("#viewer img")).to_be_visible()
        await page.locator("#viewer").click(position={"x": 5, "y": 5})
        await expect(page.locator("#viewer")).to_be_hidden()
        await page.click("#rename")
        await expect(page.locator("#session-title")).to_have_text("teapots")
        assert (await engine.store.load_record(sid)).title == "teapots"
        await page.click("#delete")
        await expect(page.locator("#status")).to_have_text("session deleted")
        assert await engine.store.list() == []
        assert errors == []
    finally:
        await server.close()
        await engine.aclose()

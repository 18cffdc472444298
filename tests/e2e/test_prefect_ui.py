"""Triggering from the Prefect UI for real: headless Chromium fills in the convert deployment's Run form."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

from deployments.stack import Stack
from e2e_helpers import MODEL, TWIN_WAIT_SECONDS, bridge_down, train_version, twin_of

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def form_field(page, label: str):
    """The Run form's block for one parameter, found by the label the UI shows."""
    return page.locator(f"xpath=//span[@class='schema-form-property__label' and normalize-space()='{label}']"
                        "/ancestor::div[contains(concat(' ', @class, ' '), ' schema-form-property ')][1]")


def test_run_form_in_the_prefect_ui_converts_the_alias(stack: Stack, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.fail("no /usr/bin/chromium: apt-get install -y chromium (.ci/run does it)")
    from playwright.sync_api import sync_playwright

    with bridge_down(stack):  # so that only the UI run converts this version
        version = train_version(seed=21)
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("convert-keras-to-onnx/convert")
    run_form = f"{stack.prefect_api.removesuffix('/api')}/deployments/deployment/{deployment.id}/run"

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page()
        page.set_default_timeout(120_000)  # the UI's first load on a busy 2-core machine can take a while
        page.goto(run_form)
        form_field(page, "model_name").locator("textarea").fill(MODEL)
        alias = form_field(page, "alias (Optional)")
        alias.get_by_role("button", name="str", exact=True).click()
        alias.locator("textarea, input").first.fill("champion")
        page.get_by_role("button", name="Submit").click()
        page.wait_for_url(re.compile(r"tab=Runs"), timeout=120_000)  # the UI shows the deployment's runs
        browser.close()

    deadline = time.monotonic() + TWIN_WAIT_SECONDS
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))
            if runs and (run := runs[0]).state.is_final():
                break
            time.sleep(2)
    assert len(runs) == 1
    assert (run.parameters["model_name"], run.parameters["alias"]) == (MODEL, "champion")
    assert run.state.is_completed(), run.state.message
    assert twin_of(version)

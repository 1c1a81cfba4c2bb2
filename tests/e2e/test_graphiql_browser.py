"""GraphiQL as a person uses it, offline: headless Chromium (Debian's package) driven by Playwright, with every
request that is not to 127.0.0.1 refused. A mutation, a subscription that streams the order's statuses, then
the order's flow run opened from its `flowRun.url` in the Prefect UI."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page, Route, sync_playwright

from tests.e2e.prefect_ui import PrefectUI
from tests.system_packages import debian_packages

pytestmark = pytest.mark.e2e

PAUSE_SEEN_S = 4  # executors re-read the pool every 3 s
CREATE_ORDER = """mutation {
  createOrder(input: {customerId: "cust-graphiql", items: [
      {productId: "prod-100", productName: "Wireless Headphones", quantity: 1, unitPrice: 49.99}]}) {
    __typename
    ... on OrderCreated { order { id status } }
  }
}"""
STATUS_CHANGED = 'subscription { orderStatusChanged(id: "%s") { status } }'
FLOW_RUN = 'query { order(id: "%s") { flowRun { url } } }'
QUERY_EDITOR = ".graphiql-query-editor .CodeMirror"
RESPONSE = ".graphiql-response .CodeMirror"


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium, installed with apt-get when missing; never a browser build of Playwright's own, which
    `playwright install` would download."""
    debian_packages(lambda: shutil.which("chromium") is not None, "chromium")
    return shutil.which("chromium")


@pytest.fixture
def offline_page(chromium) -> Iterator[tuple[Page, list[str]]]:
    """A fresh browser page that can reach 127.0.0.1 only, and the URLs it was refused."""
    refused: list[str] = []

    def loopback_only(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort("internetdisconnected")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        try:
            context = browser.new_context()
            context.route("**/*", loopback_only)
            yield context.new_page(), refused
        finally:
            browser.close()


class GraphiQL:
    """GraphiQL's editors, driven through the CodeMirror instances of its query editor and response pane."""

    def __init__(self, page: Page, url: str):
        self.page = page
        page.goto(url)
        page.wait_for_selector(QUERY_EDITOR)
        page.evaluate("""selector => {
            window.responses = [];  // every text the response pane shows, in order
            const pane = document.querySelector(selector).CodeMirror;
            pane.on("change", () => pane.getValue() && window.responses.push(pane.getValue()));
        }""", RESPONSE)

    def run(self, document: str) -> None:
        """Puts `document` in the query editor and presses the run button, once GraphiQL has parsed it (it does
        so 100 ms after an edit; the parsed document is what makes it send a subscription over the WebSocket)."""
        self.page.evaluate("([selector, text]) => document.querySelector(selector).CodeMirror.setValue(text)",
                           [QUERY_EDITOR, document])
        self.page.wait_for_function("""([selector, text]) => {
            const ast = document.querySelector(selector).CodeMirror.documentAST;
            return ast && ast.loc.source.body === text;
        }""", arg=[QUERY_EDITOR, document])
        self.page.evaluate("() => { window.responses = []; }")
        self.page.click(".graphiql-execute-button")

    def wait_for_response(self, text: str, timeout_s: float = 30) -> dict:
        """The first response the pane showed since the last `run` that contains `text`."""
        self.page.wait_for_function("text => window.responses.some(r => r.includes(text))", arg=text,
                                    timeout=timeout_s * 1000)
        return next(r for r in self.responses() if text in json.dumps(r))

    def responses(self) -> list[dict]:
        return [json.loads(text) for text in self.page.evaluate("() => window.responses")]


def test_graphiql_offline_runs_a_mutation_and_a_subscription_and_links_to_the_flow_run(stack, offline_page):
    page, refused = offline_page
    started = time.monotonic()
    graphiql = GraphiQL(page, f"{stack.gateway}/graphql")
    ui = PrefectUI(stack.prefect_api)
    ui.pause_pool("order-saga")  # the saga waits, so the subscription sees it start
    try:
        time.sleep(PAUSE_SEEN_S)
        graphiql.run(CREATE_ORDER)
        order = graphiql.wait_for_response("OrderCreated")["data"]["createOrder"]["order"]
        graphiql.run(STATUS_CHANGED % order["id"])
        graphiql.wait_for_response("PROCESSING")
    finally:
        ui.pause_pool("order-saga", paused=False)
    graphiql.wait_for_response("COMPLETED", timeout_s=45)
    statuses = [r["data"]["orderStatusChanged"]["status"] for r in graphiql.responses()]
    assert statuses[0] == "PROCESSING" and statuses[-1] == "COMPLETED" and len(set(statuses)) == len(statuses)
    assert refused == []  # every file of GraphiQL came from the gateway

    graphiql.run(FLOW_RUN % order["id"])
    url = graphiql.wait_for_response("flowRun")["data"]["order"]["flowRun"]["url"]
    page.goto(url)
    page.get_by_text(f"order-{order['id']}").first.wait_for(timeout=30_000)  # the run's page, by its name
    page.get_by_text("Completed").first.wait_for()
    print(f"graphiql: browser test {time.monotonic() - started:.1f} s, statuses {statuses}, "
          f"refused by the Prefect UI page: {refused or 'none'}")

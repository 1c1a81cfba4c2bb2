"""GraphiQL served by the gateway itself, so that it works offline: the page (`page.html`) and every file it
loads come from the gateway, under /graphql/assets/.

The files are the prebuilt browser bundles of the npm packages pinned by `package.json` and `package-lock.json`
beside this module, installed into `node_modules/` by `make install` / `make up` (`npm ci`; gitignored).
GraphiQL 4 is the last major version that ships such a bundle (5 is ES modules for a bundler), and its bundle
includes graphql-ws, which it uses for subscriptions; React 18 is the last with a browser bundle (UMD).

A file's URL names its package's installed version (`/graphql/assets/graphiql@4.1.2/graphiql.min.js`), so it
can be cached for good: an upgrade changes the URL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from string import Template

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

HERE = Path(__file__).resolve().parent
NODE_MODULES = HERE / "node_modules"
PREFIX = "/graphql/assets"
CACHE_FOREVER = "public, max-age=31536000, immutable"
PAGE = Template((HERE / "page.html").read_text())
NOT_INSTALLED = """<!doctype html>
<title>GraphiQL: not installed</title>
<h1>GraphiQL's files are not installed</h1>
<p>The gateway serves GraphiQL from <code>gateway/graphiql/node_modules</code>, which <code>make up</code> (or
<code>make graphiql</code>) fills with <code>npm ci</code>. Install Node.js and npm, run <code>make graphiql</code>
once with a connection to the npm registry, and reload: from then on GraphiQL works offline.</p>
"""


@dataclass(frozen=True)
class Asset:
    package: str
    file: str  # its path inside the package

    def installed_path(self, node_modules: Path = NODE_MODULES) -> Path:
        return node_modules / self.package / self.file

    def url(self, node_modules: Path = NODE_MODULES) -> str | None:
        """Where the gateway serves it, naming the installed version; None when it is not installed."""
        version = installed_version(self.package, node_modules)
        if version is None or not self.installed_path(node_modules).is_file():
            return None
        return f"{PREFIX}/{self.package}@{version}/{self.file}"


STYLESHEET = Asset("graphiql", "graphiql.min.css")
SCRIPTS = (Asset("react", "umd/react.production.min.js"), Asset("react-dom", "umd/react-dom.production.min.js"),
           Asset("graphiql", "graphiql.min.js"))
ASSETS = (STYLESHEET, *SCRIPTS)


def installed_version(package: str, node_modules: Path = NODE_MODULES) -> str | None:
    try:
        return json.loads((node_modules / package / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def page(node_modules: Path = NODE_MODULES) -> HTMLResponse:
    """The GraphiQL page, whose every URL is the gateway's; or, before `npm ci`, a page that says so."""
    stylesheet, *scripts = (asset.url(node_modules) for asset in (STYLESHEET, *SCRIPTS))
    if stylesheet is None or None in scripts:
        return HTMLResponse(NOT_INSTALLED)
    tags = "\n".join(f'    <script src="{url}"></script>' for url in scripts)
    return HTMLResponse(PAGE.substitute(stylesheet=stylesheet, scripts=tags))


async def asset(request: Request) -> Response:
    """One of `ASSETS`, by the URL `Asset.url` gave it; anything else under the prefix is 404."""
    wanted = f"{PREFIX}/{request.path_params['path']}"
    for candidate in ASSETS:
        if wanted == candidate.url():
            return FileResponse(candidate.installed_path(), headers={"Cache-Control": CACHE_FOREVER})
    return PlainTextResponse("not found", status_code=404)


routes = [Route(f"{PREFIX}/{{path:path}}", asset, methods=["GET", "HEAD"])]

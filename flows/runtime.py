"""How flow code reaches the composition root.

The worker installs the container it built; a flow run loaded by any other Prefect runner (a `prefect worker`
subprocess, a plain call) builds one from the environment the first time it needs it.
"""

from __future__ import annotations

from fulfillment.bootstrap import Container, bootstrap

_installed: list[Container] = []


def install(container: Container) -> None:
    _installed[:] = [container]


def container() -> Container:
    if not _installed:
        install(bootstrap())
    return _installed[0]

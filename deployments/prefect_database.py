"""Prefect's database made ready once, before any API process of the scaled profile starts: its migrations, then
its block types. Each API process would otherwise do both as it starts, and several starting together race
(duplicate keys in `block_schema`, each failure logged at ERROR). Run as `python -m deployments.prefect_database`.
"""

from __future__ import annotations

import asyncio
import logging

from fulfillment.logs import configure_logging

log = logging.getLogger("deployments.prefect_database")


async def prepare() -> None:
    from prefect.server.database import provide_database_interface
    from prefect.server.models.block_registration import run_block_auto_registration

    db = provide_database_interface()
    await db.create_db()  # Prefect's migrations, as `prefect server database upgrade` runs them
    async with await db.session() as session:
        await run_block_auto_registration(session=session)
        await session.commit()
    log.info("prefect database ready", extra={"database": (await db.engine()).url.render_as_string()})


def main() -> None:
    configure_logging()
    asyncio.run(prepare())


if __name__ == "__main__":
    main()

"""Loaded at start-up by every Python process of a stack that `benchmarks.profile` starts with this directory on
PYTHONPATH: SQLAlchemy's greenlets are labelled with where they were spawned from (`label_greenlets`)."""

import os

if os.environ.get("ORDER_SAGA_PROFILE_GREENLETS") == "1":
    from benchmarks.profile import label_greenlets

    label_greenlets()

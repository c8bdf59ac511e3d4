"""Shared fixtures."""

import os

import pytest

from evonets.task_backbone import shared_data_dir


@pytest.fixture(scope="session")
def shared_data():
    """`../shared/data` (the real sample data). CI always has it, so there a missing folder fails the test loudly;
    elsewhere the test is skipped with the reason."""
    folder = shared_data_dir()
    if not folder.is_dir():
        message = f"the shared sample data is missing: {folder} (set EVONETS_DATA_DIR)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return folder

"""The Nodes page: on a standalone box it says how to add nodes; on a node it shows a card per box,
and a box that starts beating appears without a reload. The Activity table names the node."""

from __future__ import annotations

import pytest
from nicegui.testing import User

from llamaman.cluster.nodes import NodeRegistry
from tests.ui.conftest import ADMIN, PASSWORD, as_browser, sign_in, started

pytestmark = pytest.mark.nicegui_main_file("tests/ui/app_for_tests.py")


async def test_a_standalone_box_explains_how_to_add_nodes(admin: User) -> None:
    await admin.open("/nodes")

    await admin.should_see(marker="nodes-how-to")
    await admin.should_see("LLAMAMAN_NODE_NAME")
    await admin.open("/activity")
    await admin.should_see(marker="activity-table")
    [recent] = admin.find(marker="activity-table").elements
    assert "node" not in [c["name"] for c in recent.props["columns"]]  # one box: no question who answered


@pytest.fixture
def node_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMAMAN_ADMIN_USER", ADMIN)
    monkeypatch.setenv("LLAMAMAN_ADMIN_PASSWORD", PASSWORD)
    monkeypatch.setenv("LLAMAMAN_NODE_NAME", "alpha")
    monkeypatch.setenv("LLAMAMAN_NODE_URL", "http://10.0.0.1:5000")
    monkeypatch.setenv("LLAMAMAN_NODE_SECRET", "x" * 20)


async def test_a_node_shows_each_box_and_a_new_one_appears_live(node_env: None, user: User) -> None:
    services = await started(user)
    as_browser(user)
    await sign_in(user)
    await user.open("/nodes")
    await user.should_see(marker="node-alpha", retries=60)
    await user.should_see("this box")

    beta = NodeRegistry(services.nodes.settings.model_copy(update={"node_name": "beta"}), services.db)
    beta.info_provider = lambda: {"models_resident": ["tiny-b"], "resident": [
        {"name": "tiny-b", "instance": "x", "state": "healthy"}], "inflight": 7}  # fmt: skip
    await beta.beat()

    await user.should_see(marker="node-beta", retries=60)  # the next heartbeat's nodes.changed
    await user.should_see("tiny-b (healthy)")
    await user.should_see("7 request(s) running", retries=20)

    await user.open("/activity")
    await user.should_see(marker="activity-table")
    [recent] = user.find(marker="activity-table").elements
    assert "node" in [c["name"] for c in recent.props["columns"]]

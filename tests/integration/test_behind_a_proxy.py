"""Behind a load balancer (deploy/haproxy.cfg adds X-Forwarded-For): with GATEWAY_PROXIES=1 the
client's address is the one the gateway counts sign-in attempts by and writes in the trail. The
balancer's address was every patient's: wrong passwords from anywhere, past the count an address
is allowed, locked every patient out of the space for 15 minutes, and every access in the trail
came from the balancer. With no proxy declared the header is ignored, as any client may send it."""
import json
import re
from dataclasses import replace

import pytest
from sqlalchemy import select

from conftest import GP
from gateway.app import create_app
from gateway.space import accounts
from gateway.space.senders import read_outbox
from gateway.storage.schema import resources

BALANCER = "10.0.0.5"
PASSWORD = "a long enough password"


def csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def sign_in_step(browser, login: str, password: str, client_address: str) -> int:
    """The password step of a sign-in, as the balancer passes it on; its status."""
    through = {"environ_base": {"REMOTE_ADDR": BALANCER}, "headers": {"X-Forwarded-For": client_address}}
    page = browser.get("/connexion", **through).text
    return browser.post("/connexion", data={"csrf_token": csrf(page), "identifiant": login, "mot_de_passe": password},
                        **through).status_code


@pytest.mark.parametrize("proxies", [1, 0])
def test_sign_in_attempts_are_counted_by_the_client_s_address_behind_a_declared_proxy(settings, database, monkeypatch,
                                                                                      proxies):
    monkeypatch.setattr(accounts, "MAX_ADDRESS_ATTEMPTS", 3)
    accounts.create_account(database[0], "paul", PASSWORD, "patient", ["185067511204554"], "Paul MARTIN",
                            "paul@example.test")
    app = create_app(replace(settings, proxies=proxies), database[0])
    for attempt in range(4):   # someone guessing, from one address, logins that do not exist
        assert sign_in_step(app.test_client(), f"guess{attempt}", "wrong", "203.0.113.7") == 401
    # Paul, from his own address, through the same balancer.
    status = sign_in_step(app.test_client(), "paul", PASSWORD, "198.51.100.9")
    if proxies:
        assert status == 302 and read_outbox(settings)[-1]["to"] == "paul@example.test"
    else:   # the header ignored: both came from the balancer, whose address is now locked
        assert status == 401


def test_the_trail_names_the_client_s_address_behind_a_declared_proxy(settings, database, bearer):
    app = create_app(replace(settings, proxies=1), database[0])
    doctor = app.test_client()
    through = {"environ_base": {"REMOTE_ADDR": BALANCER},
               "headers": {**bearer("doctor", sub=GP), "X-Forwarded-For": "192.0.2.1, 198.51.100.20"}}
    assert doctor.get("/fhir/Patient", **through).status_code == 200
    with database[0].connect() as conn:
        events = [json.loads(body) for body in conn.execute(
            select(resources.c.body).where(resources.c.res_type == "AuditEvent")).scalars()]
    addresses = {agent.get("network", {}).get("address") for event in events for agent in event["agent"]}
    # The address the balancer saw (the last one it added), not what a client wrote before it.
    assert "198.51.100.20" in addresses and BALANCER not in addresses and "192.0.2.1" not in addresses, addresses

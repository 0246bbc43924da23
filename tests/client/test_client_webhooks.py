"""regdiff_client.webhooks.verify: Standard Webhooks signatures, checked against the spec's
published example and against every way a delivery can be wrong."""

from __future__ import annotations

import re

import pytest
import regdiff_client as rd
from regdiff_client.webhooks import sign, verify

# The worked example of the Standard Webhooks / Svix documentation ("verifying manually").
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
STAMP = 1614265330
BODY = b'{"test": 2432232314}'
EXPECTED = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def headers(signature: str = EXPECTED, stamp: int = STAMP, msg_id: str = MSG_ID) -> dict[str, str]:
    return {"Webhook-Id": msg_id, "Webhook-Timestamp": str(stamp), "Webhook-Signature": signature}


def test_the_published_example_signs_and_verifies():
    assert sign(SECRET, MSG_ID, STAMP, BODY) == EXPECTED
    assert verify(SECRET, headers(), BODY, now=STAMP + 10) == {"test": 2432232314}
    assert verify(SECRET, headers(), BODY.decode(), now=STAMP - 10) == {"test": 2432232314}  # str body too
    # several signatures (a rotated secret): one match is enough
    assert verify(SECRET, headers(f"v1,bm9wZQ== {EXPECTED}"), BODY, now=STAMP)
    assert rd.webhooks.verify is verify


@pytest.mark.parametrize(("change", "why"), [
    ({"body": b'{"test": 2432232315}'}, "no webhook-signature matches"),
    ({"headers": headers(msg_id="msg_other")}, "no webhook-signature matches"),
    ({"headers": headers(stamp=STAMP + 1)}, "no webhook-signature matches"),
    ({"secret": "whsec_" + "A" * 32}, "no webhook-signature matches"),
    ({"headers": headers("v1," + "A" * 44)}, "no webhook-signature matches"),
    ({"now": STAMP + 301}, "+301 s from now"),
    ({"now": STAMP - 400}, "-400 s from now"),
    ({"headers": {"webhook-id": MSG_ID, "webhook-timestamp": str(STAMP)}}, "missing header 'webhook-signature'"),
    ({"headers": headers(stamp="soon")}, "not unix seconds"),  # type: ignore[arg-type]
    ({"secret": "whsec_not base64!"}, "not a whsec_<base64>"),
])
def test_anything_else_raises_a_verification_error(change, why):
    args = {"secret": SECRET, "headers": headers(), "body": BODY, "now": STAMP, **change}
    with pytest.raises(rd.WebhookVerificationError, match=re.escape(why)):
        verify(args["secret"], args["headers"], args["body"], now=args["now"])


def test_the_tolerance_is_the_callers():
    assert verify(SECRET, headers(), BODY, now=STAMP + 3000, tolerance=3600)
    with pytest.raises(rd.WebhookVerificationError):
        verify(SECRET, headers(), BODY, now=STAMP + 3000)
